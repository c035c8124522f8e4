"""PostgreSQL: the enqueue statement, for one operation or a group-commit batch of many (`enqueue_many`, the
writer's merge), and `EnqueueOp`, one enqueue or batch enqueue as the writer runs it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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

# Enqueues of one or many operations in one statement: locks every inbox involved (in sorted order: rows are
# inserted in the SELECT's order), moves each inbox's counter by the k messages it gets if its limits allow, and
# inserts the messages with seqs last_seq - k + 1 .. last_seq. An inbox whose limits do not allow it is locked
# but left unchanged and missing from the result; the caller then rolls back and looks closer.
#   $1..$4: per inbox (recipient, channel, k, bytes);  $5, $6: depth and bytes limits;
#   $7..$11: per message (recipient, channel, rank n within its inbox in this statement, expires_at, payload index);
#   $12: the distinct payloads;  $13: per message, its sender where the per-sender share applies (else NULL).
_ENQUEUE = """
WITH input AS (
    SELECT r, c, k, b FROM unnest($1::bytea[], $2::bytea[], $3::bigint[], $4::bigint[]) AS t(r, c, k, b)
), up AS (
    INSERT INTO inboxes AS i (recipient, channel_id, last_seq, depth, bytes)
    SELECT r, c, k, k, b FROM input ORDER BY r, c
    ON CONFLICT (recipient, channel_id) DO UPDATE
        SET last_seq = i.last_seq + excluded.last_seq,
            depth = i.depth + excluded.depth,
            bytes = i.bytes + excluded.bytes
        WHERE i.depth + excluded.depth <= $5 AND i.bytes + excluded.bytes <= $6
    RETURNING i.recipient, i.channel_id, i.last_seq, i.depth
), ins AS (
    INSERT INTO messages (recipient, channel_id, seq, size, expires_at, payload, sender)
    SELECT m.r, m.c, up.last_seq - input.k + m.n, length(($12::bytea[])[m.p]), m.e, ($12::bytea[])[m.p], m.s
    FROM unnest($7::bytea[], $8::bytea[], $9::bigint[], $10::float8[], $11::int[], $13::bytea[])
        AS m(r, c, n, e, p, s)
    JOIN input ON input.r = m.r AND input.c = m.c
    JOIN up ON up.recipient = m.r AND up.channel_id = m.c
)
SELECT recipient, channel_id, last_seq, depth FROM up
"""


async def enqueue_many(conn: Any, ops: Sequence[EnqueueOp]) -> list[list[int]] | None:
    """Apply every operation in one statement and return their seqs; None if a limit is in the way of any of
    them (or would be even for an empty inbox): the caller must then roll back what the statement did.

    All the operations come from one store, so they share its limits.
    """
    if not ops:
        return []
    limits = ops[0].limits
    usage: dict[Inbox, list[int]] = {}  # inbox -> [k, bytes]
    shares: dict[tuple[bytes, bytes], int] = {}  # (recipient, sender) -> messages added to a shared inbox
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
            if sender is not None:
                shares[(r, sender)] = shares.get((r, sender), 0) + 1
            messages.append((r, op.channel, entry[0], op.expires_at, len(payloads), sender))
    # A new inbox row is inserted without the limit check: refuse here what cannot fit even an empty inbox.
    if any(k > limits.max_inbox_depth or b > limits.max_inbox_bytes for k, b in usage.values()):
        return None
    inboxes = list(usage)
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
    )
    if len(rows) != len(inboxes):
        return None
    depths = {(bytes(row[0]), bytes(row[1])): int(row[3]) for row in rows}
    shares = {key: n for key, n in shares.items() if share_may_be_full(limits, depths[(key[0], DEFAULT_CHANNEL)])}
    if shares and not await _within_shares(conn, limits, shares, ops[0].now):
        return None
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


async def _within_shares(conn: Any, limits: StoreLimits, shares: dict[tuple[bytes, bytes], int], now: float) -> bool:
    """Whether every sender is within its share of each default inbox, its new messages included.

    Counted after the enqueue statement, which holds the lock of every inbox row it wrote until the commit: an
    enqueue to the same inbox on another node waits for that commit and counts after it (a new inbox row too:
    its insert waits on ours), so racing batches cannot pass a share together."""
    keys = list(shares)
    rows = await conn.fetch(
        "SELECT m.recipient, m.sender, count(*) FROM messages m"
        " JOIN unnest($1::bytea[], $2::bytea[]) AS t(r, s) ON m.recipient = t.r AND m.sender = t.s"
        " WHERE m.channel_id = $3 AND (m.expires_at IS NULL OR m.expires_at > $4) GROUP BY 1, 2",
        [r for r, _ in keys],
        [s for _, s in keys],
        DEFAULT_CHANNEL,
        now,
    )
    held = {(bytes(row[0]), bytes(row[1])): int(row[2]) for row in rows}
    return all(held.get(key, 0) <= limits.max_inbox_share_per_sender for key in shares)


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
