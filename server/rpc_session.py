"""Runs Cap'n Proto two-party RPC over one connected stream until it ends, whatever the transport."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import capnp  # type: ignore[import-untyped]

from quicnprotochat.common.capnp_bridge import reader_limit_words
from quicnprotochat.common.stream_bridge import StreamBridge
from quicnprotochat.server.connection_budget import ConnectionBudget, ConnectionLimits
from quicnprotochat.server.incoming_messages import IncomingMessages
from quicnprotochat.server.log_throttle import LogThrottle
from quicnprotochat.server.node_counters import NodeCounters, decrement
from quicnprotochat.server.peer import Peer
from quicnprotochat.server.unknown_methods import UnknownMethodAnswers

log = logging.getLogger("quicnprotochat.server.session")
# A flood of refused connections logs one line per limit and minute.
_refusals = LogThrottle(log)

Bootstrap = Callable[[Peer, ConnectionBudget], Any]


class RpcSessions:
    """The RPC sessions of a node: started per connection, all ended on shutdown."""

    def __init__(
        self,
        bootstrap_for: Bootstrap,
        max_message_bytes: int,
        limits: ConnectionLimits,
        counters: NodeCounters,
        served: Any = None,
    ) -> None:
        """`served`: the schema interface the bootstrap capability implements; calls to methods it lacks get the
        node's `unimplemented:` answer (server/unknown_methods.py)."""
        self._bootstrap_for = bootstrap_for
        self._served = served
        self._max_message_bytes = max_message_bytes
        self._reader_limit = reader_limit_words(max_message_bytes)
        self._limits = limits
        self.counters = counters
        self.incoming = IncomingMessages(limits.max_incoming_bytes_in_progress, counters)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> int:
        return len(self._tasks)

    def admit(self, peer: Peer) -> str | None:
        """None if a new connection from `peer` may start; else the setting that refuses it (counted)."""
        counters, limits = self.counters, self._limits
        refused = None
        if sum(counters.connections.values()) >= limits.max_connections:
            refused = "max_connections"
        elif counters.connections_by_address[peer.source] >= limits.max_connections_per_address:
            refused = "max_connections_per_address"
        elif counters.unauthenticated_connections >= limits.max_unauthenticated:
            refused = "max_unauthenticated_connections"
        if refused is not None:
            counters.refuse(refused)
            _refusals.info(refused, "refusing a connection from %s: %s reached", peer, refused)
        return refused

    def bind(self, bridge: StreamBridge, close: Callable[[str], None]) -> ConnectionBudget:
        """A new connection's budget, wired to its bridge: reading holds while the budget is spent; its incoming
        bytes count in the node's `incoming`, which ends the connection with `close(reason)` past a limit."""
        budget = ConnectionBudget(self._limits)
        budget.attach(bridge.unsent_bytes, bridge.release)
        bridge.set_budget(budget.hold_reading, budget.written)
        call_read = None
        if self._served is not None:
            schema = self._served.schema
            name = schema.node.displayName.rsplit(":", 1)[-1]
            answers = UnknownMethodAnswers(schema.node.id, name, len(schema.methods))
            bridge.set_outbound(answers.outgoing)
            call_read = answers.call_read
        bridge.set_inbound(
            self.incoming.connection(
                max_message_bytes=self._max_message_bytes,
                max_bootstraps=self._limits.max_bootstraps,
                close=close,
                call_read=call_read,
            )
        )
        return budget

    def start(self, stream: Any, peer: Peer, budget: ConnectionBudget, on_end: Callable[[], None]) -> None:
        counters = self.counters
        counters.connections[peer.transport] += 1
        counters.connections_by_address[peer.source] += 1
        counters.unauthenticated_connections += 1

        def authenticated() -> None:
            counters.unauthenticated_connections -= 1

        budget.on_authenticated = authenticated
        task = asyncio.get_running_loop().create_task(self._serve(stream, peer, budget, on_end))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, stream: Any, peer: Peer, budget: ConnectionBudget, on_end: Callable[[], None]) -> None:
        bootstrap = self._bootstrap_for(peer, budget)
        server = capnp.TwoPartyServer(stream, bootstrap=bootstrap, traversal_limit_in_words=self._reader_limit)
        log.debug("session started: %s", peer)
        try:
            await server.on_disconnect()
        except Exception as error:  # noqa: BLE001 -- whatever the peer did wrong ends its session only
            log.info("session with %s ended: %s", peer, error)
        finally:
            server.close()
            on_end()
            decrement(self.counters.connections, peer.transport)
            decrement(self.counters.connections_by_address, peer.source)
            if not budget.authenticated:
                self.counters.unauthenticated_connections -= 1
            log.debug("session ended: %s", peer)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
