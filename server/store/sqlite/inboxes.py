"""SQLite: inboxes and 1:1 channels."""

from __future__ import annotations

import sqlite3
import uuid

from ..base import Inbox, StoreLimits
from ..inboxes import (
    InboxesBase,
    InboxMessage,
    InboxStats,
    check_room,
    check_share,
    fetch_count,
    has_room,
    share_may_be_full,
    shared_inbox,
)
from ..sqlite_writer import OpContext, Removal, WriteFn
from ..wakeups import ClaimableWaiter, InProcessWakeups
from .engine import SqliteEngine

# A sweep deletes at most this many messages per transaction so that enqueues are not held up behind it.
_SWEEP_CHUNK = 2000


class SqliteInboxes(InboxesBase, SqliteEngine):
    answers_parked_fetches = True  # its enqueues claim them: answer_parked

    # ── channels ──────────────────────────────────────────────────────────────────────────────────────────────

    async def _find_channel(self, lo: bytes, hi: bytes) -> bytes | None:
        return await self._read(lambda conn: _channel_of(conn, lo, hi))

    async def _create_channel(self, lo: bytes, hi: bytes, now: float) -> bytes:
        def create(conn: sqlite3.Connection, ctx: OpContext) -> bytes:
            # ON CONFLICT DO NOTHING + re-read: whoever inserted first, everyone gets that id.
            conn.execute(
                "INSERT INTO channels (channel_id, member_lo, member_hi, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (member_lo, member_hi) DO NOTHING",
                (uuid.uuid4().bytes, lo, hi, now),
            )
            found = _channel_of(conn, lo, hi)
            assert found is not None
            return found

        return await self._write(create)

    async def channel_members(self, channel_id: bytes) -> tuple[bytes, bytes] | None:
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT member_lo, member_hi FROM channels WHERE channel_id = ?",
                (bytes(channel_id),),
            ).fetchone()
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
        limits = self._limits
        inboxes = [(r, channel) for r in recipients]
        single = len(inboxes) == 1

        def op(conn: sqlite3.Connection, ctx: OpContext) -> list[int]:
            seqs = [
                enqueue_one(conn, limits, inbox, payload, expires_at, now, None if single else index, sender)
                for index, inbox in enumerate(inboxes)
            ]
            ctx.touched.extend(inboxes)
            return seqs

        return await self._write(op, removals=lambda: answer_parked(self._local_wakeups, limits, inboxes, now))

    async def _fetch(self, inbox: Inbox, count: int, now: float) -> list[InboxMessage]:
        max_bytes = self._limits.max_fetch_bytes

        def op(conn: sqlite3.Connection, ctx: OpContext) -> list[InboxMessage]:
            return fetch_messages(conn, inbox, count, now, max_bytes)

        # Answered once committed, without the fsync: see GroupCommitWriter on removals.
        return await self._write(op, frees_space=True, sync=False)

    async def _peek(self, inbox: Inbox, count: int, now: float) -> list[InboxMessage]:
        params = (*inbox, now, count, self._limits.max_fetch_bytes)
        rows = await self._read(lambda conn: conn.execute(_PEEK, params).fetchall())
        return [InboxMessage(r[0], bytes(r[1])) for r in rows]

    async def _ack(self, inbox: Inbox, up_to: int) -> int:
        def op(conn: sqlite3.Connection, ctx: OpContext) -> int:
            sizes = conn.execute(
                "DELETE FROM messages WHERE recipient = ? AND channel_id = ? AND seq <= ? RETURNING size",
                (*inbox, up_to),
            ).fetchall()
            _shrink(conn, inbox, len(sizes), sum(s[0] for s in sizes))
            return len(sizes)

        return await self._write(op, frees_space=True, sync=False)

    async def inbox_stats(self, recipient: bytes, channel: bytes) -> InboxStats:
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT depth, bytes, last_seq FROM inboxes WHERE recipient = ? AND channel_id = ?",
                (bytes(recipient), bytes(channel)),
            ).fetchone()
        )
        return InboxStats(0, 0, 0) if row is None else InboxStats(row[0], row[1], row[2])

    async def sweep_expired(self, now: float | None = None) -> int:
        cutoff = self._clock() if now is None else now

        def op(conn: sqlite3.Connection, ctx: OpContext) -> int:
            rows = conn.execute(
                "DELETE FROM messages WHERE id IN ("
                " SELECT id FROM messages WHERE expires_at <= ? LIMIT ?"
                ") RETURNING recipient, channel_id, size",
                (cutoff, _SWEEP_CHUNK),
            ).fetchall()
            removed: dict[Inbox, list[int]] = {}
            for recipient, channel, size in rows:
                entry = removed.setdefault((bytes(recipient), bytes(channel)), [0, 0])
                entry[0] += 1
                entry[1] += size
            for inbox, (count, size) in removed.items():
                _shrink(conn, inbox, count, size)
            return len(rows)

        total = 0
        while True:
            # Without the fsync, as fetch and ack: an expired message that comes back after a power loss is swept
            # again (see GroupCommitWriter on removals).
            removed = await self._write(op, frees_space=True, sync=False)
            total += removed
            if removed < _SWEEP_CHUNK:
                return total


