"""A typed view of `sqlcipher3` (SQLCipher's DB-API module, an sqlite3 look-alike that ships no type hints)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import sqlcipher3  # type: ignore[import-untyped]

Row = tuple[Any, ...]


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Row | None: ...

    def fetchall(self) -> list[Row]: ...


class Connection(Protocol):
    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Sequence[object] = ..., /) -> Cursor: ...

    def close(self) -> None: ...


DatabaseError = cast(type[Exception], sqlcipher3.DatabaseError)
IntegrityError = cast(type[Exception], sqlcipher3.IntegrityError)


def connect(path: Path) -> Connection:
    """Autocommit connection (our transactions are explicit), usable from the one thread that owns it."""
    return cast(Connection, sqlcipher3.connect(str(path), isolation_level=None, check_same_thread=False))
