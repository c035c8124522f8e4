"""Inbox wake-ups: let `fetchWait` sleep until something is committed to an inbox, without polling.

The protocol is what the node uses; `InProcessWakeups` serves a single node. A PostgreSQL LISTEN/NOTIFY
implementation (later issue) will feed the same interface from notifications of other nodes.

Usage, registering before looking at the inbox so that a commit landing between the check and the wait is not
missed:

    async with wakeups.waiter(recipient, channel) as w:
        while not (messages := await store.fetch(recipient, channel)):
            if not await w.wait(remaining):
                break
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import Protocol


class InboxWaiter(Protocol):
    async def wait(self, timeout: float | None) -> bool:
        """True once something was committed to the inbox since registration or the last wake-up; False on
        timeout."""
        ...


class WaiterRegistration(Protocol):
    async def __aenter__(self) -> InboxWaiter: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class InboxWakeups(Protocol):
    def waiter(self, recipient: bytes, channel: bytes) -> WaiterRegistration: ...

    def notify(self, inboxes: Iterable[tuple[bytes, bytes]]) -> None:
        """Wake every waiter of these inboxes. Called on the event loop that owns the waiters."""
        ...

    def waiter_count(self) -> int: ...


class _Waiter:
    # Thousands of these can be parked at once: keep them to two slots and create a future only while waiting.
    __slots__ = ("_fired", "_future")

    def __init__(self) -> None:
        self._fired = False
        self._future: asyncio.Future[None] | None = None

    def fire(self) -> None:
        # Remembered even when nobody is waiting yet: that is what makes register-then-check race-free.
        self._fired = True
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    async def wait(self, timeout: float | None) -> bool:
        if not self._fired and (timeout is None or timeout > 0):
            # A timer that resolves the future, rather than asyncio.timeout's cancellation: a parked waiter holds
            # fewer objects for the collector to walk, and a timeout raises no exception.
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            self._future = future
            timer = None if timeout is None else loop.call_later(timeout, _time_up, future)
            try:
                await future
            finally:
                self._future = None
                if timer is not None:
                    timer.cancel()
        fired = self._fired
        self._fired = False
        return fired


def _time_up(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Registration:
    __slots__ = ("_key", "_owner", "_waiter")

    def __init__(self, owner: InProcessWakeups, key: tuple[bytes, bytes]) -> None:
        self._owner = owner
        self._key = key
        self._waiter = _Waiter()

    async def __aenter__(self) -> InboxWaiter:
        self._owner._add(self._key, self._waiter)
        return self._waiter

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._owner._remove(self._key, self._waiter)


class InProcessWakeups:
    """Waiters of one event loop, keyed by inbox. Not thread-safe: other threads hand `notify` to the loop."""

    def __init__(self) -> None:
        self._waiters: dict[tuple[bytes, bytes], set[_Waiter]] = {}

    def waiter(self, recipient: bytes, channel: bytes) -> WaiterRegistration:
        return _Registration(self, (bytes(recipient), bytes(channel)))

    def notify(self, inboxes: Iterable[tuple[bytes, bytes]]) -> None:
        for key in inboxes:
            waiters = self._waiters.get(key)
            if waiters:
                for waiter in waiters:
                    waiter.fire()

    def waiter_count(self) -> int:
        return sum(len(waiters) for waiters in self._waiters.values())

    def inbox_count(self) -> int:
        """Inboxes with at least one waiter (tests use it to check that nothing leaks)."""
        return len(self._waiters)

    def _add(self, key: tuple[bytes, bytes], waiter: _Waiter) -> None:
        self._waiters.setdefault(key, set()).add(waiter)

    def _remove(self, key: tuple[bytes, bytes], waiter: _Waiter) -> None:
        waiters = self._waiters.get(key)
        if waiters is None:
            return
        waiters.discard(waiter)
        if not waiters:
            del self._waiters[key]
