"""Group commit for PostgreSQL: concurrent enqueues share one transaction, and so one WAL flush.

Every commit in PostgreSQL waits for its own WAL flush. An asyncio task takes every enqueue submitted while the
previous batch was running, runs them in one transaction on one pooled connection, sends the batch's notifications
inside that transaction, commits once, and only then resolves the callers' futures: a seq is never seen before it
is durable.

Within the transaction, the whole batch is first tried as one statement (`merge`: one round trip for all of it).
If anything in it is refused or fails, that is rolled back and each operation runs in its own SAVEPOINT, so that a
refused one rolls back alone.

Lock order. Every writer locks an inbox's counter row before touching its messages, so message rows are never
part of a lock cycle. Counter rows are locked in sorted order within an operation, and the operations of a batch
are sorted by their first inbox; cycles between two nodes' batches remain possible only with multi-recipient
operations, and PostgreSQL then aborts one statement (deadlock_timeout later): that operation is rolled back to
its savepoint and retried in the next batch, after this one released its locks.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncpg  # type: ignore[import-untyped]

from .base import Inbox, StoreClosed, StoreError, StoreMetrics

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_BATCH = 64
"""Operations per transaction. Each savepoint that writes gets a subtransaction id; PostgreSQL caches 64 per
backend, and beyond that every other session's snapshot checks must consult pg_subtrans while we run. Past a few
dozen operations the WAL flush is a small part of a batch anyway."""

MAX_DEADLOCK_RETRIES = 5


class Again(Exception):
    """Raised by an operation to be rolled back to its savepoint and called again with attempt + 1."""


OpFn = Callable[[Any, int], Awaitable[T]]
"""(connection, attempt) -> result; attempt starts at 0 and grows with each `Again`."""


@dataclass(slots=True)
class WriteOp(Generic[T]):
    fn: OpFn[T]
    inboxes: list[Inbox]
    """Woken after the commit if the operation succeeded."""
    future: asyncio.Future[T]
    sort_key: Inbox = (b"", b"")
    data: Any = None
    """What `merge` needs to run this operation together with others; None: run it alone."""
    deadlocks: int = 0


Publish = Callable[[Iterable[Inbox]], list[str]]
Merge = Callable[[Any, list[Any]], Awaitable[list[Any] | None]]
"""(connection, [op.data, ...]) -> one result per operation, or None if the batch cannot be applied as a whole
(the writer then rolls back what it did)."""


@dataclass(slots=True)
class _Counters:
    write_ops: int = 0
    commits: int = 0
    largest_batch: int = 0
    deferred: list[WriteOp[Any]] = field(default_factory=list)


class GroupCommitWriter:
    def __init__(
        self,
        pool: Any,
        channel: str,
        publish: Publish,
        on_committed: Callable[[Iterable[Inbox]], None],
        merge: Merge | None = None,
    ) -> None:
        self._pool = pool
        self._merge = merge
        self._channel = channel
        self._publish = publish
        self._on_committed = on_committed
        self._queue: deque[WriteOp[Any]] = deque()
        self._work = asyncio.Event()
        self._closing = False
        self._counters = _Counters()
        self._task = asyncio.create_task(self._run(), name="qpc-store-pg-writer")

    def metrics(self) -> StoreMetrics:
        c = self._counters
        return StoreMetrics(c.write_ops, c.commits, c.largest_batch)

    def count_commit(self, ops: int) -> None:
        """For writes made outside the batches (fetch, ack, ...), so that metrics cover every write."""
        self._counters.write_ops += ops
        self._counters.commits += 1
        self._counters.largest_batch = max(self._counters.largest_batch, ops)

    async def submit(self, fn: OpFn[T], inboxes: list[Inbox], data: Any = None) -> T:
        # Checked and queued without an await in between, as close() is: nothing slips in behind the close.
        if self._closing:
            raise StoreClosed()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(WriteOp(fn, inboxes, future, min(inboxes) if inboxes else (b"", b""), data))
        self._work.set()
        # Cancelling the caller does not withdraw the operation: it may already be committed.
        return await future

    async def close(self) -> None:
        self._closing = True
        self._work.set()
        await asyncio.shield(self._task)

    # ── the batching task ─────────────────────────────────────────────────────────────────────────────────────

    async def _run(self) -> None:
        try:
            while True:
                await self._work.wait()
                self._work.clear()
                while self._queue:
                    batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
                    await self._run_batch(batch)
                    deferred, self._counters.deferred = self._counters.deferred, []
                    self._queue.extendleft(reversed(deferred))
                if self._closing and not self._queue:
                    return
        except BaseException as exc:  # pragma: no cover - a bug here must not leave callers hanging forever
            log.exception("store writer task failed")
            failure = StoreError("the store writer stopped")
            failure.__cause__ = exc
            while self._queue:
                op = self._queue.popleft()
                if not op.future.done():
                    op.future.set_exception(failure)
            raise

    async def _run_batch(self, batch: list[WriteOp[Any]]) -> None:
        # Sorted by first inbox so that batches of single-inbox operations lock counter rows in one global order.
        batch.sort(key=lambda op: op.sort_key)
        outcomes: list[tuple[WriteOp[Any], Any, BaseException | None]] = []
        touched: set[Inbox] = set()
        deferred: list[WriteOp[Any]] = []
        try:
            async with self._pool.acquire() as conn:
                await self._run_transaction(conn, batch, outcomes, touched, deferred)
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            # The transaction as a whole failed (connection lost, server shutting down, ...): nothing of it was
            # committed, unless the COMMIT itself was cut off, which nobody can know; every caller hears.
            log.error("store write transaction failed: %s", type(exc).__name__)
            failure = StoreError("storage write failed; the operation was not stored")
            failure.__cause__ = exc
            outcomes = [(op, None, failure) for op in batch]
            touched = set()
            deferred = []
        else:
            self._counters.commits += 1
        self._counters.write_ops += len(batch) - len(deferred)
        self._counters.largest_batch = max(self._counters.largest_batch, len(batch))
        self._counters.deferred = deferred
        for op, result, error in outcomes:
            if op.future.done():
                continue
            if error is None:
                op.future.set_result(result)
            else:
                op.future.set_exception(error)
        if touched:
            self._on_committed(touched)

    async def _run_merged(
        self,
        conn: Any,
        batch: list[WriteOp[Any]],
        outcomes: list[tuple[WriteOp[Any], Any, BaseException | None]],
        touched: set[Inbox],
    ) -> bool:
        if self._merge is None or len(batch) < 2 or any(op.data is None for op in batch):
            return False
        try:
            results = await self._merge(conn, [op.data for op in batch])
        except asyncpg.PostgresError as exc:  # deadlock or anything else: the per-operation path sorts it out
            log.info("merged batch failed (%s); running its operations one by one", type(exc).__name__)
            results = None
        if results is None:
            await conn.execute("ROLLBACK TO SAVEPOINT op")
            return False
        for op, result in zip(batch, results, strict=True):
            outcomes.append((op, result, None))
            touched.update(op.inboxes)
        return True

    async def _run_transaction(
        self,
        conn: Any,
        batch: list[WriteOp[Any]],
        outcomes: list[tuple[WriteOp[Any], Any, BaseException | None]],
        touched: set[Inbox],
        deferred: list[WriteOp[Any]],
    ) -> None:
        # Savepoint commands go as one simple-protocol message with whatever came before: one round trip each.
        await conn.execute("BEGIN; SAVEPOINT op")
        committed = False
        try:
            if await self._run_merged(conn, batch, outcomes, touched):
                batch = []
            for op in batch:
                attempt = 0
                while True:
                    try:
                        result = await op.fn(conn, attempt)
                    except Again:
                        await conn.execute("ROLLBACK TO SAVEPOINT op")
                        attempt += 1
                        continue
                    except asyncpg.DeadlockDetectedError as exc:
                        await conn.execute("ROLLBACK TO SAVEPOINT op")
                        op.deadlocks += 1
                        if op.deadlocks <= MAX_DEADLOCK_RETRIES:
                            deferred.append(op)
                        else:
                            failure = StoreError("storage write failed (lock contention); the operation was not stored")
                            failure.__cause__ = exc
                            outcomes.append((op, None, failure))
                    except StoreError as exc:  # refused on purpose (LimitExceeded, ...)
                        await conn.execute("ROLLBACK TO SAVEPOINT op")
                        outcomes.append((op, None, exc))
                    except asyncpg.PostgresError as exc:
                        # A statement failed but the session is fine: this operation alone is lost.
                        await conn.execute("ROLLBACK TO SAVEPOINT op")
                        log.error("store operation failed: %s", type(exc).__name__)
                        failure = StoreError("storage operation failed")
                        failure.__cause__ = exc
                        outcomes.append((op, None, failure))
                    else:
                        await conn.execute("RELEASE SAVEPOINT op; SAVEPOINT op")
                        outcomes.append((op, result, None))
                        touched.update(op.inboxes)
                    break
            if touched:
                # Delivered to the other nodes only if, and when, this transaction commits.
                await conn.execute(
                    "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                    self._channel,
                    self._publish(touched),
                )
            await conn.execute("COMMIT")
            committed = True
        finally:
            if not committed and not conn.is_closed():
                try:
                    await conn.execute("ROLLBACK")
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    conn.terminate()
