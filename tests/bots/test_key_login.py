"""Key login for bots against a real node: challenge, the owner's approval from its logged-in clients, response,
nonce rules, revocation, limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from quicnprotochat.client import NodeClient, accounts
from quicnprotochat.client.accounts import key_login_token
from quicnprotochat.common.errors import (
    AlreadyExists,
    Forbidden,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
)
from quicnprotochat.common.transcripts import key_login_transcript
from quicnprotochat.native import Vault
from quicnprotochat.server.config import NodeConfig
from quicnprotochat.server.node import Node
from quicnprotochat.server.services.sessions import SESSION_CACHE_SECONDS
from tests.bots.botlib import approved_key_login, wait_for_pending
from tests.conftest import BotFactory, ClientFactory, User, UserFactory

pytestmark = pytest.mark.timeout(60)

NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
async def node_with(node_config: NodeConfig) -> AsyncIterator[NodeFactory]:
    """Starts nodes with settings of the test's choosing; all are stopped when it ends."""
    started: list[Node] = []

    async def factory(**settings: Any) -> Node:
        node = Node(replace(node_config, **settings))
        await node.start()
        started.append(node)
        return node

    yield factory
    for node in started:
        await node.stop()


async def approved_token(owner: User, client: NodeClient, bot: Vault, name: str = "helper") -> bytes:
    return await approved_key_login(owner.client, owner.name, client, bot, name)


async def test_owner_approves_then_the_bot_logs_in_by_key_alone(
    node: Node, make_user: UserFactory, connect: ClientFactory, make_bot: BotFactory
) -> None:
    alice = await make_user(node, "alice")
    bot = make_bot()
    client = await connect(node)
    login = asyncio.ensure_future(key_login_token(client, bot, "Alice", "helper"))
    view = await alice.client.bot_approval_wait(b"", timeout_ms=5000)
    if not view.requests:
        view = await alice.client.bot_approval_wait(view.digest, timeout_ms=5000)
    (request,) = view.requests
    assert (request.identity_key, request.name, request.state) == (bot.identity_key, "helper", "pending")
    assert not login.done()  # the bot waits for the owner
    assert await alice.client.bot_approval_answer(request.request_id, True) == "approved"
    client.access_token = await login
    # An ordinary session of the bot's own identity: every method works with it.
    await client.upload_hybrid_key(bot.identity_key, bot.hybrid_public_key())
    assert await client.fetch_hybrid_key(bot.identity_key) == bot.hybrid_public_key()
    (listed,) = await alice.client.list_bots()
    assert (listed.identity_key, listed.name, listed.revoked) == (bot.identity_key, "helper", False)
    # Known now: later logins need no approval.
    second = await connect(node)
    second.access_token = await asyncio.wait_for(key_login_token(second, bot, "alice", "helper"), 10)
    assert await second.resolve_user("alice") == alice.key


async def test_first_answer_wins_and_the_other_client_sees_it_decided(
    node: Node, make_user: UserFactory, connect: ClientFactory, make_bot: BotFactory
) -> None:
    alice = await make_user(node, "alice")
    laptop = await connect(node)
    laptop.access_token = alice.client.access_token
    bot = make_bot()
    login = asyncio.ensure_future(key_login_token(await connect(node), bot, "alice", "helper"))
    (request_id,) = await wait_for_pending(alice.client)
    laptop_view = await laptop.bot_approval_wait(b"", timeout_ms=5000)
    assert [r.state for r in laptop_view.requests] == ["pending"]
    # The laptop parks on what it has seen; the phone's answer wakes it with the request decided.
    laptop_wait = asyncio.ensure_future(laptop.bot_approval_wait(laptop_view.digest, timeout_ms=10_000))
    await asyncio.sleep(0.2)
    assert not laptop_wait.done()
    assert await alice.client.bot_approval_answer(request_id, True) == "approved"
    decided = await asyncio.wait_for(laptop_wait, 5)
    assert [(r.request_id, r.state) for r in decided.requests] == [(request_id, "approved")]
    # A late answer from the laptop changes nothing and says how it ended.
    assert await laptop.bot_approval_answer(request_id, False) == "approved"
    await login


