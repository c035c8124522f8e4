"""PostgreSQL: server secrets."""

from __future__ import annotations

from typing import Any

from .engine import PostgresEngine


class PostgresSecrets(PostgresEngine):
    async def get_or_create_secret(self, name: str, candidate: bytes) -> bytes:
        await self._execute1(
            "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            name,
            bytes(candidate),
            self._clock(),
        )
        row = await self._fetchrow("SELECT value FROM server_secrets WHERE name = $1", name)
        return bytes(row[0])

    async def get_secret(self, name: str) -> bytes | None:
        row = await self._fetchrow("SELECT value FROM server_secrets WHERE name = $1", name)
        return None if row is None else bytes(row[0])

    async def secret_names(self) -> list[str]:
        rows = await self._fetchrows("SELECT name FROM server_secrets ORDER BY name")
        return [str(row[0]) for row in rows]

    async def replace_secret(self, name: str, expected: bytes, value: bytes) -> bool:
        count = await self._execute1(
            "UPDATE server_secrets SET value = $1 WHERE name = $2 AND value = $3", bytes(value), name, bytes(expected)
        )
        return count == 1

    async def scrub_replaced_secrets(self) -> None:
        # The old row version stays in the table's file until vacuumed; VACUUM FULL rewrites the table into a new
        # file. (WAL segments and backups keep what they saw: docs/THREAT_MODEL.md.)
        async def vacuum(conn: Any) -> None:
            await conn.execute("VACUUM FULL server_secrets")

        await self._with_conn(vacuum, "write")
