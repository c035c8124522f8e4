"""Direct delivery, the parts without I/O: the wire format on an iroh connection and the sender's view of each
peer (when to try a peer directly, when to go straight to the node).

One delivery is one bidirectional QUIC stream on a connection with ALPN `quicnprotochat/p2p/1`. The sender
writes the request and finishes its side; the receiver answers one byte after it has handled the envelope. A
sender may have several streams open at once (up to MAX_IN_FLIGHT); the receiver handles them in the order they
were opened and answers each in turn, and after one it did not take it takes nothing more on that connection:

    request: version u8 (1) | channel length u8 (0: the default inbox, or 16) | channel id | sealed envelope
    answer:  0 = stored (as an inbox message would be), 1 = not taken: send it through the node

The envelope is exactly the bytes the node would queue (sealed to the recipient for that channel), so the
receiver stores it under the same message id (SHA-256 of the envelope) whichever way it comes: a copy that
arrives both ways is stored once.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from quicnprotochat.common.endpoint_record import EndpointRecord

ALPN = b"quicnprotochat/p2p/1"
VERSION = 1
CHANNEL_BYTES = 16
STORED = b"\x00"
VIA_NODE = b"\x01"
REQUEST_OVERHEAD = 2 + CHANNEL_BYTES
MAX_IN_FLIGHT = 16
"""Requests a receiver holds per connection (being handled or waiting for their turn); a stream past that is
reset. A sender keeps at most this many unanswered (`ChatConfig.p2p_max_in_flight` is capped to it)."""


class WireError(ValueError):
    """A request that is not one (the stream is answered VIA_NODE or reset)."""


def encode_request(channel: bytes, envelope: bytes) -> bytes:
    if len(channel) not in (0, CHANNEL_BYTES):
        raise WireError(f"a channel id is empty or {CHANNEL_BYTES} bytes")
    return struct.pack(">BB", VERSION, len(channel)) + channel + envelope


def decode_request(data: bytes) -> tuple[bytes, bytes]:
    """(channel id, envelope); WireError if the request is malformed."""
    if len(data) < 2:
        raise WireError("the request is truncated")
    version, channel_len = data[0], data[1]
    if version != VERSION:
        raise WireError(f"unknown direct delivery version {version}")
    if channel_len not in (0, CHANNEL_BYTES):
        raise WireError(f"a channel id is empty or {CHANNEL_BYTES} bytes")
    channel = data[2 : 2 + channel_len]
    envelope = data[2 + channel_len :]
    if len(channel) != channel_len or not envelope:
        raise WireError("the request is truncated")
    return channel, envelope


@dataclass
class _Peer:
    record: EndpointRecord | None = None
    """The peer's last resolved endpoint record, already checked (signature, signer, expiry), or None: it
    publishes none."""
    resolved_at: float = float("-inf")
    failed_at: float = float("-inf")


@dataclass
class PeerPaths:
    """Per peer: the resolved and checked record (kept for `resolve_every_s`, never past its expiry; a record is
    decoded and its signature verified once, when it is resolved, not on every send) and the last failed
    direct attempt (after one, that peer's messages go to the node for `backoff_s`, so an offline peer with a
    stale record costs one timeout, not one per message)."""

    resolve_every_s: float = 60.0
    backoff_s: float = 30.0
    max_peers: int = 4096
    _peers: dict[bytes, _Peer] = field(default_factory=dict)

    def should_try(self, peer: bytes, now: float) -> bool:
        state = self._peers.get(peer)
        return state is None or now - state.failed_at >= self.backoff_s

    def cached_record(self, peer: bytes, now: float) -> tuple[bool, EndpointRecord | None]:
        """(fresh, record): fresh False means resolve again first."""
        state = self._peers.get(peer)
        if state is None or now - state.resolved_at >= self.resolve_every_s:
            return False, None
        if state.record is not None and now >= state.record.expires_at:
            return False, None
        return True, state.record

    def resolved(self, peer: bytes, record: EndpointRecord | None, now: float) -> None:
        """`record` is the peer's record once checked (None: it publishes none)."""
        state = self._state(peer)
        state.record, state.resolved_at = record, now

    def failed(self, peer: bytes, now: float) -> None:
        """A direct attempt failed: use the node for a while, and resolve again before the next attempt (the
        peer may have moved or published a new record)."""
        state = self._state(peer)
        state.failed_at = now
        state.resolved_at = float("-inf")

    def succeeded(self, peer: bytes) -> None:
        state = self._peers.get(peer)
        if state is not None:
            state.failed_at = float("-inf")

    def _state(self, peer: bytes) -> _Peer:
        state = self._peers.get(peer)
        if state is None:
            if len(self._peers) >= self.max_peers:
                self._peers.pop(next(iter(self._peers)))
            state = self._peers[peer] = _Peer()
        return state
