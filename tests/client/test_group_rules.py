"""Group rules and the receive rules for ordered groups, without a node: what the node is told after a commit,
who commits a leave, and how a message the client cannot process is judged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import quicnprotochat.native as native
from quicnprotochat.client.chat import group_rules
from quicnprotochat.client.chat import receive_rules as rules
from quicnprotochat.client.chat.group_rules import Change
from quicnprotochat.client.chat.leave_proposals import LeaveProposals
from quicnprotochat.client.state import Conversation, ConversationStore

A, B, C, D = (bytes([n]) * 32 for n in (1, 2, 3, 4))
TEAM = Conversation(7, "group", "team", b"g" * 16, None, None, 1.0, 1.0)


def test_member_set_after_a_commit() -> None:
    assert group_rules.members_after([A, B, C], Change(added=(D,))) == [A, B, C, D]
    assert group_rules.members_after([A, B, C], Change(removed=(B,))) == [A, C]
    assert group_rules.members_after([A, B], Change(added=(B, C), removed=(A,))) == [B, C]
    assert group_rules.members_after([A, B], Change()) == [A, B]


def test_commit_and_welcome_recipients() -> None:
    # Everyone before the commit but its committer gets it, a removed member too (so it learns of it).
    assert group_rules.commit_recipients([A, B, C], A) == [B, C]
    assert group_rules.newcomers([A, B], Change(added=(C, B))) == [C]


def test_who_commits_a_leave() -> None:
    # The first remaining member in leaf order commits at once, the others after a grace period, the leaver never.
    assert group_rules.proposal_delay([A, B, C], [A], B) == 0.0
    assert group_rules.proposal_delay([A, B, C], [A], C) == group_rules.PROPOSAL_GRACE_SECONDS
    assert group_rules.proposal_delay([A, B, C], [A], A) is None
    assert group_rules.proposal_delay([A], [A], B) is None


def test_retry_note() -> None:
    assert group_rules.retry_note(1) == ""
    assert "after 1 retry:" in group_rules.retry_note(2)
    assert "after 3 retries:" in group_rules.retry_note(4)


def view(epoch: int | None = 3, **flags: bool) -> rules.GroupView:
    return rules.GroupView(TEAM, epoch, **flags)


def header(epoch: int, content_type: str = "commit") -> rules.Header:
    assert content_type in ("application", "proposal", "commit")
    return rules.Header(b"g" * 16, epoch, content_type)  # type: ignore[arg-type]


def test_before_processing() -> None:
    assert rules.before_processing(header(3), view()) is None
    assert rules.before_processing(header(3), view(own_commit_unconfirmed=True)) == rules.Defer("own_commit")
    assert rules.before_processing(header(3), view(broken=True)) == rules.Ignore()
    assert rules.before_processing(header(3), view(None, deleted=True)) == rules.Ignore()


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (header(3), rules.BreakGroup),  # a commit at our epoch that does not process: the group cannot go on
        (header(5), rules.BreakGroup),  # a commit from the future: one is missing
        (header(4, "application"), rules.BreakGroup),  # a message from a later epoch: a commit is missing
        (header(2), rules.Drop),  # an old commit (a replay): nothing to do with the group's future
        (header(3, "application"), rules.Drop),  # one bad application message: dropped, the group goes on
    ],
)
def test_failures_that_stop_a_group(message: rules.Header, expected: type) -> None:
    action = rules.after_process_failure(9, native.DecryptError("bad"), message, view(), claimed_sender=B)
    assert isinstance(action, expected)
    if isinstance(action, rules.BreakGroup):
        assert action.conversation == TEAM and action.claimed_sender == B and action.group_id == b"g" * 16


def test_unknown_group_waits_and_own_commit_waits_without_limit() -> None:
    assert rules.after_process_failure(1, native.GroupNotFound("x"), header(0), view(None)) == rules.Defer()
    inbox = rules.InboxRules(defer_seconds=5)
    assert inbox.hold(1, 0.0, final=True, defer=rules.Defer("own_commit"))
    assert inbox.hold(1, 1000.0, final=True, defer=rules.Defer("own_commit"))
    assert not inbox.hold(1, 1000.0, final=True, defer=rules.Defer("group"))


async def test_leave_proposals_survive_a_restart(tmp_path: Path) -> None:
    key = os.urandom(32)
    async with await ConversationStore.open(tmp_path / "conversations.sqlite", key) as store:
        proposals = LeaveProposals(store)
        assert await proposals.record(b"g1", 4, (A,)) == (A,)
        assert await proposals.record(b"g1", 4, (B, A)) == (A, B)  # two members leaving in the same epoch
        assert await proposals.record(b"g2", 1, (C,)) == (C,)
    async with await ConversationStore.open(tmp_path / "conversations.sqlite", key) as store:
        proposals = LeaveProposals(store)
        assert sorted(await proposals.waiting()) == [(b"g1", 4, (A, B)), (b"g2", 1, (C,))]
        assert await proposals.at(b"g1", 4) == (A, B)
        assert await proposals.at(b"g1", 5) == ()  # proposals of another epoch are void
        assert await proposals.record(b"g1", 5, (D,)) == (D,)  # a new epoch starts afresh
        assert await proposals.settle(b"g1") == (D,)
        assert await proposals.settle(b"g1") == ()
        assert await proposals.waiting() == [(b"g2", 1, (C,))]
