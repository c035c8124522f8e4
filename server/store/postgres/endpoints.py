"""PostgreSQL: P2P endpoint records."""

from __future__ import annotations

from .engine import PostgresEngine


class PostgresEndpoints(PostgresEngine):
    async def put_endpoint(self, identity_key: bytes, record: bytes, expires_at: float) -> None:
        await self._execute1(
            "INSERT INTO endpoints (identity_key, node_addr, updated_at, expires_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (identity_key) DO UPDATE SET node_addr = excluded.node_addr,"
            " updated_at = excluded.updated_at, expires_at = excluded.expires_at",
            bytes(identity_key),
            bytes(record),
            self._clock(),
            expires_at,
        )

    async def delete_endpoint(self, identity_key: bytes) -> None:
        await self._execute1("DELETE FROM endpoints WHERE identity_key = $1", bytes(identity_key))

    async def get_endpoint(self, identity_key: bytes) -> bytes | None:
        row = await self._fetchrow(
            "SELECT node_addr FROM endpoints WHERE identity_key = $1 AND expires_at > $2",
            bytes(identity_key),
            self._clock(),
        )
        return None if row is None else bytes(row[0])

    async def purge_expired_endpoints(self) -> int:
        return await self._execute1("DELETE FROM endpoints WHERE expires_at <= $1", self._clock())
