"""SQLite: groups (the commit sequencer's state). One writer thread and BEGIN IMMEDIATE already serialize writes;
the conditional update and the unique key decide all the same, as they do on PostgreSQL."""

from __future__ import annotations

import sqlite3
from typing import Any

from ..base import LimitExceeded
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
from ..sqlite_writer import OpContext
from .engine import SqliteEngine
from .inboxes import answer_parked, enqueue_one


class SqliteGroups(SqliteEngine):
    async def load_group(self, group_id: bytes, digest: bytes) -> tuple[GroupRecord | None, SubmissionRecord | None]:
        key, sha = bytes(group_id), bytes(digest)

        def read(conn: sqlite3.Connection) -> tuple[Any, Any]:
            group = conn.execute("SELECT epoch, members FROM mls_groups WHERE group_id = ?", (key,)).fetchone()
            prior = conn.execute(
                "SELECT sender, seqs FROM mls_group_log WHERE group_id = ? AND digest = ?", (key, sha)
            ).fetchone()
            return group, prior

        group, prior = await self._read(read)
        return (
            None if group is None else GroupRecord(int(group[0]), unpack_keys(bytes(group[1]))),
            None if prior is None else SubmissionRecord(bytes(prior[0]), unpack_seqs(bytes(prior[1]))),
        )

    async def write_group_submission(self, write: GroupWrite, limits: GroupLimits) -> list[int]:
        store_limits = self._limits
        now = self._clock()
        members = pack_keys(write.members_after)
        inboxes = [(d.recipient, d.channel) for d in write.deliveries]

        def op(conn: sqlite3.Connection, ctx: OpContext) -> list[int]:
            if write.expected_epoch is None:
                count = conn.execute("SELECT count(*) FROM mls_groups WHERE creator = ?", (write.sender,)).fetchone()[0]
                if count >= limits.max_groups_per_creator:
                    raise LimitExceeded("max_groups_per_creator", limits.max_groups_per_creator, count + 1)
                moved = conn.execute(
                    "INSERT INTO mls_groups (group_id, epoch, members, creator, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (group_id) DO NOTHING",
                    (write.group_id, write.epoch_after, members, write.sender, now, now),
                ).rowcount
            else:
                moved = conn.execute(
                    "UPDATE mls_groups SET epoch = ?, members = ?, updated_at = ? WHERE group_id = ? AND epoch = ?",
                    (write.epoch_after, members, now, write.group_id, write.expected_epoch),
                ).rowcount
            if moved != 1:
                raise GroupMoved()
            if not write.is_commit:
                proposals = conn.execute(
                    "SELECT count(*) FROM mls_group_log WHERE group_id = ? AND epoch = ? AND is_commit = 0",
                    (write.group_id, write.message_epoch),
                ).fetchone()[0]
                if proposals >= limits.max_proposals_per_epoch:
                    raise LimitExceeded("max_proposals_per_epoch", limits.max_proposals_per_epoch, proposals + 1)
            seqs = [
                enqueue_one(conn, store_limits, (d.recipient, d.channel), d.payload, write.expires_at, now, index)
                for index, d in enumerate(write.deliveries)
            ]
            logged = conn.execute(
                "INSERT INTO mls_group_log (group_id, digest, epoch, is_commit, sender, seqs, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    write.group_id,
                    write.digest,
                    write.message_epoch,
                    int(write.is_commit),
                    write.sender,
                    pack_seqs(seqs),
                    now,
                ),
            ).rowcount
            if logged != 1:
                # The same bytes were accepted meanwhile, or (the backstop) another commit holds this epoch.
                raise GroupMoved()
            if write.is_commit:
                conn.execute(
                    "DELETE FROM mls_group_log WHERE group_id = ? AND epoch < ?",
                    (write.group_id, write.epoch_after - limits.log_epochs),
                )
            ctx.touched.extend(inboxes)
            return seqs

        return await self._write(op, removals=lambda: answer_parked(self._local_wakeups, store_limits, inboxes, now))
