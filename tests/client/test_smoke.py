from __future__ import annotations

from quicnprotochat.server.node import Node
from tests.client.conftest import ChatFactory


async def test_dm_smoke(node: Node, open_chat: ChatFactory) -> None:
    alice, alice_log = await open_chat(node, "alice")
    bob, bob_log = await open_chat(node, "bob")
    dm = await alice.dm("@bob")
    await alice.send(dm, "hi bob")
    got = await bob_log.message("hi bob")
    assert got.message.sender_username == "alice"
    await bob.send(got.conversation, "hi alice")
    await alice_log.message("hi alice")
