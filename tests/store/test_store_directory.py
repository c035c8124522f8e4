from __future__ import annotations

import asyncio
import hashlib

import pytest

from quicnprotochat.server.store import AlreadyExists, LimitExceeded, Store, StoreLimits

from .store_testlib import Backend, FakeClock, key

pytestmark = pytest.mark.asyncio

ALICE, BOB, CAROL = key(1), key(2), key(3)


def package(n: int) -> tuple[bytes, bytes]:
    data = b"key package %d" % n
    return data, hashlib.sha256(data).digest()


async def add(
    store: Store, identity: bytes, n: int, *, last_resort: bool = False, not_after: float | None = None
) -> None:
    data, fingerprint = package(n)
    await store.add_key_package(identity, data, fingerprint, last_resort=last_resort, not_after=not_after)


async def test_key_packages_are_taken_oldest_first_and_removed(store: Store) -> None:
    for n in (1, 2, 3):
        await add(store, ALICE, n)
    await add(store, BOB, 4)
    assert await store.count_key_packages(ALICE) == 3
    taken = [await store.take_key_package(ALICE) for _ in range(4)]
    assert [t.package if t else None for t in taken] == [package(1)[0], package(2)[0], package(3)[0], None]
    assert taken[0] is not None and taken[0].fingerprint == package(1)[1] and not taken[0].last_resort
    assert await store.count_key_packages(ALICE) == 0
    assert await store.count_key_packages(BOB) == 1


async def test_last_resort_package_is_returned_but_kept(store: Store) -> None:
    await add(store, ALICE, 1, last_resort=True)
    await add(store, ALICE, 2)
    first = await store.take_key_package(ALICE)
    assert first is not None and first.package == package(2)[0]
    for _ in range(3):
        again = await store.take_key_package(ALICE)
        assert again is not None and again.last_resort and again.package == package(1)[0]
    assert await store.count_key_packages(ALICE) == 1


async def test_concurrent_takes_never_share_a_package(store: Store) -> None:
    for n in range(10):
        await add(store, ALICE, n)
    await add(store, ALICE, 99, last_resort=True)
    results = await asyncio.gather(*(store.take_key_package(ALICE) for _ in range(25)))
    ordinary = [r.package for r in results if r is not None and not r.last_resort]
    assert sorted(ordinary) == sorted(package(n)[0] for n in range(10))
    assert sum(1 for r in results if r is not None and r.last_resort) == 15


async def test_expired_key_packages_are_skipped(store: Store, clock: FakeClock) -> None:
    await add(store, ALICE, 1, not_after=clock() + 10)
    await add(store, ALICE, 2, last_resort=True, not_after=clock() + 10)
    clock.advance(10)
    assert await store.count_key_packages(ALICE) == 0
    assert await store.take_key_package(ALICE) is None


async def test_duplicate_fingerprint_is_refused(store: Store) -> None:
    await add(store, ALICE, 1)
    with pytest.raises(AlreadyExists) as duplicate:
        await add(store, BOB, 1)
    assert duplicate.value.field == "fingerprint"


async def test_key_package_cap(backend: Backend, clock: FakeClock) -> None:
    store = await backend.open(StoreLimits(max_key_packages_per_identity=3))
    await add(store, ALICE, 1, not_after=clock() + 5)
    await add(store, ALICE, 2)
    await add(store, ALICE, 3, last_resort=True)
    with pytest.raises(LimitExceeded) as refused:
        await add(store, ALICE, 4)
    assert (refused.value.limit_name, refused.value.limit, refused.value.actual) == (
        "max_key_packages_per_identity",
        3,
        4,
    )
    assert await store.count_key_packages(ALICE) == 3
    await add(store, BOB, 5)  # the cap is per identity
    clock.advance(5)  # an expired package no longer counts
    await add(store, ALICE, 4)
    assert await store.count_key_packages(ALICE) == 3


async def test_hybrid_keys(store: Store) -> None:
    assert await store.get_hybrid_key(ALICE) is None
    await store.put_hybrid_key(ALICE, b"\x01" * 1216)
    await store.put_hybrid_key(BOB, b"\x02" * 1216)
    await store.put_hybrid_key(ALICE, b"\x03" * 1216)  # replaces
    assert await store.get_hybrid_key(ALICE) == b"\x03" * 1216
    many = await store.get_hybrid_keys([BOB, CAROL, ALICE, BOB])
    assert many == [b"\x02" * 1216, None, b"\x03" * 1216, b"\x02" * 1216]
    assert await store.get_hybrid_keys([]) == []
    lots = await store.get_hybrid_keys([key(n) for n in range(1200)])
    assert len(lots) == 1200 and lots[1] == b"\x03" * 1216 and lots[2] == b"\x02" * 1216


async def test_channel_ids_are_per_unordered_pair(store: Store) -> None:
    ab = await store.get_or_create_channel(ALICE, BOB)
    assert len(ab) == 16
    assert await store.get_or_create_channel(BOB, ALICE) == ab
    ac = await store.get_or_create_channel(CAROL, ALICE)
    assert ac != ab
    assert await store.channel_members(ab) == (ALICE, BOB)
    assert await store.channel_members(ac) == (ALICE, CAROL)
    assert await store.channel_members(b"\x00" * 16) is None
    notepad = await store.get_or_create_channel(ALICE, ALICE)
    assert await store.channel_members(notepad) == (ALICE, ALICE)


async def test_concurrent_channel_creation_yields_one_id(store: Store) -> None:
    pairs = [(ALICE, BOB) if i % 2 else (BOB, ALICE) for i in range(20)]
    ids = await asyncio.gather(*(store.get_or_create_channel(a, b) for a, b in pairs))
    assert len(set(ids)) == 1


async def test_server_secret_is_created_once(store: Store) -> None:
    assert await store.get_or_create_secret("opaque", b"first") == b"first"
    assert await store.get_or_create_secret("opaque", b"second") == b"first"
    assert await store.get_or_create_secret("other", b"x") == b"x"


async def test_concurrent_secret_creation_agrees(store: Store) -> None:
    candidates = [bytes([n]) * 8 for n in range(10)]
    results = await asyncio.gather(*(store.get_or_create_secret("raced", c) for c in candidates))
    assert len(set(results)) == 1 and results[0] in candidates
