"""A commit whose answer was lost: the same bytes are submitted again and the node's first acceptance stands
(a dropped connection, and a client stopped and restarted while waiting)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from quicnprotochat.client.chat import ChatClient, ErrorEvent, JoinedConversation, MemberJoined
from quicnprotochat.client.state import Conversation
from quicnprotochat.server.node import Node
from tests.client.conftest import ChatFactory, EventLog
from tests.client.cutting_proxy import CuttingProxy


@pytest.fixture
async def proxy(node: Node) -> AsyncIterator[tuple[CuttingProxy, str]]:
    assert node.tcp_address is not None
    host, port = node.tcp_address[:2]
    started = CuttingProxy((host, port))
    address = await started.start()
    yield started, address
    await started.close()


async def team_behind_proxy(
    node: Node, open_chat: ChatFactory, address: str
) -> tuple[tuple[ChatClient, EventLog], tuple[ChatClient, EventLog], EventLog, Conversation]:
    """Alice (through the proxy) with carol in a group; bob ready to be invited."""
    alice = await open_chat(address, "alice", transport="tcp", server_fingerprint=node.fingerprint)
    bob = await open_chat(node, "bob")
    _carol, carol_log = await open_chat(node, "carol")
    group = await alice[0].create_group("team")
    await alice[0].invite(group, "carol")
    await carol_log.wait_for(JoinedConversation)
    return alice, bob, carol_log, group


async def test_answer_lost_then_submitted_again(
    node: Node, open_chat: ChatFactory, proxy: tuple[CuttingProxy, str]
) -> None:
    cutter, address = proxy
    (alice, alice_log), (bob, bob_log), carol_log, group = await team_behind_proxy(node, open_chat, address)

    cutter.arm("cut")
    committed = await alice.invite(group, "bob")  # the first answer is lost; the same bytes again: duplicate
    assert cutter.triggered.is_set()
    assert committed.tries == 1
    await bob_log.wait_for(JoinedConversation)
    await carol_log.wait_for(MemberJoined, lambda e: e.username == "bob")
    await bob.send("team", "one commit, once")
    await alice_log.message("one commit, once")
    await carol_log.message("one commit, once")
    assert len([e for e in bob_log.events if isinstance(e, JoinedConversation)]) == 1
    assert len([e for e in carol_log.events if isinstance(e, MemberJoined)]) == 1
    assert not [e for e in carol_log.events + bob_log.events if isinstance(e, ErrorEvent)]


async def test_client_stopped_while_waiting_resubmits_at_start(
    node: Node, open_chat: ChatFactory, proxy: tuple[CuttingProxy, str]
) -> None:
    cutter, address = proxy
    (alice, _), (bob, bob_log), carol_log, group = await team_behind_proxy(node, open_chat, address)

    cutter.arm("hold")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(alice.invite(group, "bob"), 2)
    assert cutter.triggered.is_set()
    # The node accepted it and delivered it: bob is in, carol applied it. Alice has not merged it yet.
    await bob_log.wait_for(JoinedConversation)
    await carol_log.wait_for(MemberJoined, lambda e: e.username == "bob")
    await alice.close()

    # Restarted (directly on the node): the pending commit is submitted again with the same bytes and merged.
    alice, alice_log = await open_chat(node, "alice")
    await alice_log.wait_for(MemberJoined, lambda e: e.username == "bob")
    await bob.send("team", "all three")
    await alice_log.message("all three")
    await carol_log.message("all three")
    await alice.send("team", "alice is in step")
    await bob_log.message("alice is in step")
    assert sorted(str(m.username) for m in await alice.members("team")) == ["alice", "bob", "carol"]
