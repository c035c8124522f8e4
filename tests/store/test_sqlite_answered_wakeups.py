"""SQLite answers a parked fetchWait from the enqueue's own transaction: the writer removes the messages for the
waiter right after the enqueue and hands them over with the commit. What a claimed waiter gets when it times out,
gives up, shares its inbox, or the transaction fails; its limits; expired messages. (Real SQLite files; the
writer is held with a sleeping operation, as in test_sqlite_group_commit, to open the window between a claim and
its commit.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from quicnprotochat.server.connection_budget import ConnectionBudget, ConnectionLimits
from quicnprotochat.server.store import (
    DiskFull,
    IdempotencyKey,
    InboxMessage,
    Store,
    StoreLimits,
    fetch_wait,
    open_store,
)
from quicnprotochat.server.store.groups import GroupLimits
from tests.test_disk_full import fill, mounted_tmpfs

from .store_testlib import FakeClock, claimed, hold_writer, key, new_group_message, parked

BOB, ALICE = key(1), key(2)


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """An SQLite store (this behaviour is SQLite's alone; the backend-wide `store` fixture is overridden here)."""
    opened = await open_store(tmp_path / "store.db")
    try:
        yield opened
    finally:
        await opened.close()


async def _claimed_while_the_writer_is_busy(
    store: Store, payload: bytes, *, timeout: float, busy: float
) -> tuple[asyncio.Future[list[InboxMessage]], asyncio.Future[None], asyncio.Future[int]]:
    """A parked fetchWait (`timeout`), claimed by an enqueue of `payload` while the writer is busy for `busy`
    seconds: the wait, the busy writer's operation and the enqueue, none of them done yet."""
    waiting = asyncio.ensure_future(fetch_wait(store, BOB, b"", 0, timeout))
    await parked(store, 1)
    held = hold_writer(store, busy)
    await asyncio.sleep(0.05)
    sent = asyncio.ensure_future(store.enqueue(BOB, b"", payload, None))  # claims the waiter now
    return waiting, held, sent


async def test_a_parked_fetch_is_answered_by_the_enqueues_commit(store: Store) -> None:
    waiting = asyncio.ensure_future(fetch_wait(store, BOB, b"", 0, 5))
    await parked(store, 1)
    before = store.metrics()
    assert await store.enqueue(BOB, b"", b"hello", None) == 1
    assert [(m.seq, m.payload) for m in await asyncio.wait_for(waiting, 5)] == [(1, b"hello")]
    after = store.metrics()
    # One commit for both: the enqueue and the waiter's fetch ran in one transaction.
    assert (after.commits - before.commits, after.write_ops - before.write_ops) == (1, 2)
    assert (await store.inbox_stats(BOB, b"")).depth == 0
    assert store.wakeups.waiter_count() == 0


async def test_an_idempotent_enqueue_answers_a_parked_fetch_too(store: Store) -> None:
    waiting = asyncio.ensure_future(fetch_wait(store, BOB, b"", 0, 5))
    await parked(store, 1)
    before = store.metrics().commits
    once = IdempotencyKey(ALICE, b"k1", time.time() + 60)
    assert await store.enqueue_once(once, [BOB], b"", b"hello", None) == [1]
    assert [m.payload for m in await asyncio.wait_for(waiting, 5)] == [b"hello"]
    assert store.metrics().commits - before == 1


async def test_a_group_message_answers_a_parked_members_fetch(store: Store) -> None:
    waiting = asyncio.ensure_future(fetch_wait(store, BOB, b"", 0, 5))
    await parked(store, 1)
    before = store.metrics().commits
    write = new_group_message(ALICE, BOB, b"to the group")
    assert await store.write_group_submission(write, GroupLimits()) == [1]
    assert [m.payload for m in await asyncio.wait_for(waiting, 5)] == [b"to the group"]
    assert store.metrics().commits - before == 1


async def test_a_claimed_waiter_past_its_timeout_gets_what_was_removed_for_it(store: Store) -> None:
    waiting, held, sent = await _claimed_while_the_writer_is_busy(store, b"late", timeout=1.0, busy=1.5)
    await held
    # The timeout passed while the writer was busy; the messages removed for the waiter are still its answer.
    assert [m.payload for m in await asyncio.wait_for(waiting, 5)] == [b"late"]
    assert await sent == 1
    assert (await store.inbox_stats(BOB, b"")).depth == 0


async def test_a_waiter_that_gives_up_before_the_writer_fetched_loses_nothing(store: Store) -> None:
    waiting, held, sent = await _claimed_while_the_writer_is_busy(store, b"kept", timeout=5, busy=0.4)
    await asyncio.sleep(0.05)
    assert claimed(store) == 1  # not a plain waiter woken later: the writer holds a fetch for it
    waiting.cancel()  # as when the connection drops
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await held
    assert await sent == 1
    assert [m.payload for m in await store.fetch(BOB, b"")] == [b"kept"]
    assert store.wakeups.waiter_count() == 0


async def test_two_waiters_on_one_inbox_get_one_message_each(store: Store) -> None:
    waiters = [asyncio.ensure_future(fetch_wait(store, BOB, b"", 0, 5)) for _ in range(2)]
    await parked(store, 2)
    await store.enqueue(BOB, b"", b"first", None)
    done, pending = await asyncio.wait(waiters, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    assert [[m.payload for m in task.result()] for task in done] == [[b"first"]]
    await asyncio.sleep(0.1)
    assert len(pending) == 1 and not next(iter(pending)).done()  # the other waits on
    await store.enqueue(BOB, b"", b"second", None)
    assert [m.payload for m in await asyncio.wait_for(next(iter(pending)), 5)] == [b"second"]


async def _claimed_behind_another(store: Store, limit: int) -> list[int]:
    """A waiter claimed by the second of two enqueues committed together, the first of which came before the
    waiter parked (so it claimed nothing): the claimed fetch finds two messages. The seqs it was answered with."""
    release = threading.Event()
    held = hold_writer(store, 10, until=release)
    try:
        await asyncio.sleep(0.05)
        first = asyncio.ensure_future(store.enqueue(BOB, b"", b"a" * 600, None))
        waiting = asyncio.ensure_future(fetch_wait(store, BOB, b"", limit, 5))
        await parked(store, 1)  # its first look read the inbox empty: the first enqueue is not committed yet
        second = asyncio.ensure_future(store.enqueue(BOB, b"", b"b" * 600, None))
        await asyncio.sleep(0.05)
        assert claimed(store) == 1
    finally:
        release.set()
    await held
    await asyncio.gather(first, second)
    return [m.seq for m in await asyncio.wait_for(waiting, 5)]


async def test_a_claimed_fetch_keeps_the_waiters_count_limit(store: Store) -> None:
    assert await _claimed_behind_another(store, 1) == [1]
    assert [m.seq for m in await store.fetch(BOB, b"")] == [2]
    assert await _claimed_behind_another(store, 0) == [3, 4]


async def test_a_claimed_fetch_keeps_the_byte_budget(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "store.db", StoreLimits(max_fetch_bytes=500))
    try:
        assert await _claimed_behind_another(store, 0) == [1]
        assert [m.seq for m in await store.fetch(BOB, b"")] == [2]
    finally:
        await store.close()


async def test_an_expired_message_is_not_an_answer_and_the_waiter_waits_on(tmp_path: Path) -> None:
    clock = FakeClock()
    store = await open_store(tmp_path / "store.db", clock=clock)
    try:
        waiting = asyncio.ensure_future(fetch_wait(store, BOB, b"", 0, 5))
        await parked(store, 1)
        assert await store.enqueue(BOB, b"", b"stale", clock() - 1) == 1  # claims the waiter, which finds nothing
        await asyncio.sleep(0.2)
        assert not waiting.done()
        assert await store.enqueue(BOB, b"", b"fresh", clock() + 60) == 2
        assert [m.payload for m in await asyncio.wait_for(waiting, 5)] == [b"fresh"]
    finally:
        await store.close()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    yield from mounted_tmpfs(tmp_path / "tiny", 28)


async def test_a_failed_transaction_sends_its_claimed_waiter_back_to_waiting(tiny_disk: Path) -> None:
    store = await open_store(tiny_disk / "store.db", StoreLimits(disk_reserve_bytes=1 << 20))
    try:
        waiting = asyncio.ensure_future(fetch_wait(store, BOB, b"", 0, 10))
        await parked(store, 1)
        fill(tiny_disk / "filler")
        with pytest.raises(DiskFull):
            await store.enqueue(BOB, b"", os.urandom(256 << 10), None)  # claims the waiter; the batch is refused
        await asyncio.sleep(0.2)
        assert not waiting.done()  # not failed, not answered: waiting again
        os.unlink(tiny_disk / "filler")
        assert await store.enqueue(BOB, b"", b"after", None) == 1
        assert [(m.seq, m.payload) for m in await asyncio.wait_for(waiting, 5)] == [(1, b"after")]
    finally:
        await store.close()


async def test_a_disk_reserve_that_cannot_be_released_leaves_no_claimed_waiter_unanswered(tiny_disk: Path) -> None:
    """The disk is full and the reserve cannot be given back (its path is a directory here: unlink fails with
    EISDIR): the deletions of the batch, a claimed waiter's fetch among them, still run and are answered; the
    waiter, claimed and so deaf to its timer, waits on and times out instead of waiting for ever."""
    store = await open_store(tiny_disk / "store.db", StoreLimits(disk_reserve_bytes=1 << 20))
    reserve = tiny_disk / "store.db.reserve"
    try:
        waiting = asyncio.ensure_future(fetch_wait(store, BOB, b"", 0, 1.0))
        await parked(store, 1)
        # The writer's idle upkeep makes the reserve again when it is missing: replace it until the directory wins.
        while not reserve.is_dir():
            reserve.unlink(missing_ok=True)
            with contextlib.suppress(FileExistsError):
                reserve.mkdir()
        fill(tiny_disk / "filler")
        with pytest.raises(DiskFull):
            await store.enqueue(BOB, b"", os.urandom(256 << 10), None)  # claims the waiter; the batch is refused
        assert await asyncio.wait_for(waiting, 10) == []
        assert store.wakeups.waiter_count() == 0
    finally:
        await store.close()


async def test_a_claim_keeps_the_connections_answer_budget(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "store.db")
    budget = ConnectionBudget(ConnectionLimits(max_unsent_bytes=1000, max_calls=8, max_parked=4))
    unsent = [1000]  # what the transport holds for the connection, unacknowledged: the budget is used up
    budget.attach(lambda: unsent[0], lambda: None)
    try:
        waiting = asyncio.ensure_future(fetch_wait(store, BOB, b"", 0, 5, answer_slots=budget))
        await parked(store, 1)
        before = store.metrics().commits
        await store.enqueue(BOB, b"", b"held back", None)
        await asyncio.sleep(0.2)
        # Not claimed: woken, and its fetch waits for the connection's answers to drain; nothing removed meanwhile.
        assert not waiting.done()
        assert (store.metrics().commits - before, (await store.inbox_stats(BOB, b"")).depth) == (1, 1)
        unsent[0] = 0
        budget.poke()
        assert [m.payload for m in await asyncio.wait_for(waiting, 5)] == [b"held back"]
        assert budget.held_bytes() == len(b"held back")

        # With room, the claim takes the slot, counts the answer's bytes and gives the slot back.
        budget.written(len(b"held back"))
        waiting = asyncio.ensure_future(fetch_wait(store, BOB, b"", 0, 5, answer_slots=budget))
        await parked(store, 1)
        before = store.metrics().commits
        await store.enqueue(BOB, b"", b"answered", None)
        assert [m.payload for m in await asyncio.wait_for(waiting, 5)] == [b"answered"]
        assert store.metrics().commits - before == 1
        assert budget.held_bytes() == len(b"answered")
        assert budget.try_answer_slot() is not None
        budget.release_answer_slot()
    finally:
        await store.close()
