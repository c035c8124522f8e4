"""PostgreSQL: bot keys, approval requests and challenges (see `store/bot_keys.py`). Concurrency is the
database's: the partial unique index keeps one pending request per key, answers are one conditional UPDATE, the
key's row lock orders nonce takes, and an advisory lock per owner keeps the pending cap exact across nodes."""

from __future__ import annotations

import hashlib
from typing import Any

from ..base import Inbox, LimitExceeded
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
from .engine import PostgresEngine, rowcount

# The advisory-lock class of the per-owner pending-approval cap (two-key form, so it cannot meet other locks).
_PENDING_CAP_LOCK_CLASS = 0x71626B

_EXPIRE = (
    "UPDATE bot_approvals SET state = 'expired', decided_at = expires_at WHERE state = 'pending' AND expires_at <= $1"
)


def _lock_key(owner: bytes) -> int:
    return int.from_bytes(hashlib.sha256(owner).digest()[:4], "big", signed=True)


class PostgresBotKeys(PostgresEngine):
    async def get_bot_key(self, identity_key: bytes) -> BotKey | None:
        row = await self._fetchrow(SELECT_KEYS + " WHERE identity_key = $1", bytes(identity_key))
        return None if row is None else key_from_row(row)

    async def open_bot_approval(
        self, identity_key: bytes, owner: bytes, name: str, expires_at: float, max_pending_per_owner: int
    ) -> BotApproval | None:
        now = self._clock()
        key, who = bytes(identity_key), bytes(owner)
        touched: list[Inbox] = []

        async def pending(conn: Any) -> BotApproval | None:
            row = await conn.fetchrow(SELECT_APPROVALS + " WHERE identity_key = $1 AND state = 'pending'", key)
            return None if row is None else approval_from_row(row)

        async def op(conn: Any) -> BotApproval | None:
            touched.clear()
            # Count-then-insert is exact only if one owner's new requests (from any node) queue up.
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", _PENDING_CAP_LOCK_CLASS, _lock_key(who))
            if await conn.fetchval("SELECT 1 FROM bot_keys WHERE identity_key = $1", key):
                return None
            if await conn.fetch(_EXPIRE + " AND identity_key = $2 RETURNING owner", now, key):
                touched.append(approval_wakeup(who))
            joined = await pending(conn)
            if joined is not None:
                await self._notify_in(conn, touched)
                return joined
            waiting = await conn.fetchval(
                "SELECT count(*) FROM bot_approvals WHERE owner = $1 AND state = 'pending' AND expires_at > $2",
                who,
                now,
            )
            if waiting >= max_pending_per_owner:
                raise LimitExceeded("max_pending_bot_approvals_per_owner", max_pending_per_owner, waiting + 1)
            # The partial unique index keeps one pending request per key, whichever node inserts first.
            await conn.execute(
                INSERT_APPROVAL + " VALUES ($1, $2, $3, $4, 'pending', $5, $6, NULL)"
                " ON CONFLICT (identity_key) WHERE state = 'pending' DO NOTHING",
                new_request_id(),
                key,
                who,
                name,
                now,
                expires_at,
            )
            touched.append(approval_wakeup(who))
            await self._notify_in(conn, touched)
            return await pending(conn)

        result = await self._transact(op)
        self._wakeups.notify(touched)
        return result

    async def get_bot_approval(self, request_id: bytes) -> BotApproval | None:
        row = await self._fetchrow(SELECT_APPROVALS + " WHERE request_id = $1", bytes(request_id))
        return None if row is None else approval_from_row(row)

    async def list_bot_approvals(self, owner: bytes, decided_since: float) -> list[BotApproval]:
        rows = await self._fetchrows(
            SELECT_APPROVALS
            + " WHERE owner = $1 AND (state = 'pending' OR decided_at >= $2) ORDER BY created_at, request_id",
            bytes(owner),
            decided_since,
        )
        return [approval_from_row(row) for row in rows]

    async def settle_bot_approval(self, request_id: bytes, state: ApprovalState, decided_at: float) -> bool:
        rid = bytes(request_id)
        touched: list[Inbox] = []

        async def op(conn: Any) -> bool:
            touched.clear()
            # One conditional statement: of concurrent answers (on any node) exactly one finds it pending.
            row = await conn.fetchrow(
                "UPDATE bot_approvals SET state = $1, decided_at = $2 WHERE request_id = $3 AND state = 'pending'"
                " RETURNING identity_key, owner, name",
                state.value,
                decided_at,
                rid,
            )
            if row is None:
                return False
            touched.append(approval_wakeup(bytes(row[1])))
            if state is ApprovalState.APPROVED:
                # The key's one record: its primary key refuses a second, however approvals raced.
                await conn.execute(
                    INSERT_KEY + " VALUES ($1, $2, $3, $4, false, 0) ON CONFLICT (identity_key) DO NOTHING",
                    bytes(row[0]),
                    bytes(row[1]),
                    str(row[2]),
                    decided_at,
                )
            await self._notify_in(conn, touched)
            return True

        result = await self._transact(op)
        self._wakeups.notify(touched)
        return result

    async def take_bot_nonce(self, identity_key: bytes, expires_at: float, max_outstanding: int) -> int | None:
        now = self._clock()
        key = bytes(identity_key)

        async def op(conn: Any) -> int | None:
            # Read and increment in one statement; the row lock it takes orders every take of this key.
            nonce = await conn.fetchval(
                "UPDATE bot_keys SET next_nonce = next_nonce + 1 WHERE identity_key = $1 AND NOT revoked"
                " RETURNING next_nonce - 1",
                key,
            )
            if nonce is None:
                return None
            await conn.execute("DELETE FROM bot_challenges WHERE identity_key = $1 AND expires_at <= $2", key, now)
            open_challenges = await conn.fetchval("SELECT count(*) FROM bot_challenges WHERE identity_key = $1", key)
            if open_challenges >= max_outstanding:
                # Raising rolls the increment back with the transaction.
                raise LimitExceeded("max_bot_challenges_per_key", max_outstanding, open_challenges + 1)
            await conn.execute(
                "INSERT INTO bot_challenges (identity_key, nonce, expires_at) VALUES ($1, $2, $3)",
                key,
                nonce,
                expires_at,
            )
            return int(nonce)

        return await self._transact(op)

    async def consume_bot_nonce(self, identity_key: bytes, nonce: int) -> bool:
        key = bytes(identity_key)
        # One statement: of concurrent answers to one challenge (on any node) exactly one deletes it.
        deleted = await self._execute1(
            "DELETE FROM bot_challenges WHERE identity_key = $1 AND nonce = $2 AND expires_at > $3"
            " AND EXISTS (SELECT 1 FROM bot_keys WHERE identity_key = $1 AND NOT revoked)",
            key,
            nonce,
            self._clock(),
        )
        return deleted > 0

    async def list_bot_keys(self, owner: bytes) -> list[BotKey]:
        rows = await self._fetchrows(SELECT_KEYS + " WHERE owner = $1 ORDER BY approved_at, identity_key", bytes(owner))
        return [key_from_row(row) for row in rows]

    async def revoke_bot_key(self, identity_key: bytes, owner: bytes) -> bool:
        key, who = bytes(identity_key), bytes(owner)

        async def op(conn: Any) -> bool:
            revoked = await conn.fetchrow(
                "UPDATE bot_keys SET revoked = true WHERE identity_key = $1 AND owner = $2 AND NOT revoked"
                " RETURNING identity_key",
                key,
                who,
            )
            await conn.execute("DELETE FROM bot_challenges WHERE identity_key = $1", key)
            return revoked is not None

        return await self._transact(op)

    async def purge_bot_login_state(self, decided_before: float) -> int:
        now = self._clock()
        touched: list[Inbox] = []

        async def op(conn: Any) -> int:
            touched.clear()
            expired = await conn.fetch(_EXPIRE + " RETURNING owner", now)
            touched.extend({approval_wakeup(bytes(row[0])) for row in expired})
            await self._notify_in(conn, touched)
            challenges = await conn.execute("DELETE FROM bot_challenges WHERE expires_at <= $1", now)
            requests = await conn.execute(
                "DELETE FROM bot_approvals WHERE state != 'pending' AND decided_at < $1", decided_before
            )
            return rowcount(challenges) + rowcount(requests)

        result = await self._transact(op)
        self._wakeups.notify(touched)
        return result
