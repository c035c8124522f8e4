"""Groups (the commit sequencer's state): the records, the `GroupStore` protocol, and what both backends share.

A group row holds the group's current epoch and member set. Each accepted submission (commit or proposal) leaves
a log row keyed by (group id, SHA-256 of its message), with the seqs its deliveries got, so that a retry gets the
first answer; a unique key on (group id, epoch) over commits is the last word on "one commit per epoch". A write
is conditional on the group's epoch being the one the caller read: the database, not this process, decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .base import StoreError

KEY_BYTES = 32
"""Identity keys are Ed25519 public keys; member sets are stored as their concatenation."""
_SEQ_BYTES = 8


class GroupMoved(StoreError):
    """The group changed since the caller read it (another submission won, or created it first); nothing of this
    write was stored. Read again and decide again."""

    def __init__(self) -> None:
        super().__init__("the group changed during the submission")


@dataclass(frozen=True, slots=True)
class GroupRecord:
    epoch: int
    members: frozenset[bytes]


@dataclass(frozen=True, slots=True)
class SubmissionRecord:
    sender: bytes
    seqs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class GroupDelivery:
    recipient: bytes
    channel: bytes
    payload: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class GroupWrite:
    """One accepted submission, as the store must apply it: all of it in one transaction, or none of it."""

    group_id: bytes
    expected_epoch: int | None
    """The epoch the decision was made against; None: the group must not exist yet."""
    epoch_after: int
    members_after: frozenset[bytes]
    sender: bytes
    """The submitter; a new group counts against its creator's cap."""
    digest: bytes
    """SHA-256 of the message."""
    is_commit: bool
    message_epoch: int
    deliveries: tuple[GroupDelivery, ...]
    """Deliveries then welcomes, in call order: the seqs come back in this order."""
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class GroupLimits:
    max_groups_per_creator: int = 1000
    log_epochs: int = 1000
    """Log rows of commits older than this many epochs are dropped: a retry that late is answered `stale`."""
    max_proposals_per_epoch: int = 100
    """Proposals accepted at one epoch of a group; the next commit makes room again."""

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if getattr(self, name) < 1:
                raise ValueError(f"GroupLimits.{name} must be at least 1")


class GroupStore(Protocol):
    async def load_group(self, group_id: bytes, digest: bytes) -> tuple[GroupRecord | None, SubmissionRecord | None]:
        """The group (None if unknown) and the earlier acceptance of the message with this digest, from one
        snapshot."""
        ...

    async def write_group_submission(self, write: GroupWrite, limits: GroupLimits) -> list[int]:
        """Apply an accepted submission: move (or create) the group, log the submission, enqueue every delivery;
        one seq per delivery. Raises GroupMoved (nothing stored) if the group is not at `expected_epoch` any
        more, LimitExceeded (with the delivery's index) if an inbox is full, or if the creator has too many
        groups, or the epoch too many proposals."""
        ...


def pack_keys(keys: frozenset[bytes]) -> bytes:
    # Sorted, so that the same set always packs to the same bytes.
    return b"".join(sorted(keys))


def unpack_keys(data: bytes) -> frozenset[bytes]:
    return frozenset(data[i : i + KEY_BYTES] for i in range(0, len(data), KEY_BYTES))


def pack_seqs(seqs: Sequence[int]) -> bytes:
    return b"".join(seq.to_bytes(_SEQ_BYTES, "big") for seq in seqs)


def unpack_seqs(data: bytes) -> tuple[int, ...]:
    return tuple(int.from_bytes(data[i : i + _SEQ_BYTES], "big") for i in range(0, len(data), _SEQ_BYTES))
