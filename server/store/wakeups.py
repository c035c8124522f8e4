"""Inbox wake-ups: let `fetchWait` sleep until something is committed to an inbox, without polling.

The protocol is what the node uses; `InProcessWakeups` serves a single node, and `PostgresWakeups`
(postgres_wakeups.py) feeds it from other nodes' notifications as well.

Usage, registering before looking at the inbox so that a commit landing between the check and the wait is not
missed:

    async with wakeups.waiter(recipient, channel) as w:
        while not (messages := await store.fetch(recipient, channel)):
            if not await w.wait(remaining):
                break

In a store whose enqueues answer parked fetches (`answers_parked_fetches`: SQLite), a parked `fetchWait` registers a
`ClaimableWaiter` instead: an enqueue to its inbox claims it when submitted, the writer fetches its messages in the
enqueue's own transaction, and it is answered with the commit, so the wake-up needs no second transaction. A waiter
nobody claims is woken as above.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .base import DiskFull, StoreUnavailable

if TYPE_CHECKING:
    from .inboxes import InboxMessage


class InboxWaiter(Protocol):
    async def wait(self, timeout: float | None) -> bool:
        """True once something was committed to the inbox since registration or the last wake-up; False on
        timeout."""
        ...


W_co = TypeVar("W_co", covariant=True)


class Registration(Protocol[W_co]):
    """Registers the waiter on entry, removes it on exit."""

    async def __aenter__(self) -> W_co: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class AnswerSlotTaker(Protocol):
    """What a claim takes: the connection's answer slot (see fetch_wait.AnswerSlots)."""

    def try_answer_slot(self) -> Callable[[int], None] | None:
        """The slot taken at once (its `reserve`: count the answer's bytes), or None if it is not free."""
        ...

    def release_answer_slot(self) -> None: ...


class InboxWakeups(Protocol):
    def waiter(self, recipient: bytes, channel: bytes) -> Registration[InboxWaiter]: ...

    def notify(self, inboxes: Iterable[tuple[bytes, bytes]]) -> None:
        """Wake every waiter of these inboxes. Called on the event loop that owns the waiters."""
        ...

    def waiter_count(self) -> int: ...


class _Waiter:
    # Thousands of these can be parked at once: keep them to two slots and create a future only while waiting.
    __slots__ = ("_fired", "_future")
    claimed = False  # a plain waiter is never claimed; ClaimableWaiter keeps its own in a slot

    def __init__(self) -> None:
        self._fired = False
        self._future: asyncio.Future[Any] | None = None

    def fire(self) -> None:
        # Remembered even when nobody is waiting yet: that is what makes register-then-check race-free.
        self._fired = True
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    def claim(self) -> asyncio.Future[Any] | None:
        """See `ClaimableWaiter`; a plain waiter is only ever woken."""
        return None

    async def wait(self, timeout: float | None) -> bool:
        if not self._fired and (timeout is None or timeout > 0):
            future, timer = self._arm(timeout)
            try:
                await future
            finally:
                self._disarm(timer)
        return self._take_fired()

    def _take_fired(self) -> bool:
        """Whether a wake-up came since the last look; forgotten once looked at."""
        fired = self._fired
        self._fired = False
        return fired

    # Arming and disarming are plain calls around the await, not a coroutine of their own: one frame fewer per
    # parked call for the collector to walk.
    def _arm(self, timeout: float | None) -> tuple[asyncio.Future[Any], asyncio.TimerHandle | None]:
        # A timer that resolves the future, rather than asyncio.timeout's cancellation: a parked waiter holds
        # fewer objects, and a timeout raises no exception.
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._future = future
        return future, None if timeout is None else loop.call_later(timeout, _time_up, self, future)

    def _disarm(self, timer: asyncio.TimerHandle | None) -> None:
        self._future = None
        if timer is not None:
            timer.cancel()


