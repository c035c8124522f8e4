"""Inboxes on a real node: seq numbers, fetch/peek/ack, long-poll, channels, limits, sealed sender."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from quicnprotochat.client import inbox_stream
from quicnprotochat.common.errors import Forbidden, InvalidArgument, NotFound, ResourceExhausted, Unauthenticated
from quicnprotochat.server.node import Node
from tests.conftest import ClientFactory, FakeClock, User, UserFactory, loopback_config


async def _pair(node: Node, make_user: UserFactory) -> tuple[User, User]:
    return await make_user(node, "alice"), await make_user(node, "bob")


async def test_concurrent_enqueuers_get_gap_free_seqs(node: Node, make_user: UserFactory) -> None:
    alice, bob = await _pair(node, make_user)
    senders = [alice] + [await make_user(node, f"sender{i}") for i in range(3)]

    async def send(index: int) -> list[int]:
        client = senders[index % len(senders)].client
        return [await client.enqueue(bob.key, f"{index}:{n}".encode()) for n in range(5)]

    per_sender = await asyncio.gather(*(send(i) for i in range(20)))
    seqs = sorted(seq for batch in per_sender for seq in batch)
    assert seqs == list(range(1, 101))
    for batch in per_sender:  # each sender sees its own seqs increase
        assert batch == sorted(batch)
    delivered = await bob.client.fetch(bob.key)
    assert [e.seq for e in delivered] == list(range(1, 101))
    assert {e.data for e in delivered} == {f"{i}:{n}".encode() for i in range(20) for n in range(5)}


async def test_batch_enqueue_one_seq_per_recipient(node: Node, make_user: UserFactory) -> None:
    alice, bob = await _pair(node, make_user)
    carol = await make_user(node, "carol")
    await alice.client.enqueue(carol.key, b"first")
    assert await alice.client.batch_enqueue([bob.key, carol.key], b"hello") == [1, 2]
    assert [e.data for e in await carol.client.fetch(carol.key)] == [b"first", b"hello"]
    with pytest.raises(InvalidArgument, match="twice"):
        await alice.client.batch_enqueue([bob.key, bob.key], b"x")
    with pytest.raises(NotFound, match=r"recipientKeys\[1\]"):
        await alice.client.batch_enqueue([bob.key, os.urandom(32)], b"x")
    # The refused batches enqueued nothing.
    assert [e.data for e in await bob.client.fetch(bob.key)] == [b"hello"]


async def test_fetch_peek_ack(node: Node, make_user: UserFactory) -> None:
    alice, bob = await _pair(node, make_user)
    for n in range(5):
        await alice.client.enqueue(bob.key, b"m%d" % n)
    assert [e.seq for e in await bob.client.peek(bob.key, limit=2)] == [1, 2]
    assert [e.seq for e in await bob.client.peek(bob.key)] == [1, 2, 3, 4, 5]  # peek removes nothing
    await bob.client.ack(bob.key, 3)
    assert [e.seq for e in await bob.client.peek(bob.key)] == [4, 5]
    assert [e.data for e in await bob.client.fetch(bob.key, limit=1)] == [b"m3"]
    assert [e.seq for e in await bob.client.fetch(bob.key)] == [5]
    assert await bob.client.fetch(bob.key) == []
    assert await alice.client.enqueue(bob.key, b"after") == 6  # seqs are never reused


async def test_seqs_continue_after_restart(tmp_path: Path, make_user: UserFactory, connect: ClientFactory) -> None:
    config = loopback_config(tmp_path / "node")
    node = Node(config)
    await node.start()
    alice, bob = await _pair(node, make_user)
    for n in range(3):
        await alice.client.enqueue(bob.key, b"%d" % n)
    await bob.client.ack(bob.key, 2)
    await node.stop()
    await alice.client.close()
    await bob.client.close()

    restarted = Node(config)
    await restarted.start()
    try:
        # New connections; the sessions persist in the store, so the tokens still work.
        sender = await connect(restarted, access_token=alice.client.access_token)
        receiver = await connect(restarted, access_token=bob.client.access_token)
        assert await sender.enqueue(bob.key, b"later") == 4
        assert [(e.seq, e.data) for e in await receiver.fetch(bob.key)] == [(3, b"2"), (4, b"later")]
    finally:
        await restarted.stop()


async def test_fetch_wait_returns_queued_at_once(node: Node, make_user: UserFactory) -> None:
    alice, bob = await _pair(node, make_user)
    await alice.client.enqueue(bob.key, b"waiting")
    started = time.monotonic()
    assert [e.data for e in await bob.client.fetch_wait(bob.key, timeout_ms=20_000)] == [b"waiting"]
    assert time.monotonic() - started < 10


async def test_fetch_wait_is_woken_by_enqueue(node: Node, make_user: UserFactory) -> None:
    alice, bob = await _pair(node, make_user)
    waiter = asyncio.ensure_future(bob.client.fetch_wait(bob.key, timeout_ms=20_000))
    await asyncio.sleep(0.2)
    assert not waiter.done()
    started = time.monotonic()
    await alice.client.enqueue(bob.key, b"wake up")
    envelopes = await asyncio.wait_for(waiter, 10)
    assert [e.data for e in envelopes] == [b"wake up"]
    assert time.monotonic() - started < 10  # far below the 20 s timeout: woken, not timed out


async def test_fetch_wait_times_out_empty(node: Node, make_user: UserFactory) -> None:
    _, bob = await _pair(node, make_user)
    started = time.monotonic()
    assert await bob.client.fetch_wait(bob.key, timeout_ms=300) == []
    assert time.monotonic() - started >= 0.29


async def test_fetch_wait_timeout_is_capped(tmp_path: Path, make_user: UserFactory) -> None:
    node = Node(loopback_config(tmp_path / "node", max_wait_ms=300))
    await node.start()
    try:
        bob = await make_user(node, "bob")
        started = time.monotonic()
        assert await bob.client.fetch_wait(bob.key, timeout_ms=60_000) == []
        assert time.monotonic() - started < 30
    finally:
        await node.stop()


async def test_parked_waiters_do_not_delay_other_calls(node: Node, make_user: UserFactory) -> None:
    alice, bob = await _pair(node, make_user)
    # As many as one connection may park (more are refused: tests/hostile/test_parked_waits.py).
    parked = node.config.max_parked_per_connection
    waiters = [asyncio.ensure_future(bob.client.fetch_wait(bob.key, timeout_ms=20_000)) for _ in range(parked)]
    await asyncio.sleep(0.5)
    started = time.monotonic()
    assert await alice.client.resolve_user("bob") == bob.key
    assert await alice.client.health() == "ok"
    unrelated = time.monotonic() - started
    assert not any(w.done() for w in waiters)
    await alice.client.enqueue(bob.key, b"one")
    # One waiter drains the message; the rest find the inbox empty again and go on waiting.
    done, pending = await asyncio.wait(waiters, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    assert [len(task.result()) for task in done] == [1]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    assert unrelated < 5


async def test_channels(node: Node, make_user: UserFactory) -> None:
    alice, bob = await _pair(node, make_user)
    eve = await make_user(node, "eve")
    channel = await alice.client.create_channel(bob.key)
    assert len(channel) == 16
    assert await bob.client.create_channel(alice.key) == channel  # the same pair, the same channel
    assert await alice.client.enqueue(bob.key, b"in channel", channel) == 1
    assert await bob.client.enqueue(alice.key, b"reply", channel) == 1
    assert [e.data for e in await bob.client.fetch(bob.key, channel)] == [b"in channel"]
    assert await bob.client.fetch(bob.key) == []  # the default inbox is another inbox
    with pytest.raises(Forbidden):
        await eve.client.enqueue(bob.key, b"intrude", channel)
    with pytest.raises(Forbidden):
        await eve.client.fetch(eve.key, channel)
    with pytest.raises(InvalidArgument, match="other member"):
        await alice.client.enqueue(eve.key, b"wrong peer", channel)
    with pytest.raises(NotFound, match="no such channel"):
        await alice.client.enqueue(bob.key, b"x", os.urandom(16))
    with pytest.raises(InvalidArgument, match="channelId"):
        await alice.client.enqueue(bob.key, b"x", b"short")
    with pytest.raises(InvalidArgument, match="two different members"):
        await alice.client.create_channel(alice.key)
    with pytest.raises(NotFound):
        await alice.client.create_channel(os.urandom(32))


async def test_limits_and_bad_input_lose_nothing(tmp_path: Path, make_user: UserFactory) -> None:
    node = Node(loopback_config(tmp_path / "node", max_inbox_depth=3, max_payload_bytes=1000))
    await node.start()
    try:
        alice, bob = await _pair(node, make_user)
        for n in range(3):
            await alice.client.enqueue(bob.key, b"keep%d" % n)
        with pytest.raises(ResourceExhausted, match="max_inbox_depth"):
            await alice.client.enqueue(bob.key, b"one too many")
        with pytest.raises(InvalidArgument, match="at most 1000"):
            await alice.client.enqueue(bob.key, b"x" * 1001)
        with pytest.raises(InvalidArgument, match="version must be 1"):
            await alice.client._call(
                "enqueue", recipientKey=bob.key, payload=b"v2", channelId=b"", version=2, auth=alice.client._auth()
            )
        with pytest.raises(InvalidArgument, match="empty"):
            await alice.client.enqueue(bob.key, b"")
        with pytest.raises(NotFound, match="no account"):
            await alice.client.enqueue(os.urandom(32), b"to nobody")
        with pytest.raises(InvalidArgument, match="32-byte"):
            await alice.client.enqueue(b"short", b"x")
        with pytest.raises(Forbidden):
            await alice.client.peek(bob.key)
        assert [e.data for e in await bob.client.fetch(bob.key)] == [b"keep0", b"keep1", b"keep2"]
    finally:
        await node.stop()


@pytest.mark.parametrize("allowed", [False, True])
async def test_sealed_sender(tmp_path: Path, make_user: UserFactory, connect: ClientFactory, allowed: bool) -> None:
    node = Node(loopback_config(tmp_path / "node", allow_sealed_sender=allowed))
    await node.start()
    try:
        bob = await make_user(node, "bob")
        anonymous = await connect(node)
        assert (await anonymous.server_info()).allow_sealed_sender is allowed
        if allowed:
            assert await anonymous.enqueue(bob.key, b"from nobody") == 1
            assert [e.data for e in await bob.client.fetch(bob.key)] == [b"from nobody"]
        else:
            with pytest.raises(Unauthenticated):
                await anonymous.enqueue(bob.key, b"from nobody")
        # Channels always need a known sender.
        with pytest.raises(Unauthenticated):
            await anonymous.enqueue(bob.key, b"x", os.urandom(16))
    finally:
        await node.stop()


async def test_sealed_sender_is_rate_limited_per_connection(
    tmp_path: Path, make_user: UserFactory, connect: ClientFactory
) -> None:
    config = loopback_config(
        tmp_path / "node", allow_sealed_sender=True, sealed_rate_per_connection=0.01, sealed_burst_per_connection=2
    )
    node = Node(config)
    await node.start()
    try:
        bob = await make_user(node, "bob")
        anonymous = await connect(node)
        await anonymous.enqueue(bob.key, b"1")
        await anonymous.enqueue(bob.key, b"2")
        with pytest.raises(ResourceExhausted, match="sealed-sender"):
            await anonymous.enqueue(bob.key, b"3")
        another = await connect(node)
        assert await another.enqueue(bob.key, b"3") == 3
    finally:
        await node.stop()


async def test_peek_wait_keeps_until_acked(node: Node, make_user: UserFactory) -> None:
    alice, bob = await _pair(node, make_user)
    waiter = asyncio.ensure_future(bob.client.peek_wait(bob.key, timeout_ms=20_000))
    await asyncio.sleep(0.2)
    await alice.client.enqueue(bob.key, b"kept")
    assert [e.data for e in await asyncio.wait_for(waiter, 10)] == [b"kept"]
    assert [e.data for e in await bob.client.peek_wait(bob.key, timeout_ms=10)] == [b"kept"]  # still there
    await bob.client.ack(bob.key, 1)
    assert await bob.client.peek_wait(bob.key, timeout_ms=10) == []


async def test_async_iterators(node: Node, make_user: UserFactory) -> None:
    alice, bob = await _pair(node, make_user)
    for n in range(3):
        await alice.client.enqueue(bob.key, b"d%d" % n)
    drained = inbox_stream.drain(bob.client, bob.key, wait_ms=200)
    assert [(await anext(drained)).data for _ in range(3)] == [b"d0", b"d1", b"d2"]
    await drained.aclose()
    assert await bob.client.peek(bob.key) == []  # drain removed them

    for n in range(2):
        await alice.client.enqueue(bob.key, b"r%d" % n)
    received = inbox_stream.receive(bob.client, bob.key, wait_ms=200)
    first = await anext(received)
    assert first.data == b"r0"
    assert [e.seq for e in await bob.client.peek(bob.key)] == [4, 5]  # not acked while being handled
    second = await anext(received)
    assert second.data == b"r1"
    assert [e.seq for e in await bob.client.peek(bob.key)] == [5]  # the first is acked once we moved on
    later = asyncio.ensure_future(anext(received))
    await asyncio.sleep(0.1)
    await alice.client.enqueue(bob.key, b"r2")
    assert (await asyncio.wait_for(later, 10)).data == b"r2"
    await received.aclose()


async def test_expired_messages_are_dropped(tmp_path: Path, make_user: UserFactory) -> None:
    clock = FakeClock()
    node = Node(loopback_config(tmp_path / "node", message_ttl_seconds=3600), clock=clock)
    await node.start()
    try:
        alice, bob = await _pair(node, make_user)
        await alice.client.enqueue(bob.key, b"old")
        clock.advance(1800)
        await alice.client.enqueue(bob.key, b"newer")
        clock.advance(1801)  # "old" is past its TTL, "newer" is not
        assert [e.data for e in await bob.client.peek(bob.key)] == [b"newer"]
        assert node.state is not None
        await node.state.sweep()
        assert (await node.state.store.inbox_stats(bob.key, b"")).depth == 1
        assert await alice.client.enqueue(bob.key, b"next") == 3  # the dropped seq is not reused
    finally:
        await node.stop()


async def test_fetch_responses_are_bounded_in_bytes(tmp_path: Path, make_user: UserFactory) -> None:
    node = Node(loopback_config(tmp_path / "node", max_fetch_bytes=250_000, max_payload_bytes=200_000))
    await node.start()
    try:
        alice, bob = await _pair(node, make_user)
        assert (await bob.client.server_info()).limits.max_fetch_bytes == 250_000
        for n in range(4):
            await alice.client.enqueue(bob.key, bytes([n]) * 100_000)
        first = await bob.client.fetch(bob.key)
        assert [e.seq for e in first] == [1, 2, 3]  # 200 kB came before the third; the budget ends there
        assert [e.seq for e in await bob.client.fetch(bob.key)] == [4]
    finally:
        await node.stop()
