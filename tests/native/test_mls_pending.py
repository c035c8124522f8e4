"""The vault's side of node-ordered commits: a commit stays pending until the node's answer
(merge or clear), survives a restart byte for byte, and blocks sending meanwhile; processing is
idempotent through the vault's journal; /leave is a proposal another member commits; a member
invited again discards its old state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import quicnprotochat.native as native


class Member:
    def __init__(self, tmp_path: Path, name: str) -> None:
        self.path = str(tmp_path / f"{name}.vault")
        self.key = os.urandom(32)
        self.vault = native.Vault.open(self.path, self.key)

    def restart(self) -> None:
        self.vault.close()
        self.vault = native.Vault.open(self.path, self.key)


def group_of_three(tmp_path: Path) -> tuple[Member, Member, Member, bytes]:
    alice, bob, carol = (Member(tmp_path, n) for n in ("alice", "bob", "carol"))
    group_id = alice.vault.create_group()
    _commit, welcome = alice.vault.add_members(
        group_id, [bob.vault.create_key_package(), carol.vault.create_key_package()]
    )
    assert alice.vault.pending_commit(group_id) is not None
    alice.vault.merge_pending_commit(group_id)
    bob.vault.join_group(welcome)
    carol.vault.join_group(welcome)
    return alice, bob, carol, group_id


def agree(members: list[Member], group_id: bytes) -> None:
    epochs = {m.vault.epoch(group_id) for m in members}
    secrets = {m.vault.export_secret(group_id, "agree", b"", 32) for m in members}
    rosters = {tuple(sorted(m.vault.members(group_id))) for m in members}
    assert len(epochs) == len(secrets) == len(rosters) == 1


def test_pending_commit_until_the_nodes_answer(tmp_path: Path) -> None:
    alice, bob, carol, group_id = group_of_three(tmp_path)
    dave = Member(tmp_path, "dave")
    commit, welcome = alice.vault.add_members(group_id, [dave.vault.create_key_package()])
    assert alice.vault.epoch(group_id) == 1
    with pytest.raises(native.StateError, match="a commit is pending"):
        alice.vault.encrypt(group_id, b"not now")
    with pytest.raises(native.StateError, match="a commit is pending"):
        alice.vault.self_update(group_id)
    alice.restart()
    assert alice.vault.pending_commit(group_id) == (commit, welcome)

    # The node took bob's commit for epoch 1: alice clears hers and processes bob's.
    theirs = bob.vault.self_update(group_id)
    assert native.mls_message_info(theirs).epoch == native.mls_message_info(commit).epoch == 1
    bob.vault.merge_pending_commit(group_id)
    alice.vault.clear_pending_commit(group_id)
    assert alice.vault.pending_commit(group_id) is None
    assert alice.vault.process(theirs).epoch == 2
    assert carol.vault.process(theirs).epoch == 2
    # ... and applies her change again at the new epoch; the node accepts it this time.
    commit, welcome = alice.vault.add_members(group_id, [dave.vault.create_key_package()])
    assert welcome is not None
    for member in (bob, carol):
        assert member.vault.process(commit).added == [dave.vault.identity_key]
    alice.vault.merge_pending_commit(group_id)
    with pytest.raises(native.StateError, match="no commit is pending"):
        alice.vault.merge_pending_commit(group_id)
    assert dave.vault.join_group(welcome) == group_id
    agree([alice, bob, carol, dave], group_id)
    message = dave.vault.encrypt(group_id, b"hello")
    assert alice.vault.process(message).plaintext == b"hello"


def test_process_is_idempotent_across_a_restart(tmp_path: Path) -> None:
    alice, bob, _carol, group_id = group_of_three(tmp_path)
    message = alice.vault.encrypt(group_id, b"exactly once")
    first = bob.vault.process(message)
    bob.restart()  # crashed before the conversation store had the message
    again = bob.vault.process(message)
    assert (again.plaintext, again.sender, again.digest) == (first.plaintext, first.sender, first.digest)
    commit = alice.vault.self_update(group_id)
    alice.vault.merge_pending_commit(group_id)
    seen = bob.vault.process(commit)
    assert bob.vault.process(commit).epoch == seen.epoch == 2
    assert bob.vault.epoch(group_id) == 2
    bob.vault.forget_processed([first.digest, seen.digest])
    with pytest.raises(native.WrongEpoch):
        bob.vault.process(commit)
    with pytest.raises(native.NativeError):
        bob.vault.process(message)


def test_leave_then_invited_again(tmp_path: Path) -> None:
    alice, bob, carol, group_id = group_of_three(tmp_path)
    proposal = carol.vault.leave_group(group_id)
    info = native.mls_message_info(proposal)
    assert (info.content_type, info.wire_format) == ("proposal", "private")
    for member in (alice, bob):
        seen = member.vault.process(proposal)
        assert (seen.kind, seen.removed) == ("proposal", [carol.vault.identity_key])
    commit, welcome = bob.vault.commit_pending_proposals(group_id)
    assert welcome is None
    bob.vault.merge_pending_commit(group_id)
    assert alice.vault.process(commit).removed == [carol.vault.identity_key]
    assert carol.vault.process(commit).self_removed
    before = alice.vault.encrypt(group_id, b"while carol is away")
    bob.vault.process(before)

    commit, welcome = alice.vault.add_members(group_id, [carol.vault.create_key_package()])
    alice.vault.merge_pending_commit(group_id)
    bob.vault.process(commit)
    assert carol.vault.join_group(welcome) == group_id
    assert carol.vault.join_group(welcome) == group_id  # a redelivered Welcome
    assert carol.vault.is_active(group_id)
    assert carol.vault.group_ids() == [group_id]
    agree([alice, bob, carol], group_id)
    with pytest.raises(native.NativeError):
        carol.vault.process(before)
    after = bob.vault.encrypt(group_id, b"welcome back")
    assert carol.vault.process(after).plaintext == b"welcome back"
