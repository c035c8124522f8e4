"""`fetchWait` on top of any `InboxStore`: drain now, or sleep on the inbox's wake-up until something arrives."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from .inboxes import InboxMessage, InboxStore

AnswerSlot = Callable[[], AbstractAsyncContextManager[Callable[[int], None]]]
"""Taken around the read that makes the answer; yields `reserve(n)` to count the answer's payload bytes."""


@asynccontextmanager
async def _any_time() -> AsyncIterator[Callable[[int], None]]:
    yield lambda _count: None


async def fetch_wait(
    store: InboxStore,
    recipient: bytes,
    channel: bytes,
    limit: int,
    timeout: float,
    *,
    remove: bool = True,
    answer_slot: AnswerSlot | None = None,
) -> list[InboxMessage]:
    """Return up to `limit` messages, waiting up to `timeout` seconds for the first one; they are removed
    unless `remove` is False (peekWait: the client acks once it has stored them).

    Returns [] on timeout. The caller caps `timeout`; cancelling the call leaves nothing registered.
    """
    slot = answer_slot or _any_time
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(timeout, 0.0)
    # Registered before the first look at the inbox: a commit between that look and the wait still wakes us.
    async with store.wakeups.waiter(recipient, channel) as waiter:
        woken = False
        while True:
            # A fetch is a write transaction: on arrival, a read of the inbox's depth first spares thousands of idle
            # clients' polls a commit each. After a wake-up the commit has just told us the inbox holds something,
            # and a peek is a read anyway: neither needs that extra read.
            if woken or not remove or (await store.inbox_stats(recipient, channel)).depth > 0:
                read = store.fetch if remove else store.peek
                async with slot() as reserve:
                    messages = await read(recipient, channel, limit)
                    reserve(sum(len(message.payload) for message in messages))
                if messages:
                    return messages
            remaining = deadline - loop.time()
            if remaining <= 0 or not await waiter.wait(remaining):
                return []
            woken = True
