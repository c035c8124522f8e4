"""aioquic's server-side routing of datagrams by connection id, with each connection's own ids kept beside it.

aioquic's `QuicServer` routes every datagram through `_protocols`, one dict from each connection id the server
issued (and each client-chosen initial destination id) to its connection. When a connection ends, aioquic's
`_connection_terminated` walks that whole dict to find the ids of the one connection: every termination costs all
ids of all connections, so a mass disconnect of N connections is O(N²) on the event loop (1,000 connections
closing: 78% of the node's GIL-holding samples, docs/BENCHMARKS.md). Here the map also keeps the ids of each
connection, so a termination costs that connection's own ids (about nine: eight issued plus the initial one).

aioquic 1.7.2 writes the map only by item assignment (a new connection's two ids, each id issued later), `del`
(each id the peer retires) and `clear()` (server close); those keep the index. A termination drops only the ids
that still lead to the ending connection, as aioquic's own walk does.
"""

from __future__ import annotations

from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer


class ConnectionIdMap(dict[bytes, QuicConnectionProtocol]):
    """connection id -> connection, as aioquic reads it (lookups are plain dict lookups); plus each connection's
    ids, for `drop`."""

    def __init__(self) -> None:
        super().__init__()
        self._ids_of: dict[QuicConnectionProtocol, set[bytes]] = {}

    def __setitem__(self, cid: bytes, protocol: QuicConnectionProtocol) -> None:
        previous = self.get(cid)
        if previous is not None and previous is not protocol:
            self._unindex(previous, cid)
        super().__setitem__(cid, protocol)
        ids = self._ids_of.get(protocol)
        if ids is None:
            self._ids_of[protocol] = {cid}
        else:
            ids.add(cid)

    def __delitem__(self, cid: bytes) -> None:
        protocol = self[cid]
        super().__delitem__(cid)
        self._unindex(protocol, cid)

    def clear(self) -> None:
        super().clear()
        self._ids_of.clear()

    def drop(self, protocol: QuicConnectionProtocol) -> int:
        """Forgets every id leading to `protocol`; returns how many there were."""
        dropped = 0
        for cid in self._ids_of.pop(protocol, ()):
            if self.get(cid) is protocol:
                super().__delitem__(cid)
                dropped += 1
        return dropped

    @property
    def connections(self) -> int:
        """Connections with at least one id in the map."""
        return len(self._ids_of)

    def _unindex(self, protocol: QuicConnectionProtocol, cid: bytes) -> None:
        ids = self._ids_of.get(protocol)
        if ids is not None:
            ids.discard(cid)
            if not ids:
                del self._ids_of[protocol]


class IndexedQuicServer(QuicServer):
    """aioquic's server whose connection terminations cost the ending connection's own ids, not all of them."""

    _protocols: ConnectionIdMap

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._protocols = ConnectionIdMap()

    @property
    def connection_ids(self) -> int:
        """Connection ids the server routes datagrams by (every live connection's, and no others)."""
        return len(self._protocols)

    def _connection_terminated(self, protocol: QuicConnectionProtocol) -> None:
        self._protocols.drop(protocol)
