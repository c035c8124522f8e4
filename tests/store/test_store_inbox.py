from __future__ import annotations

import asyncio

import pytest

from quicnprotochat.server.store import LimitExceeded, Store, StoreClosed, StoreLimits

from .store_testlib import Backend, FakeClock, drain_all, key

pytestmark = pytest.mark.asyncio

R1, R2, R3 = key(1), key(2), key(3)
CHAN = bytes(range(16))


async def test_seqs_start_at_one_and_increase_per_inbox(store: Store) -> None:
    assert [await store.enqueue(R1, b"", b"a", None) for _ in range(3)] == [1, 2, 3]
    # Every inbox has its own counter: another channel or recipient starts at 1 again.
    assert await store.enqueue(R1, CHAN, b"c", None) == 1
    assert await store.enqueue(R2, b"", b"d", None) == 1
    assert await store.enqueue(R1, b"", b"e", None) == 4


async def test_concurrent_enqueuers_get_gap_free_seqs_committed_in_groups(store: Store) -> None:
    workers, per_worker = 20, 10
    before = store.metrics()

    async def worker(w: int) -> list[int]:
        return [await store.enqueue(R1, b"", f"{w}:{i}".encode(), None) for i in range(per_worker)]

    results = await asyncio.gather(*(worker(w) for w in range(workers)))
    total = workers * per_worker
    assert sorted(s for seqs in results for s in seqs) == list(range(1, total + 1))
    for seqs in results:
        assert seqs == sorted(seqs)
    after = store.metrics()
    ops = after.write_ops - before.write_ops
    commits = after.commits - before.commits
    assert ops == total
    assert commits < ops, "concurrent enqueues should share commits"
    # The queue holds each worker's payloads in the order that worker sent them.
    queued = await drain_all(store, R1)
    assert [seq for seq, _ in queued] == list(range(1, total + 1))
    by_worker: dict[str, list[int]] = {}
    for _, payload in queued:
        w, i = payload.decode().split(":")
        by_worker.setdefault(w, []).append(int(i))
    assert all(indices == list(range(per_worker)) for indices in by_worker.values())


async def test_refused_operation_in_a_batch_does_not_fail_the_others(backend: Backend) -> None:
    store = await backend.open(StoreLimits(max_inbox_depth=1))
    await store.enqueue(R1, b"", b"first", None)
    results = await asyncio.gather(
        *(store.enqueue(r, b"", b"x", None) for r in (R2, R1, R3)),
        return_exceptions=True,
    )
    assert results[0] == 1 and results[2] == 1
    assert isinstance(results[1], LimitExceeded)
    assert await drain_all(store, R1) == [(1, b"first")]


async def test_batch_enqueue_returns_one_seq_per_recipient(store: Store) -> None:
    await store.enqueue(R2, CHAN, b"earlier", None)
    assert await store.batch_enqueue([R1, R2, R3], CHAN, b"hello", None) == [1, 2, 1]
    for recipient in (R1, R2, R3):
        assert (await drain_all(store, recipient, CHAN))[-1][1] == b"hello"
    assert await store.batch_enqueue([], CHAN, b"nobody", None) == []


async def test_batch_enqueue_is_all_or_nothing(backend: Backend) -> None:
    store = await backend.open(StoreLimits(max_inbox_depth=2))
    await store.enqueue(R2, b"", b"a", None)
    await store.enqueue(R2, b"", b"b", None)
    with pytest.raises(LimitExceeded) as refused:
        await store.batch_enqueue([R1, R2, R3], b"", b"c", None)
    assert refused.value.limit_name == "max_inbox_depth"
    assert refused.value.index == 1
    for recipient in (R1, R3):
        stats = await store.inbox_stats(recipient, b"")
        assert (stats.depth, stats.last_seq) == (0, 0)
        assert await drain_all(store, recipient) == []
    assert await drain_all(store, R2) == [(1, b"a"), (2, b"b")]
    # The refused batch consumed no seqs anywhere.
    assert await store.enqueue(R1, b"", b"d", None) == 1