# ── SQL helpers run on the writer or reader thread ────────────────────────────────────────────────────────────


SHARE_HELD = (
    "SELECT count(*) FROM messages WHERE recipient = ? AND channel_id = ? AND sender = ?"
    " AND (expires_at IS NULL OR expires_at > ?)"
)
"""The sender's unexpired messages in a default inbox: read from `messages_by_sender` alone, which holds
`expires_at` (migration 11) so that no message row is looked up."""

# The first messages of an inbox in seq order, each with the payload bytes queued before it; callers keep those
# with `before` under the byte budget. Parameters: recipient, channel, now, count.
_FIRST_MESSAGES = (
    "SELECT id, SUM(size) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) - size AS before FROM messages"
    " WHERE recipient = ? AND channel_id = ? AND (expires_at IS NULL OR expires_at > ?) ORDER BY seq LIMIT ?"
)
# Both compose module constants only (no values), hence the S608 exemptions. Extra parameter: the byte budget.
_FETCH = f"DELETE FROM messages WHERE id IN (SELECT id FROM ({_FIRST_MESSAGES}) WHERE before < ?) RETURNING seq, payload, size"  # noqa: S608, E501
_PEEK = (
    f"SELECT seq, payload FROM messages WHERE id IN (SELECT id FROM ({_FIRST_MESSAGES}) WHERE before < ?) ORDER BY seq"  # noqa: S608
)


def answer_parked(wakeups: InProcessWakeups, limits: StoreLimits, inboxes: list[Inbox], now: float) -> list[Removal]:
    """For an enqueue to `inboxes`: one parked fetchWait of each claimed, to be answered by a fetch run right after
    the enqueue in its transaction, instead of a wake-up and a transaction of its own (see fetch_wait)."""
    removals: list[Removal] = []
    for inbox in inboxes:
        claimed = wakeups.claim(inbox)
        if claimed is not None:
            waiter, answer = claimed
            removals.append((_fetch_for(waiter, inbox, fetch_count(limits, waiter.limit), now, limits), answer))
    return removals


def _fetch_for(
    waiter: ClaimableWaiter, inbox: Inbox, count: int, now: float, limits: StoreLimits
) -> WriteFn[list[InboxMessage]]:
    max_bytes = limits.max_fetch_bytes

    def op(conn: sqlite3.Connection, ctx: OpContext) -> list[InboxMessage]:
        # Looked at on the writer thread: a waiter that gave up before this ran loses nothing.
        return fetch_messages(conn, inbox, count, now, max_bytes) if waiter.wanted else []

    return op