class ClaimableWaiter(_Waiter):
    """A parked fetchWait that the store may answer itself. `claim()` (on the loop, by whoever submits a write to
    the inbox) hands out the parked future: the claimant sets it to the messages it removed for this waiter, or to
    its failure. Once claimed, the waiter waits for that answer, past its timeout if need be (the messages may
    already be removed); a wake-up is only remembered.

    A claim takes the connection's answer slot, as a fetch does, and is made only when it is free at once; the
    slot is then held until the answer is counted. `wanted` turns False when the waiter gives up (cancelled): a claimant
    that has not removed anything yet then removes nothing.
    """

    __slots__ = ("_reserve", "_slots", "claimed", "limit", "wanted")

    def __init__(self, limit: int, slots: AnswerSlotTaker) -> None:
        super().__init__()
        self.limit = limit
        self._slots = slots
        self.claimed = False
        self.wanted = True
        self._reserve: Callable[[int], None] | None = None

    def claim(self) -> asyncio.Future[Any] | None:
        future = self._future
        if future is None or future.done() or self.claimed:
            return None
        reserve = self._slots.try_answer_slot()
        if reserve is None:
            return None
        self.claimed, self._reserve = True, reserve
        return future

    def fire(self) -> None:
        if self.claimed:
            self._fired = True
        else:
            super().fire()

    async def wait_or_answer(self, timeout: float) -> bool | list[InboxMessage]:
        """False on timeout, True when woken (go and look), or the messages a claimant removed for this waiter,
        counted against the answer budget; [] when a claim brought nothing (wait on). Whatever way it ends, the
        answer slot a claim took is given back."""
        if self._fired or timeout <= 0:
            return self._take_fired()
        future, timer = self._arm(timeout)
        answer: list[InboxMessage] = []
        claimed = False
        try:
            outcome = await future
        except (StoreUnavailable, DiskFull):
            # Only a claim answers with an exception: the transaction that claimed us was not stored, so nothing
            # was removed for us (nor enqueued).
            pass
        except BaseException:
            self.wanted = False
            raise
        else:
            if self.claimed:
                answer = outcome
        finally:
            self._disarm(timer)
            claimed = self.claimed
            if claimed:
                reserve, self.claimed, self._reserve = self._reserve, False, None
                assert reserve is not None
                reserve(sum(len(message.payload) for message in answer))
                self._slots.release_answer_slot()
        if claimed:
            return answer
        return self._take_fired()


def _time_up(waiter: _Waiter, future: asyncio.Future[Any]) -> None:
    # A claimed waiter waits for its answer.
    if not future.done() and not waiter.claimed:
        future.set_result(None)


class _Registration:
    __slots__ = ("_key", "_owner", "_waiter")

    def __init__(self, owner: InProcessWakeups, key: tuple[bytes, bytes], waiter: _Waiter) -> None:
        self._owner = owner
        self._key = key
        self._waiter = waiter

    async def __aenter__(self) -> Any:
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

    def waiter(self, recipient: bytes, channel: bytes) -> Registration[InboxWaiter]:
        return _Registration(self, (bytes(recipient), bytes(channel)), _Waiter())

    def claimable_waiter(
        self, recipient: bytes, channel: bytes, limit: int, slots: AnswerSlotTaker
    ) -> Registration[ClaimableWaiter]:
        """A waiter for a fetchWait that removes up to `limit` messages (see `ClaimableWaiter`)."""
        return _Registration(self, (bytes(recipient), bytes(channel)), ClaimableWaiter(limit, slots))

    def claim(self, key: tuple[bytes, bytes]) -> tuple[ClaimableWaiter, asyncio.Future[Any]] | None:
        """One parked waiter of the inbox that may be answered now, claimed (see `ClaimableWaiter`); None if none."""
        waiters = self._waiters.get(key)
        if waiters:
            for waiter in waiters:
                future = waiter.claim()
                if future is not None:
                    assert isinstance(waiter, ClaimableWaiter)
                    return waiter, future
        return None

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
