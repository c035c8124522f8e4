"""SQLite: coffer shards."""

from __future__ import annotations

import sqlite3

from ..coffer import CofferShard, shard_from_row
from ..sqlite_writer import OpContext
from .engine import SqliteEngine


class SqliteCoffer(SqliteEngine):
    async def replace_coffer(self, shards: list[CofferShard]) -> None:
        now = self._clock()
        rows = [(s.name, bytes(s.identity_key), s.secret_count, bytes(s.sealed), now) for s in shards]

        def op(conn: sqlite3.Connection, ctx: OpContext) -> None:
            conn.execute("DELETE FROM coffer_shards")
            conn.executemany(
                "INSERT INTO coffer_shards (name, identity_key, secret_count, sealed, loaded_at)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )

        await self._write(op)

    async def coffer_shards(self) -> list[CofferShard]:
        rows = await self._read(
            lambda conn: conn.execute(
                "SELECT name, identity_key, secret_count, sealed, loaded_at FROM coffer_shards ORDER BY name"
            ).fetchall()
        )
        return [shard_from_row(row) for row in rows]

    async def get_coffer_shard(self, identity_key: bytes) -> CofferShard | None:
        key = bytes(identity_key)
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT name, identity_key, secret_count, sealed, loaded_at FROM coffer_shards WHERE identity_key = ?",
                (key,),
            ).fetchone()
        )
        return None if row is None else shard_from_row(row)

    async def replace_coffer_shard(self, identity_key: bytes, expected: bytes, sealed: bytes) -> bool:
        params = (bytes(sealed), bytes(identity_key), bytes(expected))

        def op(conn: sqlite3.Connection, ctx: OpContext) -> bool:
            updated = conn.execute("UPDATE coffer_shards SET sealed = ? WHERE identity_key = ? AND sealed = ?", params)
            return updated.rowcount == 1

        return await self._write(op)
