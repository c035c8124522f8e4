"""QUIC stateless resets (RFC 9000 section 10.3): how a node tells a client "I no longer know this connection".

A node that lost a connection's state (a worker restarted, or a client whose address changed now reaches another
worker of the port) cannot decrypt that connection's packets and would drop them; the client would wait out its
idle timeout. Instead the node answers such a packet with a stateless reset: a packet that looks like any short
header packet and ends with a 16-byte token the node gave the client for that connection id during the
handshake. The tokens are an HMAC of the connection id under a key every worker of the node derives from the
node's identity, so any worker, and the node after a restart, makes the same token for the same connection id.

aioquic neither sends nor recognizes stateless resets: the node side is server/quic_listener.py, the client side
common/connect.py; both use what is here.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

TOKEN_BYTES = 16
# The smallest packet worth answering (RFC 9000: a reset is at least 21 bytes and smaller than what triggered it,
# so two endpoints can never answer each other's resets forever).
MIN_TRIGGER_BYTES = 22
# Longer resets say nothing more; 43 bytes is what RFC 9000 suggests to look like a short header packet.
RESET_BYTES = 43


def reset_key(identity_secret: bytes) -> bytes:
    """The key of a node's reset tokens, from a secret all of its workers share (its identity's private key)."""
    return hmac.digest(identity_secret, b"quicnprotochat stateless reset key", hashlib.sha256)


def reset_token(key: bytes, connection_id: bytes) -> bytes:
    return hmac.digest(key, connection_id, hashlib.sha256)[:TOKEN_BYTES]


def is_short_header(data: bytes) -> bool:
    """A 1-RTT packet (header form 0, fixed bit 1): the only kind a stateless reset answers or looks like."""
    return len(data) > 0 and data[0] & 0xC0 == 0x40


def reset_packet(trigger_bytes: int, token: bytes, unpredictable: bytes) -> bytes | None:
    """The reset answering a packet of `trigger_bytes`, or None when that packet is too small to answer.
    `unpredictable`: at least RESET_BYTES random bytes."""
    if trigger_bytes < MIN_TRIGGER_BYTES:
        return None
    size = min(trigger_bytes - 1, RESET_BYTES)
    return bytes([0x40 | (unpredictable[0] & 0x3F)]) + unpredictable[1 : size - TOKEN_BYTES] + token


def is_reset(data: bytes, tokens: Iterable[bytes]) -> bool:
    """Whether `data` is a stateless reset carrying one of the tokens the node gave us."""
    if len(data) < MIN_TRIGGER_BYTES - 1 or not is_short_header(data):
        return False
    tail = data[-TOKEN_BYTES:]
    return any(hmac.compare_digest(tail, token) for token in tokens if token)
