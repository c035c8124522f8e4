"""`ChatConfig.vault_groups_in_memory` bounds the MLS groups a client's vault keeps loaded; a client in more groups
than that goes on working in all of them (against a real node)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from quicnprotochat.client.chat import ChatError, JoinedConversation
from quicnprotochat.server.node import Node
from tests.client.conftest import ChatFactory


def has_name(name: str) -> Callable[[JoinedConversation], bool]:
    return lambda event: event.conversation.name == name


async def test_a_client_in_more_groups_than_its_vault_keeps_loaded_uses_all_of_them(
    node: Node, open_chat: ChatFactory
) -> None:
    alice, _alice_log = await open_chat(node, "alice", vault_groups_in_memory=1)
    bob, bob_log = await open_chat(node, "bob", vault_groups_in_memory=2)
    names = ["one", "two", "three"]
    for name in names:
        await alice.create_group(name)
        await alice.invite(name, "bob")
    joined = {e.conversation.name for e in [await bob_log.wait_for(JoinedConversation, has_name(n)) for n in names]}
    assert joined == set(names)
    for round_ in range(2):
        for name in names:
            await alice.send(name, f"{name} {round_}")
            await bob_log.message(f"{name} {round_}")
            assert alice.vault.groups_in_memory <= 1 and bob.vault.groups_in_memory <= 2


async def test_a_bound_below_one_is_refused(node: Node, open_chat: ChatFactory) -> None:
    with pytest.raises(ChatError, match="vault_groups_in_memory must be at least 1"):
        await open_chat(node, "alice", vault_groups_in_memory=0)
