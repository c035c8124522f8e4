from __future__ import annotations

import asyncio
import hashlib

import pytest

from quicnprotochat.server.store import AlreadyExists, Store

from .store_testlib import FakeClock, key

pytestmark = pytest.mark.asyncio

PASSWORD_FILE = b"opaque-registration-record-secret"


def token_hash(n: int) -> bytes:
    return hashlib.sha256(b"token %d" % n).digest()


async def test_account_lookups(store: Store) -> None:
    created = await store.create_account("alice", PASSWORD_FILE, key(1))
    assert (created.username, created.identity_key, created.password_file) == ("alice", key(1), PASSWORD_FILE)
    assert await store.get_account("alice") == created
    assert await store.get_account_by_identity(key(1)) == created
    assert await store.resolve_username("alice") == key(1)
    assert await store.resolve_identity(key(1)) == "alice"
    assert await store.get_account("bob") is None
    assert await store.get_account_by_identity(key(2)) is None
    assert await store.resolve_username("bob") is None
    assert await store.resolve_identity(key(2)) is None
    assert PASSWORD_FILE.decode() not in repr(created)


async def test_duplicate_username_or_identity_is_refused(store: Store) -> None:
    await store.create_account("alice", PASSWORD_FILE, key(1))
    with pytest.raises(AlreadyExists) as by_name:
        await store.create_account("alice", b"other", key(2))
    assert by_name.value.field == "username"
    with pytest.raises(AlreadyExists) as by_key:
        await store.create_account("bob", b"other", key(1))
    assert by_key.value.field == "identity_key"
    for error in (by_name.value, by_key.value):
        assert "other" not in str(error) and key(1).hex() not in str(error)
    assert await store.resolve_username("bob") is None


async def test_concurrent_registrations_of_one_name_yield_exactly_one(store: Store) -> None:
    results = await asyncio.gather(
        *(store.create_account("carol", b"file %d" % i, key(100 + i)) for i in range(20)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(e, AlreadyExists) and e.field == "username" for e in losers)
    assert await store.resolve_username("carol") == winners[0].identity_key


async def test_session_lifecycle(store: Store, clock: FakeClock) -> None:
    session = await store.create_session(token_hash(1), key(1), b"device-a", clock() + 60)
    assert (session.identity_key, session.device_id, session.issued_at) == (key(1), b"device-a", clock())
    assert await store.get_session(token_hash(1)) == session
    assert await store.get_session(token_hash(99)) is None
    with pytest.raises(AlreadyExists) as duplicate:
        await store.create_session(token_hash(1), key(2), b"", clock() + 60)
    assert duplicate.value.field == "token_hash"
    assert token_hash(1).hex() not in str(duplicate.value)
    clock.advance(60)
    assert await store.get_session(token_hash(1)) is None


async def test_session_revocation(store: Store, clock: FakeClock) -> None:
    for n in (1, 2, 3):
        await store.create_session(token_hash(n), key(1), b"", clock() + 60)
    await store.create_session(token_hash(4), key(2), b"", clock() + 60)
    assert await store.revoke_session(token_hash(1))
    assert not await store.revoke_session(token_hash(1))
    assert not await store.revoke_session(token_hash(99))
    assert await store.get_session(token_hash(1)) is None
    assert await store.get_session(token_hash(2)) is not None
    assert await store.revoke_sessions(key(1)) == 2
    assert await store.get_session(token_hash(3)) is None
    assert await store.get_session(token_hash(4)) is not None


async def test_purge_expired_sessions(store: Store, clock: FakeClock) -> None:
    await store.create_session(token_hash(1), key(1), b"", clock() + 10)
    await store.create_session(token_hash(2), key(1), b"", clock() + 100)
    clock.advance(10)
    assert await store.purge_expired_sessions() == 1
    assert await store.get_session(token_hash(2)) is not None


async def test_login_state_is_single_use(store: Store, clock: FakeClock) -> None:
    await store.put_login_state(b"state-1", "alice", b"server-login-state", clock() + 30)
    with pytest.raises(AlreadyExists):
        await store.put_login_state(b"state-1", "alice", b"again", clock() + 30)
    taken = await store.take_login_state(b"state-1")
    assert taken is not None
    assert (taken.username, taken.state) == ("alice", b"server-login-state")
    assert b"server-login-state".decode() not in repr(taken)
    assert await store.take_login_state(b"state-1") is None
    assert await store.take_login_state(b"unknown") is None


async def test_login_state_concurrent_takes_yield_one(store: Store, clock: FakeClock) -> None:
    await store.put_login_state(b"state-1", "alice", b"s", clock() + 30)
    results = await asyncio.gather(*(store.take_login_state(b"state-1") for _ in range(10)))
    assert sum(r is not None for r in results) == 1


async def test_login_state_expires(store: Store, clock: FakeClock) -> None:
    await store.put_login_state(b"old", "alice", b"s", clock() + 30)
    await store.put_login_state(b"new", "bob", b"s", clock() + 300)
    clock.advance(30)
    assert await store.take_login_state(b"old") is None
    assert await store.purge_expired_login_states() == 0  # the take above already dropped it
    await store.put_login_state(b"old2", "alice", b"s", clock() + 1)
    clock.advance(1)
    assert await store.purge_expired_login_states() == 1
    assert await store.take_login_state(b"new") is not None