async def test_fetch_drains_in_order_peek_does_not(store: Store) -> None:
    for i in range(5):
        await store.enqueue(R1, b"", bytes([i]), None)
    peeked = await store.peek(R1, b"", 2)
    assert [(m.seq, m.payload) for m in peeked] == [(1, b"\x00"), (2, b"\x01")]
    assert len(await store.peek(R1, b"", 0)) == 5
    fetched = await store.fetch(R1, b"", 3)
    assert [(m.seq, m.payload) for m in fetched] == [(1, b"\x00"), (2, b"\x01"), (3, b"\x02")]
    assert [m.seq for m in await store.fetch(R1, b"")] == [4, 5]
    assert await store.fetch(R1, b"") == []
    stats = await store.inbox_stats(R1, b"")
    assert (stats.depth, stats.bytes, stats.last_seq) == (0, 0, 5)


async def test_ack_removes_up_to_and_including(store: Store) -> None:
    for i in range(5):
        await store.enqueue(R1, b"", b"m%d" % i, None)
    assert await store.ack(R1, b"", 0) == 0
    assert await store.ack(R1, b"", 2) == 2
    assert [seq for seq, _ in await drain_all(store, R1)] == [3, 4, 5]
    assert await store.ack(R1, b"", 2) == 0
    # A client's UInt64 maximum means "everything".
    assert await store.ack(R1, b"", 2**64 - 1) == 3
    assert await drain_all(store, R1) == []
    assert await store.ack(R2, b"", 10) == 0


async def test_seqs_continue_after_fetch_ack_and_reopen(backend: Backend) -> None:
    store = await backend.open()
    for _ in range(3):
        await store.enqueue(R1, b"", b"x", None)
    await store.fetch(R1, b"")
    assert await store.enqueue(R1, b"", b"y", None) == 4
    await store.ack(R1, b"", 4)
    await store.close()
    reopened = await backend.open()
    assert await reopened.enqueue(R1, b"", b"z", None) == 5
    assert (await reopened.inbox_stats(R1, b"")).last_seq == 5


async def test_fetch_limit_defaults_to_and_is_capped_by_max_fetch(backend: Backend) -> None:
    store = await backend.open(StoreLimits(max_fetch=3))
    await store.batch_enqueue([R1] * 5, b"", b"x", None)
    assert len(await store.peek(R1, b"", 0)) == 3
    assert len(await store.peek(R1, b"", 100)) == 3
    assert len(await store.fetch(R1, b"", 0)) == 3
    with pytest.raises(ValueError):
        await store.fetch(R1, b"", -1)


async def test_fetch_and_peek_stop_at_max_fetch_bytes(backend: Backend) -> None:
    store = await backend.open(StoreLimits(max_fetch_bytes=10))
    for payload in (b"aaaa", b"bbbb", b"cccc", b"d" * 20, b"e"):
        await store.enqueue(R1, b"", payload, None)
    # 4 + 4 bytes come before the third message, 12 before the fourth: the budget ends after the third.
    assert [m.seq for m in await store.peek(R1, b"", 0)] == [1, 2, 3]
    assert [m.seq for m in await store.fetch(R1, b"", 0)] == [1, 2, 3]
    # A message larger than the budget still comes, alone: nothing is ever stuck.
    assert [m.payload for m in await store.fetch(R1, b"", 0)] == [b"d" * 20]
    assert [m.payload for m in await store.fetch(R1, b"", 0)] == [b"e"]
    assert (await store.inbox_stats(R1, b"")).depth == 0


async def test_expired_messages_are_hidden_and_swept(store: Store, clock: FakeClock) -> None:
    await store.enqueue(R1, b"", b"short", clock() + 10)
    await store.enqueue(R1, b"", b"forever", None)
    await store.enqueue(R2, CHAN, b"long", clock() + 100)
    clock.advance(10)
    assert await drain_all(store, R1) == [(2, b"forever")]
    assert await store.sweep_expired() == 1
    stats = await store.inbox_stats(R1, b"")
    assert (stats.depth, stats.bytes, stats.last_seq) == (1, len(b"forever"), 2)
    assert await store.sweep_expired(clock() + 1000) == 1
    assert await drain_all(store, R2, CHAN) == []
    # Sweeping never touches the counters.
    assert await store.enqueue(R1, b"", b"next", None) == 3
    assert await store.enqueue(R2, CHAN, b"next", None) == 2


