"""Leaving and coming back, deleting a conversation, and a group that cannot go on (a hostile member's commit)
re-created from the client, against a real node."""

from __future__ import annotations

import pytest

from quicnprotochat.client.chat import (
    ChatClient,
    ErrorEvent,
    GroupBroken,
    JoinedConversation,
    MemberLeft,
    NotAllowed,
    RemovedFromConversation,
)
from quicnprotochat.server.node import Node
from tests.client.conftest import ChatFactory, EventLog
from tests.client.hostile_member import submit_corrupt_commit


async def names(chat: ChatClient, conversation: str) -> list[str]:
    return sorted(str(m.username) for m in await chat.members(conversation))


async def trio(open_chat: ChatFactory, node: Node) -> list[tuple[ChatClient, EventLog]]:
    return await trio_named(open_chat, node, ("alice", "bob", "carol"))


async def test_leave_then_invited_again_reads_new_messages_only(node: Node, open_chat: ChatFactory) -> None:
    (alice, alice_log), (bob, bob_log), (carol, carol_log) = await trio(open_chat, node)
    await alice.send("team", "before")
    await carol_log.message("before")
    before = await carol.conversation("team")

    await carol.leave("team")
    # The first remaining member (leaf order: alice) commits carol's leave; everyone learns it from that commit.
    left = await carol_log.wait_for(RemovedFromConversation)
    assert left.left and left.by == "alice"
    gone = await bob_log.wait_for(MemberLeft, lambda e: e.username == "carol")
    assert gone.left and gone.by == "alice"
    assert await names(bob, "team") == ["alice", "bob"]
    with pytest.raises(NotAllowed):
        await carol.send("team", "still here?")
    assert not {s.conversation.name: s.active for s in await carol.conversations()}["team"]

    await bob.send("team", "while carol is away")
    await alice_log.message("while carol is away")

    # Invited again: the same conversation, the old group state discarded; she reads what comes from now on.
    committed = await bob.invite("team", "carol")
    assert committed.tries == 1
    back = await carol_log.wait_for(JoinedConversation, lambda e: e.inviter == "bob")
    assert back.conversation.id == before.id
    await alice.send("team", "welcome back")
    await carol_log.message("welcome back")
    await carol.send("team", "glad to be back")
    await alice_log.message("glad to be back")
    await bob_log.message("glad to be back")
    assert [m.body for m in await carol.history("team")] == ["before", "welcome back", "glad to be back"]
    for log in (alice_log, bob_log, carol_log):
        assert not [e for e in log.events if isinstance(e, ErrorEvent | GroupBroken)]


async def test_delete_leaves_and_forgets(node: Node, open_chat: ChatFactory) -> None:
    (alice, alice_log), (bob, _bob_log), (carol, carol_log) = await trio(open_chat, node)
    await carol.delete("team")
    assert [c.name for c in await carol.store.list_conversations()] == []
    await alice_log.wait_for(MemberLeft, lambda e: e.username == "carol")
    await bob.send("team", "carol deleted it")
    await alice_log.message("carol deleted it")
    await carol.sync()
    assert not [e for e in carol_log.events if isinstance(e, ErrorEvent)]
    # Invited again later: a new conversation.
    await bob.invite("team", "carol")
    await carol_log.wait_for(JoinedConversation, lambda e: e.inviter == "bob")
    await bob.send("team", "hello again")
    await carol_log.message("hello again")
    assert [m.body for m in await carol.history("team")] == ["hello again"]
    await alice.notes()
    with pytest.raises(NotAllowed, match="notepad"):
        await alice.delete("@me")
    with pytest.raises(NotAllowed, match="groups"):
        await alice.update_keys(await alice.dm("bob"))


async def test_a_commit_nobody_can_process_is_said_loudly_and_the_group_recreated(
    node: Node, open_chat: ChatFactory
) -> None:
    (alice, alice_log), (bob, bob_log), (mallory, mallory_log) = await trio_named(
        open_chat, node, ("alice", "bob", "mallory")
    )
    # Mallory, a member, has the node accept a commit nobody can process.
    assert (await submit_corrupt_commit(mallory, "team")).outcome == "accepted"

    # Both others are told which group and by whom, once.
    for log in (alice_log, bob_log):
        broken = await log.wait_for(GroupBroken)
        assert broken.conversation.name == "team" and broken.by == "mallory"
    with pytest.raises(NotAllowed, match="/recreate"):
        await alice.update_keys("team")

    # Re-created from alice's client with the current members, under the same conversation everywhere.
    committed, missing = await alice.recreate("team")
    assert missing == []
    assert committed.conversation.id == (await alice.conversation("team")).id
    for log in (bob_log, mallory_log):
        joined = await log.wait_for(JoinedConversation, lambda e: e.inviter == "alice")
        assert joined.conversation.name == "team"
    await bob.send("team", "we are back")
    await alice_log.message("we are back")
    await mallory_log.message("we are back")
    assert len([e for e in alice_log.events if isinstance(e, GroupBroken)]) == 1
    assert [c.name for c in await bob.store.list_conversations()] == ["team"]


async def trio_named(
    open_chat: ChatFactory, node: Node, people: tuple[str, str, str]
) -> list[tuple[ChatClient, EventLog]]:
    members = [await open_chat(node, name) for name in people]
    first = members[0][0]
    group = await first.create_group("team")
    for chat, log in members[1:]:
        await first.invite(group, chat.username)
        await log.wait_for(JoinedConversation, lambda e: e.conversation.name == "team")
    return members
