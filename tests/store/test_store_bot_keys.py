"""Bot keys on every backend: one pending request and one record per key however challenges race (two store
connections, as two nodes would have), first answer wins, nonces issued once and answered once."""

from __future__ import annotations

import asyncio

import pytest

from quicnprotochat.server.store import ApprovalState, LimitExceeded, Store

from .store_testlib import Backend, FakeClock, key

OWNER = b"o" * 32
BOT = key(7)


async def approve(store: Store, now: float) -> None:
    request = await store.open_bot_approval(BOT, OWNER, "helper", now + 60, 16)
    assert request is not None
    assert await store.settle_bot_approval(request.request_id, ApprovalState.APPROVED, now)


async def test_concurrent_challenges_of_one_unknown_key_share_one_request_and_make_one_record(
    backend: Backend,
) -> None:
    stores = [await backend.open(), await backend.open()]
    now = backend.clock()
    requests = await asyncio.gather(
        *(stores[i % 2].open_bot_approval(BOT, OWNER, "helper", now + 60, 16) for i in range(20))
    )
    assert all(request is not None for request in requests)
    assert len({request.request_id for request in requests if request is not None}) == 1
    request_id = requests[0].request_id if requests[0] else b""
    # Answers race too: exactly one applies.
    applied = await asyncio.gather(
        *(
            stores[i % 2].settle_bot_approval(request_id, state, now)
            for i, state in enumerate([ApprovalState.APPROVED, ApprovalState.REFUSED] * 5)
        )
    )
    assert applied.count(True) == 1
    settled = await stores[0].get_bot_approval(request_id)
    assert settled is not None and settled.state is not ApprovalState.PENDING
    records = await stores[1].list_bot_keys(OWNER)
    assert len(records) == (1 if settled.state is ApprovalState.APPROVED else 0)
    # A key with a record is not asked about again.
    if records:
        assert await stores[0].open_bot_approval(BOT, OWNER, "helper", now + 60, 16) is None


async def test_nonces_are_issued_once_and_answered_once(backend: Backend) -> None:
    stores = [await backend.open(), await backend.open()]
    await approve(stores[0], backend.clock())
    now = backend.clock()
    nonces = await asyncio.gather(*(stores[i % 2].take_bot_nonce(BOT, now + 60, 100) for i in range(40)))
    assert sorted(n for n in nonces if n is not None) == list(range(40))
    answers = await asyncio.gather(*(stores[i % 2].consume_bot_nonce(BOT, 5) for i in range(6)))
    assert answers.count(True) == 1
    assert not await stores[0].consume_bot_nonce(BOT, 40)  # never issued
    assert await stores[0].take_bot_nonce(key(8), now + 60, 100) is None  # no record


async def test_challenges_expire_and_are_bounded(store: Store, clock: FakeClock) -> None:
    await approve(store, clock())
    first = await store.take_bot_nonce(BOT, clock() + 10, 2)
    await store.take_bot_nonce(BOT, clock() + 10, 2)
    with pytest.raises(LimitExceeded, match="max_bot_challenges_per_key"):
        await store.take_bot_nonce(BOT, clock() + 10, 2)
    clock.advance(11)
    assert first is not None and not await store.consume_bot_nonce(BOT, first)  # expired
    assert await store.take_bot_nonce(BOT, clock() + 10, 2) == 2  # the refused take used no nonce


async def test_pending_requests_are_bounded_per_owner_and_expire(store: Store, clock: FakeClock) -> None:
    for n in range(2):
        assert await store.open_bot_approval(key(n), OWNER, "helper", clock() + 10, 2) is not None
    with pytest.raises(LimitExceeded, match="max_pending_bot_approvals_per_owner"):
        await store.open_bot_approval(key(5), OWNER, "helper", clock() + 10, 2)
    # Another owner has a cap of its own; joining a key already pending is not a new request.
    assert await store.open_bot_approval(key(6), b"p" * 32, "helper", clock() + 10, 2) is not None
    assert await store.open_bot_approval(key(0), OWNER, "helper", clock() + 10, 2) is not None
    clock.advance(11)
    assert await store.purge_bot_login_state(clock() - 300) == 0
    view = await store.list_bot_approvals(OWNER, clock() - 300)
    assert [request.state for request in view] == [ApprovalState.EXPIRED] * 2
    # Expired requests free the cap; and once decided long enough ago, they are dropped.
    assert await store.open_bot_approval(key(5), OWNER, "helper", clock() + 10, 2) is not None
    clock.advance(400)
    assert await store.purge_bot_login_state(clock() - 300) == 4  # the other owner's too
    assert [request.state for request in await store.list_bot_approvals(OWNER, 0)] == []


async def test_revoked_key_takes_and_answers_nothing(store: Store, clock: FakeClock) -> None:
    await approve(store, clock())
    nonce = await store.take_bot_nonce(BOT, clock() + 10, 10)
    assert nonce is not None
    assert not await store.revoke_bot_key(BOT, b"p" * 32)  # not the owner
    assert await store.revoke_bot_key(BOT, OWNER)
    assert not await store.revoke_bot_key(BOT, OWNER)
    assert not await store.consume_bot_nonce(BOT, nonce)
    assert await store.take_bot_nonce(BOT, clock() + 10, 10) is None
    record = await store.get_bot_key(BOT)
    assert record is not None and record.revoked
    # A revoked key's record stays: it is never asked about again.
    assert await store.open_bot_approval(BOT, OWNER, "helper", clock() + 10, 10) is None
