"""PostgreSQL: inboxes and 1:1 channels. Enqueues are merged by the group-commit writer (`enqueue`)."""

from __future__ import annotations

import uuid
from typing import Any

from ..base import Inbox, StoreError
from ..inboxes import InboxesBase, InboxMessage, InboxStats
from ..postgres_writer import Again
from .engine import PostgresEngine
from .enqueue import EnqueueOp

# Inboxes whose expired messages one sweep transaction deletes.
_SWEEP_INBOXES = 500

_CHANNEL_OF = "SELECT channel_id FROM channels WHERE member_lo = $1 AND member_hi = $2"


class PostgresInboxes(InboxesBase, PostgresEngine):
    fetch_commits_when_empty = False  # qpc_fetch looks before it locks: finding the inbox empty is a read

    # ── channels ──────────────────────────────────────────────────────────────────────────────────────────────

    async def _find_channel(self, lo: bytes, hi: bytes) -> bytes | None:
        row = await self._fetchrow(_CHANNEL_OF, lo, hi)
        return None if row is None else bytes(row[0])

    async def _create_channel(self, lo: bytes, hi: bytes, now: float) -> bytes:
        # ON CONFLICT DO NOTHING waits for a concurrent inserter (on any node) and then yields nothing; the
        # re-read, a new statement, sees that committed row. Whoever inserted first, everyone gets that id.
        row = await self._write1(
            "INSERT INTO channels (channel_id, member_lo, member_hi, created_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (member_lo, member_hi) DO NOTHING RETURNING channel_id",
            uuid.uuid4().bytes,
            lo,
            hi,
            now,
        )
        if row is None:
            row = await self._fetchrow(_CHANNEL_OF, lo, hi)
            if row is None:  # pragma: no cover - the conflicting row is committed and channels are never deleted
                raise StoreError("channel vanished while being created")
        return bytes(row[0])

    async def channel_members(self, channel_id: bytes) -> tuple[bytes, bytes] | None:
        row = await self._fetchrow(
            "SELECT member_lo, member_hi FROM channels WHERE channel_id = $1",
            bytes(channel_id),
        )
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    # ── inboxes ───────────────────────────────────────────────────────────────────────────────────────────────

    async def _enqueue(
        self,
        recipients: list[bytes],
        channel: bytes,
        payload: bytes,
        expires_at: float | None,
        now: float,
        sender: bytes | None,
    ) -> list[int]:
        op = EnqueueOp(self._limits, recipients, channel, payload, expires_at, now, sender)
        inboxes = [(r, op.channel) for r in op.distinct]
        if self._options.group_commit:
            return await self._writer.submit(op.run, inboxes, op)
        return await self._enqueue_alone(op, inboxes)

    async def _enqueue_alone(self, op: EnqueueOp, inboxes: list[Inbox]) -> list[int]:
        attempt = 0

        async def run(conn: Any) -> list[int]:
            nonlocal attempt
            try:
                seqs = await op.run(conn, attempt)
            except Again:
                attempt += 1
                raise
            await self._notify_in(conn, inboxes)
            return seqs

        seqs = await self._transact(run)
        self._wakeups.notify(inboxes)
        return seqs

    async def _fetch(self, inbox: Inbox, count: int, now: float) -> list[InboxMessage]:
        rows = await self._remove(_FETCH, *inbox, now, count, self._limits.max_fetch_bytes)
        if rows:
            self._writer.count_commit(1)
        return [InboxMessage(row[0], bytes(row[1])) for row in rows]

    async def _peek(self, inbox: Inbox, count: int, now: float) -> list[InboxMessage]:
        rows = await self._fetchrows(_PEEK, *inbox, now, count, self._limits.max_fetch_bytes)
        return [InboxMessage(row[0], bytes(row[1])) for row in rows]

    async def _ack(self, inbox: Inbox, up_to: int) -> int:
        removed = int((await self._remove(_ACK, *inbox, up_to))[0][0])
        if removed:
            self._writer.count_commit(1)
        return removed

    async def inbox_stats(self, recipient: bytes, channel: bytes) -> InboxStats:
        row = await self._fetchrow(
            "SELECT depth, bytes, last_seq FROM inboxes WHERE recipient = $1 AND channel_id = $2",
            bytes(recipient),
            bytes(channel),
        )
        return InboxStats(0, 0, 0) if row is None else InboxStats(row[0], row[1], row[2])

    async def sweep_expired(self, now: float | None = None) -> int:
        cutoff = self._clock() if now is None else now

        async def op(conn: Any) -> int:
            found = await conn.fetch(
                "SELECT DISTINCT recipient, channel_id FROM messages WHERE expires_at <= $1 LIMIT $2",
                cutoff,
                _SWEEP_INBOXES,
            )
            if not found:
                return -1
            rs = [bytes(row[0]) for row in found]
            cs = [bytes(row[1]) for row in found]
            # Counter rows first, in one order, like every other writer; then their messages.
            await conn.execute(
                "SELECT 1 FROM inboxes i JOIN unnest($1::bytea[], $2::bytea[]) AS t(r, c)"
                " ON i.recipient = t.r AND i.channel_id = t.c"
                " ORDER BY i.recipient, i.channel_id FOR UPDATE OF i",
                rs,
                cs,
            )
            removed = await conn.fetchval(
                "WITH gone AS ("
                " DELETE FROM messages m USING unnest($1::bytea[], $2::bytea[]) AS t(r, c)"
                " WHERE m.recipient = t.r AND m.channel_id = t.c AND m.expires_at <= $3"
                " RETURNING m.recipient, m.channel_id, m.size"
                "), agg AS ("
                " SELECT recipient, channel_id, count(*) AS n, sum(size) AS s FROM gone GROUP BY 1, 2"
                "), shrink AS ("
                " UPDATE inboxes i SET depth = i.depth - agg.n, bytes = i.bytes - agg.s FROM agg"
                " WHERE i.recipient = agg.recipient AND i.channel_id = agg.channel_id"
                ") SELECT coalesce(sum(n), 0) FROM agg",
                rs,
                cs,
                cutoff,
            )
            return int(removed)

        total = 0
        # A removal like fetch and ack: expired messages a crash of the database brings back are swept again.
        while (removed := await self._transact(op, sync=False)) >= 0:
            total += removed
        return total


# ── SQL ───────────────────────────────────────────────────────────────────────────────────────────────────────

# qpc_first_seqs, qpc_fetch and qpc_ack are the database's functions (postgres_migrations, version 11): each
# removal is one statement, so one round trip, that locks the inbox, removes and sets its own commit mode.
_PEEK = (
    "SELECT seq, payload FROM messages WHERE recipient = $1 AND channel_id = $2"
    " AND seq IN (SELECT s FROM qpc_first_seqs($1, $2, $3, $4, $5) AS s) ORDER BY seq"
)
_FETCH = "SELECT fetched_seq, fetched_payload FROM qpc_fetch($1, $2, $3, $4, $5)"
_ACK = "SELECT qpc_ack($1, $2, $3)"
