"""Group commit for SQLite: one thread owns the write connection and commits many callers' operations at once.

With synchronous=FULL every COMMIT costs an fsync, which bounds a one-commit-per-write design to a few hundred
writes per second. Here the writer thread takes everything submitted while the previous commit was syncing, runs
it in one transaction (each operation in its own SAVEPOINT, so a refused one rolls back alone), commits once, and
only then resolves the callers' futures: a result is never seen before it is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .base import Inbox, StoreClosed, StoreError, StoreMetrics

T = TypeVar("T")

log = logging.getLogger(__name__)

# Bounds the latency one huge burst adds to the callers at its head, and the size of one transaction.
MAX_BATCH = 1024


@dataclass(slots=True)
class OpContext:
    """Handed to each operation; what it records takes effect only if its savepoint is kept and committed."""

    touched: list[Inbox] = field(default_factory=list)


WriteFn = Callable[[sqlite3.Connection, OpContext], T]


@dataclass(slots=True)
class _Op(Generic[T]):
    fn: WriteFn[T]
    future: asyncio.Future[T]


_STOP = object()

Outcome = tuple["_Op[Any]", Any, BaseException | None]


class GroupCommitWriter:
    def __init__(
        self,
        conn: sqlite3.Connection,
        loop: asyncio.AbstractEventLoop,
        on_committed: Callable[[Iterable[Inbox]], None],
    ) -> None:
        self._conn = conn
        self._loop = loop
        self._on_committed = on_committed
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._closing = False
        self._write_ops = 0
        self._commits = 0
        self._largest_batch = 0
        self._stopped: asyncio.Future[None] = loop.create_future()
        # Daemon: an interpreter exiting without close() must not hang on us. An uncommitted transaction is
        # rolled back by SQLite, and nobody was told its results, so nothing acknowledged is lost.
        self._thread = threading.Thread(target=self._run, name="qpc-store-writer", daemon=True)
        self._thread.start()

    def metrics(self) -> StoreMetrics:
        return StoreMetrics(self._write_ops, self._commits, self._largest_batch)

    async def submit(self, fn: WriteFn[T]) -> T:
        # Checked and enqueued on the loop thread, as close() is, so nothing can slip in behind the stop marker.
        if self._closing:
            raise StoreClosed()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put(_Op(fn, future))
        # Cancelling the caller does not withdraw the operation: it may already be committed.
        return await future

    async def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._queue.put(_STOP)
        await asyncio.shield(self._stopped)

    # ── writer thread ─────────────────────────────────────────────────────────────────────────────────────────

    def _run(self) -> None:
        try:
            stopping = False
            while not stopping:
                batch: list[_Op[Any]] = []
                item = self._queue.get()
                while True:
                    if item is _STOP:
                        stopping = True
                        break
                    assert isinstance(item, _Op)
                    batch.append(item)
                    if len(batch) >= MAX_BATCH:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    self._run_batch(batch)
        except BaseException:  # pragma: no cover - a bug here must not leave callers hanging forever
            log.exception("store writer thread failed")
            self._fail_pending()
        finally:
            try:
                self._conn.close()
            finally:
                self._call_on_loop(self._set_stopped)

    def _run_batch(self, batch: list[_Op[Any]]) -> None:
        conn = self._conn
        outcomes: list[Outcome] = []
        touched: set[Inbox] = set()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                ctx = OpContext()
                conn.execute("SAVEPOINT op")
                try:
                    result = op.fn(conn, ctx)
                except Exception as exc:  # noqa: BLE001 - whatever an operation raises is that operation's failure
                    # If SQLite already aborted the whole transaction this raises and the batch fails below.
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((op, None, _public_error(exc)))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((op, result, None))
                    touched.update(ctx.touched)
            conn.execute("COMMIT")
        except Exception as exc:  # noqa: BLE001 - the batch failed as a whole; every caller must hear of it
            log.error("store write transaction failed: %s", exc)
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("rollback failed")
            failure = StoreError("storage write failed; the operation was not stored")
            failure.__cause__ = exc
            outcomes = [(op, None, failure) for op in batch]
            touched = set()
        else:
            self._commits += 1
        self._write_ops += len(batch)
        self._largest_batch = max(self._largest_batch, len(batch))
        self._call_on_loop(self._deliver, outcomes, touched)

    def _fail_pending(self) -> None:
        pending: list[Outcome] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Op):
                pending.append((item, None, StoreError("the store writer stopped")))
        if pending:
            self._call_on_loop(self._deliver, pending, set())

    def _call_on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        # RuntimeError: the loop is already closed, so nobody is left to receive the results.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)

    # ── back on the event loop ────────────────────────────────────────────────────────────────────────────────

    def _deliver(self, outcomes: list[Outcome], touched: set[Inbox]) -> None:
        for op, result, exc in outcomes:
            if op.future.done():
                continue
            if exc is None:
                op.future.set_result(result)
            else:
                op.future.set_exception(exc)
        if touched:
            self._on_committed(touched)

    def _set_stopped(self) -> None:
        if not self._stopped.done():
            self._stopped.set_result(None)


def _public_error(exc: Exception) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    # SQLite messages name tables and columns but never bound values, so logging them leaks nothing.
    log.error("store operation failed: %r", exc)
    error = StoreError("storage operation failed")
    error.__cause__ = exc
    return error
