"""SQLite: blobs (attachments)."""

from __future__ import annotations

import sqlite3

from ..base import LimitExceeded
from ..blobs import EXPIRED_CHUNK
from ..sqlite_writer import OpContext
from .engine import SqliteEngine


class SqliteBlobs(SqliteEngine):
    async def put_blob(
        self, blob_id: bytes, owner: bytes, data: bytes, expires_at: float, max_owner_bytes: int
    ) -> None:
        now = self._clock()
        params = (bytes(blob_id), bytes(owner), bytes(data), len(data), now, expires_at)

        def op(conn: sqlite3.Connection, ctx: OpContext) -> None:
            conn.execute(
                "DELETE FROM blobs WHERE blob_id IN (SELECT blob_id FROM blobs WHERE expires_at <= ? LIMIT ?)",
                (now, EXPIRED_CHUNK),
            )
            renewed = conn.execute(
                "UPDATE blobs SET expires_at = max(expires_at, ?) WHERE blob_id = ?", (expires_at, params[0])
            )
            if renewed.rowcount:
                return
            used = conn.execute(
                "SELECT coalesce(sum(size), 0) FROM blobs WHERE owner = ? AND expires_at > ?", (params[1], now)
            ).fetchone()[0]
            if used + len(data) > max_owner_bytes:
                raise LimitExceeded("max_blob_bytes_per_identity", max_owner_bytes, used + len(data))
            conn.execute(
                "INSERT INTO blobs (blob_id, owner, data, size, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                params,
            )

        await self._write(op)

    async def get_blob(self, blob_id: bytes) -> bytes | None:
        now = self._clock()
        key = bytes(blob_id)
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT data FROM blobs WHERE blob_id = ? AND expires_at > ?", (key, now)
            ).fetchone()
        )
        return None if row is None else bytes(row[0])
