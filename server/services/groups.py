"""Groups: the per-group commit sequencer (submitCommit).

The node reads the group id, epoch and content type from the MLS framing, checks the call against them and against
its bounds, then runs the rules (`group_rules.decide`) on what the store knows of the group and hands an
acceptance to the store, whose write is conditional on the group being where the rules saw it. When another
submission moved the group first, the rules run again on the new state (and then usually answer `stale`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from quicnprotochat import native
from quicnprotochat.common.errors import InvalidArgument, Unavailable
from quicnprotochat.server.services import validation
from quicnprotochat.server.services.errors import store_errors
from quicnprotochat.server.services.group_rules import Accept, Duplicate, Stale, Submission, decide
from quicnprotochat.server.services.inboxes import InboxService
from quicnprotochat.server.services.sessions import Caller
from quicnprotochat.server.store import Clock, GroupStore
from quicnprotochat.server.store.groups import GroupDelivery, GroupLimits, GroupMoved, GroupRecord, GroupWrite

MAX_GROUP_ID_BYTES = 256
MAX_EPOCH = (1 << 63) - 2
"""Epochs are signed 64-bit in both databases, and a commit stores epoch + 1."""
# Each retry follows a submission that moved the group; after that the rules almost always answer `stale`.
_MAX_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class SubmitLimits:
    max_deliveries: int
    """Deliveries plus welcomes in one call."""
    max_bytes: int
    """The message plus every payload of one call."""
    max_members: int
    max_payload_bytes: int
    message_ttl_seconds: float
    store: GroupLimits


@dataclass(frozen=True, slots=True)
class CommitOutcome:
    outcome: Literal["accepted", "duplicate", "stale"]
    epoch: int
    seqs: tuple[int, ...] = ()


class GroupService:
    def __init__(self, store: GroupStore, inboxes: InboxService, limits: SubmitLimits, *, clock: Clock) -> None:
        self._store = store
        self._inboxes = inboxes
        self._limits = limits
        self._clock = clock
        self.outcomes: Counter[tuple[str, str]] = Counter()
        """(commit or proposal, accepted / duplicate / stale) since the node started, for /metrics."""

    async def submit(
        self,
        caller: Caller,
        group_id: bytes,
        epoch: int,
        message: bytes,
        deliveries: Sequence[GroupDelivery],
        welcomes: Sequence[GroupDelivery],
        members: Sequence[bytes],
    ) -> CommitOutcome:
        self._check_bounds(group_id, epoch, message, deliveries, welcomes, members)
        for index, key in enumerate(members):
            validation.identity_key(key, f"members[{index}]")
        for name, items in (("deliveries", deliveries), ("welcomes", welcomes)):
            for index, item in enumerate(items):
                await self._inboxes.check_delivery(caller, item.recipient, item.channel, f"{name}[{index}]")
        kind = _read_message(message, group_id, epoch)
        submission = Submission(
            sender=caller.identity_key,
            kind=kind,
            epoch=epoch,
            recipients=tuple(d.recipient for d in deliveries),
            newcomers=tuple(w.recipient for w in welcomes),
            members=tuple(members),
        )
        self._inboxes.check_room()
        result = await self._sequence(group_id, hashlib.sha256(message).digest(), submission, (*deliveries, *welcomes))
        self.outcomes[(kind, result.outcome)] += 1
        return result

    async def _sequence(
        self, group_id: bytes, digest: bytes, submission: Submission, deliveries: tuple[GroupDelivery, ...]
    ) -> CommitOutcome:
        with store_errors():
            for _ in range(_MAX_ATTEMPTS):
                group, prior = await self._store.load_group(group_id, digest)
                decision = decide(group, prior, submission)
                if isinstance(decision, Duplicate):
                    assert group is not None  # an accepted submission made the group
                    return CommitOutcome("duplicate", group.epoch, decision.seqs)
                if isinstance(decision, Stale):
                    return CommitOutcome("stale", decision.epoch)
                try:
                    seqs = await self._store.write_group_submission(
                        self._write(group_id, digest, submission, decision, group, deliveries),
                        self._limits.store,
                    )
                except GroupMoved:
                    continue
                return CommitOutcome("accepted", decision.epoch_after, tuple(seqs))
        raise Unavailable("the group kept changing during the submission; try again")

    def _write(
        self,
        group_id: bytes,
        digest: bytes,
        submission: Submission,
        decision: Accept,
        group: GroupRecord | None,
        deliveries: tuple[GroupDelivery, ...],
    ) -> GroupWrite:
        return GroupWrite(
            group_id=group_id,
            expected_epoch=None if group is None else group.epoch,
            epoch_after=decision.epoch_after,
            members_after=decision.members_after,
            sender=submission.sender,
            digest=digest,
            is_commit=submission.kind == "commit",
            message_epoch=submission.epoch,
            deliveries=deliveries,
            expires_at=self._clock() + self._limits.message_ttl_seconds,
        )

    def _check_bounds(
        self,
        group_id: bytes,
        epoch: int,
        message: bytes,
        deliveries: Sequence[GroupDelivery],
        welcomes: Sequence[GroupDelivery],
        members: Sequence[bytes],
    ) -> None:
        limits = self._limits
        if not group_id or len(group_id) > MAX_GROUP_ID_BYTES:
            raise InvalidArgument(f"groupId must be 1 to {MAX_GROUP_ID_BYTES} bytes")
        if epoch > MAX_EPOCH:
            raise InvalidArgument(f"epoch must be at most {MAX_EPOCH}")
        if not message:
            raise InvalidArgument("message is empty")
        count = len(deliveries) + len(welcomes)
        if count > limits.max_deliveries:
            raise InvalidArgument(
                f"{count} deliveries and welcomes; this node accepts at most {limits.max_deliveries} per call"
            )
        if len(members) > limits.max_members:
            raise InvalidArgument(f"{len(members)} members; this node accepts groups of at most {limits.max_members}")
        total = len(message)
        for name, items in (("deliveries", deliveries), ("welcomes", welcomes)):
            for index, item in enumerate(items):
                size = len(item.payload)
                if not size:
                    raise InvalidArgument(f"{name}[{index}].payload is empty")
                if size > limits.max_payload_bytes:
                    raise InvalidArgument(
                        f"{name}[{index}].payload is {size} bytes; this node accepts at most {limits.max_payload_bytes}"
                    )
                total += size
        if total > limits.max_bytes:
            raise InvalidArgument(f"the call carries {total} bytes; this node accepts at most {limits.max_bytes}")


def _read_message(message: bytes, group_id: bytes, epoch: int) -> Literal["commit", "proposal"]:
    try:
        info = native.mls_message_info(message)
    except native.MalformedError as error:
        raise InvalidArgument(f"message is not an MLS PublicMessage or PrivateMessage: {error}") from None
    if info.group_id != group_id:
        raise InvalidArgument("message belongs to another group than groupId")
    if info.epoch != epoch:
        raise InvalidArgument(f"message is for epoch {info.epoch}, not epoch {epoch}")
    if info.content_type == "application":
        raise InvalidArgument("message is an application message; submit commits and proposals only")
    return info.content_type
