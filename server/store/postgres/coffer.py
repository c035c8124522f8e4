"""PostgreSQL: coffer shards."""

from __future__ import annotations

from typing import Any

from ..coffer import CofferShard, shard_from_row
from .engine import PostgresEngine


class PostgresCoffer(PostgresEngine):
    async def replace_coffer(self, shards: list[CofferShard]) -> None:
        now = self._clock()
        rows = [(s.name, bytes(s.identity_key), s.secret_count, bytes(s.sealed), now) for s in shards]

        async def op(conn: Any) -> None:
            await conn.execute("DELETE FROM coffer_shards")
            await conn.executemany(
                "INSERT INTO coffer_shards (name, identity_key, secret_count, sealed, loaded_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                rows,
            )

        await self._transact(op)

    async def coffer_shards(self) -> list[CofferShard]:
        return [
            shard_from_row(row)
            for row in await self._fetchrows(
                "SELECT name, identity_key, secret_count, sealed, loaded_at FROM coffer_shards ORDER BY name"
            )
        ]

    async def get_coffer_shard(self, identity_key: bytes) -> CofferShard | None:
        row = await self._fetchrow(
            "SELECT name, identity_key, secret_count, sealed, loaded_at FROM coffer_shards WHERE identity_key = $1",
            bytes(identity_key),
        )
        return None if row is None else shard_from_row(row)

    async def replace_coffer_shard(self, identity_key: bytes, expected: bytes, sealed: bytes) -> bool:
        count = await self._execute1(
            "UPDATE coffer_shards SET sealed = $1 WHERE identity_key = $2 AND sealed = $3",
            bytes(sealed),
            bytes(identity_key),
            bytes(expected),
        )
        return count == 1
