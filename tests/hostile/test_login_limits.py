"""Login and registration limits that cannot be turned against the user (issue 13 rows: a stranger's bad
logins lock alice out; huge usernames fill the limiter; look-alike names dodge it; registration finish is free)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from quicnprotochat.bench.hostile import STRANGER
from quicnprotochat.bench.rawrpc import RawRpc, text, wire
from quicnprotochat.client import accounts
from quicnprotochat.common.errors import InvalidArgument, ResourceExhausted
from quicnprotochat.native import OpaqueClientLogin
from quicnprotochat.server.node import Node
from tests.conftest import UserFactory, loopback_config

from .conftest import Witness


def _failed_finishes(address: tuple[str, int], names: list[str], source: str) -> list[str]:
    """One bad opaqueLoginFinish per name, from `source`; returns each answer's reason."""
    raw = RawRpc(*address, source=source)
    try:
        reasons = []
        for name in names:
            params = wire.UsernameFinish.new_message(
                username=text(name), message=os.urandom(64), identityKey=os.urandom(32), identitySig=os.urandom(64)
            )
            reasons.append(raw.ask("opaqueLoginFinish", params).reason or "")
        return reasons
    finally:
        raw.close()


def _starts(address: tuple[str, int], name: str, count: int, source: str) -> list[str | None]:
    raw = RawRpc(*address, source=source)
    try:
        request = OpaqueClientLogin.start(b"guess")[1]
        params = wire.UsernameRequest.new_message(username=text(name), request=request)
        return [raw.ask("opaqueLoginStart", params).reason for _ in range(count)]
    finally:
        raw.close()


@pytest.fixture
async def strict_node(tmp_path: Path) -> AsyncIterator[Node]:
    node = Node(loopback_config(tmp_path / "n", login_rate_per_username=0.01, login_burst_per_username=3))
    await node.start()
    yield node
    await node.stop()


async def test_a_strangers_bad_logins_do_not_lock_the_owner_out(strict_node: Node, make_user: UserFactory) -> None:
    node = strict_node
    alice = await make_user(node, "alice", login=False)
    witness = Witness(await make_user(node, "carol"))
    assert node.tcp_address is not None
    # Free starts cost the stranger only its address bucket, never alice's.
    assert await witness.during(asyncio.to_thread(_starts, node.tcp_address, "alice", 12, STRANGER)) == [None] * 12
    reasons = await witness.during(asyncio.to_thread(_failed_finishes, node.tcp_address, ["alice"] * 6, STRANGER))
    assert all(r.startswith("message = unauthenticated:") for r in reasons[:3]), reasons
    assert all("resource_exhausted: rate limit for failed logins" in r for r in reasons[3:]), reasons
    assert node.counters.refused["login_rate_per_username"] == 3
    # alice, from her own address, still logs in every time.
    for _ in range(3):
        session = await accounts.login(alice.client, alice.vault, "alice", alice.password)
        assert session.identity_key == alice.key
    await witness.through()


async def test_look_alike_spellings_share_one_bucket(strict_node: Node, make_user: UserFactory) -> None:
    node = strict_node
    witness = Witness(await make_user(node, "carol"))
    assert node.tcp_address is not None
    # Fullwidth v and mathematical bold v: NFKC makes both a plain v.
    spellings = ["victim", "\uff56ictim", "\U0001d42fictim", "VICTIM"]
    reasons = await witness.during(asyncio.to_thread(_failed_finishes, node.tcp_address, spellings, STRANGER))
    assert "unauthenticated:" in reasons[2] and "resource_exhausted:" in reasons[3], reasons
    # Buckets are keyed by the normalized name only.
    assert node.state is not None
    assert set(node.state.limiter.login_failures._buckets) == {("victim", STRANGER)}
    await witness.through()


async def test_huge_usernames_never_become_bucket_keys(node: Node, make_user: UserFactory) -> None:
    witness = Witness(await make_user(node, "alice"))
    client = (await make_user(node, "probe", register=False, transport="tcp")).client
    request = OpaqueClientLogin.start(b"x")[1]
    assert node.state is not None
    limiter = node.state.limiter
    addresses = len(limiter.login_address)  # the witness's login

    async def attack() -> None:
        for _ in range(10):
            with pytest.raises(InvalidArgument, match="username"):
                await client.opaque_login_start("v" * (4 << 20), request)

    await witness.during(attack())
    assert len(limiter.login_failures) == 0
    assert len(limiter.login_address) == addresses  # refused before the address's login bucket too
    assert node.counters.refused == {}
    await witness.through()


async def test_registration_is_limited_per_address_finish_included(tmp_path: Path, make_user: UserFactory) -> None:
    node = Node(loopback_config(tmp_path / "n", register_rate_per_address=0.01, register_burst_per_address=4))
    await node.start()
    try:
        user = await make_user(node, "first")  # start + finish: 2 of the 4
        witness = Witness(user)
        upload = os.urandom(64)
        results = []

        async def attack() -> None:
            for _ in range(4):  # the finish alone, repeated: each one counts
                try:
                    await user.client.opaque_register_finish("second", upload, os.urandom(32), os.urandom(64))
                except Exception as error:  # we look at what each attempt got
                    results.append(type(error).__name__)

        await witness.during(attack())
        assert results[:2] != ["ResourceExhausted"] * 2 and results[2:] == ["ResourceExhausted"] * 2, results
        assert node.counters.refused["register_rate_per_address"] == 2
        await witness.through()
        # The account registered before the limit is whole: it logs in again.
        session = await accounts.login(user.client, user.vault, "first", user.password)
        assert session.identity_key == user.key
    finally:
        await node.stop()


async def test_registration_is_limited_in_total(tmp_path: Path, make_user: UserFactory) -> None:
    node = Node(loopback_config(tmp_path / "n", register_rate_total=0.01, register_burst_total=4))
    await node.start()
    try:
        one = await make_user(node, "one")
        two = await make_user(node, "two")
        witness = Witness(one, two)
        with pytest.raises(ResourceExhausted, match="registrations on this node"):
            await witness.during(make_user(node, "three"))
        assert node.counters.refused["register_rate_total"] == 1
        await witness.through()
        assert await one.client.resolve_user("two") == two.key  # registered before the limit: still there
    finally:
        await node.stop()
