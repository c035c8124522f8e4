"""One connection's share of the node: calls it has running, answer bytes not yet delivered, parked long-polls.

A client that sends calls without reading the answers must not grow the node. Every call runs between
`start_call()` and `end_call()`: it starts only while fewer than `max_calls` run on the connection and the
answer bytes the node holds for it (handed to the transport but unacknowledged, or produced and not yet handed
over) are under `max_unsent_bytes`. While either is reached the connection's bridge stops handing received bytes
to the RPC reader (`hold_reading`), so kj reads no further calls: backpressure. Calls whose answers can be large
(`fetch`, `peek`, the drain of a long-poll) also take `answer_slot()`: one at a time per connection, each
starting only when the held answer bytes are under the cap, so the node holds at most the cap plus one answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class ConnectionLimits:
    max_unsent_bytes: int
    max_calls: int
    max_parked: int
    max_connections: int = 10_000
    max_connections_per_address: int = 256
    max_unauthenticated: int = 512
    max_incoming_bytes_in_progress: int = 128 * 1024 * 1024
    max_bootstraps: int = 16


def _nothing_unsent() -> int:
    return 0


def _no_op() -> None:
    return None


class ConnectionBudget:
    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.parked = 0
        self._running = 0
        self._queued = 0
        self._produced = 0  # answer bytes counted by `reserve` and not yet seen by `written`
        self._unsent: Callable[[], int] = _nothing_unsent
        self._on_room: Callable[[], None] = _no_op
        self._changed = asyncio.Event()
        self._slot_taken = False  # the answer slot: one answer being made at a time
        self._poke_scheduled = False
        self.authenticated = False
        self.on_authenticated: Callable[[], None] = _no_op

    def mark_authenticated(self) -> None:
        """A call on this connection authenticated: it no longer counts as a connection not logged in."""
        if not self.authenticated:
            self.authenticated = True
            self.on_authenticated()

    def attach(self, unsent: Callable[[], int], on_room: Callable[[], None]) -> None:
        """`unsent()`: bytes the transport holds, not yet acknowledged; `on_room()`: reading may go on."""
        self._unsent = unsent
        self._on_room = on_room

    @property
    def running(self) -> int:
        return self._running

    def held_bytes(self) -> int:
        return self._produced + self._unsent()

    def hold_reading(self) -> bool:
        limits = self.limits
        return self._running + self._queued >= limits.max_calls or self.held_bytes() >= limits.max_unsent_bytes

    def written(self, count: int) -> None:
        """The bridge handed `count` answer bytes to the transport (called from inside pycapnp's write)."""
        if self._produced:
            self._produced = max(0, self._produced - count)
        self.poke()

    def poke(self) -> None:
        """Something may have drained: re-check waiting calls and reading, on the next loop turn (never from
        inside pycapnp's own read or write)."""
        if not self._poke_scheduled:
            self._poke_scheduled = True
            asyncio.get_running_loop().call_soon(self._re_check)

    def _re_check(self) -> None:
        self._poke_scheduled = False
        self._changed.set()
        if not self.hold_reading():
            self._on_room()

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self._changed.clear()
            await self._changed.wait()

    def _may_start(self) -> bool:
        return self._running < self.limits.max_calls and self.held_bytes() < self.limits.max_unsent_bytes

    def _answers_drained(self) -> bool:
        return self.held_bytes() < self.limits.max_unsent_bytes

    # A call runs between `start_call` (or `wait_to_start_call`, when it returned False) and `end_call`. Not a
    # context manager: every call of the connection passes here, and an async one cost 3 us a call against 0.3.
    def start_call(self) -> bool:
        """True when the call may run now (it then counts as running); False: await `wait_to_start_call`."""
        if self._may_start():
            self._running += 1
            return True
        return False

    async def wait_to_start_call(self) -> None:
        self._queued += 1
        try:
            await self._wait_until(self._may_start)
        finally:
            self._queued -= 1
        self._running += 1

    def end_call(self) -> None:
        self._running -= 1
        self.poke()

    @asynccontextmanager
    async def answer_slot(self) -> AsyncIterator[Callable[[int], None]]:
        """Yields `reserve(n)`: count an answer of about `n` bytes until the transport has taken it."""
        await self._wait_until(self._slot_free)
        self._slot_taken = True
        try:
            yield self._reserve
        finally:
            self.release_answer_slot()

    def try_answer_slot(self) -> Callable[[int], None] | None:
        """The answer slot taken now, without waiting (`reserve`), or None if it is not free at once; whoever
        takes it calls `release_answer_slot` once the answer is counted. For an answer made elsewhere: a parked
        long-poll answered by the store's writer."""
        if not self._slot_free():
            return None
        self._slot_taken = True
        return self._reserve

    def release_answer_slot(self) -> None:
        self._slot_taken = False
        self.poke()

    def _slot_free(self) -> bool:
        return not self._slot_taken and self._answers_drained()

    def _reserve(self, count: int) -> None:
        self._produced += count
