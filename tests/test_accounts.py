"""Accounts and auth on a real node: OPAQUE registration and login, tokens, authorization, rate limits."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from quicnprotochat.client import NodeClient, accounts
from quicnprotochat.common.errors import (
    AlreadyExists,
    Forbidden,
    InvalidArgument,
    ResourceExhausted,
    Unauthenticated,
)
from quicnprotochat.common.transcripts import login_transcript, register_transcript
from quicnprotochat.native import OpaqueClientLogin, OpaqueClientRegistration, Vault
from quicnprotochat.server.config import NodeConfig
from quicnprotochat.server.node import Node
from tests.conftest import ClientFactory, FakeClock, UserFactory, loopback_config, node_address


async def test_register_login_and_call(node: Node, make_user: UserFactory) -> None:
    alice = await make_user(node, "alice")
    bob = await make_user(node, "bob")
    assert await alice.client.resolve_user("bob") == bob.key
    assert await alice.client.resolve_user("BOB") == bob.key  # usernames are case-folded
    assert await alice.client.resolve_identity(alice.key) == "alice"
    assert await alice.client.resolve_user("nobody") is None
    assert await alice.client.resolve_identity(os.urandom(32)) is None


async def test_username_rules(node: Node, make_user: UserFactory) -> None:
    user = await make_user(node, "ignored", register=False)
    for bad in ("ab", "x" * 33, "white space", "émile", ""):
        with pytest.raises(InvalidArgument, match="3 to 32 characters"):
            await accounts.register(user.client, user.vault, bad, "pw")
    await accounts.register(user.client, user.vault, "Carol_1.x-y", "pw")
    await accounts.login(user.client, user.vault, "carol_1.x-y", "pw")
    assert await user.client.resolve_identity(user.key) == "carol_1.x-y"


async def _failed_login(client: NodeClient, vault: Vault, name: str, password: str) -> tuple[str, float]:
    started = time.perf_counter()
    with pytest.raises(Unauthenticated) as raised:
        await accounts.login_token(client, vault, name, password)
    return str(raised.value), time.perf_counter() - started


async def test_wrong_password_and_unknown_user_look_alike(node: Node, make_user: UserFactory) -> None:
    alice = await make_user(node, "alice", login=False)
    wrong = [await _failed_login(alice.client, alice.vault, "alice", "not the password") for _ in range(3)]
    unknown = [await _failed_login(alice.client, alice.vault, "nosuchuser", "whatever") for _ in range(3)]
    assert {message for message, _ in wrong} == {message for message, _ in unknown}
    # Both pay the same password hardening; no early exit tells an unknown name apart.
    ratio = statistics.median(t for _, t in unknown) / statistics.median(t for _, t in wrong)
    assert 0.33 < ratio < 3.0, ratio


async def test_concurrent_registrations_of_one_name(node: Node, make_user: UserFactory) -> None:
    users = [await make_user(node, f"racer{i}", register=False) for i in range(2)]
    results = await asyncio.gather(
        *(accounts.register(user.client, user.vault, "samename", "pw") for user in users), return_exceptions=True
    )
    assert sum(result is None for result in results) == 1
    loser = next(result for result in results if result is not None)
    assert isinstance(loser, AlreadyExists) and "taken" in str(loser)


async def test_one_account_per_identity_key(node: Node, make_user: UserFactory) -> None:
    alice = await make_user(node, "alice")
    with pytest.raises(AlreadyExists, match="identity key"):
        await accounts.register(alice.client, alice.vault, "alice2", "pw")


async def test_logout_revokes(node: Node, make_user: UserFactory) -> None:
    alice = await make_user(node, "alice")
    token = alice.client.access_token
    assert alice.session is not None
    await alice.session.logout()
    alice.client.access_token = token  # try the old token anyway
    with pytest.raises(Unauthenticated, match="revoked"):
        await alice.client.resolve_user("alice")


async def test_token_expiry_and_relogin(tmp_path: Path, make_user: UserFactory) -> None:
    clock = FakeClock()
    node = Node(loopback_config(tmp_path / "node", session_ttl_seconds=60), clock=clock)
    await node.start()
    try:
        alice = await make_user(node, "alice")
        old = alice.client.access_token
        clock.advance(61)
        # The session logs in again by itself and the call goes through.
        assert await alice.client.resolve_user("alice") == alice.key
        assert alice.client.access_token != old
        # Without the re-login hook the expired token is just refused.
        alice.client.relogin = None
        alice.client.access_token = old
        with pytest.raises(Unauthenticated, match="expired"):
            await alice.client.resolve_user("alice")
    finally:
        await node.stop()


async def test_a_recently_used_token_still_expires_on_time(tmp_path: Path, make_user: UserFactory) -> None:
    clock = FakeClock()
    node = Node(loopback_config(tmp_path / "node", session_ttl_seconds=60), clock=clock)
    await node.start()
    try:
        alice = await make_user(node, "alice")
        alice.client.relogin = None
        assert await alice.client.resolve_user("alice") == alice.key  # the node now has the session at hand
        clock.advance(61)
        with pytest.raises(Unauthenticated, match="expired"):
            await alice.client.resolve_user("alice")
    finally:
        await node.stop()


async def test_token_acts_only_for_its_identity(node: Node, make_user: UserFactory) -> None:
    alice = await make_user(node, "alice")
    bob = await make_user(node, "bob")
    with pytest.raises(Forbidden):
        await alice.client.upload_hybrid_key(bob.key, alice.vault.hybrid_public_key())
    with pytest.raises(Forbidden):
        await alice.client.fetch(bob.key)
    with pytest.raises(Forbidden):
        await alice.client.publish_endpoint(bob.key, b"addr")
    with pytest.raises(Forbidden):
        await alice.client.upload_key_package(bob.key, bob.vault.create_key_package())


async def _login_messages(client: NodeClient, vault: Vault, name: str, password: str) -> tuple[bytes, bytes]:
    login, request = OpaqueClientLogin.start(password.encode())
    response = await client.opaque_login_start(name, request)
    finalization, _ = login.finish(response)
    return finalization, vault.sign(login_transcript(name, vault.identity_key, finalization))


async def test_login_finish_is_single_use(node: Node, make_user: UserFactory) -> None:
    alice = await make_user(node, "alice", login=False)
    finalization, signature = await _login_messages(alice.client, alice.vault, "alice", alice.password)
    assert await alice.client.opaque_login_finish("alice", finalization, alice.key, signature)
    with pytest.raises(Unauthenticated, match="no login in progress"):
        await alice.client.opaque_login_finish("alice", finalization, alice.key, signature)


async def test_login_state_expires(tmp_path: Path, make_user: UserFactory) -> None:
    clock = FakeClock()
    node = Node(loopback_config(tmp_path / "node", login_state_seconds=60), clock=clock)
    await node.start()
    try:
        alice = await make_user(node, "alice", login=False)
        finalization, signature = await _login_messages(alice.client, alice.vault, "alice", alice.password)
        clock.advance(61)
        with pytest.raises(Unauthenticated, match="expired"):
            await alice.client.opaque_login_finish("alice", finalization, alice.key, signature)
    finally:
        await node.stop()


async def test_login_state_belongs_to_its_connection(
    node: Node, make_user: UserFactory, connect: ClientFactory
) -> None:
    alice = await make_user(node, "alice", login=False)
    finalization, signature = await _login_messages(alice.client, alice.vault, "alice", alice.password)
    other = await connect(node)
    with pytest.raises(Unauthenticated, match="no login in progress"):
        await other.opaque_login_finish("alice", finalization, alice.key, signature)


async def test_proof_of_possession(node: Node, make_user: UserFactory) -> None:
    alice = await make_user(node, "alice", register=False)
    mallory = await make_user(node, "mallory", register=False)
    registration, request = OpaqueClientRegistration.start(b"pw")
    upload, _ = registration.finish(await alice.client.opaque_register_start("alice", request))
    # Signed by another key than the one claimed; then a signature over another username.
    forged = mallory.vault.sign(register_transcript("alice", alice.key, upload))
    with pytest.raises(Unauthenticated, match="identitySig"):
        await alice.client.opaque_register_finish("alice", upload, alice.key, forged)
    wrong_name = alice.vault.sign(register_transcript("alice2", alice.key, upload))
    with pytest.raises(Unauthenticated, match="identitySig"):
        await alice.client.opaque_register_finish("alice", upload, alice.key, wrong_name)
    with pytest.raises(Unauthenticated, match="identitySig"):
        await alice.client.opaque_register_finish("alice", upload, alice.key, b"")
    good = alice.vault.sign(register_transcript("alice", alice.key, upload))
    assert await alice.client.opaque_register_finish("alice", upload, alice.key, good)

    # Login: the right password but someone else's key, then a bad signature.
    finalization, _ = await _login_messages(alice.client, alice.vault, "alice", "pw")
    signature = mallory.vault.sign(login_transcript("alice", mallory.key, finalization))
    with pytest.raises(Unauthenticated, match="not this account's identity key"):
        await alice.client.opaque_login_finish("alice", finalization, mallory.key, signature)
    finalization, _ = await _login_messages(alice.client, alice.vault, "alice", "pw")
    with pytest.raises(Unauthenticated, match="identitySig"):
        await alice.client.opaque_login_finish("alice", finalization, alice.key, bytes(64))


async def test_rate_limit_refuses_then_refills(tmp_path: Path, make_user: UserFactory) -> None:
    node = Node(loopback_config(tmp_path / "node", rate_per_identity=10.0, burst_per_identity=3))
    await node.start()
    try:
        alice = await make_user(node, "alice")
        results = await asyncio.gather(*(alice.client.resolve_user("alice") for _ in range(6)), return_exceptions=True)
        refused = [r for r in results if isinstance(r, ResourceExhausted)]
        assert 1 <= len(refused) <= 3 and all(r.retry_after and r.retry_after > 0 for r in refused)
        await asyncio.sleep(max(r.retry_after or 0 for r in refused) + 0.1)
        assert await alice.client.resolve_user("alice") == alice.key
    finally:
        await node.stop()


async def test_login_starts_are_not_counted_per_username(tmp_path: Path, make_user: UserFactory) -> None:
    """A start costs the caller nothing but its address bucket: only failed finishes count against a username
    (and only per source address; tests/hostile/test_login_limits.py)."""
    config = loopback_config(tmp_path / "node", login_rate_per_username=0.01, login_burst_per_username=2)
    node = Node(config)
    await node.start()
    try:
        alice = await make_user(node, "alice", register=False)
        request = OpaqueClientLogin.start(b"x")[1]
        for name in ("victim", "Victim", "victim", "victim"):
            await alice.client.opaque_login_start(name, request)
    finally:
        await node.stop()


KEY = b"k" * 32
AUTHENTICATED_CALLS: dict[str, dict[str, Any]] = {
    "uploadKeyPackage": {"identityKey": KEY, "package": b"p"},
    "fetchKeyPackage": {"identityKey": KEY},
    "enqueue": {"recipientKey": KEY, "payload": b"x", "channelId": b"", "version": 1},
    "fetch": {"recipientKey": KEY, "channelId": b"", "version": 1, "limit": 0},
    "fetchWait": {"recipientKey": KEY, "channelId": b"", "version": 1, "timeoutMs": 10, "limit": 0},
    "uploadHybridKey": {"identityKey": KEY, "hybridPublicKey": b"h"},
    "fetchHybridKey": {"identityKey": KEY},
    "publishEndpoint": {"identityKey": KEY, "nodeAddr": b"a"},
    "resolveEndpoint": {"identityKey": KEY},
    "peek": {"recipientKey": KEY, "channelId": b"", "version": 1, "limit": 0},
    "peekWait": {"recipientKey": KEY, "channelId": b"", "version": 1, "timeoutMs": 10, "limit": 0},
    "ack": {"recipientKey": KEY, "channelId": b"", "version": 1, "seqUpTo": 1},
    "fetchHybridKeys": {"identityKeys": [KEY]},
    "batchEnqueue": {"recipientKeys": [KEY], "payload": b"x", "channelId": b"", "version": 1},
    "createChannel": {"peerKey": KEY},
    "resolveUser": {"username": "alice"},
    "resolveIdentity": {"identityKey": KEY},
    "logout": {},
    "submitCommit": {"groupId": b"g", "epoch": 0, "message": b"m", "deliveries": [], "welcomes": [], "members": []},
    "putBlob": {"data": b"blob"},
    "getBlob": {"blobId": b"\x00" * 32},
    "fetchCoffer": {},
    "botApprovalWait": {"sinceDigest": b"", "timeoutMs": 0},
    "botApprovalAnswer": {"requestId": b"\x00" * 16, "approve": True},
    "listBots": {},
    "revokeBot": {"identityKey": b"\x00" * 32},
}


def test_every_authenticated_method_is_covered() -> None:
    from quicnprotochat.common.schema import node_service_methods

    public = {
        "health",
        "serverInfo",
        "nodeStatus",
        "opaqueRegisterStart",
        "opaqueRegisterFinish",
        "opaqueLoginStart",
        "opaqueLoginFinish",
        "authChallenge",
        "authRespond",
    }
    assert set(AUTHENTICATED_CALLS) == set(node_service_methods()) - public


@pytest.mark.parametrize("method", sorted(AUTHENTICATED_CALLS))
@pytest.mark.parametrize(
    ("token", "reason"),
    [(None, "needs auth"), (b"", "missing access token"), (b"short", "malformed"), (os.urandom(32), "unknown")],
)
async def test_authenticated_methods_refuse_bad_tokens(
    node: Node, connect: ClientFactory, method: str, token: bytes | None, reason: str
) -> None:
    client = await connect(node)
    params = dict(AUTHENTICATED_CALLS[method])
    if token is not None:
        params["auth"] = {"version": 1, "accessToken": token}
    with pytest.raises(Unauthenticated, match=reason):
        await client._call(method, **params)


async def test_auth_version_must_be_1(node: Node, make_user: UserFactory) -> None:
    alice = await make_user(node, "alice")
    with pytest.raises(InvalidArgument, match=r"auth\.version must be 1"):
        await alice.client._call(
            "resolveUser", username="a", auth={"version": 2, "accessToken": alice.client.access_token}
        )


async def test_opaque_setup_persists(node_config: NodeConfig, make_user: UserFactory) -> None:
    node = Node(node_config)
    await node.start()
    alice = await make_user(node, "alice", login=False)
    await node.stop()
    restarted = Node(node_config)
    await restarted.start()
    try:
        client = NodeClient(node_address(restarted, "quic"), known_hosts=alice.client.known_hosts)
        session = await accounts.login(client, alice.vault, "alice", alice.password)
        assert await client.resolve_identity(session.identity_key) == "alice"
        await client.close()
    finally:
        await restarted.stop()
