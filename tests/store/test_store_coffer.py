"""Coffer shards on every backend: a load replaces the whole set in one transaction, or changes nothing."""

from __future__ import annotations

import pytest

from quicnprotochat.server.store import CofferShard, Store, StoreError

from .store_testlib import FakeClock

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32


async def test_a_load_replaces_every_shard_at_once(store: Store, clock: FakeClock) -> None:
    await store.replace_coffer([CofferShard("alice", A, 2, b"sealed a"), CofferShard("bob", B, 1, b"sealed b")])
    assert await store.coffer_shards() == [
        CofferShard("alice", A, 2, b"sealed a", clock()),
        CofferShard("bob", B, 1, b"sealed b", clock()),
    ]
    clock.advance(10)
    await store.replace_coffer([CofferShard("carol", C, 0, b"sealed c"), CofferShard("alice", A, 1, b"new a")])
    assert [(s.name, s.sealed, s.loaded_at) for s in await store.coffer_shards()] == [
        ("alice", b"new a", clock()),
        ("carol", b"sealed c", clock()),
    ]
    assert await store.get_coffer_shard(B) is None
    shard = await store.get_coffer_shard(C)
    assert shard is not None
    assert shard.name == "carol"


async def test_a_failing_load_keeps_the_old_set(store: Store) -> None:
    old = [CofferShard("alice", A, 2, b"sealed a", 0.0)]
    await store.replace_coffer(old)
    before = await store.coffer_shards()
    # The second row breaks the key's uniqueness after the delete and the first insert ran: all of it rolls back.
    with pytest.raises(StoreError):
        await store.replace_coffer([CofferShard("bob", B, 1, b"b"), CofferShard("bob again", B, 1, b"b2")])
    assert await store.coffer_shards() == before


async def test_a_shard_is_moved_only_from_the_record_expected(store: Store) -> None:
    await store.replace_coffer([CofferShard("alice", A, 2, b"sealed a")])
    assert not await store.replace_coffer_shard(A, b"something else", b"resealed")
    assert await store.replace_coffer_shard(A, b"sealed a", b"resealed")
    shard = await store.get_coffer_shard(A)
    assert shard is not None
    assert shard.sealed == b"resealed"
    assert not await store.replace_coffer_shard(B, b"sealed a", b"resealed")
