"""Versioned schema migrations, shared by the node's store and the client's local state.

A database records the migrations applied to it in `schema_version`; they run in order, each once, and a
database at a newer version than the code knows is refused (running old code on it could corrupt it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TooNew = Callable[[int, int], Exception]
"""Builds the error for a database at version `on_disk` when the code knows up to `known`."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


def check_sequence(migrations: tuple[Migration, ...]) -> None:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"migration versions must be 1..n without gaps, got {versions}")


def pending(migrations: tuple[Migration, ...], on_disk: int, too_new: TooNew) -> tuple[Migration, ...]:
    """The migrations still to apply to a database at version `on_disk`."""
    known = migrations[-1].version
    if on_disk > known:
        raise too_new(on_disk, known)
    return migrations[on_disk:]


def migrate_sqlite(conn: Any, migrations: tuple[Migration, ...], too_new: TooNew) -> int:
    """Brings an SQLite (or SQLCipher) database to the latest version and returns it. `conn` is a DB-API
    connection in autocommit mode."""
    # The write lock is taken before the version is read, so two processes opening one new file cannot both
    # apply migration 1.
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        on_disk = int(conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0])
        for migration in pending(migrations, on_disk, too_new):
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, time.time()),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return migrations[-1].version
