"""Inbox and directory abuse (issue 13 rows: batchEnqueue of 1,000 recipients x 1 MiB; draining someone's
one-time KeyPackages; scraping the directory with resolveUser)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from quicnprotochat.common.errors import ResourceExhausted
from quicnprotochat.server.node import Node
from tests.conftest import UserFactory, loopback_config

from .conftest import Witness

# mallory's share of someone else's default inbox in the two-node test.
SHARE = 8


async def test_batch_enqueue_is_bounded_by_recipients_times_bytes(tmp_path: Path, make_user: UserFactory) -> None:
    node = Node(loopback_config(tmp_path / "n", max_batch_bytes=256 * 1024))
    await node.start()
    try:
        alice = await make_user(node, "alice")
        witness = Witness(await make_user(node, "bob"))
        others = [await make_user(node, f"user{i}", login=False) for i in range(5)]
        keys = [user.key for user in others]
        assert (await alice.client.server_info()).limits.max_batch_bytes == 256 * 1024
        assert await alice.client.batch_enqueue(keys[:4], b"accepted") == [1, 1, 1, 1]
        with pytest.raises(ResourceExhausted, match="batchEnqueue of 5 recipients x 65536 bytes"):
            await witness.during(alice.client.batch_enqueue(keys, os.urandom(64 * 1024)))
        assert node.counters.refused["max_batch_bytes"] == 1
        # Refused as a whole: nothing more was queued for anyone; what was accepted before is there.
        assert node.state is not None
        depths = [(await node.state.store.inbox_stats(user.key, b"")).depth for user in others]
        assert depths == [1, 1, 1, 1, 0]
        assert await alice.client.batch_enqueue(keys[:4], os.urandom(64 * 1024)) == [2, 2, 2, 2]
        await witness.through()
    finally:
        await node.stop()


async def test_key_package_fetches_are_limited_per_caller_and_target(tmp_path: Path, make_user: UserFactory) -> None:
    node = Node(loopback_config(tmp_path / "n", key_package_rate_per_pair=0.01, key_package_burst_per_pair=3))
    await node.start()
    try:
        mallory = await make_user(node, "mallory")
        bob = await make_user(node, "bob")
        carol = await make_user(node, "carol")
        witness = Witness(carol)
        for _ in range(6):
            await bob.client.upload_key_package(bob.key, bob.vault.create_key_package())

        async def drain() -> None:
            for _ in range(3):
                assert await mallory.client.fetch_key_package(bob.key)
            with pytest.raises(ResourceExhausted, match="KeyPackage fetches") as refused:
                await mallory.client.fetch_key_package(bob.key)
            assert refused.value.retry_after and refused.value.retry_after > 0

        await witness.during(drain())
        assert node.counters.refused["key_package_rate_per_pair"] == 1
        # The refused fetch took nothing: bob's other three packages are there for others, and no more.
        assert all([await carol.client.fetch_key_package(bob.key) for _ in range(3)])
        assert await (await make_user(node, "dave")).client.fetch_key_package(bob.key) is None
        # mallory's other targets are unaffected (carol has none).
        assert await mallory.client.fetch_key_package(carol.key) is None
        await witness.through()
    finally:
        await node.stop()


async def test_resolve_user_cannot_scrape_the_directory(tmp_path: Path, make_user: UserFactory) -> None:
    node = Node(loopback_config(tmp_path / "n", resolve_rate_per_identity=0.01, resolve_burst_per_identity=20))
    await node.start()
    try:
        mallory = await make_user(node, "mallory")
        alice = await make_user(node, "alice")
        witness = Witness(alice, mallory)
        guesses = (mallory.client.resolve_user(f"guess{i:04d}") for i in range(40))
        results = await witness.during(asyncio.gather(*guesses, return_exceptions=True))
        refused = [r for r in results if isinstance(r, ResourceExhausted)]
        assert len(refused) == 20
        assert all("name look-ups for this identity" in str(r) and r.retry_after for r in refused)
        # Others still resolve names and use the node.
        assert await alice.client.resolve_user("mallory") == mallory.key
        assert node.counters.refused["resolve_rate_per_identity"] == 20
        await witness.through()
    finally:
        await node.stop()


async def test_one_sender_cannot_fill_someone_elses_inbox(tmp_path: Path, make_user: UserFactory) -> None:
    """mallory's 9,798 enqueues filled alice's inbox; now mallory's share stops at its cap and alice's contacts
    still get through."""
    node = Node(loopback_config(tmp_path / "n", max_inbox_depth=40, max_inbox_share_per_sender=10))
    await node.start()
    try:
        alice = await make_user(node, "alice")
        bob = await make_user(node, "bob")
        mallory = await make_user(node, "mallory")
        witness = Witness(bob)
        assert (await mallory.client.server_info()).limits.max_inbox_share_per_sender == 10
        accepted = 0

        async def spam() -> None:
            nonlocal accepted
            for n in range(40):
                await mallory.client.enqueue(alice.key, b"spam %d" % n)
                accepted += 1

        with pytest.raises(ResourceExhausted, match="max_inbox_share_per_sender"):
            await witness.during(spam())
        assert accepted == 10
        for n in range(5):
            await bob.client.enqueue(alice.key, b"hello %d" % n)
        received = [e.data for e in await alice.client.fetch(alice.key)]
        # Nothing acknowledged was lost: every accepted message is there, in order.
        assert received == [b"spam %d" % n for n in range(10)] + [b"hello %d" % n for n in range(5)]
        await mallory.client.enqueue(alice.key, b"after alice read")  # the share frees as alice reads
        await witness.through()
    finally:
        await node.stop()


async def test_a_senders_share_holds_exactly_across_nodes_on_postgresql(
    pg_url: str, tmp_path: Path, make_user: UserFactory
) -> None:
    """Two nodes on one PostgreSQL database, mallory sending to alice through both at once: the share is counted
    inside the transaction that stores, under the inbox's lock, so racing group commits cannot pass it together."""
    settings = {"store": pg_url, "max_inbox_share_per_sender": SHARE}
    nodes = [Node(loopback_config(tmp_path / name, **settings)) for name in ("a", "b")]
    for node in nodes:
        await node.start()
    try:
        alice = await make_user(nodes[0], "alice")
        witness = Witness(await make_user(nodes[1], "bob"))
        mallory = await make_user(nodes[0], "mallory")
        mallory_on_b = (await make_user(nodes[1], "mallory", register=False, login=False)).client
        mallory_on_b.access_token = mallory.client.access_token  # one session, valid on both nodes
        for round_ in range(3):
            sends = [
                client.enqueue(alice.key, b"spam %d" % n)
                for n in range(2 * SHARE)
                for client in (mallory.client, mallory_on_b)
            ]
            results = await witness.during(asyncio.gather(*sends, return_exceptions=True))
            accepted = [r for r in results if isinstance(r, int)]
            refused = [r for r in results if isinstance(r, ResourceExhausted)]
            assert (len(accepted), len(refused)) == (SHARE, 3 * SHARE), (round_, results)
            queued = await alice.client.fetch(alice.key)
            assert sorted(e.seq for e in queued) == sorted(accepted)  # what was acknowledged is all there
        await witness.through()
    finally:
        for node in nodes:
            await node.stop()
