"""SQLite: bot keys, approval requests and challenges (see `store/bot_keys.py`)."""

from __future__ import annotations

import sqlite3

from ..base import LimitExceeded
from ..bot_keys import (
    INSERT_APPROVAL,
    INSERT_KEY,
    SELECT_APPROVALS,
    SELECT_KEYS,
    ApprovalState,
    BotApproval,
    BotKey,
    approval_from_row,
    approval_wakeup,
    key_from_row,
    new_request_id,
)
from ..sqlite_writer import OpContext
from .engine import SqliteEngine

# An expired request is decided at the moment it expired, so listings order and age it like an answer.
_EXPIRE = (
    "UPDATE bot_approvals SET state = 'expired', decided_at = expires_at WHERE state = 'pending' AND expires_at <= ?"
)


def _approval_by_id(conn: sqlite3.Connection, request_id: bytes) -> BotApproval | None:
    row = conn.execute(SELECT_APPROVALS + " WHERE request_id = ?", (request_id,)).fetchone()
    return None if row is None else approval_from_row(row)


class SqliteBotKeys(SqliteEngine):
    async def get_bot_key(self, identity_key: bytes) -> BotKey | None:
        key = bytes(identity_key)
        row = await self._read(lambda conn: conn.execute(SELECT_KEYS + " WHERE identity_key = ?", (key,)).fetchone())
        return None if row is None else key_from_row(row)

    async def open_bot_approval(
        self, identity_key: bytes, owner: bytes, name: str, expires_at: float, max_pending_per_owner: int
    ) -> BotApproval | None:
        now = self._clock()
        key, owner = bytes(identity_key), bytes(owner)

        def pending(conn: sqlite3.Connection) -> BotApproval | None:
            row = conn.execute(SELECT_APPROVALS + " WHERE identity_key = ? AND state = 'pending'", (key,)).fetchone()
            return None if row is None else approval_from_row(row)

        def op(conn: sqlite3.Connection, ctx: OpContext) -> BotApproval | None:
            if conn.execute("SELECT 1 FROM bot_keys WHERE identity_key = ?", (key,)).fetchone():
                return None
            if conn.execute(_EXPIRE + " AND identity_key = ?", (now, key)).rowcount:
                ctx.touched.append(approval_wakeup(owner))
            joined = pending(conn)
            if joined is not None:
                return joined
            waiting = conn.execute(
                "SELECT count(*) FROM bot_approvals WHERE owner = ? AND state = 'pending' AND expires_at > ?",
                (owner, now),
            ).fetchone()[0]
            if waiting >= max_pending_per_owner:
                raise LimitExceeded("max_pending_bot_approvals_per_owner", max_pending_per_owner, waiting + 1)
            # The partial unique index keeps one pending request per key, whoever inserts first.
            conn.execute(
                INSERT_APPROVAL + " VALUES (?, ?, ?, ?, 'pending', ?, ?, NULL)"
                " ON CONFLICT (identity_key) WHERE state = 'pending' DO NOTHING",
                (new_request_id(), key, owner, name, now, expires_at),
            )
            ctx.touched.append(approval_wakeup(owner))
            return pending(conn)

        return await self._write(op)

    async def get_bot_approval(self, request_id: bytes) -> BotApproval | None:
        rid = bytes(request_id)
        return await self._read(lambda conn: _approval_by_id(conn, rid))

    async def list_bot_approvals(self, owner: bytes, decided_since: float) -> list[BotApproval]:
        who = bytes(owner)
        rows = await self._read(
            lambda conn: conn.execute(
                SELECT_APPROVALS
                + " WHERE owner = ? AND (state = 'pending' OR decided_at >= ?) ORDER BY created_at, request_id",
                (who, decided_since),
            ).fetchall()
        )
        return [approval_from_row(row) for row in rows]

    async def settle_bot_approval(self, request_id: bytes, state: ApprovalState, decided_at: float) -> bool:
        rid = bytes(request_id)

        def op(conn: sqlite3.Connection, ctx: OpContext) -> bool:
            row = conn.execute(
                "UPDATE bot_approvals SET state = ?, decided_at = ? WHERE request_id = ? AND state = 'pending'"
                " RETURNING identity_key, owner, name",
                (state.value, decided_at, rid),
            ).fetchone()
            if row is None:
                return False
            ctx.touched.append(approval_wakeup(bytes(row[1])))
            if state is ApprovalState.APPROVED:
                # The key's one record: its primary key refuses a second, however approvals raced.
                conn.execute(
                    INSERT_KEY + " VALUES (?, ?, ?, ?, 0, 0) ON CONFLICT (identity_key) DO NOTHING",
                    (bytes(row[0]), bytes(row[1]), str(row[2]), decided_at),
                )
            return True

        return await self._write(op)

    async def take_bot_nonce(self, identity_key: bytes, expires_at: float, max_outstanding: int) -> int | None:
        now = self._clock()
        key = bytes(identity_key)

        def op(conn: sqlite3.Connection, ctx: OpContext) -> int | None:
            # Read and increment in one statement of this transaction: the nonce handed out is never handed out again.
            row = conn.execute(
                "UPDATE bot_keys SET next_nonce = next_nonce + 1 WHERE identity_key = ? AND revoked = 0"
                " RETURNING next_nonce - 1",
                (key,),
            ).fetchone()
            if row is None:
                return None
            conn.execute("DELETE FROM bot_challenges WHERE identity_key = ? AND expires_at <= ?", (key, now))
            open_challenges = conn.execute(
                "SELECT count(*) FROM bot_challenges WHERE identity_key = ?", (key,)
            ).fetchone()[0]
            if open_challenges >= max_outstanding:
                # Raising undoes the increment with the rest of this operation's savepoint.
                raise LimitExceeded("max_bot_challenges_per_key", max_outstanding, open_challenges + 1)
            nonce = int(row[0])
            conn.execute(
                "INSERT INTO bot_challenges (identity_key, nonce, expires_at) VALUES (?, ?, ?)",
                (key, nonce, expires_at),
            )
            return nonce

        return await self._write(op)

    async def consume_bot_nonce(self, identity_key: bytes, nonce: int) -> bool:
        now = self._clock()
        key = bytes(identity_key)

        def op(conn: sqlite3.Connection, ctx: OpContext) -> bool:
            deleted = conn.execute(
                "DELETE FROM bot_challenges WHERE identity_key = ? AND nonce = ? AND expires_at > ?"
                " AND EXISTS (SELECT 1 FROM bot_keys WHERE identity_key = ? AND revoked = 0)",
                (key, nonce, now, key),
            ).rowcount
            return deleted > 0

        return await self._write(op)

    async def list_bot_keys(self, owner: bytes) -> list[BotKey]:
        who = bytes(owner)
        rows = await self._read(
            lambda conn: conn.execute(
                SELECT_KEYS + " WHERE owner = ? ORDER BY approved_at, identity_key", (who,)
            ).fetchall()
        )
        return [key_from_row(row) for row in rows]

    async def revoke_bot_key(self, identity_key: bytes, owner: bytes) -> bool:
        key, who = bytes(identity_key), bytes(owner)

        def op(conn: sqlite3.Connection, ctx: OpContext) -> bool:
            revoked = conn.execute(
                "UPDATE bot_keys SET revoked = 1 WHERE identity_key = ? AND owner = ? AND revoked = 0", (key, who)
            ).rowcount
            conn.execute("DELETE FROM bot_challenges WHERE identity_key = ?", (key,))
            return revoked > 0

        return await self._write(op)

    async def purge_bot_login_state(self, decided_before: float) -> int:
        now = self._clock()

        def op(conn: sqlite3.Connection, ctx: OpContext) -> int:
            expired = conn.execute(_EXPIRE + " RETURNING owner", (now,)).fetchall()
            ctx.touched.extend(approval_wakeup(bytes(row[0])) for row in expired)
            gone = conn.execute("DELETE FROM bot_challenges WHERE expires_at <= ?", (now,)).rowcount
            gone += conn.execute(
                "DELETE FROM bot_approvals WHERE state != 'pending' AND decided_at < ?", (decided_before,)
            ).rowcount
            return gone

        return await self._write(op)
