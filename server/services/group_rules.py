"""The sequencer's rules: given what the store knows of a group (its record, and the earlier acceptance of the same
message bytes if any) and one submission, what the node answers.

No I/O here. The service reads the group (and any earlier submission of the same bytes), asks `decide`, and
hands an acceptance to the store, whose write is conditional on the group not having moved since that read: if it
moved, the service reads again and decides again. So the store settles every race (across nodes too), and these
rules stay a plain function of their inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from quicnprotochat.common.errors import Forbidden, InvalidArgument
from quicnprotochat.server.store.groups import GroupRecord, SubmissionRecord

Kind = Literal["commit", "proposal"]


@dataclass(frozen=True, slots=True)
class Submission:
    sender: bytes
    kind: Kind
    epoch: int
    recipients: tuple[bytes, ...]
    """The deliveries' recipients, in call order."""
    newcomers: tuple[bytes, ...]
    """The welcomes' recipients, in call order."""
    members: tuple[bytes, ...]
    """The member set the committer states for after its commit; ignored for proposals."""


@dataclass(frozen=True, slots=True)
class Accept:
    creates: bool
    """The group is unknown to the node: the store inserts it rather than moving it."""
    epoch_after: int
    members_after: frozenset[bytes]


@dataclass(frozen=True, slots=True)
class Duplicate:
    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Stale:
    epoch: int


Decision = Accept | Duplicate | Stale


def decide(group: GroupRecord | None, prior: SubmissionRecord | None, submission: Submission) -> Decision:
    """Raises Forbidden (not a member) or InvalidArgument (the call contradicts itself or the group)."""
    if prior is not None and prior.sender == submission.sender:
        # A retry of something already accepted: the first answer stands, whatever happened since.
        return Duplicate(prior.seqs)
    _check_distinct(submission.recipients, "deliveries")
    _check_distinct(submission.newcomers, "welcomes")
    if group is None:
        # The first submission the node sees for this group creates it; the submitter vouches for who was in it.
        before = frozenset((submission.sender, *submission.recipients))
    else:
        if submission.sender not in group.members:
            raise Forbidden("only the group's members may submit to it")
        if submission.epoch < group.epoch:
            return Stale(group.epoch)
        if submission.epoch > group.epoch:
            raise InvalidArgument(f"epoch {submission.epoch} is ahead of the group's epoch {group.epoch} at this node")
        before = group.members
    for index, recipient in enumerate(submission.recipients):
        if recipient not in before:
            raise InvalidArgument(f"deliveries[{index}] goes to someone who is not a member of the group")
    if submission.kind == "proposal":
        if submission.newcomers:
            raise InvalidArgument("a proposal carries no welcomes")
        _check_everyone_reached(before, submission)
        after = before if group is not None else before | frozenset(submission.members)
        return Accept(group is None, submission.epoch, after)
    after = frozenset(submission.members)
    if len(after) != len(submission.members):
        raise InvalidArgument("members holds a key twice")
    if submission.sender not in after:
        raise InvalidArgument("members must include the committer")
    for index, newcomer in enumerate(submission.newcomers):
        if newcomer not in after or newcomer in before:
            raise InvalidArgument(f"welcomes[{index}] goes to someone the commit does not add")
    _check_everyone_reached(before, submission)
    unwelcomed = after - before - frozenset(submission.newcomers)
    if unwelcomed:
        raise InvalidArgument(f"welcomes must reach every member the commit adds: {len(unwelcomed)} without one")
    return Accept(group is None, submission.epoch + 1, after)


def _check_everyone_reached(before: frozenset[bytes], submission: Submission) -> None:
    # A member left out would stay at the old epoch while the others move on: the group would fork for it.
    missing = before - frozenset(submission.recipients) - {submission.sender}
    if missing:
        raise InvalidArgument(
            f"deliveries must reach every member of the group but the submitter: {len(missing)} of "
            f"{len(before) - 1} missing"
        )


def _check_distinct(keys: Sequence[bytes], name: str) -> None:
    if len(set(keys)) != len(keys):
        raise InvalidArgument(f"{name} holds a recipient twice")
