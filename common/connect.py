"""Opening an RPC connection to a node over QUIC or TLS-over-TCP, with the node's key checked first (pinning).

Shared by the client library and the node's own `qpc-server health` probe.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import capnp  # type: ignore[import-untyped]
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from quicnprotochat.common.capnp_bridge import attach_capnp_stream, reader_limit_words
from quicnprotochat.common.fingerprint import spki_fingerprint, spki_fingerprint_der
from quicnprotochat.common.quic_acks import BundledAcksProtocol
from quicnprotochat.common.quic_stream import QuicStreamTransport, StreamBufferOverflow
from quicnprotochat.common.schema import ALPN, node_schema
from quicnprotochat.common.stateless_reset import is_reset
from quicnprotochat.common.stream_bridge import TlsStreamProtocol

# The largest response the client reads: a full fetch can carry many payloads.
MAX_RESPONSE_BYTES = 256 * 1024 * 1024
# The client pings every third of the idle timeout, so a parked fetchWait never looks idle, while a node that
# vanished without closing (crash, network loss) is noticed within the idle timeout.
QUIC_IDLE_TIMEOUT_S = 30.0

Verifier = Callable[[str], None]


class _ClientQuicConnection(BundledAcksProtocol):
    def __init__(self, quic: QuicConnection, stream_handler: Any = None) -> None:
        super().__init__(quic, stream_handler)
        self.stream: QuicStreamTransport | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self.refused: asyncio.Future[None] = self._loop.create_future()
        # Our own handshake signal rather than aioquic's wait_connected(): that one misses a handshake completed
        # before its first step runs (it only notes completion while someone waits), and then waits forever. On
        # loopback under uvloop the node's whole answer can arrive before a freshly created task's first step.
        self.handshake: asyncio.Future[None] = self._loop.create_future()
        self.handshake.add_done_callback(lambda done: None if done.cancelled() else done.exception())

    def start_keepalive(self, interval: float) -> None:
        def ping() -> None:
            self._quic.send_ping(0)
            self.transmit()
            self._keepalive = self._loop.call_later(interval, ping)

        self._keepalive = self._loop.call_later(interval, ping)

    def stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if isinstance(data, bytes) and is_reset(data, self._reset_tokens()):
            # The node no longer knows this connection (its worker restarted, or our address changed and another
            # worker got the packet): it is over now, not after the idle timeout.
            self._lost("the node reset the connection (stateless reset)", ConnectionResetError)
            return
        super().datagram_received(data, addr)

    def _reset_tokens(self) -> list[bytes]:
        quic = self._quic
        return [cid.stateless_reset_token for cid in (quic._peer_cid, *quic._peer_cid_available)]

    def _lost(self, reason: str, error: type[ConnectionError]) -> None:
        if self.stream is not None:
            self.stop_keepalive()
            self.stream.connection_lost(error(reason))
            self._quic.close(reason_phrase=reason)

    def error_received(self, exc: Exception) -> None:
        # On our connected UDP socket, an ICMP "port unreachable" arrives as ConnectionRefusedError: nothing
        # listens there (any more). Fail the handshake or the pending calls now instead of waiting for a timeout.
        if not isinstance(exc, ConnectionRefusedError):
            return
        if not self.refused.done():
            self.refused.set_result(None)
        self._lost("the node is unreachable (port closed)", ConnectionError)

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if not self.handshake.done():
            if isinstance(event, events.HandshakeCompleted):
                self.handshake.set_result(None)
            elif isinstance(event, events.ConnectionTerminated):
                self.handshake.set_exception(ConnectionError(event.reason_phrase or "QUIC connection closed"))
        stream = self.stream
        if stream is None:
            return
        if isinstance(event, events.StreamDataReceived) and event.stream_id == stream.stream_id:
            try:
                stream.feed(event.data, event.end_stream)
            except StreamBufferOverflow as error:
                stream.connection_lost(error)
                self.close(reason_phrase="response buffer overflow")
        elif isinstance(event, events.StreamReset) and event.stream_id == stream.stream_id:
            stream.connection_lost(ConnectionResetError("the node reset the RPC stream"))
        elif isinstance(event, events.ConnectionTerminated):
            self.stop_keepalive()
            stream.connection_lost(ConnectionError(event.reason_phrase or "QUIC connection closed"))

    def peer_certificate_fingerprint(self) -> str:
        # aioquic keeps the verified peer certificate on its TLS context; with our own pinning we run it with
        # CERT_NONE (the handshake still proves possession of the certificate's key).
        certificate = self._quic.tls._peer_certificate
        if certificate is None:
            raise ConnectionError("the node presented no certificate")
        return spki_fingerprint(certificate)


@dataclass
class RpcConnection:
    """A live RPC connection: the NodeService capability and what ends the connection."""

    service: Any
    fingerprint: str
    transport_name: str
    _client: Any
    _close: Callable[[], Any]

    def disconnected(self) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.ensure_future(self._client.on_disconnect())
        return future

    async def close(self) -> None:
        await self._close()


def _client_rpc(stream: Any) -> tuple[Any, Any]:
    client = capnp.TwoPartyClient(stream, traversal_limit_in_words=reader_limit_words(MAX_RESPONSE_BYTES))
    return client, client.bootstrap().cast_as(node_schema().NodeService)


async def open_quic(host: str, port: int, verify: Verifier, *, connect_timeout: float = 10.0) -> RpcConnection:
    loop = asyncio.get_running_loop()
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN],
        verify_mode=ssl.CERT_NONE,
        server_name=host,
        idle_timeout=QUIC_IDLE_TIMEOUT_S,
    )
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    family, _, _, _, sockaddr = infos[0]
    address = (str(sockaddr[0]), int(sockaddr[1]))
    # A connected UDP socket: the kernel then reports ICMP errors for it (see error_received).
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _ClientQuicConnection(QuicConnection(configuration=configuration)),
        family=family,
        remote_addr=address,
    )
    assert isinstance(protocol, _ClientQuicConnection)
    client: Any = None

    async def close() -> None:
        protocol.stop_keepalive()
        if client is not None:
            client.close()
        # close() sends CONNECTION_CLOSE at once; waiting for the node to acknowledge it (about three probe
        # timeouts) would only slow the caller down.
        protocol.close()
        transport.close()

    try:
        protocol.connect(address)
        handshake = protocol.handshake
        done, _ = await asyncio.wait(
            {handshake, protocol.refused}, timeout=connect_timeout, return_when="FIRST_COMPLETED"
        )
        if handshake not in done:
            handshake.cancel()
            if protocol.refused in done:
                raise ConnectionRefusedError(f"nothing answers QUIC at {host}:{port} (port closed)")
            raise TimeoutError(f"no QUIC handshake with {host}:{port} within {connect_timeout:g} s")
        handshake.result()
        fingerprint = protocol.peer_certificate_fingerprint()
        verify(fingerprint)
        quic = protocol._quic
        stream_transport = QuicStreamTransport(
            quic,
            quic.get_next_available_stream_id(),
            protocol.answer_queued,
            max_buffered=MAX_RESPONSE_BYTES,
            extra={"peername": address},
        )
        protocol.stream = stream_transport
        stream, _ = attach_capnp_stream(stream_transport)
        client, service = _client_rpc(stream)
        protocol.start_keepalive(QUIC_IDLE_TIMEOUT_S / 3)
    except BaseException:
        await close()
        raise
    return RpcConnection(service, fingerprint, "quic", client, close)


async def open_tcp(host: str, port: int, verify: Verifier, *, connect_timeout: float = 10.0) -> RpcConnection:
    loop = asyncio.get_running_loop()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    # The node's certificate is self-signed: we pin its key fingerprint below instead of trusting a CA.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols([ALPN])
    transport, protocol = await asyncio.wait_for(
        loop.create_connection(
            lambda: TlsStreamProtocol(max_buffered=MAX_RESPONSE_BYTES),
            host,
            port,
            ssl=context,
            server_hostname=host,
        ),
        connect_timeout,
    )
    assert isinstance(protocol, TlsStreamProtocol) and protocol.bridge is not None
    bridge = protocol.bridge
    client: Any = None

    async def close() -> None:
        if client is not None:
            client.close()
        bridge.close()
        transport.close()

    try:
        certificate = transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        if not certificate:
            raise ConnectionError("the node presented no certificate")
        fingerprint = spki_fingerprint_der(certificate)
        verify(fingerprint)
        stream, _ = attach_capnp_stream(bridge)
        client, service = _client_rpc(stream)
    except BaseException:
        await close()
        raise
    return RpcConnection(service, fingerprint, "tcp", client, close)