async def test_payload_limit(backend: Backend) -> None:
    store = await backend.open(StoreLimits(max_payload_bytes=10))
    await store.enqueue(R1, b"", b"0123456789", None)
    with pytest.raises(LimitExceeded) as refused:
        await store.enqueue(R1, b"", b"0123456789A", None)
    assert (refused.value.limit_name, refused.value.limit, refused.value.actual) == ("max_payload_bytes", 10, 11)
    with pytest.raises(LimitExceeded):
        await store.batch_enqueue([R1, R2], b"", b"x" * 11, None)
    assert await drain_all(store, R1) == [(1, b"0123456789")]
    assert await store.enqueue(R1, b"", b"ok", None) == 2


async def test_depth_limit(backend: Backend) -> None:
    store = await backend.open(StoreLimits(max_inbox_depth=3))
    for _ in range(3):
        await store.enqueue(R1, b"", b"x", None)
    with pytest.raises(LimitExceeded) as refused:
        await store.enqueue(R1, b"", b"y", None)
    assert (refused.value.limit_name, refused.value.limit, refused.value.actual) == ("max_inbox_depth", 3, 4)
    assert await drain_all(store, R1) == [(1, b"x"), (2, b"x"), (3, b"x")]
    # Other inboxes of the same recipient are separate.
    assert await store.enqueue(R1, CHAN, b"y", None) == 1
    await store.ack(R1, b"", 1)
    assert await store.enqueue(R1, b"", b"y", None) == 4


async def test_bytes_limit(backend: Backend) -> None:
    store = await backend.open(StoreLimits(max_inbox_bytes=10))
    await store.enqueue(R1, b"", b"123456", None)
    with pytest.raises(LimitExceeded) as refused:
        await store.enqueue(R1, b"", b"12345", None)
    assert (refused.value.limit_name, refused.value.limit, refused.value.actual) == ("max_inbox_bytes", 10, 11)
    assert await store.enqueue(R1, b"", b"1234", None) == 2
    assert (await store.inbox_stats(R1, b"")).bytes == 10
    assert await drain_all(store, R1) == [(1, b"123456"), (2, b"1234")]


async def test_expired_messages_make_room_under_limits(backend: Backend, clock: FakeClock) -> None:
    store = await backend.open(StoreLimits(max_inbox_depth=2))
    await store.enqueue(R1, b"", b"old", clock() + 5)
    await store.enqueue(R1, b"", b"keep", None)
    with pytest.raises(LimitExceeded):
        await store.enqueue(R1, b"", b"new", None)
    clock.advance(5)
    assert await store.enqueue(R1, b"", b"new", None) == 3
    assert await drain_all(store, R1) == [(2, b"keep"), (3, b"new")]


async def test_stats_track_queue_contents(store: Store) -> None:
    payloads = [b"a" * n for n in (1, 5, 7, 11, 13)]
    for p in payloads:
        await store.enqueue(R1, b"", p, None)
    await store.fetch(R1, b"", 1)
    await store.ack(R1, b"", 3)
    queued = await drain_all(store, R1)
    stats = await store.inbox_stats(R1, b"")
    assert (stats.depth, stats.bytes, stats.last_seq) == (len(queued), sum(len(p) for _, p in queued), 5)


