from __future__ import annotations

import asyncio
import time

import pytest

from quicnprotochat.server.store import InProcessWakeups, LimitExceeded, Store, StoreLimits, fetch_wait
from quicnprotochat.server.store.wakeups import ClaimableWaiter

from .store_testlib import Backend, key, parked, registered_waiters

pytestmark = pytest.mark.asyncio

R1, R2 = key(1), key(2)


async def test_notify_before_wait_is_not_lost() -> None:
    wakeups = InProcessWakeups()
    async with wakeups.waiter(R1, b"") as waiter:
        wakeups.notify([(R1, b"")])
        assert await waiter.wait(0)
        # The wake-up is consumed: the next wait sleeps again.
        assert not await waiter.wait(0)
    assert wakeups.waiter_count() == 0


async def test_wait_times_out_and_ignores_other_inboxes() -> None:
    wakeups = InProcessWakeups()
    async with wakeups.waiter(R1, b"") as waiter:
        wakeups.notify([(R2, b""), (R1, b"other channel")])
        started = time.monotonic()
        assert not await waiter.wait(0.05)
        assert 0.04 <= time.monotonic() - started < 1


async def test_wait_is_woken_by_notify_from_another_task() -> None:
    wakeups = InProcessWakeups()
    async with wakeups.waiter(R1, b"") as waiter:
        asyncio.get_running_loop().call_later(0.01, wakeups.notify, [(R1, b"")])
        assert await waiter.wait(5)


async def test_thousands_of_parked_waiters_are_woken_and_released() -> None:
    wakeups = InProcessWakeups()
    parked = 5000
    ready = asyncio.Event()
    registered = 0

    async def park(recipient: bytes) -> bool:
        nonlocal registered
        async with wakeups.waiter(recipient, b"") as waiter:
            registered += 1
            if registered == parked:
                ready.set()
            return await waiter.wait(30)

    tasks = [asyncio.create_task(park(key(i % 100))) for i in range(parked)]
    await ready.wait()
    assert wakeups.waiter_count() == parked
    assert wakeups.inbox_count() == 100
    wakeups.notify([(key(i), b"") for i in range(100)])
    assert all(await asyncio.gather(*tasks))
    assert wakeups.waiter_count() == 0 and wakeups.inbox_count() == 0


async def test_cancelled_waiters_leave_nothing_behind() -> None:
    wakeups = InProcessWakeups()
    ready = asyncio.Event()
    parked = 2000

    async def park(i: int) -> None:
        async with wakeups.waiter(key(i), b"") as waiter:
            if i == parked - 1:
                ready.set()
            await waiter.wait(None)

    tasks = [asyncio.create_task(park(i)) for i in range(parked)]
    await ready.wait()
    assert wakeups.waiter_count() == parked
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert wakeups.waiter_count() == 0 and wakeups.inbox_count() == 0
    # A later notify on those inboxes finds nobody and costs nothing.
    wakeups.notify([(key(i), b"") for i in range(parked)])


async def test_commit_wakes_the_inbox_waiter(store: Store) -> None:
    async with store.wakeups.waiter(R1, b"") as waiter:
        assert await store.fetch(R1, b"") == []  # the check made after registering

        async def send_later() -> int:
            await asyncio.sleep(0.01)
            return await store.enqueue(R1, b"", b"hi", None)

        sender = asyncio.create_task(send_later())
        assert await waiter.wait(5)
        assert [m.payload for m in await store.fetch(R1, b"")] == [b"hi"]
        await sender
    assert store.wakeups.waiter_count() == 0


async def test_enqueue_to_another_inbox_does_not_wake(store: Store) -> None:
    async with store.wakeups.waiter(R1, b"") as waiter:
        await store.enqueue(R2, b"", b"x", None)
        await store.enqueue(R1, b"chan", b"x", None)
        assert not await waiter.wait(0.02)


async def test_batch_enqueue_wakes_every_recipient(store: Store) -> None:
    async with store.wakeups.waiter(R1, b"c") as w1, store.wakeups.waiter(R2, b"c") as w2:
        await store.batch_enqueue([R1, R2], b"c", b"x", None)
        assert await w1.wait(1) and await w2.wait(1)


async def test_refused_enqueue_does_not_wake(backend: Backend) -> None:
    store = await backend.open(StoreLimits(max_inbox_depth=1))
    await store.enqueue(R1, b"", b"x", None)
    async with store.wakeups.waiter(R1, b"") as waiter:
        with pytest.raises(LimitExceeded):
            await store.enqueue(R1, b"", b"y", None)
        assert not await waiter.wait(0.02)


async def test_cancelled_fetch_wait_style_loop_leaks_nothing(store: Store) -> None:
    parked = 0
    all_parked = asyncio.Event()

    async def fetch_wait() -> None:
        nonlocal parked
        async with store.wakeups.waiter(R1, b"") as waiter:
            while not await store.fetch(R1, b""):
                parked += 1
                if parked == 100:
                    all_parked.set()
                await waiter.wait(None)

    waiters = [asyncio.create_task(fetch_wait()) for _ in range(100)]
    await all_parked.wait()
    assert store.wakeups.waiter_count() == 100
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert store.wakeups.waiter_count() == 0


async def test_fetch_wait_returns_queued_messages_at_once(store: Store) -> None:
    await store.enqueue(R1, b"", b"ready", None)
    messages = await fetch_wait(store, R1, b"", 0, 5)
    assert [m.payload for m in messages] == [b"ready"]


async def test_fetch_wait_is_woken_by_an_enqueue(store: Store) -> None:
    waiting = asyncio.create_task(fetch_wait(store, R1, b"", 0, 5))
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await store.enqueue(R1, b"", b"late", None)
    assert [m.payload for m in await waiting] == [b"late"]
    assert time.monotonic() - started < 1
    assert store.wakeups.waiter_count() == 0


async def test_fetch_wait_times_out_empty(store: Store) -> None:
    before = store.metrics()
    assert await fetch_wait(store, R1, b"", 0, 0.03) == []
    assert store.metrics().write_ops == before.write_ops, "an empty inbox should cost no write"
    assert store.wakeups.waiter_count() == 0


async def test_two_fetch_waiters_share_nothing(store: Store) -> None:
    first = asyncio.create_task(fetch_wait(store, R1, b"", 0, 0.3))
    second = asyncio.create_task(fetch_wait(store, R1, b"", 0, 0.3))
    await asyncio.sleep(0.01)
    await store.enqueue(R1, b"", b"only one", None)
    results = await asyncio.gather(first, second)
    assert sorted(len(r) for r in results) == [0, 1]


async def test_a_parked_fetch_wait_is_claimable_only_in_a_store_whose_enqueues_answer_it(
    backend: Backend, store: Store
) -> None:
    """SQLite's enqueues answer a parked fetchWait from their own commit, so it parks as a claimable waiter; on
    PostgreSQL nothing claims one (its wake-ups derive from the in-process ones), so it parks as a plain waiter,
    without the claim's state or a hold on its connection's answer slot."""
    answered_by_enqueues = backend.name == "sqlite"
    assert store.answers_parked_fetches is answered_by_enqueues
    waiting = asyncio.ensure_future(fetch_wait(store, R1, b"", 0, 5))
    await parked(store, 1)
    [waiter] = registered_waiters(store)
    assert isinstance(waiter, ClaimableWaiter) is answered_by_enqueues
    await store.enqueue(R1, b"", b"m", None)
    assert [m.payload for m in await asyncio.wait_for(waiting, 5)] == [b"m"]
