"""New connections per source address, over TLS and QUIC: a token bucket per address, taken before the handshake.

The per-address cap on open connections does not stop a client that closes and reconnects (a Bootstrap flood
closed at its 16th message, a handshake flood): each reconnection costs the node a handshake, its key exchange
and signature. This bucket is taken where a connection would start, before any of that: for TLS when the TCP
connection is accepted (a refused one is reset at once), for QUIC at the Initial packet that would create the
connection (answered with a CONNECTION_CLOSE of CONNECTION_REFUSED, or dropped past a node-wide budget for
those answers). With QUIC retry on, only an Initial whose token proves its source address is counted, so that
nobody can spend another address's bucket by spoofing it.

An IPv6 client is counted by its /64 (`Peer.source`, as for every per-address limit), an IPv4 client by its
address. The addresses tracked are bounded (`max_addresses`): idle ones are forgotten first (a forgotten full
bucket is the same as a new one), then the least recently seen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from quicnprotochat.server.log_throttle import LogThrottle
from quicnprotochat.server.node_counters import NodeCounters
from quicnprotochat.server.peer import Peer
from quicnprotochat.server.services.rate_limits import RateLimit, TokenBuckets

SETTING = "connection_rate_per_address"

log = logging.getLogger("quicnprotochat.server.connections")
_refusals = LogThrottle(log)


class ConnectionRate:
    """`refusal(peer)` for every connection about to start its handshake; the same buckets for both transports."""

    def __init__(
        self,
        limit: RateLimit,
        counters: NodeCounters,
        max_addresses: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._buckets = TokenBuckets(limit, clock, max_keys=max_addresses, name=SETTING)
        self._counters = counters

    @property
    def addresses(self) -> int:
        """Addresses (IPv6: /64 networks) with a bucket held now."""
        return len(self._buckets)

    def refusal(self, peer: Peer) -> float | None:
        """None when a connection from `peer` may start (a token taken); else the seconds until one may."""
        retry_after = self._buckets.take(peer.source)
        if retry_after is not None:
            self._counters.refuse(SETTING)
            _refusals.info(SETTING, "refusing new connections from %s (and others): %s reached", peer, SETTING)
        return retry_after
