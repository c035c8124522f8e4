"""Restarts: of a client from its encrypted state dir, and of the node between send and receive."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from quicnprotochat.client.chat import ChatClient, JoinedConversation, MessageStateChanged, StateUnavailable
from quicnprotochat.server.node import Node
from tests.client.conftest import ChatFactory, files_containing
from tests.conftest import loopback_config, node_address

SECRET = "the eagle lands at midnight"


def snapshot(root: Path) -> dict[str, bytes]:
    result = {}
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            result[str(path.relative_to(root))] = path.read_bytes()
    return result


async def test_restart_from_encrypted_state(node: Node, open_chat: ChatFactory, tmp_path: Path) -> None:
    alice, alice_log = await open_chat(node, "alice_wonder")
    bob, bob_log = await open_chat(node, "bob_builder")
    group = await alice.create_group("secret-club")
    await alice.invite(group, "bob_builder")
    await bob_log.wait_for(JoinedConversation)
    dm = await bob.dm("alice_wonder")
    await bob.send(dm, SECRET)
    await alice_log.message(SECRET)
    await alice.send(group, "group hello")
    await bob_log.message("group hello")
    await alice.close()

    # No plaintext anywhere in the state dir: not the message, not a username, not the group name.
    state_dir = tmp_path / "state-alice_wonder"
    assert files_containing(state_dir, SECRET.encode(), b"alice_wonder", b"bob_builder", b"secret-club") == []

    # A wrong state password fails clearly and changes nothing.
    before = snapshot(state_dir)
    with pytest.raises(StateUnavailable, match="password"):
        await open_chat(node, "alice_wonder", state_password="wrong password")
    with pytest.raises(StateUnavailable, match="password"):
        await open_chat(node, "alice_wonder", state_password=None)
    assert snapshot(state_dir) == before

    # Reopened with the right state password and no account password: the cached session is used.
    alice, alice_log = await open_chat(node, "alice_wonder", password=None)
    assert alice.encrypted and alice.state_warning is None
    assert [m.body for m in await alice.history("@bob_builder")] == [SECRET]
    assert [(m.body, m.outgoing) for m in await alice.history("secret-club")] == [("group hello", True)]
    assert sorted(str(m.username) for m in await alice.members("secret-club")) == ["alice_wonder", "bob_builder"]
    await bob.send("@alice_wonder", "after the restart")
    await bob.send("secret-club", "group after the restart")
    await alice_log.message("after the restart")
    await alice_log.message("group after the restart")
    await alice.send("secret-club", "alice is back")
    await bob_log.message("alice is back")


async def test_plain_state_says_so(node: Node, open_chat: ChatFactory) -> None:
    chat, _ = await open_chat(node, "plain_user", state_password=None, start=False)
    assert not chat.encrypted
    assert chat.state_warning is not None and "clear" in chat.state_warning


@pytest.fixture
async def restartable(tmp_path: Path) -> AsyncIterator[list[Node]]:
    nodes: list[Node] = []
    yield nodes
    for node in nodes:
        await node.stop()


async def test_node_restart_and_offline_client(restartable: list[Node], open_chat: ChatFactory, tmp_path: Path) -> None:
    first = Node(loopback_config(tmp_path / "node"))
    await first.start()
    restartable.append(first)
    address = node_address(first, "quic")
    assert first.tcp_address is not None
    config = loopback_config(tmp_path / "node", quic_listen=address, tcp_listen=f"127.0.0.1:{first.tcp_address[1]}")

    alice, alice_log = await open_chat(address, "alice", connect_timeout=2.0)
    bob, bob_log = await open_chat(address, "bob")
    group = await alice.create_group("crew")
    await alice.invite(group, "bob")
    await bob_log.wait_for(JoinedConversation)
    dm = await alice.dm("bob")
    await bob_log.wait_for(JoinedConversation, lambda e: e.conversation.kind == "dm")
    await bob.close()  # bob goes offline

    expected_dm = [f"dm {i}" for i in range(6)] + ["kept while down"] + [f"dm {i}" for i in range(6, 12)]
    expected_group = [f"group {i}" for i in range(6)]
    for i in range(6):
        assert (await alice.send(dm, expected_dm[i])).state == "sent"
        await alice.send(group, expected_group[i])

    # The node restarts between send and receive. While it is down, a message is kept pending.
    await first.stop()
    restartable.remove(first)
    kept = await alice.send(dm, "kept while down")
    assert kept.state == "pending" and kept.server_seq is None
    second = Node(config)
    await second.start()
    restartable.append(second)

    # Alice's client reconnects by itself and sends what was pending first.
    for i in range(6, 12):
        await alice.send(dm, expected_dm[i + 1])
    sent = await alice_log.wait_for(MessageStateChanged, lambda e: e.message.id == kept.id)
    assert sent.message.state == "sent" and sent.message.server_seq is not None

    bob, bob_log = await open_chat(address, "bob", password=None)
    await bob_log.message("dm 11")
    await bob_log.message("group 5")
    assert [m.body for m in await bob.history("@alice", 100)] == expected_dm
    assert [m.body for m in await bob.history("crew", 100)] == expected_group
    assert [m.server_seq for m in await bob.history("@alice", 100)] == sorted(
        m.server_seq or 0 for m in await bob.history("@alice", 100)
    )
    # And alice's background loops came back: she receives too.
    await bob.send("@alice", "back online")
    await alice_log.message("back online")
    assert isinstance(alice, ChatClient)