async def test_refusal_is_a_clear_error_and_final_for_that_request(
    node: Node, make_user: UserFactory, connect: ClientFactory, make_bot: BotFactory
) -> None:
    alice = await make_user(node, "alice")
    bot = make_bot()
    client = await connect(node)
    login = asyncio.ensure_future(key_login_token(client, bot, "alice", "helper"))
    (request_id,) = await wait_for_pending(alice.client)
    assert await alice.client.bot_approval_answer(request_id, False) == "refused"
    with pytest.raises(Forbidden, match="alice refused this bot key"):
        await login
    assert await alice.client.bot_approval_answer(request_id, True) == "refused"
    assert await alice.client.list_bots() == []
    # A later attempt is a new request, asked again.
    again = asyncio.ensure_future(key_login_token(client, bot, "alice", "helper"))
    (second_id,) = await wait_for_pending(alice.client)
    assert second_id != request_id
    await alice.client.bot_approval_answer(second_id, True)
    assert len(await again) == 32


async def test_unanswered_request_is_refused_after_the_timeout(
    node_with: NodeFactory, make_user: UserFactory, connect: ClientFactory, make_bot: BotFactory
) -> None:
    node = await node_with(bot_approval_timeout_s=1.0)
    alice = await make_user(node, "alice")
    assert (await alice.client.server_info()).limits.bot_approval_timeout_s == 1.0
    login = asyncio.ensure_future(key_login_token(await connect(node), make_bot(), "alice", "helper"))
    (request_id,) = await wait_for_pending(alice.client)
    with pytest.raises(Forbidden, match=r"alice did not approve this bot key within 1 s; the request is refused"):
        await asyncio.wait_for(login, 10)
    view = await alice.client.bot_approval_wait(b"", timeout_ms=0)
    assert [(r.request_id, r.state) for r in view.requests] == [(request_id, "expired")]
    assert await alice.client.bot_approval_answer(request_id, True) == "expired"
    assert await alice.client.list_bots() == []


async def test_a_nonce_answers_once_for_its_key_and_node(
    node: Node, make_user: UserFactory, connect: ClientFactory, make_bot: BotFactory
) -> None:
    alice = await make_user(node, "alice")
    bot = make_bot()
    client = await connect(node)
    await approved_token(alice, client, bot)
    fingerprint = node.fingerprint
    nonce = await client.auth_challenge(bot.identity_key, "alice", "helper")
    signature = bot.sign(key_login_transcript(fingerprint, bot.identity_key, nonce))
    # Over another nonce (the next one, not yet issued, and an earlier one, already used): refused.
    for other in (nonce + 1, nonce - 1):
        with pytest.raises(Unauthenticated):
            await client.auth_respond(
                bot.identity_key, other, bot.sign(key_login_transcript(fingerprint, bot.identity_key, other))
            )
    # Made for another node: refused, and the challenge is still there for the right signature.
    elsewhere = bot.sign(key_login_transcript("ab" * 32, bot.identity_key, nonce))
    with pytest.raises(Unauthenticated, match="signature does not verify"):
        await client.auth_respond(bot.identity_key, nonce, elsewhere)
    # Another key's signature over the right transcript: refused.
    with pytest.raises(Unauthenticated, match="signature does not verify"):
        await client.auth_respond(
            bot.identity_key, nonce, make_bot().sign(key_login_transcript(fingerprint, bot.identity_key, nonce))
        )
    assert len(await client.auth_respond(bot.identity_key, nonce, signature)) == 32
    # Replayed: refused.
    with pytest.raises(Unauthenticated, match="already answered"):
        await client.auth_respond(bot.identity_key, nonce, signature)


async def test_concurrent_challenges_get_distinct_nonces(
    node_with: NodeFactory, make_user: UserFactory, connect: ClientFactory, make_bot: BotFactory
) -> None:
    node = await node_with(login_burst_per_address=200)
    alice = await make_user(node, "alice")
    bot = make_bot()
    clients = [await connect(node) for _ in range(5)]
    await approved_token(alice, clients[0], bot)
    nonces = await asyncio.gather(
        *(clients[i % 5].auth_challenge(bot.identity_key, "alice", "helper") for i in range(50))
    )
    assert len(set(nonces)) == 50
    # Each answers once, in any order.
    fingerprint = node.fingerprint
    tokens = await asyncio.gather(
        *(
            clients[i % 5].auth_respond(
                bot.identity_key, n, bot.sign(key_login_transcript(fingerprint, bot.identity_key, n))
            )
            for i, n in enumerate(reversed(nonces))
        )
    )
    assert len(set(tokens)) == 50


