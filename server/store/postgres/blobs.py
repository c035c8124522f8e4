"""PostgreSQL: blobs (attachments)."""

from __future__ import annotations

import hashlib
from typing import Any

from ..base import LimitExceeded
from ..blobs import EXPIRED_CHUNK
from .engine import PostgresEngine

# The advisory-lock class of the per-identity blob quota (two-key form, so it cannot meet other locks).
_BLOB_QUOTA_LOCK_CLASS = 0x71626C


class PostgresBlobs(PostgresEngine):
    async def put_blob(
        self, blob_id: bytes, owner: bytes, data: bytes, expires_at: float, max_owner_bytes: int
    ) -> None:
        now = self._clock()
        key, who, payload = bytes(blob_id), bytes(owner), bytes(data)
        lock = int.from_bytes(hashlib.sha256(who).digest()[:4], "big", signed=True)

        async def op(conn: Any) -> None:
            # Sum-then-insert is only race-free if concurrent uploads of one identity (from any node) queue up.
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", _BLOB_QUOTA_LOCK_CLASS, lock)
            await conn.execute(
                "DELETE FROM blobs WHERE blob_id IN (SELECT blob_id FROM blobs WHERE expires_at <= $1 LIMIT $2)",
                now,
                EXPIRED_CHUNK,
            )
            renewed = await conn.execute(
                "UPDATE blobs SET expires_at = greatest(expires_at, $1) WHERE blob_id = $2", expires_at, key
            )
            if renewed != "UPDATE 0":
                return
            used = int(
                await conn.fetchval(
                    "SELECT coalesce(sum(size), 0) FROM blobs WHERE owner = $1 AND expires_at > $2", who, now
                )
            )
            if used + len(payload) > max_owner_bytes:
                raise LimitExceeded("max_blob_bytes_per_identity", max_owner_bytes, used + len(payload))
            await conn.execute(
                "INSERT INTO blobs (blob_id, owner, data, size, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)"
                " ON CONFLICT (blob_id) DO UPDATE SET expires_at = greatest(blobs.expires_at, excluded.expires_at)",
                key,
                who,
                payload,
                len(payload),
                now,
                expires_at,
            )

        await self._transact(op)

    async def get_blob(self, blob_id: bytes) -> bytes | None:
        row = await self._fetchrow(
            "SELECT data FROM blobs WHERE blob_id = $1 AND expires_at > $2", bytes(blob_id), self._clock()
        )
        return None if row is None else bytes(row[0])
