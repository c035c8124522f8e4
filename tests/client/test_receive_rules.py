"""The receive rules without a node: real vaults make the MLS messages, the rules say what to do with them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import quicnprotochat.native as native
from quicnprotochat.client.chat import receive_rules as rules
from quicnprotochat.client.chat.framing import FrameError, TextContent, WelcomeFrame
from quicnprotochat.client.state import Conversation


def conversation(group_id: bytes | None = b"g" * 16) -> Conversation:
    return Conversation(1, "group", "team", group_id, None, None, 1700000000.0, 1700000000.0)


def vault(tmp_path: Path, name: str) -> native.Vault:
    return native.Vault.open(str(tmp_path / f"{name}.vault"), os.urandom(32))


def test_application_message_is_stored_with_its_content(tmp_path: Path) -> None:
    alice, bob = vault(tmp_path, "alice"), vault(tmp_path, "bob")
    group_id = alice.create_group()
    _commit, welcome = alice.add_members(group_id, [bob.create_key_package()])
    alice.merge_pending_commit(group_id)
    bob.join_group(welcome)
    processed = bob.process(alice.encrypt(group_id, TextContent("hi", 1700000000.0).encode()))

    action = rules.after_processed(processed, conversation(group_id))
    assert isinstance(action, rules.StoreMessage)
    assert action.content == TextContent("hi", 1700000000.0) and action.sender == alice.identity_key

    # Without a conversation for the group, or with content this client cannot read: dropped, with a reason.
    no_conversation = rules.after_processed(bob.process(alice.encrypt(group_id, TextContent("x", 1.0).encode())), None)
    assert isinstance(no_conversation, rules.Drop) and "without a conversation" in no_conversation.reason
    garbage = rules.after_processed(bob.process(alice.encrypt(group_id, b"\x07junk")), conversation(group_id))
    assert isinstance(garbage, rules.Drop) and isinstance(garbage.error, FrameError)


def test_commit_changes_members(tmp_path: Path) -> None:
    alice, bob, carol = (vault(tmp_path, n) for n in ("alice", "bob", "carol"))
    group_id = alice.create_group()
    _commit, welcome = alice.add_members(group_id, [bob.create_key_package()])
    alice.merge_pending_commit(group_id)
    bob.join_group(welcome)
    commit, _welcome = alice.add_members(group_id, [carol.create_key_package()])
    alice.merge_pending_commit(group_id)

    action = rules.after_processed(bob.process(commit), conversation(group_id))
    assert action == rules.ApplyCommit(
        conversation(group_id),
        group_id,
        (carol.identity_key,),
        (),
        False,
        alice.identity_key,
    )
    removal = alice.remove_members(group_id, [bob.identity_key])
    alice.merge_pending_commit(group_id)
    removed = rules.after_processed(bob.process(removal), conversation(group_id))
    assert isinstance(removed, rules.ApplyCommit) and removed.self_removed


def test_leave_proposal_asks_for_a_commit_unless_this_client_left(tmp_path: Path) -> None:
    alice, bob = vault(tmp_path, "alice"), vault(tmp_path, "bob")
    group_id = alice.create_group()
    _commit, welcome = alice.add_members(group_id, [bob.create_key_package()])
    alice.merge_pending_commit(group_id)
    bob.join_group(welcome)
    processed = alice.process(bob.leave_group(group_id))
    action = rules.after_processed(processed, conversation(group_id))
    assert action == rules.CommitProposals(conversation(group_id), group_id, 1, (bob.identity_key,))
    # Once this client left a group, its proposals and messages are nothing to act on or show.
    assert rules.after_processed(processed, conversation(group_id), left=True) == rules.Ignore()


def test_failures_of_the_vault() -> None:
    assert isinstance(rules.after_process_failure(5, native.GroupNotFound("no group")), rules.Defer)
    wrong_epoch = rules.after_process_failure(5, native.WrongEpoch("epoch 2, group at 3"))
    assert isinstance(wrong_epoch, rules.Drop) and "another epoch (seq 5)" in wrong_epoch.reason
    undecryptable = rules.after_process_failure(6, native.DecryptError("bad tag"))
    assert isinstance(undecryptable, rules.Drop) and "does not decrypt (seq 6)" in undecryptable.reason
    unopened = rules.after_open_failure(7, FrameError("truncated"))
    assert "seq 7" in unopened.reason and "truncated" in unopened.reason


def test_redelivered_envelopes_are_skipped() -> None:
    assert rules.is_new(4, 3)
    assert not rules.is_new(3, 3) and not rules.is_new(2, 3)


def test_dm_welcome_checks() -> None:
    me, peer, other = b"m" * 32, b"p" * 32, b"o" * 32
    frame = WelcomeFrame("dm", "", b"c" * 16, peer, b"welcome")
    assert rules.dm_welcome_problem(frame, [peer, me], me) is None
    assert rules.dm_welcome_problem(frame, [peer, me, other], me) is not None
    assert rules.dm_welcome_problem(frame, [other, me], me) is not None
    assert rules.dm_welcome_problem(WelcomeFrame("dm", "", None, peer, b"w"), [peer, me], me) is not None
    # Both sides keep the group whose id is smaller.
    assert rules.dm_to_keep(b"\x02", b"\x01") == "new"
    assert rules.dm_to_keep(b"\x01", b"\x02") == "existing"


def test_held_envelope_waits_then_is_dropped() -> None:
    inbox = rules.InboxRules(defer_seconds=60)
    assert inbox.hold(9, now=100.0, final=True)
    assert inbox.hold(9, now=159.0, final=True)
    assert inbox.hold(9, now=500.0, final=False)  # a sync never gives up
    assert not inbox.hold(9, now=160.0, final=True)
    inbox.done(9)
    assert inbox.hold(9, now=1000.0, final=True)  # a new wait starts


@pytest.mark.parametrize("max_tries", [1, 3])
def test_failing_envelope_is_tried_a_bounded_number_of_times(max_tries: int) -> None:
    inbox = rules.InboxRules(defer_seconds=60, max_tries=max_tries)
    verdicts = [inbox.retry(4) for _ in range(max_tries)]
    assert verdicts == [True] * (max_tries - 1) + [False]
    inbox.done(4)
    assert inbox.retry(4) is (max_tries > 1)


def test_only_application_messages_of_the_current_epoch_are_taken_directly() -> None:
    group = rules.GroupView(conversation(), epoch=3)
    take = rules.Header(b"g" * 16, 3, "application")
    assert rules.direct_refusal(take, group) is None
    for header in (rules.Header(b"g" * 16, 3, "commit"), rules.Header(b"g" * 16, 3, "proposal")):
        refusal = rules.direct_refusal(header, group)
        assert refusal is not None and "only application" in refusal
    # Ahead of this client (a commit it has not processed yet is in its inbox) or behind: through the node.
    for epoch in (2, 4):
        refusal = rules.direct_refusal(rules.Header(b"g" * 16, epoch, "application"), group)
        assert refusal is not None and "epoch" in refusal
    assert rules.direct_refusal(take, rules.GroupView(None, None)) is not None
    for waiting in (
        rules.GroupView(conversation(), 3, own_commit_unconfirmed=True),
        rules.GroupView(conversation(), 3, broken=True),
        rules.GroupView(conversation(), 3, left=True),
    ):
        assert rules.direct_refusal(take, waiting) is not None


def test_only_application_messages_to_process_now_are_decrypted_ahead_in_a_batch() -> None:
    group = rules.GroupView(conversation(), epoch=3)
    # Of the current epoch or a past one (late messages still decrypt): together, in one vault transaction.
    for epoch in (2, 3):
        assert rules.decrypt_ahead(rules.Header(b"g" * 16, epoch, "application"), group)
    # A handshake changes the group: it and whatever follows it are handled one by one.
    for kind in ("commit", "proposal"):
        assert not rules.decrypt_ahead(rules.Header(b"g" * 16, 3, kind), group)
    # A commit is missing (a later epoch), an unknown group, or one that takes nothing now: not ahead either.
    take = rules.Header(b"g" * 16, 3, "application")
    assert not rules.decrypt_ahead(rules.Header(b"g" * 16, 4, "application"), group)
    for waiting in (
        rules.GroupView(None, None),
        rules.GroupView(conversation(), 3, own_commit_unconfirmed=True),
        rules.GroupView(conversation(), 3, broken=True),
        rules.GroupView(None, None, deleted=True),
    ):
        assert not rules.decrypt_ahead(take, waiting)
