"""PostgreSQL: the enqueue statement, for one operation or a group-commit batch of many (`enqueue_many`, the
writer's merge), and `EnqueueOp`, one enqueue or batch enqueue as the writer runs it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from ..base import DEFAULT_CHANNEL, Inbox, StoreError, StoreLimits
from ..inboxes import check_room, check_share, has_room, share_may_be_full, shared_inbox
from ..postgres_writer import Again

_DROP_EXPIRED = """
WITH gone AS (
    DELETE FROM messages WHERE recipient = $1 AND channel_id = $2 AND expires_at <= $3 RETURNING size
), shrink AS (
    UPDATE inboxes SET depth = depth - (SELECT count(*) FROM gone),
        bytes = bytes - (SELECT coalesce(sum(size), 0) FROM gone)
    WHERE recipient = $1 AND channel_id = $2
)
SELECT count(*), coalesce(sum(size), 0) FROM gone
"""

# qpc_enqueue is the database's function (postgres_migrations, version 12): see there for what it does.
_ENQUEUE = "SELECT * FROM qpc_enqueue($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"

REFUSED = "QP001"
"""The SQLSTATE qpc_enqueue raises when a limit is in the way: the whole call is undone."""


async def enqueue_many(
    conn: Any, ops: Sequence[EnqueueOp], notify: tuple[str, list[str]] | None = None
) -> list[list[int]] | None:
    """Apply every operation in one statement and return their seqs; None if a limit is in the way of any of
    them (or would be even for an empty inbox): nothing was applied, and inside a transaction the caller must roll
    back to its savepoint (the statement failed).

    `notify`: (channel, payloads) to send from the statement, for a caller without a transaction of its own (its
    commit is the statement's). All the operations come from one store, so they share its limits.
    """
    if not ops:
        return []
    limits = ops[0].limits
    usage: dict[Inbox, list[int]] = {}  # inbox -> [k, bytes]
    messages: list[tuple[bytes, bytes, int, float | None, int, bytes | None]] = []
    payloads: list[bytes] = []
    for op in ops:
        payloads.append(op.payload)
        size = len(op.payload)
        for r in op.recipients:
            entry = usage.setdefault((r, op.channel), [0, 0])
            entry[0] += 1
            entry[1] += size
            sender = op.sender if shared_inbox((r, op.channel), op.sender) else None
            messages.append((r, op.channel, entry[0], op.expires_at, len(payloads), sender))
    # A new inbox row is inserted without the limit check: refuse here what cannot fit even an empty inbox.
    if any(k > limits.max_inbox_depth or b > limits.max_inbox_bytes for k, b in usage.values()):
        return None
    inboxes = list(usage)
    try:
        rows = await conn.fetch(
            _ENQUEUE,
            [r for r, _ in inboxes],
            [c for _, c in inboxes],
            [usage[i][0] for i in inboxes],
            [usage[i][1] for i in inboxes],
            limits.max_inbox_depth,
            limits.max_inbox_bytes,
            [m[0] for m in messages],
            [m[1] for m in messages],
            [m[2] for m in messages],
            [m[3] for m in messages],
            [m[4] for m in messages],
            payloads,
            [m[5] for m in messages],
            limits.max_inbox_share_per_sender,
            DEFAULT_CHANNEL,
            ops[0].now,
            *(notify or ("", [])),
        )
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == REFUSED:
            return None
        raise
    next_seq = {(bytes(row[0]), bytes(row[1])): int(row[2]) for row in rows}
    for inbox, (k, _) in usage.items():
        next_seq[inbox] -= k - 1
    results: list[list[int]] = []
    for op in ops:
        seqs = []
        for r in op.recipients:
            seqs.append(next_seq[(r, op.channel)])
            next_seq[(r, op.channel)] += 1
        results.append(seqs)
    return results


# How many times an enqueue is checked and applied before giving up on a share that keeps moving under it.
_MAX_CHECKS = 5


class EnqueueOp:
    """One enqueue or batch enqueue, run by the group-commit writer (or alone) inside a savepoint."""

    __slots__ = ("channel", "counts", "distinct", "expires_at", "limits", "now", "payload", "recipients", "sender")

    def __init__(
        self,
        limits: StoreLimits,
        recipients: list[bytes],
        channel: bytes,
        payload: bytes,
        expires_at: float | None,
        now: float,
        sender: bytes | None = None,
    ) -> None:
        self.limits = limits
        self.sender = sender
        self.recipients = recipients
        self.channel = channel
        self.payload = payload
        self.expires_at = expires_at
        self.now = now
        counts: dict[bytes, int] = {}
        for r in recipients:
            counts[r] = counts.get(r, 0) + 1
        self.counts = counts
        self.distinct = sorted(counts)

    async def run(self, conn: Any, attempt: int) -> list[int]:
        if attempt == 0:
            seqs = await self._apply(conn)
            if seqs is not None:
                return seqs
            raise Again()
        # Something did not fit: the exact, SQLite-equivalent walk, recipient by recipient, making room from
        # expired messages before refusing. Refusing raises, and the savepoint undoes the clean-up too.
        await self.check_limits(conn)
        seqs = await self._apply(conn)
        if seqs is not None:
            return seqs
        if attempt >= _MAX_CHECKS:  # pragma: no cover - needs other nodes' commits landing between every check
            raise StoreError("inbox limits kept changing under this enqueue")
        # The inbox row was new when checked (nothing to lock), and another node's commit filled the share since:
        # check again, now against that commit.
        raise Again()

    async def _apply(self, conn: Any) -> list[int] | None:
        applied = await enqueue_many(conn, [self])
        return None if applied is None else applied[0]

    async def check_limits(self, conn: Any) -> None:
        limits = self.limits
        size = len(self.payload)
        rows = await conn.fetch(
            "SELECT recipient, depth, bytes FROM inboxes WHERE channel_id = $2 AND recipient = ANY($1::bytea[])"
            " ORDER BY recipient FOR UPDATE",
            self.distinct,
            self.channel,
        )
        usage = {bytes(row[0]): (int(row[1]), int(row[2])) for row in rows}
        cleaned: set[bytes] = set()
        single = len(self.recipients) == 1
        for index, r in enumerate(self.recipients):
            depth, used = usage.get(r, (0, 0))
            if not has_room(limits, depth, used, size) and r not in cleaned:
                cleaned.add(r)
                row = await conn.fetchrow(
                    _DROP_EXPIRED,
                    r,
                    self.channel,
                    self.now,
                )
                depth, used = depth - int(row[0]), used - int(row[1])
            check_room(limits, depth, used, size, None if single else index)
            usage[r] = (depth + 1, used + size)
            if shared_inbox((r, self.channel), self.sender) and share_may_be_full(limits, depth + 1):
                held = await conn.fetchval(
                    "SELECT count(*) FROM messages WHERE recipient = $1 AND channel_id = $2 AND sender = $3"
                    " AND (expires_at IS NULL OR expires_at > $4)",
                    r,
                    self.channel,
                    self.sender,
                    self.now,
                )
                check_share(limits, int(held), None if single else index)
