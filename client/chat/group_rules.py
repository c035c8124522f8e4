"""Group rules with no I/O: who a commit leaves in the group, who commits a member's leave, how often a change
is tried again after the node said *stale*."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MAX_COMMIT_TRIES = 10
"""A change is built again this many times at most when other members' commits keep coming first."""
SUBMIT_ATTEMPTS = 3
"""The same commit bytes are submitted this many times when the connection drops before an answer."""
PROPOSAL_GRACE_SECONDS = 2.0
"""A member's leave is committed at once by the first remaining member (leaf order); the others wait this long
and commit it only if nobody has."""


@dataclass(frozen=True)
class Change:
    """What a commit does to the member list, as its committer built it."""

    added: tuple[bytes, ...] = ()
    removed: tuple[bytes, ...] = ()


def members_after(before: Sequence[bytes], change: Change) -> list[bytes]:
    """The member set the node is told after the commit (leaf order kept, newcomers last)."""
    gone = set(change.removed)
    after = [key for key in before if key not in gone]
    after += [key for key in change.added if key not in after]
    return after


def commit_recipients(before: Sequence[bytes], self_key: bytes) -> list[bytes]:
    """Who gets a commit: every member before it but its committer (the removed ones too: they learn of it)."""
    return [key for key in before if key != self_key]


def newcomers(before: Sequence[bytes], change: Change) -> list[bytes]:
    """Who gets the Welcome."""
    return [key for key in change.added if key not in before]


def proposal_delay(members: Sequence[bytes], leaving: Sequence[bytes], self_key: bytes) -> float | None:
    """How long this member waits before it commits others' leave proposals: 0 for the first remaining member
    in leaf order, `PROPOSAL_GRACE_SECONDS` for the others; None if this member is itself leaving."""
    if self_key in leaving:
        return None
    remaining = [key for key in members if key not in leaving]
    if not remaining:
        return None
    return 0.0 if remaining[0] == self_key else PROPOSAL_GRACE_SECONDS


def retry_note(tries: int) -> str:
    """How an outcome line says that the change was built again: '' or ' (after 1 retry: ...)'."""
    if tries <= 1:
        return ""
    retries = tries - 1
    plural = "retry" if retries == 1 else "retries"
    return f" (after {retries} {plural}: another member's change came first)"
