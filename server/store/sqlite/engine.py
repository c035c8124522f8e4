"""The SQLite engine every SQLite concern stands on: WAL, synchronous=FULL, group commit on one writer thread
(`sqlite_writer`), reads on another.

The store belongs to the event loop that opened it.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self, TypeVar

from ..base import Clock, StoreError, StoreHealth, StoreLimits, StoreMetrics
from ..disk_reserve import DiskReserve
from ..engine import StoreEngine
from ..migrations import migrate
from ..sqlite_reader import ReadThread
from ..sqlite_writer import WAL_TRUNCATE_BYTES, GroupCommitWriter, OpContext, Removal
from ..wakeups import InProcessWakeups

T = TypeVar("T")

_BUSY_TIMEOUT_MS = 10_000
PROBE_TIMEOUT_S = 2.0


def _connect(path: Path, *, read_only: bool) -> sqlite3.Connection:
    # isolation_level=None: transactions are ours (BEGIN IMMEDIATE / SAVEPOINT), not the module's guesses.
    # check_same_thread=False: each connection is opened here but then used by exactly one thread.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        if not read_only:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"could not switch the database to WAL mode (got {mode})")
        # FULL syncs the WAL on every commit: an acknowledged write survives power loss, not just a crash.
        conn.execute("PRAGMA synchronous = FULL")
        if not read_only:
            # After a checkpoint SQLite starts the WAL over; this truncates the file then, instead of keeping it at
            # its largest size ever.
            conn.execute(f"PRAGMA journal_size_limit = {WAL_TRUNCATE_BYTES}")
            # Payloads are end-to-end encrypted: zeroing every freed overflow page (this SQLite's default) would
            # make a drain write as much WAL as it deletes, which a full disk does not have.
            conn.execute("PRAGMA secure_delete = FAST")
        if read_only:
            conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _create_private(path: Path) -> None:
    # The database holds password files: create it owner-only. SQLite gives -wal and -shm the same mode.
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)


class SqliteEngine(StoreEngine):
    def __init__(
        self,
        path: Path,
        limits: StoreLimits,
        clock: Clock,
        write_conn: sqlite3.Connection,
        read_conn: sqlite3.Connection,
        wakeups: InProcessWakeups,
    ) -> None:
        """Use `open`."""
        super().__init__(limits, clock, wakeups)
        self._local_wakeups = wakeups  # the same object, with `claim` (parked fetches answered by the writer)
        self.path = path
        self._writer = GroupCommitWriter(
            write_conn,
            self._loop,
            wakeups.notify,
            wal_path=path.with_name(path.name + "-wal"),
            reserve=DiskReserve(path.with_name(path.name + ".reserve"), limits.disk_reserve_bytes),
        )
        self._reader = ReadThread(read_conn, self._loop)

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        limits: StoreLimits | None = None,
        *,
        clock: Clock,
    ) -> Self:
        db_path = Path(path)

        def blocking_open() -> tuple[sqlite3.Connection, sqlite3.Connection]:
            try:
                _create_private(db_path)
                write_conn = _connect(db_path, read_only=False)
            except (OSError, sqlite3.Error) as exc:
                raise StoreError(f"cannot open the database at {db_path}: {exc}") from exc
            try:
                migrate(write_conn)
                read_conn = _connect(db_path, read_only=True)
            except sqlite3.Error as exc:
                write_conn.close()
                raise StoreError(f"cannot open the database at {db_path}: {exc}") from exc
            except BaseException:
                write_conn.close()
                raise
            return write_conn, read_conn

        write_conn, read_conn = await asyncio.to_thread(blocking_open)
        return cls(
            db_path,
            limits or StoreLimits(),
            clock,
            write_conn,
            read_conn,
            InProcessWakeups(),
        )

    def metrics(self) -> StoreMetrics:
        return self._writer.metrics()

    def reusable_bytes(self) -> int:
        return self._writer.reusable_bytes

    async def probe(self) -> StoreHealth:
        writer = self._writer
        reachable, detail = True, ""
        try:
            await asyncio.wait_for(self._read(lambda conn: conn.execute("SELECT 1").fetchone()), PROBE_TIMEOUT_S)
        except (StoreError, TimeoutError) as exc:
            reachable, detail = False, str(exc) or "no answer within the probe timeout"
        return StoreHealth(reachable, writer.alive, detail, writer.queue_depth, writer.failed_batches, writer.restarts)

    async def _shut_down(self) -> None:
        await self._writer.close()
        await self._reader.close()

    async def _write(
        self,
        fn: Callable[[sqlite3.Connection, OpContext], T],
        *,
        frees_space: bool = False,
        sync: bool = True,
        removals: Callable[[], Sequence[Removal]] | None = None,
    ) -> T:
        """`frees_space`: a deletion, which may still run on a full disk; `sync=False`: a removal that a power loss
        may undo (messages come back, never go missing), committed without waiting for the disk (see
        GroupCommitWriter); `removals()`: what to run after `fn` in its transaction, each answering its own future
        (called once the store is known to be open, so that whatever it claims is answered)."""
        self._check_open()
        return await self._writer.submit(
            fn, frees_space=frees_space, sync=sync, removals=() if removals is None else removals()
        )

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn` runs in a read transaction (one snapshot for reads made of several statements)."""
        self._check_open()
        return await self._reader.read(fn)
