"""SQLite: server secrets."""

from __future__ import annotations

import sqlite3

from ..sqlite_writer import OpContext
from .engine import SqliteEngine


class SqliteSecrets(SqliteEngine):
    async def get_or_create_secret(self, name: str, candidate: bytes) -> bytes:
        params = (name, bytes(candidate), self._clock())

        def op(conn: sqlite3.Connection, ctx: OpContext) -> bytes:
            conn.execute(
                "INSERT INTO server_secrets (name, value, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                params,
            )
            row = conn.execute("SELECT value FROM server_secrets WHERE name = ?", (name,)).fetchone()
            return bytes(row[0])

        return await self._write(op)