def fetch_messages(
    conn: sqlite3.Connection, inbox: Inbox, count: int, now: float, max_bytes: int
) -> list[InboxMessage]:
    """Remove and return the inbox's first `count` unexpired messages within `max_bytes`, in seq order."""
    rows = conn.execute(_FETCH, (*inbox, now, count, max_bytes)).fetchall()
    _shrink(conn, inbox, len(rows), sum(r[2] for r in rows))
    # RETURNING promises no order.
    return sorted((InboxMessage(r[0], bytes(r[1])) for r in rows), key=lambda m: m.seq)


def _channel_of(conn: sqlite3.Connection, lo: bytes, hi: bytes) -> bytes | None:
    row = conn.execute("SELECT channel_id FROM channels WHERE member_lo = ? AND member_hi = ?", (lo, hi)).fetchone()
    return None if row is None else bytes(row[0])


def _inbox_usage(conn: sqlite3.Connection, inbox: Inbox) -> tuple[int, int]:
    row = conn.execute("SELECT depth, bytes FROM inboxes WHERE recipient = ? AND channel_id = ?", inbox).fetchone()
    return (0, 0) if row is None else (row[0], row[1])


def enqueue_one(
    conn: sqlite3.Connection,
    limits: StoreLimits,
    inbox: Inbox,
    payload: bytes,
    expires_at: float | None,
    now: float,
    index: int | None,
    sender: bytes | None = None,
) -> int:
    size = len(payload)
    seq, depth, used = _take_seq(conn, inbox, size)
    # A refusal here rolls the seq back with the operation.
    if shared_inbox(inbox, sender) and share_may_be_full(limits, depth):
        held = conn.execute(SHARE_HELD, (*inbox, sender, now)).fetchone()[0]
        check_share(limits, held, index)
    if not has_room(limits, depth - 1, used - size, size):
        # Give the seq back (nothing else ran in between: one writer) and look again, without this message.
        conn.execute(
            "UPDATE inboxes SET last_seq = last_seq - 1, depth = depth - 1, bytes = bytes - ?"
            " WHERE recipient = ? AND channel_id = ?",
            (size, *inbox),
        )
        depth, used = depth - 1, used - size
        # Expired messages are dead weight: make room from them before refusing. If the enqueue is refused
        # anyway, its savepoint rolls this back too.
        rows = conn.execute(
            "DELETE FROM messages WHERE recipient = ? AND channel_id = ? AND expires_at <= ? RETURNING size",
            (*inbox, now),
        ).fetchall()
        if rows:
            _shrink(conn, inbox, len(rows), sum(r[0] for r in rows))
            depth, used = _inbox_usage(conn, inbox)
        check_room(limits, depth, used, size, index)
        seq = _take_seq(conn, inbox, size)[0]
    conn.execute(
        "INSERT INTO messages (recipient, channel_id, seq, size, expires_at, payload, sender)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (*inbox, seq, size, expires_at, payload, sender if shared_inbox(inbox, sender) else None),
    )
    return seq


def _take_seq(conn: sqlite3.Connection, inbox: Inbox, size: int) -> tuple[int, int, int]:
    """Count one more message of `size` bytes in the inbox: its seq, and the inbox's depth and bytes with it."""
    row = conn.execute(
        "INSERT INTO inboxes (recipient, channel_id, last_seq, depth, bytes) VALUES (?, ?, 1, 1, ?)"
        " ON CONFLICT (recipient, channel_id) DO UPDATE"
        " SET last_seq = last_seq + 1, depth = depth + 1, bytes = bytes + excluded.bytes"
        " RETURNING last_seq, depth, bytes",
        (*inbox, size),
    ).fetchone()
    return int(row[0]), int(row[1]), int(row[2])


def _shrink(conn: sqlite3.Connection, inbox: Inbox, count: int, size: int) -> None:
    if count:
        conn.execute(
            "UPDATE inboxes SET depth = depth - ?, bytes = bytes - ? WHERE recipient = ? AND channel_id = ?",
            (count, size, *inbox),
        )
