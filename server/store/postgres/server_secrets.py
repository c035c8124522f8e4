"""PostgreSQL: server secrets."""

from __future__ import annotations

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