async def test_revoked_key_loses_its_session_and_cannot_log_in_again(
    node: Node, make_user: UserFactory, connect: ClientFactory, make_bot: BotFactory
) -> None:
    alice = await make_user(node, "alice")
    bot = make_bot()
    client = await connect(node)
    client.access_token = await approved_token(alice, client, bot)
    assert await client.resolve_user("alice") == alice.key
    assert await alice.client.enqueue(bot.identity_key, b"hello bot") == 1  # bots receive like accounts
    await alice.client.revoke_bot(bot.identity_key)
    with pytest.raises(Unauthenticated, match="revoked"):
        await client.resolve_user("alice")
    with pytest.raises(Forbidden, match="revoked by its owner"):
        await key_login_token(client, bot, "alice", "helper")
    (listed,) = await alice.client.list_bots()
    assert listed.revoked
    # Nobody can write to it any more either (other nodes' caches: within the session cache time).
    await asyncio.sleep(SESSION_CACHE_SECONDS + 0.1)
    with pytest.raises(NotFound, match="belongs to no account"):
        await alice.client.enqueue(bot.identity_key, b"still there?")
    with pytest.raises(NotFound):
        await alice.client.revoke_bot(bot.identity_key)


async def test_only_the_owner_sees_answers_and_revokes(
    node: Node, make_user: UserFactory, connect: ClientFactory, make_bot: BotFactory
) -> None:
    alice = await make_user(node, "alice")
    mallory = await make_user(node, "mallory")
    bot = make_bot()
    client = await connect(node)
    login = asyncio.ensure_future(key_login_token(client, bot, "alice", "helper"))
    (request_id,) = await wait_for_pending(alice.client)
    assert (await mallory.client.bot_approval_wait(b"", timeout_ms=0)).requests == []
    # While alice is asked, the same key cannot ask mallory too.
    with pytest.raises(Forbidden, match="waiting for another account's approval"):
        await (await connect(node)).auth_challenge(bot.identity_key, "mallory", "helper")
    with pytest.raises(NotFound):
        await mallory.client.bot_approval_answer(request_id, True)
    await alice.client.bot_approval_answer(request_id, True)
    await login
    with pytest.raises(NotFound):
        await mallory.client.revoke_bot(bot.identity_key)
    assert await mallory.client.list_bots() == []
    # The key is alice's bot: presenting it as mallory's is refused without asking anyone.
    with pytest.raises(Unauthenticated, match="not a bot of mallory"):
        await client.auth_challenge(bot.identity_key, "mallory", "helper")


async def test_bad_challenges_are_refused_with_reasons(
    node: Node, make_user: UserFactory, connect: ClientFactory, make_bot: BotFactory
) -> None:
    alice = await make_user(node, "alice")
    client = await connect(node)
    bot = make_bot()
    with pytest.raises(NotFound, match="no account named nobody"):
        await client.auth_challenge(bot.identity_key, "nobody", "helper")
    with pytest.raises(InvalidArgument, match="identityKey must be a 32-byte"):
        await client.auth_challenge(b"short", "alice", "helper")
    with pytest.raises(InvalidArgument, match="botName: a bot's name"):
        await client.auth_challenge(bot.identity_key, "alice", "x")
    # An account's identity key logs in with its password, never as a bot.
    with pytest.raises(Forbidden, match="account's identity key"):
        await client.auth_challenge(alice.key, "alice", "helper")
    with pytest.raises(Unauthenticated):
        await client.auth_respond(bot.identity_key, 2**64 - 1, b"\x00" * 64)


async def test_a_bot_key_cannot_become_an_account(
    node: Node, make_user: UserFactory, connect: ClientFactory, make_bot: BotFactory
) -> None:
    alice = await make_user(node, "alice")
    bot = make_bot()
    client = await connect(node)
    await approved_token(alice, client, bot)
    with pytest.raises(AlreadyExists, match="bot's key"):
        await accounts.register(client, bot, "helper", "a password")
    assert await alice.client.resolve_user("helper") is None


