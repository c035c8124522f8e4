from __future__ import annotations

import pytest

from quicnprotochat.server.store import Store

from .store_testlib import FakeClock, key

pytestmark = pytest.mark.asyncio

ALICE, BOB = key(1), key(2)


async def test_one_record_per_identity_replaced_and_deleted(store: Store, clock: FakeClock) -> None:
    assert await store.get_endpoint(ALICE) is None
    await store.put_endpoint(ALICE, b"record-1", clock.now + 60)
    await store.put_endpoint(ALICE, b"record-2", clock.now + 60)
    assert await store.get_endpoint(ALICE) == b"record-2"
    assert await store.get_endpoint(BOB) is None
    await store.delete_endpoint(ALICE)
    assert await store.get_endpoint(ALICE) is None
    await store.delete_endpoint(ALICE)  # nothing to delete is fine


async def test_a_record_is_not_given_out_past_its_expiry_and_is_purged(store: Store, clock: FakeClock) -> None:
    await store.put_endpoint(ALICE, b"short", clock.now + 10)
    await store.put_endpoint(BOB, b"long", clock.now + 100)
    clock.advance(10)
    assert await store.get_endpoint(ALICE) is None
    assert await store.get_endpoint(BOB) == b"long"
    assert await store.purge_expired_endpoints() == 1
    clock.advance(90)
    assert await store.purge_expired_endpoints() == 1
    assert await store.get_endpoint(BOB) is None
    # A refreshed record lives on past the old expiry.
    await store.put_endpoint(ALICE, b"again", clock.now + 5)
    await store.put_endpoint(ALICE, b"refreshed", clock.now + 50)
    clock.advance(20)
    assert await store.get_endpoint(ALICE) == b"refreshed"
