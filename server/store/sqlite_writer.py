"""Group commit for SQLite: one thread owns the write connection and commits many callers' operations at once.

With synchronous=FULL every COMMIT costs an fsync, which bounds a one-commit-per-write design to a few hundred
writes per second. Here the writer thread takes everything submitted while the previous commit was syncing, runs
it in one transaction (each operation in its own SAVEPOINT, so a refused one rolls back alone), commits once, and
only then resolves the callers' futures: a result is never seen before it is committed.

A batch made only of removals that may come undone (`sync=False`: an inbox's fetch, ack or expiry sweep) commits
without the fsync (synchronous=NORMAL). WAL mode keeps such a commit through a crash of the process (its frames
are written before COMMIT returns); only a power loss or a kernel crash can take it back, and then the removed
messages come back: delivered again with the same seqs (an expired one is swept again), never lost. The next
synced commit, or a checkpoint, makes it durable as well, because it syncs the WAL up to its own frames and every
frame before them.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from quicnprotochat.server.log_throttle import LogThrottle

from .base import BatchSizes, DiskFull, Inbox, OutcomeUnknown, StoreClosed, StoreError, StoreMetrics, StoreUnavailable
from .disk_reserve import DiskReserve
from .store_thread import StoreThread, settle

T = TypeVar("T")

log = logging.getLogger(__name__)

# Bounds the latency one huge burst adds to the callers at its head, and the size of one transaction. Counted in
# submissions: an enqueue and the parked fetches it claimed are one.
MAX_BATCH = 1024

MIN_BACKOFF_S = 0.05
MAX_BACKOFF_S = 0.5
"""After a failed batch (disk full, I/O error) the next one waits this long, doubling from the minimum."""

LOG_PERIOD_S = 30.0

UPKEEP_INTERVAL_S = 1.0
WAL_TRUNCATE_BYTES = 4 << 20
"""A WAL larger than this is checkpointed and truncated when the writer is idle (and SQLite itself truncates it to
this size whenever it starts it over: journal_size_limit)."""


@dataclass(slots=True)
class OpContext:
    """Handed to each operation; what it records takes effect only if its savepoint is kept and committed."""

    touched: list[Inbox] = field(default_factory=list)


WriteFn = Callable[[sqlite3.Connection, OpContext], T]


@dataclass(slots=True)
class _Op(Generic[T]):
    fn: WriteFn[T]
    future: asyncio.Future[T]
    frees_space: bool = False
    """A deletion (fetch, ack, sweep): when the disk is full it may use the reserve; nothing else may."""
    sync: bool = True
    """False: a removal whose loss in a power failure only brings messages back (see the module's docstring)."""


Outcome = tuple["_Op[Any]", Any, BaseException | None]

Removal = tuple[WriteFn[Any], "asyncio.Future[Any]"]
"""An operation and the future its result goes to (see `GroupCommitWriter.submit`)."""


class GroupCommitWriter(StoreThread):
    def __init__(
        self,
        conn: sqlite3.Connection,
        loop: asyncio.AbstractEventLoop,
        on_committed: Callable[[Iterable[Inbox]], None],
        *,
        wal_path: Path | None = None,
        reserve: DiskReserve | None = None,
    ) -> None:
        self._conn = conn
        self._wal_path = wal_path
        self._reserve = reserve
        self._upkeep_at = 0.0
        self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        self._reusable_bytes = 0
        self._measure_free_pages()
        self._on_committed = on_committed
        self._write_ops = 0
        self._commits = 0
        self._largest_batch = 0
        self._failed_batches = 0
        self._restarts = 0
        self._batch_sizes = BatchSizes()
        self._in_hand: list[_Op[Any]] = []
        self._committing = False
        self._synchronous_full = True  # what _connect set
        self._backoff = 0.0
        # Used by the writer thread only.
        self._faults = LogThrottle(log, period_s=LOG_PERIOD_S)
        # If the interpreter exits without close(), the uncommitted transaction is rolled back by SQLite, and
        # nobody was told its results, so nothing acknowledged is lost.
        super().__init__(loop, "qpc-store-writer")

    def metrics(self) -> StoreMetrics:
        sizes, total = self._batch_sizes.snapshot()
        return StoreMetrics(self._write_ops, self._commits, self._largest_batch, sizes, total)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() or self._closing

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize() + len(self._in_hand)

    @property
    def failed_batches(self) -> int:
        return self._failed_batches

    @property
    def restarts(self) -> int:
        return self._restarts

    async def submit(
        self, fn: WriteFn[T], *, frees_space: bool = False, sync: bool = True, removals: Sequence[Removal] = ()
    ) -> T:
        """`removals`: operations that remove what `fn` may have added (a parked waiter's fetch, answered through
        its own future), run right after it in the same transaction; each is a removal that may come undone
        (`sync=False`), refused or rolled back on its own like any operation."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        op = _Op(fn, future, frees_space, sync)
        if removals:
            try:
                self._put([op, *(_Op(removal, answer, True, False) for removal, answer in removals)])
            except BaseException as exc:
                for _removal, answer in removals:
                    settle(answer, None, exc)
                raise
        else:
            self._put(op)
        # Cancelling the caller does not withdraw the operation: it may already be committed.
        return await future

    # ── writer thread ─────────────────────────────────────────────────────────────────────────────────────────

    def _run(self) -> None:
        """The supervisor: whatever ends the serving loop, its batch in hand is answered and the loop starts again."""
        try:
            while True:
                try:
                    self._serve()
                    return
                except BaseException as exc:  # noqa: BLE001 - a bug here must not leave callers hanging forever
                    self._restarts += 1
                    self._faults.error("writer restarted", "store writer loop ended (%r); restarted", exc)
                    self._answer_in_hand(exc)
                    self._rollback_quietly()
                    time.sleep(MIN_BACKOFF_S)
        finally:
            self._fail_pending()
            try:
                self._conn.close()
            finally:
                self._call_on_loop(self._set_stopped)

    def _serve(self) -> None:
        while True:
            if self._backoff:
                time.sleep(self._backoff)
            if self._queue.empty():
                self._upkeep()
            batch, stopping = self._take(MAX_BATCH)
            if batch:
                self._run_batch(_ops(batch))
            if stopping:
                return

    def _answer_in_hand(self, exc: BaseException) -> None:
        batch, self._in_hand = self._in_hand, []
        if batch:
            failure = _batch_error(exc, committing=self._committing)
            self._call_on_loop(self._deliver, [(op, None, failure) for op in batch], set())

    def _rollback_quietly(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            self._faults.error("rollback", "rollback failed: %s", exc)

    def _run_batch(self, batch: list[_Op[Any]], *, retry_if_full: bool = True) -> None:
        conn = self._conn
        outcomes: list[Outcome] = []
        touched: set[Inbox] = set()
        self._in_hand, self._committing = batch, False
        try:
            self._set_synchronous(any(op.sync for op in batch))
            conn.execute("BEGIN IMMEDIATE")
            ran = self._run_ops(batch)
            if ran is None:
                # An operation failed, perhaps halfway through its writes: start over with each operation in a
                # savepoint, so that the refused one rolls back alone.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                ran = self._run_ops_isolated(batch)
            outcomes, touched = ran
            self._committing = True
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - the batch failed as a whole; every caller must hear of it
            if retry_if_full and is_disk_full(exc) and any(op.frees_space for op in batch):
                self._drain_on_full_disk(batch, exc)
                return
            self._failed_batches += 1
            self._backoff = min(MAX_BACKOFF_S, max(MIN_BACKOFF_S, self._backoff * 2))
            self._faults.error(("batch", _fault_kind(exc)), "store write transaction failed: %s", exc)
            self._rollback_quietly()
            failure = _batch_error(exc, committing=self._committing)
            outcomes = [(op, None, failure) for op in batch]
            touched = set()
        else:
            self._backoff = 0.0
            self._commits += 1
            self._batch_sizes.observe(len(batch))
            self._measure_free_pages()
        self._in_hand = []
        self._write_ops += len(batch)
        self._largest_batch = max(self._largest_batch, len(batch))
        self._call_on_loop(self._deliver, outcomes, touched)

    def _set_synchronous(self, full: bool) -> None:
        """FULL (an fsync per commit) unless every operation of the batch is a removal that may come undone."""
        if full != self._synchronous_full:
            self._conn.execute("PRAGMA synchronous = FULL" if full else "PRAGMA synchronous = NORMAL")
            self._synchronous_full = full

    def _run_ops(self, batch: list[_Op[Any]]) -> tuple[list[Outcome], set[Inbox]] | None:
        """Every operation of the batch, without savepoints (two statements fewer per operation); None as soon as
        one raises."""
        conn = self._conn
        outcomes: list[Outcome] = []
        touched: set[Inbox] = set()
        for op in batch:
            ctx = OpContext()
            try:
                result = op.fn(conn, ctx)
            except Exception:  # noqa: BLE001 - run again in a savepoint, where the failure is reported
                return None
            outcomes.append((op, result, None))
            touched.update(ctx.touched)
        return outcomes, touched

    def _run_ops_isolated(self, batch: list[_Op[Any]]) -> tuple[list[Outcome], set[Inbox]]:
        conn = self._conn
        outcomes: list[Outcome] = []
        touched: set[Inbox] = set()
        for op in batch:
            ctx = OpContext()
            conn.execute("SAVEPOINT op")
            try:
                result = op.fn(conn, ctx)
            except Exception as exc:  # noqa: BLE001 - whatever an operation raises is that operation's failure
                # If SQLite already aborted the whole transaction this raises and the batch fails.
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                outcomes.append((op, None, self._public_error(exc)))
            else:
                conn.execute("RELEASE op")
                outcomes.append((op, result, None))
                touched.update(ctx.touched)
        return outcomes, touched

    def _drain_on_full_disk(self, batch: list[_Op[Any]], exc: Exception) -> None:
        """The disk is full and the batch holds deletions: they run again alone, with the reserve given up for
        them if it is still held; everything else in the batch is refused (it would only take that space)."""
        self._rollback_quietly()
        deletions = [op for op in batch if op.frees_space]
        # Still to be answered, whatever happens before they run again (and not yet committing: they have not run).
        self._in_hand, self._committing = deletions, False
        refused = [op for op in batch if not op.frees_space]
        if refused:
            self._failed_batches += 1
            failure = _batch_error(exc, committing=False)
            self._call_on_loop(self._deliver, [(op, None, failure) for op in refused], set())
        self._release_reserve()
        self._run_batch(deletions, retry_if_full=False)

    def _release_reserve(self) -> None:
        if self._reserve is None:
            return
        try:
            released = self._reserve.release()
        except OSError as exc:
            # The deletions still run: they may fit without it.
            self._faults.error("reserve", "disk full, and the disk reserve could not be released: %s", exc)
            return
        if released:
            self._faults.warning(
                "reserve released",
                "disk full: released the %d MiB disk reserve so that inboxes can drain",
                self._reserve.size >> 20,
            )

    @property
    def reusable_bytes(self) -> int:
        """Space inside the database file that deletions freed and new rows will reuse (as of the last commit)."""
        return self._reusable_bytes

    def _measure_free_pages(self) -> None:
        try:
            pages = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
            self._reusable_bytes = int(pages) * self._page_size
        except sqlite3.Error:
            self._reusable_bytes = 0

    def _upkeep(self) -> None:
        """While idle, at most once a second: hold the disk reserve again if there is room, and after a large burst
        or drain give the WAL back to the disk (SQLite's automatic checkpoints keep the file at its largest)."""
        now = time.monotonic()
        if now - self._upkeep_at < UPKEEP_INTERVAL_S:
            return
        self._upkeep_at = now
        if self._reserve is not None:
            self._reserve.ensure()
        if self._wal_path is None:
            return
        try:
            if self._wal_path.stat().st_size > WAL_TRUNCATE_BYTES:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except (OSError, sqlite3.Error) as exc:
            self._faults.warning("checkpoint", "WAL checkpoint failed: %s", exc)

    def _public_error(self, exc: Exception) -> StoreError:
        if isinstance(exc, StoreError):
            return exc
        if is_disk_full(exc):
            error: StoreError = DiskFull()
        else:
            # SQLite messages name tables and columns but never bound values, so logging them leaks nothing.
            self._faults.error(("operation", _fault_kind(exc)), "store operation failed: %r", exc)
            error = StoreError("storage operation failed")
        error.__cause__ = exc
        return error

    def _fail_pending(self) -> None:
        pending: list[Outcome] = [(op, None, StoreClosed()) for op in _ops(self._drain())]
        if pending:
            self._call_on_loop(self._deliver, pending, set())

    # ── back on the event loop ────────────────────────────────────────────────────────────────────────────────

    def _deliver(self, outcomes: list[Outcome], touched: set[Inbox]) -> None:
        for op, result, exc in outcomes:
            settle(op.future, result, exc)
        if touched:
            self._on_committed(touched)


def _ops(items: list[Any]) -> list[_Op[Any]]:
    """The queue's items as operations: an operation submitted with its removals is one item, a list."""
    ops: list[_Op[Any]] = []
    for item in items:
        if type(item) is list:
            ops.extend(item)
        else:
            ops.append(item)
    return ops


def _sqlite_code(exc: BaseException) -> int:
    return (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF if isinstance(exc, sqlite3.Error) else -1


def is_disk_full(exc: BaseException) -> bool:
    """SQLITE_FULL: a write found no space (the transaction is rolled back)."""
    return _sqlite_code(exc) == sqlite3.SQLITE_FULL


def _fault_kind(exc: BaseException) -> str:
    return type(exc).__name__ if not isinstance(exc, sqlite3.Error) else f"{type(exc).__name__}:{exc}"


def _batch_error(exc: BaseException, *, committing: bool) -> StoreError:
    """What the callers of a failed batch hear. SQLite rolls back a transaction whose COMMIT fails, so it was not
    stored, except when the commit failed on I/O (its frames may be on disk) or with something that is not
    SQLite's own error at all: then nobody can say."""
    error: StoreError
    if is_disk_full(exc):
        error = DiskFull()
    elif committing and _sqlite_code(exc) in (-1, sqlite3.SQLITE_IOERR):
        error = OutcomeUnknown("the store failed during the commit; the operation may have been stored")
    else:
        error = StoreUnavailable("storage write failed; not stored, retry")
    error.__cause__ = exc
    return error
