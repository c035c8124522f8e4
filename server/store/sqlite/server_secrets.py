"""SQLite: server secrets."""

from __future__ import annotations

import asyncio
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

    async def get_secret(self, name: str) -> bytes | None:
        row = await self._read(
            lambda conn: conn.execute("SELECT value FROM server_secrets WHERE name = ?", (name,)).fetchone()
        )
        return None if row is None else bytes(row[0])

    async def secret_names(self) -> list[str]:
        rows = await self._read(lambda conn: conn.execute("SELECT name FROM server_secrets ORDER BY name").fetchall())
        return [str(row[0]) for row in rows]

    async def replace_secret(self, name: str, expected: bytes, value: bytes) -> bool:
        params = (bytes(value), name, bytes(expected))

        def op(conn: sqlite3.Connection, ctx: OpContext) -> bool:
            # secure_delete ON zeroes the freed cell, so the old value does not linger in the page; the connection's
            # own setting (FAST) comes back after.
            previous = int(conn.execute("PRAGMA secure_delete").fetchone()[0])
            conn.execute("PRAGMA secure_delete = ON")
            try:
                updated = conn.execute("UPDATE server_secrets SET value = ? WHERE name = ? AND value = ?", params)
                return updated.rowcount == 1
            finally:
                conn.execute(f"PRAGMA secure_delete = {previous}")

        return await self._write(op)

    async def scrub_replaced_secrets(self) -> None:
        # Earlier WAL frames may still hold the page with the old value: checkpoint and truncate the WAL, from a
        # connection of its own (a checkpoint cannot run inside the writer's transactions).
        def checkpoint() -> None:
            conn = sqlite3.connect(self.path, isolation_level=None)
            try:
                conn.execute("PRAGMA busy_timeout = 10000")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                conn.close()

        await asyncio.to_thread(checkpoint)
