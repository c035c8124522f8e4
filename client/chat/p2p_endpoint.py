"""The client's iroh endpoint (the `iroh` PyPI bindings): bound with our ALPN only, no discovery service (peers
learn its address from the signed record on the node, nowhere else), relays as configured.

Relays (`ChatConfig.p2p_relays`): "off" (direct addresses only; closed networks and tests), "default" (n0's
public relays, which forward encrypted QUIC when no direct path works), or comma-separated relay URLs of your
own. Nothing here publishes anything to n0: the minimal preset brings no discovery.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

import iroh

from quicnprotochat.common.endpoint_record import EndpointRecord, canonical_address

from .direct_wire import ALPN
from .errors import ChatError

RELAYS_OFF = "off"
RELAYS_DEFAULT = "default"


class PeerMismatch(Exception):
    """The peer that answered holds another iroh key than its signed record names."""


def relay_mode(relays: str) -> iroh.RelayMode:
    """The iroh relay mode for a `p2p_relays` setting; ChatError if it is none of off, default, URLs."""
    text = relays.strip()
    if text == RELAYS_OFF:
        return iroh.RelayMode.disabled()
    if text == RELAYS_DEFAULT:
        return iroh.RelayMode.default_mode()
    urls = [url.strip() for url in text.split(",") if url.strip()]
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ChatError(f"p2p relays: {url!r} is not an http(s) URL (or say off, or default)")
    if not urls:
        raise ChatError("p2p relays: say off, default, or give relay URLs")
    return iroh.RelayMode.custom_from_urls(urls)


class P2PEndpoint:
    """One bound iroh endpoint. Its iroh key is fresh for every run: only the signed record ties it to the
    identity, so nothing links this run's endpoint to the last one's."""

    def __init__(self, endpoint: iroh.Endpoint) -> None:
        self._endpoint = endpoint

    @classmethod
    async def bind(cls, relays: str, bind: Sequence[str]) -> P2PEndpoint:
        mode = relay_mode(relays)
        builder = iroh.EndpointBuilder()  # type: ignore[no-untyped-call]  # the bindings omit "-> None"
        try:
            builder.apply_minimal()
            builder.relay_mode(mode)
            for address in bind:
                builder.bind_addr(address)
            builder.alpns([ALPN])
            return cls(await builder.bind())
        except iroh.IrohError as error:
            raise ChatError(f"cannot start the direct-delivery endpoint: {error.message()}") from None

    @property
    def endpoint_id(self) -> bytes:
        return bytes(self._endpoint.id().to_bytes())

    def addresses(self) -> list[str]:
        """The direct addresses to publish (canonical "ip:port"), those iroh knows now."""
        found = []
        for address in self._endpoint.addr().direct_addresses():
            try:
                found.append(canonical_address(address))
            except ValueError:
                continue  # not an ip:port iroh should hand out; never publish what a peer could not parse
        return found

    def relay_url(self) -> str | None:
        return self._endpoint.addr().relay_url()

    async def connect(self, record: EndpointRecord) -> iroh.Connection:
        """A connection to the endpoint a checked record names. iroh's handshake only completes with the holder
        of that endpoint id's secret key; the id is compared once more so that a wrong peer is refused whatever
        the transport did."""
        peer = iroh.EndpointId.from_bytes(record.endpoint_id)
        connection = await self._endpoint.connect(
            iroh.EndpointAddr(peer, record.relay_url, list(record.addresses)), ALPN
        )
        if bytes(connection.remote_id().to_bytes()) != record.endpoint_id:
            connection.close(1, b"wrong peer")
            raise PeerMismatch("the peer holds another iroh key than its record names")
        return connection

    async def accept(self) -> iroh.Incoming | None:
        """The next incoming connection attempt; None once the endpoint is closed."""
        return await self._endpoint.accept_next()

    async def close(self) -> None:
        await self._endpoint.close()
