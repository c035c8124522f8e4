"""PostgreSQL: groups (the commit sequencer's state), for several nodes on one database.

A submission's transaction first moves the group row with an update conditional on the epoch its decision was made
against (or, for a new group, inserts it if absent). The row lock that update takes orders the submissions of one
group across nodes: a second one waits, then finds the epoch moved and changes nothing (`GroupMoved`). Only then
are the deliveries' inbox rows locked (in sorted order, as every enqueue does) and the log row inserted, whose
unique key on (group, epoch) over commits is the backstop. Submissions always go through the group-commit writer
(whatever `group_commit` says for enqueues): it runs the transaction, its retries and the cross-node wake-ups.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..base import LimitExceeded, StoreLimits
from ..groups import (
    GroupLimits,
    GroupMoved,
    GroupRecord,
    GroupWrite,
    SubmissionRecord,
    pack_keys,
    pack_seqs,
    unpack_keys,
    unpack_seqs,
)
from ..postgres_writer import Again
from .engine import PostgresEngine
from .enqueue import EnqueueOp, enqueue_many

# The advisory-lock class of the per-creator group cap (two-key form, so it cannot meet MIGRATION_LOCK).
_GROUP_CREATOR_LOCK_CLASS = 0x717067

# One row whatever exists: the group (or NULLs) and the earlier acceptance of these bytes (or NULLs).
_LOAD = """
SELECT g.epoch, g.members, l.sender, l.seqs
FROM (SELECT 1) AS one
LEFT JOIN mls_groups g ON g.group_id = $1
LEFT JOIN mls_group_log l ON l.group_id = $1 AND l.digest = $2
"""


class PostgresGroups(PostgresEngine):
    async def load_group(self, group_id: bytes, digest: bytes) -> tuple[GroupRecord | None, SubmissionRecord | None]:
        row = await self._fetchrow(_LOAD, bytes(group_id), bytes(digest))
        group = None if row[0] is None else GroupRecord(int(row[0]), unpack_keys(bytes(row[1])))
        prior = None if row[2] is None else SubmissionRecord(bytes(row[2]), unpack_seqs(bytes(row[3])))
        return group, prior

    async def write_group_submission(self, write: GroupWrite, limits: GroupLimits) -> list[int]:
        self._check_open()
        op = _SubmissionOp(self._limits, write, limits, self._clock())
        inboxes = sorted({(d.recipient, d.channel) for d in write.deliveries})
        seqs: list[int] = await self._writer.submit(op.run, inboxes)
        return seqs


class _SubmissionOp:
    """One accepted submission, run by the group-commit writer inside a savepoint."""

    def __init__(self, store_limits: StoreLimits, write: GroupWrite, limits: GroupLimits, now: float) -> None:
        self.write = write
        self.limits = limits
        self.now = now
        self.enqueues = [
            EnqueueOp(store_limits, [d.recipient], d.channel, d.payload, write.expires_at, now)
            for d in write.deliveries
        ]

    async def run(self, conn: Any, attempt: int) -> list[int]:
        write = self.write
        await self._move_group(conn)
        if not write.is_commit:
            # Counted under the group row's lock, which the move above holds: exact across nodes.
            cap = self.limits.max_proposals_per_epoch
            proposals = int(
                await conn.fetchval(
                    "SELECT count(*) FROM mls_group_log WHERE group_id = $1 AND epoch = $2 AND NOT is_commit",
                    write.group_id,
                    write.message_epoch,
                )
            )
            if proposals >= cap:
                raise LimitExceeded("max_proposals_per_epoch", cap, proposals + 1)
        if attempt > 0:
            # Something did not fit: the exact walk, delivery by delivery, making room from expired messages
            # before refusing (the savepoint undoes the clean-up with the refusal).
            for index, enqueue in enumerate(self.enqueues):
                try:
                    await enqueue.check_limits(conn)
                except LimitExceeded as exc:
                    raise LimitExceeded(exc.limit_name, exc.limit, exc.actual, index=index) from None
        applied = await enqueue_many(conn, self.enqueues)
        if applied is None:
            raise Again()
        seqs = [seq for seqs in applied for seq in seqs]
        status = await conn.execute(
            "INSERT INTO mls_group_log (group_id, digest, epoch, is_commit, sender, seqs, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            write.group_id,
            write.digest,
            write.message_epoch,
            write.is_commit,
            write.sender,
            pack_seqs(seqs),
            self.now,
        )
        if status != "INSERT 0 1":
            # The same bytes were accepted meanwhile, or (the backstop) another commit holds this epoch.
            raise GroupMoved()
        if write.is_commit:
            await conn.execute(
                "DELETE FROM mls_group_log WHERE group_id = $1 AND epoch < $2",
                write.group_id,
                write.epoch_after - self.limits.log_epochs,
            )
        return seqs

    async def _move_group(self, conn: Any) -> None:
        write = self.write
        members = pack_keys(write.members_after)
        if write.expected_epoch is None:
            # Count-then-insert is only exact if concurrent creations by one identity (from any node) queue up.
            lock = int.from_bytes(hashlib.sha256(write.sender).digest()[:4], "big", signed=True)
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", _GROUP_CREATOR_LOCK_CLASS, lock)
            cap = self.limits.max_groups_per_creator
            count = int(await conn.fetchval("SELECT count(*) FROM mls_groups WHERE creator = $1", write.sender))
            if count >= cap:
                raise LimitExceeded("max_groups_per_creator", cap, count + 1)
            status = await conn.execute(
                "INSERT INTO mls_groups (group_id, epoch, members, creator, created_at, updated_at)"
                " VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (group_id) DO NOTHING",
                write.group_id,
                write.epoch_after,
                members,
                write.sender,
                self.now,
            )
            moved = status == "INSERT 0 1"
        else:
            status = await conn.execute(
                "UPDATE mls_groups SET epoch = $1, members = $2, updated_at = $3 WHERE group_id = $4 AND epoch = $5",
                write.epoch_after,
                members,
                self.now,
                write.group_id,
                write.expected_epoch,
            )
            moved = status == "UPDATE 1"
        if not moved:
            raise GroupMoved()
