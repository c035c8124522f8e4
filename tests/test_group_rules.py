"""The sequencer's rules without a node: membership, epochs, duplicates, who deliveries and welcomes may go to."""

from __future__ import annotations

import pytest

from quicnprotochat.common.errors import Forbidden, InvalidArgument
from quicnprotochat.server.services.group_rules import Accept, Duplicate, Stale, Submission, decide
from quicnprotochat.server.store.groups import GroupRecord, SubmissionRecord

A, B, C, D = (bytes([n]) * 32 for n in range(1, 5))
GROUP = GroupRecord(3, frozenset((A, B, C)))


def commit(sender: bytes = A, epoch: int = 3, **fields: tuple[bytes, ...]) -> Submission:
    return Submission(
        sender=sender,
        kind="commit",
        epoch=epoch,
        recipients=fields.get("recipients", (B, C)),
        newcomers=fields.get("newcomers", ()),
        members=fields.get("members", (A, B, C)),
    )


def proposal(sender: bytes = B, epoch: int = 3, recipients: tuple[bytes, ...] = (A, C)) -> Submission:
    return Submission(sender, "proposal", epoch, recipients, (), ())


def test_a_commit_at_the_current_epoch_moves_the_group() -> None:
    added = commit(newcomers=(D,), members=(A, B, C, D))
    assert decide(GROUP, None, added) == Accept(False, 4, frozenset((A, B, C, D)))
    removed = commit(members=(A, B))  # the removed member still gets the commit
    assert decide(GROUP, None, removed) == Accept(False, 4, frozenset((A, B)))


def test_older_epochs_are_stale_and_newer_ones_refused() -> None:
    assert decide(GROUP, None, commit(epoch=2)) == Stale(3)
    assert decide(GROUP, None, proposal(epoch=0)) == Stale(3)
    with pytest.raises(InvalidArgument, match="ahead"):
        decide(GROUP, None, commit(epoch=4))


def test_only_members_submit_and_that_comes_before_staleness() -> None:
    with pytest.raises(Forbidden):
        decide(GROUP, None, commit(sender=D, members=(A, B, C, D)))
    with pytest.raises(Forbidden):
        decide(GROUP, None, commit(sender=D, epoch=1, members=(A, B, C, D)))
    with pytest.raises(Forbidden):
        decide(GROUP, None, proposal(sender=D))


def test_a_retry_gets_the_first_answer_even_after_the_group_moved() -> None:
    prior = SubmissionRecord(A, (7, 9))
    assert decide(GroupRecord(9, frozenset((B, C))), prior, commit()) == Duplicate((7, 9))
    # The same bytes from someone else are not that someone's retry.
    assert decide(GROUP, prior, commit(sender=B, recipients=(A, C))) == Accept(False, 4, frozenset((A, B, C)))


def test_deliveries_go_to_the_old_set_and_welcomes_to_newcomers() -> None:
    with pytest.raises(InvalidArgument, match=r"deliveries\[1\]"):
        decide(GROUP, None, commit(recipients=(B, D), newcomers=(), members=(A, B, C, D)))
    with pytest.raises(InvalidArgument, match=r"welcomes\[0\]"):
        decide(GROUP, None, commit(newcomers=(B,)))
    with pytest.raises(InvalidArgument, match=r"welcomes\[0\]"):
        decide(GROUP, None, commit(newcomers=(D,), members=(A, B, C)))
    with pytest.raises(InvalidArgument, match="twice"):
        decide(GROUP, None, commit(recipients=(B, B)))
    with pytest.raises(InvalidArgument, match="twice"):
        decide(GROUP, None, commit(members=(A, B, B)))
    with pytest.raises(InvalidArgument, match="committer"):
        decide(GROUP, None, commit(members=(B, C)))


def test_every_member_gets_the_commit_and_every_newcomer_a_welcome() -> None:
    # Leaving a member out would fork the group for that member: the node refuses it.
    with pytest.raises(InvalidArgument, match="1 of 2 missing"):
        decide(GROUP, None, commit(recipients=(B,)))
    with pytest.raises(InvalidArgument, match="1 of 2 missing"):
        decide(GROUP, None, proposal(recipients=(A,)))
    with pytest.raises(InvalidArgument, match="1 without one"):
        decide(GROUP, None, commit(members=(A, B, C, D)))
    # The removed member is reached too; the submitter needs no delivery of its own.
    assert decide(GROUP, None, commit(recipients=(C, B), members=(A, B))) == Accept(False, 4, frozenset((A, B)))


def test_proposals_keep_the_epoch_and_carry_no_welcomes() -> None:
    assert decide(GROUP, None, proposal()) == Accept(False, 3, GROUP.members)
    with pytest.raises(InvalidArgument, match="welcomes"):
        decide(GROUP, None, Submission(B, "proposal", 3, (A,), (D,), ()))


def test_the_first_submission_creates_the_group_with_who_it_names() -> None:
    created = decide(None, None, commit(epoch=0, recipients=(), newcomers=(B, C)))
    assert created == Accept(True, 1, frozenset((A, B, C)))
    # A group the node first hears of later: its current members are those the committer delivers to.
    existing = decide(None, None, commit(epoch=5, recipients=(B, C), newcomers=(D,), members=(A, B, C, D)))
    assert existing == Accept(True, 6, frozenset((A, B, C, D)))
    assert decide(None, None, proposal(epoch=2)) == Accept(True, 2, frozenset((A, B, C)))
