"""SQLite: KeyPackages and hybrid keys."""

from __future__ import annotations

import sqlite3

from ..base import AlreadyExists, LimitExceeded
from ..directories import DirectoriesBase, KeyPackage
from ..sqlite_writer import OpContext
from .engine import SqliteEngine

# Stays well under SQLite's bound-parameter limit.
_IN_CHUNK = 500


class SqliteDirectories(DirectoriesBase, SqliteEngine):
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
        params = (
            bytes(identity_key),
            bytes(fingerprint),
            bytes(package),
            int(last_resort),
            not_after,
        )

        def op(conn: sqlite3.Connection, ctx: OpContext) -> None:
            # Expired packages can never be handed out; dropping them here keeps them from eating the cap.
            conn.execute(
                "DELETE FROM key_packages WHERE identity_key = ? AND not_after IS NOT NULL AND not_after <= ?",
                (params[0], now),
            )
            count = conn.execute("SELECT count(*) FROM key_packages WHERE identity_key = ?", (params[0],)).fetchone()[0]
            if count >= cap:
                raise LimitExceeded("max_key_packages_per_identity", cap, count + 1)
            try:
                conn.execute(
                    "INSERT INTO key_packages (identity_key, fingerprint, package, last_resort, not_after)"
                    " VALUES (?, ?, ?, ?, ?)",
                    params,
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists("fingerprint") from None

        await self._write(op)

    async def take_key_package(self, identity_key: bytes) -> KeyPackage | None:
        now = self._clock()
        key = bytes(identity_key)

        def op(conn: sqlite3.Connection, ctx: OpContext) -> KeyPackage | None:
            # Runs alone on the writer connection, so select-then-delete cannot hand one package out twice.
            row = conn.execute(
                "SELECT id, fingerprint, package, not_after FROM key_packages"
                " WHERE identity_key = ? AND last_resort = 0 AND (not_after IS NULL OR not_after > ?)"
                " ORDER BY id LIMIT 1",
                (key, now),
            ).fetchone()
            if row is not None:
                conn.execute("DELETE FROM key_packages WHERE id = ?", (row[0],))
                return KeyPackage(bytes(row[1]), False, row[3], bytes(row[2]))
            row = conn.execute(
                "SELECT fingerprint, package, not_after FROM key_packages"
                " WHERE identity_key = ? AND last_resort = 1 AND (not_after IS NULL OR not_after > ?)"
                " ORDER BY id DESC LIMIT 1",
                (key, now),
            ).fetchone()
            return None if row is None else KeyPackage(bytes(row[0]), True, row[2], bytes(row[1]))

        return await self._write(op)

    async def count_key_packages(self, identity_key: bytes) -> int:
        now = self._clock()
        return await self._read(
            lambda conn: int(
                conn.execute(
                    "SELECT count(*) FROM key_packages WHERE identity_key = ? AND (not_after IS NULL OR not_after > ?)",
                    (bytes(identity_key), now),
                ).fetchone()[0]
            )
        )

    # ── hybrid keys ───────────────────────────────────────────────────────────────────────────────────────────

    async def put_hybrid_key(self, identity_key: bytes, public_key: bytes) -> None:
        params = (bytes(identity_key), bytes(public_key), self._clock())

        def op(conn: sqlite3.Connection, ctx: OpContext) -> None:
            conn.execute(
                "INSERT INTO hybrid_keys (identity_key, public_key, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (identity_key) DO UPDATE"
                " SET public_key = excluded.public_key, updated_at = excluded.updated_at",
                params,
            )

        await self._write(op)

    async def _find_hybrid_keys(self, distinct: list[bytes]) -> dict[bytes, bytes]:
        def read(conn: sqlite3.Connection) -> dict[bytes, bytes]:
            found: dict[bytes, bytes] = {}
            for start in range(0, len(distinct), _IN_CHUNK):
                chunk = distinct[start : start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                # Only "?" placeholders are interpolated; the keys themselves are bound.
                query = f"SELECT identity_key, public_key FROM hybrid_keys WHERE identity_key IN ({marks})"  # noqa: S608
                for identity, public in conn.execute(query, chunk):
                    found[bytes(identity)] = bytes(public)
            return found

        return await self._read(read)