async def test_close_finishes_submitted_work_then_refuses(backend: Backend) -> None:
    store = await backend.open()
    tasks = [asyncio.create_task(store.enqueue(R1, b"", b"%d" % i, None)) for i in range(50)]
    await asyncio.sleep(0)  # let every task submit before closing
    await store.close()
    assert sorted(await asyncio.gather(*tasks)) == list(range(1, 51))
    assert store.closed
    with pytest.raises(StoreClosed):
        await store.enqueue(R1, b"", b"late", None)
    with pytest.raises(StoreClosed):
        await store.peek(R1, b"")
    await store.close()  # idempotent
    reopened = await backend.open()
    assert len(await drain_all(reopened, R1)) == 50


async def test_concurrent_closes_all_wait_for_the_end(backend: Backend) -> None:
    store = await backend.open()
    pending = asyncio.create_task(store.enqueue(R1, b"", b"x", None))
    await asyncio.sleep(0)
    await asyncio.gather(store.close(), store.close(), store.close())
    assert await pending == 1


async def test_concurrent_mixed_enqueues_put_each_payload_at_its_seq(store: Store) -> None:
    """Enqueues and batch enqueues (repeated recipients, several inboxes, sizes) committed together."""
    calls: list[tuple[bytes | list[bytes], bytes, bytes]] = [
        (R1, b"", b"a"),
        ([R1, R2, R1], CHAN, b"bb"),
        (R1, b"", b"ccc"),
        ([R2], b"", b"dddd"),
        ([R3, R1], b"", b"e" * 50),
        (R2, CHAN, b"f"),
    ]

    async def call(target: bytes | list[bytes], channel: bytes, payload: bytes) -> list[int]:
        if isinstance(target, bytes):
            return [await store.enqueue(target, channel, payload, None)]
        return await store.batch_enqueue(target, channel, payload, None)

    results = await asyncio.gather(*(call(*c) for c in calls))
    expected: dict[tuple[bytes, bytes], dict[int, bytes]] = {}
    for (target, channel, payload), seqs in zip(calls, results, strict=True):
        recipients = [target] if isinstance(target, bytes) else target
        assert len(seqs) == len(recipients)
        for recipient, seq in zip(recipients, seqs, strict=True):
            assert seq not in expected.setdefault((recipient, channel), {})
            expected[(recipient, channel)][seq] = payload
    for (recipient, channel), by_seq in expected.items():
        assert sorted(by_seq) == list(range(1, len(by_seq) + 1))
        assert await drain_all(store, recipient, channel) == sorted(by_seq.items())
        stats = await store.inbox_stats(recipient, channel)
        assert (stats.depth, stats.bytes) == (len(by_seq), sum(len(p) for p in by_seq.values()))


async def test_a_senders_share_of_a_default_inbox_is_capped(backend: Backend) -> None:
    store = await backend.open(StoreLimits(max_inbox_share_per_sender=3, max_inbox_depth=10))
    mallory, bob = key(7), key(8)
    for n in range(3):
        assert await store.enqueue(R1, b"", b"m%d" % n, None, sender=mallory) == n + 1
    with pytest.raises(LimitExceeded, match="max_inbox_share_per_sender"):
        await store.enqueue(R1, b"", b"m3", None, sender=mallory)
    with pytest.raises(LimitExceeded, match=r"recipient #1: max_inbox_share_per_sender"):
        await store.batch_enqueue([R2, R1], b"", b"both", None, sender=mallory)
    assert (await store.inbox_stats(R2, b"")).depth == 0  # all or nothing
    # Others, sealed senders and the owner are not held to mallory's share; nor are channels.
    assert await store.enqueue(R1, b"", b"from bob", None, sender=bob) == 4
    assert await store.enqueue(R1, b"", b"sealed", None) == 5
    assert await store.enqueue(R1, b"", b"note to self", None, sender=R1) == 6
    assert await store.enqueue(R1, CHAN, b"channel", None, sender=mallory) == 1
    # Once R1 reads, mallory may send again; what was queued is all there.
    assert [m.payload for m in await store.fetch(R1, b"", 2)] == [b"m0", b"m1"]
    assert await store.enqueue(R1, b"", b"m4", None, sender=mallory) == 7
    assert [m.seq for m in await store.peek(R1, b"")] == [3, 4, 5, 6, 7]
