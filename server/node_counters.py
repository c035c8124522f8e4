"""What hostile-client defences count, in one object the node holds (`Node.counters`), for status and metrics.

Connections open (by transport and by source address), connections not logged in yet, parked long-polls (in all
and by identity), and calls refused or connections closed by each limit, under the limit's setting name.
Everything here is a plain number or a bounded map: keys are removed when their count drops to zero.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class NodeCounters:
    connections: Counter[str] = field(default_factory=Counter)
    """Open connections by transport ("quic", "tcp")."""
    connections_by_address: Counter[str] = field(default_factory=Counter)
    unauthenticated_connections: int = 0
    """Open connections on which no call has authenticated yet."""
    incoming_bytes_in_progress: int = 0
    """Bytes of incoming messages not yet complete (and received bytes not yet read), over all connections."""
    parked_waits: int = 0
    parked_by_identity: Counter[bytes] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    """Calls refused and connections refused or closed, by the setting that refused them."""

    def refuse(self, limit: str) -> None:
        self.refused[limit] += 1

    def snapshot(self) -> dict[str, Any]:
        """A copy for reports: plain ints and dicts of ints (identities and addresses are not included)."""
        return {
            "connections": dict(self.connections),
            "connection_addresses": len(self.connections_by_address),
            "unauthenticated_connections": self.unauthenticated_connections,
            "incoming_bytes_in_progress": self.incoming_bytes_in_progress,
            "parked_waits": self.parked_waits,
            "parked_identities": len(self.parked_by_identity),
            "refused": dict(self.refused),
        }


def decrement(counter: Counter[Any], key: Any) -> None:
    """Count one less of `key`, forgetting it at zero so that the map holds only live keys."""
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]
