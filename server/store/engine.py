"""The part of a backend that every concern's code stands on: limits, clock, wake-ups, the loop check, close.

Each backend has one engine class (`sqlite.engine.SqliteEngine`, `postgres.engine.PostgresEngine`) deriving from
`StoreEngine`; its per-concern classes derive from that engine and from the concern's shared base, and the
backend's store class is all of them together.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod

from .base import Clock, StoreClosed, StoreLimits, StoreMetrics
from .wakeups import InboxWakeups


class StoreEngine(ABC):
    def __init__(self, limits: StoreLimits, clock: Clock, wakeups: InboxWakeups) -> None:
        self._limits = limits
        self._clock = clock
        self._wakeups = wakeups
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._shutdown: asyncio.Future[None] | None = None

    @property
    def limits(self) -> StoreLimits:
        return self._limits

    @property
    def wakeups(self) -> InboxWakeups:
        """Signalled after every commit that added messages to an inbox."""
        return self._wakeups

    @property
    def closed(self) -> bool:
        return self._closed

    @abstractmethod
    def metrics(self) -> StoreMetrics: ...

    async def close(self) -> None:
        """Finish every operation already submitted, then release the database. Idempotent."""
        if self._shutdown is None:
            self._closed = True
            self._shutdown = asyncio.ensure_future(self._shut_down())
        # Every caller, the first included, returns only once everything is released; shielded so that a
        # cancelled caller cannot leave the database half closed.
        await asyncio.shield(self._shutdown)

    @abstractmethod
    async def _shut_down(self) -> None: ...

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed()
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError("the store is used from an event loop other than the one that opened it")
