"""PostgreSQL: KeyPackages and hybrid keys."""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from ..base import AlreadyExists, LimitExceeded
from ..directories import DirectoriesBase, KeyPackage
from .engine import PostgresEngine

# The advisory-lock class of the per-identity KeyPackage cap (two-key form, so it cannot meet MIGRATION_LOCK).
_KEY_PACKAGE_LOCK_CLASS = 0x71706B


class PostgresDirectories(DirectoriesBase, PostgresEngine):
    async def add_key_package(
        self,
        identity_key: bytes,
        package: bytes,
        fingerprint: bytes,
        *,
        last_resort: bool = False,
        not_after: float | None = None,
    ) -> None:
        now = self._clock()
        cap = self._limits.max_key_packages_per_identity
        identity = bytes(identity_key)
        lock = int.from_bytes(hashlib.sha256(identity).digest()[:4], "big", signed=True)

        async def op(conn: Any) -> None:
            # Count-then-insert is only race-free if concurrent adds for one identity (from any node) queue up.
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", _KEY_PACKAGE_LOCK_CLASS, lock)
            # Expired packages can never be handed out; dropping them here keeps them from eating the cap.
            await conn.execute(
                "DELETE FROM key_packages WHERE identity_key = $1 AND not_after IS NOT NULL AND not_after <= $2",
                identity,
                now,
            )
            count = int(await conn.fetchval("SELECT count(*) FROM key_packages WHERE identity_key = $1", identity))
            if count >= cap:
                raise LimitExceeded("max_key_packages_per_identity", cap, count + 1)
            try:
                await conn.execute(
                    "INSERT INTO key_packages (identity_key, fingerprint, package, last_resort, not_after)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    identity,
                    bytes(fingerprint),
                    bytes(package),
                    bool(last_resort),
                    not_after,
                )
            except asyncpg.UniqueViolationError:
                raise AlreadyExists("fingerprint") from None

        await self._transact(op)

    async def take_key_package(self, identity_key: bytes) -> KeyPackage | None:
        now = self._clock()
        identity = bytes(identity_key)
        # One statement: a row locked by a concurrent taker (on any node) is skipped, never handed out twice.
        row = await self._write1(
            "DELETE FROM key_packages WHERE id = ("
            " SELECT id FROM key_packages WHERE identity_key = $1 AND NOT last_resort"
            " AND (not_after IS NULL OR not_after > $2) ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
            ") RETURNING fingerprint, package, not_after",
            identity,
            now,
        )
        if row is not None:
            return KeyPackage(bytes(row[0]), False, row[2], bytes(row[1]))
        row = await self._fetchrow(
            "SELECT fingerprint, package, not_after FROM key_packages"
            " WHERE identity_key = $1 AND last_resort AND (not_after IS NULL OR not_after > $2)"
            " ORDER BY id DESC LIMIT 1",
            identity,
            now,
        )
        return None if row is None else KeyPackage(bytes(row[0]), True, row[2], bytes(row[1]))

    async def count_key_packages(self, identity_key: bytes) -> int:
        row = await self._fetchrow(
            "SELECT count(*) FROM key_packages WHERE identity_key = $1 AND (not_after IS NULL OR not_after > $2)",
            bytes(identity_key),
            self._clock(),
        )
        return int(row[0])

    # ── hybrid keys ───────────────────────────────────────────────────────────────────────────────────────────

    async def put_hybrid_key(self, identity_key: bytes, public_key: bytes) -> None:
        await self._execute1(
            "INSERT INTO hybrid_keys (identity_key, public_key, updated_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (identity_key) DO UPDATE"
            " SET public_key = excluded.public_key, updated_at = excluded.updated_at",
            bytes(identity_key),
            bytes(public_key),
            self._clock(),
        )

    async def _find_hybrid_keys(self, distinct: list[bytes]) -> dict[bytes, bytes]:
        rows = await self._fetchrows(
            "SELECT identity_key, public_key FROM hybrid_keys WHERE identity_key = ANY($1::bytea[])", distinct
        )
        return {bytes(r[0]): bytes(r[1]) for r in rows}
