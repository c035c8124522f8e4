"""`fetchWait` on top of any `InboxStore`: drain now, or sleep on the inbox's wake-up until something arrives.

A parked fetch (not a peek) may be answered by the store itself: a store that claims waiters (SQLite) removes the
messages for it in the transaction of the enqueue that brought them, and hands them over with the commit. The
claim takes the connection's answer slot as a fetch would, so the answer budget is the same.

What a waiter that gives up can lose: a fetchWait cancelled (its connection gone, or the call cancelled) after an
enqueue claimed it but before the writer ran its part removes nothing. Cancelled after that, the messages the
writer removed for it are gone with the lost answer, exactly like a plain fetch whose answer is lost in flight
(fetchWait removes at most once; peekWait and ack are the way to receive at least once).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

from .inboxes import InboxMessage, InboxStore
from .wakeups import AnswerSlotTaker, ClaimableWaiter, InboxWaiter, InProcessWakeups

Reserve = Callable[[int], None]
"""Counts an answer's payload bytes against the connection's budget until the transport has taken them."""


class AnswerSlots(AnswerSlotTaker, Protocol):
    """One connection's answer slot (see server/connection_budget.py): taken around the read that makes an
    answer. `try_answer_slot` takes it at once or not at all; `release_answer_slot` gives back a slot taken so."""

    def answer_slot(self) -> AbstractAsyncContextManager[Reserve]:
        """Waits for the slot; yields `reserve`."""
        ...


def _no_count(_count: int) -> None:
    return None


class _Unbounded:
    """No budget: for callers without a connection (tests, tools)."""

    @asynccontextmanager
    async def answer_slot(self) -> AsyncIterator[Reserve]:
        yield _no_count

    def try_answer_slot(self) -> Reserve | None:
        return _no_count

    def release_answer_slot(self) -> None:
        return None


_UNBOUNDED = _Unbounded()


async def fetch_wait(
    store: InboxStore,
    recipient: bytes,
    channel: bytes,
    limit: int,
    timeout: float,
    *,
    remove: bool = True,
    answer_slots: AnswerSlots | None = None,
) -> list[InboxMessage]:
    """Return up to `limit` messages, waiting up to `timeout` seconds for the first one; they are removed
    unless `remove` is False (peekWait: the client acks once it has stored them).

    Returns [] on timeout. The caller caps `timeout`; cancelling the call leaves nothing registered.
    """
    slots = answer_slots or _UNBOUNDED
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(timeout, 0.0)
    wakeups = store.wakeups
    registration: AbstractAsyncContextManager[InboxWaiter]
    if remove and limit >= 0 and store.answers_parked_fetches and isinstance(wakeups, InProcessWakeups):
        registration = wakeups.claimable_waiter(recipient, channel, limit, slots)
    else:
        registration = wakeups.waiter(recipient, channel)
    # Registered before the first look at the inbox: a commit between that look and the wait still wakes us.
    async with registration as waiter:
        look, woken = True, False
        while True:
            # A fetch is a write transaction: on arrival, a read of the inbox's depth first spares thousands of idle
            # clients' polls a commit each. After a wake-up the commit has just told us the inbox holds something,
            # and a peek is a read anyway, as is a fetch of an empty inbox in some stores: none needs that read.
            if look and (
                woken
                or not remove
                or not store.fetch_commits_when_empty
                or (await store.inbox_stats(recipient, channel)).depth > 0
            ):
                read = store.fetch if remove else store.peek
                async with slots.answer_slot() as reserve:
                    messages = await read(recipient, channel, limit)
                    reserve(sum(len(message.payload) for message in messages))
                if messages:
                    return messages
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            if isinstance(waiter, ClaimableWaiter):
                outcome = await waiter.wait_or_answer(remaining)
                if isinstance(outcome, list):
                    if outcome:
                        return outcome
                    look = False  # claimed, but the enqueue brought nothing for us: wait on
                    continue
                if not outcome:
                    return []
            elif not await waiter.wait(remaining):
                return []
            look = woken = True