async def test_failed_answers_are_rate_limited_per_key_and_address(
    node_with: NodeFactory, make_user: UserFactory, connect: ClientFactory, make_bot: BotFactory
) -> None:
    node = await node_with(login_burst_per_username=3)
    client = await connect(node)
    bot, other = make_bot(), make_bot()
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            await client.auth_respond(bot.identity_key, 0, b"\x00" * 64)
    with pytest.raises(ResourceExhausted, match="failed logins for this key from this address"):
        await client.auth_respond(bot.identity_key, 0, b"\x00" * 64)
    # Another key's bucket is its own.
    with pytest.raises(Unauthenticated):
        await client.auth_respond(other.identity_key, 0, b"\x00" * 64)


async def test_challenges_cost_the_address_login_bucket(
    node_with: NodeFactory, make_user: UserFactory, connect: ClientFactory, make_bot: BotFactory
) -> None:
    node = await node_with(login_burst_per_address=5, login_rate_per_address=0.01)
    client = await connect(node)
    bot = make_bot()
    for _ in range(5):
        with pytest.raises(NotFound):
            await client.auth_challenge(bot.identity_key, "nobody", "helper")
    with pytest.raises(ResourceExhausted, match="login attempts from this address"):
        await client.auth_challenge(bot.identity_key, "nobody", "helper")


async def test_pending_requests_and_open_challenges_are_bounded(
    node_with: NodeFactory, make_user: UserFactory, connect: ClientFactory, make_bot: BotFactory
) -> None:
    node = await node_with(max_pending_bot_approvals_per_owner=2, max_bot_challenges_per_key=3)
    alice = await make_user(node, "alice")
    client = await connect(node)
    bots = [make_bot(), make_bot()]
    waiting = [asyncio.ensure_future(key_login_token(client, bot, "alice", "helper")) for bot in bots]
    pending = await wait_for_pending(alice.client, 2)
    with pytest.raises(ResourceExhausted, match="max_pending_bot_approvals_per_owner"):
        await client.auth_challenge(make_bot().identity_key, "alice", "helper")
    for request_id in pending:
        await alice.client.bot_approval_answer(request_id, True)
    await asyncio.gather(*waiting)
    bot = bots[0]  # its one challenge so far was answered: none is open
    for _ in range(3):
        await client.auth_challenge(bot.identity_key, "alice", "helper")
    with pytest.raises(ResourceExhausted, match="max_bot_challenges_per_key"):
        await client.auth_challenge(bot.identity_key, "alice", "helper")


Racer = Callable[[Node, Node], Awaitable[None]]


async def _same_unknown_key_twice(
    first: Node, second: Node, make_user: UserFactory, connect: ClientFactory, bot: Vault
) -> None:
    alice = await make_user(first, "alice")
    a, b = await connect(first), await connect(second)
    logins = [asyncio.ensure_future(key_login_token(c, bot, "alice", "helper")) for c in (a, b)]
    (request_id,) = await wait_for_pending(alice.client)
    await asyncio.sleep(0.3)  # both challenges are in: still one request
    view = await alice.client.bot_approval_wait(b"", timeout_ms=0)
    assert [r.request_id for r in view.requests] == [request_id]
    await alice.client.bot_approval_answer(request_id, True)
    tokens = await asyncio.wait_for(asyncio.gather(*logins), 10)
    assert len(set(tokens)) == 2
    assert [bot.identity_key] == [record.identity_key for record in await alice.client.list_bots()]


async def test_same_unknown_key_on_two_connections_gives_one_request_and_one_record(
    node: Node, make_user: UserFactory, connect: ClientFactory, make_bot: BotFactory
) -> None:
    await _same_unknown_key_twice(node, node, make_user, connect, make_bot())


async def test_same_unknown_key_through_two_nodes_of_one_database(
    two_nodes: tuple[Node, Node], make_user: UserFactory, connect: ClientFactory, make_bot: BotFactory
) -> None:
    await _same_unknown_key_twice(*two_nodes, make_user, connect, make_bot())
