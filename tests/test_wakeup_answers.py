"""A parked fetchWait on a real node (SQLite, QUIC on loopback) is answered from the commit of the enqueue that
woke it: one transaction for both, the connection's answer budget kept, and what a dropped connection loses."""

from __future__ import annotations

import asyncio
import threading
import time

from quicnprotochat.server.node import Node
from quicnprotochat.server.store import Store
from tests.conftest import UserFactory
from tests.store.store_testlib import claimed, hold_writer, parked


def _store(node: Node) -> Store:
    assert node.state is not None
    return node.state.store


async def test_a_woken_fetch_wait_is_answered_by_the_enqueues_commit(node: Node, make_user: UserFactory) -> None:
    alice, bob = await make_user(node, "alice"), await make_user(node, "bob")
    waiting = asyncio.ensure_future(bob.client.fetch_wait(bob.key, timeout_ms=20_000))
    await parked(_store(node), 1)
    before = _store(node).metrics().commits
    await alice.client.enqueue(bob.key, b"wake up")
    assert [e.data for e in await asyncio.wait_for(waiting, 10)] == [b"wake up"]
    assert _store(node).metrics().commits - before == 1
    # The claim gave the connection's answer slot back: the next calls that take it are answered.
    await alice.client.enqueue(bob.key, b"next")
    assert [e.data for e in await asyncio.wait_for(bob.client.fetch(bob.key), 10)] == [b"next"]
    assert [e.data for e in await asyncio.wait_for(bob.client.peek_wait(bob.key, timeout_ms=100), 10)] == []


async def test_a_peek_wait_is_woken_not_answered(node: Node, make_user: UserFactory) -> None:
    alice, bob = await make_user(node, "alice"), await make_user(node, "bob")
    waiting = asyncio.ensure_future(bob.client.peek_wait(bob.key, timeout_ms=20_000))
    await parked(_store(node), 1)
    await alice.client.enqueue(bob.key, b"seen")
    assert [e.data for e in await asyncio.wait_for(waiting, 10)] == [b"seen"]
    assert [m.payload for m in await _store(node).peek(bob.key, b"")] == [b"seen"]  # still queued until acked


async def test_a_connection_dropped_after_its_wait_was_claimed_loses_nothing_not_yet_removed(
    node: Node, make_user: UserFactory
) -> None:
    """The enqueue claims the parked call while the writer is busy; the waiter's connection closes before the
    writer reaches its fetch: the message stays queued for the next fetch."""
    alice, bob = await make_user(node, "alice"), await make_user(node, "bob")
    waiting = asyncio.ensure_future(bob.client.fetch_wait(bob.key, timeout_ms=20_000))
    await parked(_store(node), 1)

    # The writer is held until the node has dropped the waiter, however long noticing the closed connection takes.
    release = threading.Event()
    held = hold_writer(_store(node), 10, until=release)
    try:
        await asyncio.sleep(0.05)
        sent = asyncio.ensure_future(alice.client.enqueue(bob.key, b"kept"))
        deadline = time.monotonic() + 5
        while _store(node)._writer.queue_depth < 2:  # type: ignore[attr-defined] # the hold, and the enqueue queued
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert claimed(_store(node)) == 1
        await bob.client.close()
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        deadline = time.monotonic() + 5
        while _store(node).wakeups.waiter_count():  # the node noticed the connection is gone
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    finally:
        release.set()
    await held
    assert await asyncio.wait_for(sent, 10) == 1
    assert [m.payload for m in await _store(node).fetch(bob.key, b"")] == [b"kept"]
