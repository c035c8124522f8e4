"""SQLite: P2P endpoint records."""

from __future__ import annotations

import sqlite3

from ..sqlite_writer import OpContext
from .engine import SqliteEngine


class SqliteEndpoints(SqliteEngine):
    async def put_endpoint(self, identity_key: bytes, record: bytes, expires_at: float) -> None:
        params = (bytes(identity_key), bytes(record), self._clock(), expires_at)

        def op(conn: sqlite3.Connection, ctx: OpContext) -> None:
            conn.execute(
                "INSERT INTO endpoints (identity_key, node_addr, updated_at, expires_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (identity_key) DO UPDATE SET node_addr = excluded.node_addr,"
                " updated_at = excluded.updated_at, expires_at = excluded.expires_at",
                params,
            )

        await self._write(op)

    async def delete_endpoint(self, identity_key: bytes) -> None:
        key = bytes(identity_key)
        await self._write(
            lambda conn, ctx: conn.execute("DELETE FROM endpoints WHERE identity_key = ?", (key,)), frees_space=True
        )

    async def get_endpoint(self, identity_key: bytes) -> bytes | None:
        params = (bytes(identity_key), self._clock())
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT node_addr FROM endpoints WHERE identity_key = ? AND expires_at > ?", params
            ).fetchone()
        )
        return None if row is None else bytes(row[0])

    async def purge_expired_endpoints(self) -> int:
        now = self._clock()
        deleted: int = await self._write(
            lambda conn, ctx: conn.execute("DELETE FROM endpoints WHERE expires_at <= ?", (now,)).rowcount,
            frees_space=True,
        )
        return deleted
