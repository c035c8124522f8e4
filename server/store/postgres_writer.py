"""Group commit for PostgreSQL: concurrent enqueues share one transaction, and so one WAL flush.

Every synchronous commit in PostgreSQL waits for its own WAL flush. An asyncio task takes every enqueue submitted
while the previous batch was running, runs them in one transaction on one pooled connection, sends the batch's
notifications inside that transaction, commits once, and only then resolves the callers' futures: a seq is never
seen before it is durable.

The whole batch is first tried as one statement outside a transaction (`merge`: the statement is the transaction,
its notifications included, so one round trip for all of it, a single enqueue too). If anything in it is refused or
fails, the statement is undone whole, and the batch runs in a transaction with each operation in its own
SAVEPOINT, so that a refused one rolls back alone.

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

from quicnprotochat.server.log_throttle import LogThrottle

from .base import BatchSizes, Inbox, OutcomeUnknown, StoreClosed, StoreError, StoreMetrics, StoreUnavailable
from .postgres_faults import (
    CONNECT_TIMEOUT_S,
    answered,
    describe,
    is_connection_fault,
    release,
    session_lost,
    terminate,
)
from .store_thread import settle

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_BATCH = 64
"""Operations per transaction. Each savepoint that writes gets a subtransaction id; PostgreSQL caches 64 per
backend, and beyond that every other session's snapshot checks must consult pg_subtrans while we run. Past a few
dozen operations the WAL flush is a small part of a batch anyway."""

MAX_DEADLOCK_RETRIES = 5

TRANSACTION_TIMEOUT_S = 10.0
"""A batch's transaction that takes longer (a hung server, a silent network) is cut off: its connection is
terminated and its callers are told (not stored, or outcome unknown once its commit was on the way)."""

MIN_BACKOFF_S = 0.05
MAX_BACKOFF_S = 0.5
"""After a batch fails on a lost session (not on an error the server answered), the next waits this long
(doubling from the minimum): the database is not hammered while down, and is used again within half a second of
coming back."""

LOG_PERIOD_S = 30.0


def _batch_error(exc: BaseException, *, committing: bool) -> StoreError:
    """A failed batch's transaction is rolled back (its connection terminated if the session was lost, so
    PostgreSQL rolls back whatever it did): not stored, unless its commit was on the way and no answer came back
    (see `answered`)."""
    unknown = committing and not answered(exc)
    error = OutcomeUnknown() if unknown else StoreUnavailable("storage write failed; not stored, retry")
    error.__cause__ = exc
    return error


async def _rolled_back(conn: Any) -> bool:
    """Roll back the transaction a failed batch left open, if any; False if that failed too."""
    if not conn.is_in_transaction():
        return True
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            await conn.execute("ROLLBACK")
    except Exception:  # noqa: BLE001 - the connection is terminated instead
        return False
    return True


class Again(Exception):
    """Raised by an operation to be rolled back to its savepoint and called again with attempt + 1."""


OpFn = Callable[[Any, int], Awaitable[T]]
"""(connection, attempt) -> result; attempt starts at 0 (at 1 after its merge alone failed: see `WriteOp.data`)
and grows with each `Again`."""


@dataclass(slots=True)
class WriteOp(Generic[T]):
    fn: OpFn[T]
    inboxes: list[Inbox]
    """Woken after the commit if the operation succeeded."""
    future: asyncio.Future[T]
    sort_key: Inbox = (b"", b"")
    data: Any = None
    """What `merge` needs to run this operation together with others; None: run it alone. `merge` of this
    operation alone is its `fn`'s attempt 0, so an operation alone in a batch whose merge failed goes on at 1."""
    deadlocks: int = 0


Publish = Callable[[Iterable[Inbox]], list[str]]
Merge = Callable[[Any, list[Any], tuple[str, list[str]]], Awaitable[list[Any] | None]]
"""(connection outside a transaction, [op.data, ...], (channel, payloads)) -> one result per operation, committed
with those notifications, in one statement; or None if the batch cannot be applied as a whole (nothing was)."""


@dataclass(slots=True)
class _Counters:
    write_ops: int = 0
    commits: int = 0
    largest_batch: int = 0
    failed_batches: int = 0
    restarts: int = 0
    batch_sizes: BatchSizes = field(default_factory=BatchSizes)
    deferred: list[WriteOp[Any]] = field(default_factory=list)


@dataclass(slots=True)
class _InHand:
    """The batch the writer is working on, and whether its commit is on the way: the COMMIT sent, or the batch's
    one statement, which commits by itself, sent."""

    batch: list[WriteOp[Any]] = field(default_factory=list)
    committing: bool = False


class GroupCommitWriter:
    def __init__(
        self,
        pool: Any,
        channel: str,
        publish: Publish,
        on_committed: Callable[[Iterable[Inbox]], None],
        merge: Merge | None = None,
        *,
        transaction_timeout_s: float = TRANSACTION_TIMEOUT_S,
    ) -> None:
        self._pool = pool
        self._merge = merge
        self._channel = channel
        self._publish = publish
        self._on_committed = on_committed
        self._transaction_timeout = transaction_timeout_s
        self._queue: deque[WriteOp[Any]] = deque()
        self._work = asyncio.Event()
        self._closing = False
        self._counters = _Counters()
        self._in_hand = _InHand()
        self._backoff = 0.0
        self._faults = LogThrottle(log, period_s=LOG_PERIOD_S)
        self._stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = self._start_task()

    def metrics(self) -> StoreMetrics:
        c = self._counters
        sizes, total = c.batch_sizes.snapshot()
        return StoreMetrics(c.write_ops, c.commits, c.largest_batch, sizes, total)

    @property
    def alive(self) -> bool:
        """Whether the batching task runs (the supervisor restarts it if it ever ends before close)."""
        return not self._task.done() or self._closing

    @property
    def queue_depth(self) -> int:
        return len(self._queue) + len(self._in_hand.batch)

    @property
    def failed_batches(self) -> int:
        return self._counters.failed_batches

    @property
    def restarts(self) -> int:
        return self._counters.restarts

    @property
    def failing(self) -> bool:
        """True while the last batch failed on the connection (and until one commits again)."""
        return self._backoff > 0

    def count_commit(self, ops: int) -> None:
        """For writes made outside the batches (fetch, ack, ...), so that metrics cover every write."""
        self._counters.write_ops += ops
        self._counters.commits += 1
        self._counters.largest_batch = max(self._counters.largest_batch, ops)
        self._counters.batch_sizes.observe(ops)

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
        if self._task.done():
            self._finish()
        await asyncio.shield(self._stopped)

    # ── supervision ───────────────────────────────────────────────────────────────────────────────────────────

    def _start_task(self) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._run(), name="qpc-store-pg-writer")
        task.add_done_callback(self._task_ended)
        return task

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """The supervisor: a task that ends before close() answers its batch in hand and is started again."""
        cancelled = task.cancelled()
        exc = asyncio.CancelledError() if cancelled else task.exception()
        exc = exc or RuntimeError("the writer task returned")
        in_hand, self._in_hand = self._in_hand, _InHand()
        if in_hand.batch:
            self._fail(in_hand.batch, _batch_error(exc, committing=in_hand.committing))
        if cancelled:  # the loop is shutting down, or someone stopped us on purpose
            self._closing = True
        if self._closing:
            self._finish()
            return
        self._counters.restarts += 1
        self._faults.error("writer restarted", "store writer task ended (%s); restarted", describe(exc))
        self._task = self._start_task()

    def _finish(self) -> None:
        failure = StoreClosed()
        while self._queue:
            op = self._queue.popleft()
            if not op.future.done():
                op.future.set_exception(failure)
        if not self._stopped.done():
            self._stopped.set_result(None)

    # ── the batching task ─────────────────────────────────────────────────────────────────────────────────────

    async def _run(self) -> None:
        while True:
            await self._work.wait()
            self._work.clear()
            while self._queue:
                if self._backoff:
                    # The database failed the last batch: give it a moment; what queues meanwhile goes together.
                    await asyncio.sleep(self._backoff)
                batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
                self._in_hand = _InHand(batch)
                try:
                    await self._run_batch(batch)
                except Exception as exc:  # noqa: BLE001 - whatever happens, every caller of the batch hears of it
                    self._batch_failed(batch, exc)
                    if session_lost(exc):
                        # Every pooled connection may be as dead as this one (the server restarted): replace them.
                        await self._pool.expire_connections()
                self._in_hand = _InHand()
                deferred, self._counters.deferred = self._counters.deferred, []
                self._queue.extendleft(reversed(deferred))
            if self._closing and not self._queue:
                return

    def _batch_failed(self, batch: list[WriteOp[Any]], exc: Exception) -> None:
        committing = self._in_hand.committing
        self._counters.failed_batches += 1
        self._counters.deferred = []
        if session_lost(exc):
            self._backoff = min(MAX_BACKOFF_S, max(MIN_BACKOFF_S, self._backoff * 2))
            self._faults.warning("connection", "store write failed: %s; retrying with backoff", describe(exc))
        elif is_connection_fault(exc):  # answered (a statement_timeout, a full disk): the session serves on
            self._faults.warning("answered", "store write failed: %s", describe(exc))
        else:
            self._faults.log(logging.ERROR, ("unexpected", type(exc)), "store write failed unexpectedly: %r", exc)
        self._fail(batch, _batch_error(exc, committing=committing))

    def _fail(self, batch: list[WriteOp[Any]], error: StoreError) -> None:
        for op in batch:
            if not op.future.done():
                op.future.set_exception(error)

    async def _run_batch(self, batch: list[WriteOp[Any]]) -> None:
        # Sorted by first inbox so that batches of single-inbox operations lock counter rows in one global order.
        batch.sort(key=lambda op: op.sort_key)
        outcomes: list[tuple[WriteOp[Any], Any, BaseException | None]] = []
        touched: set[Inbox] = set()
        deferred: list[WriteOp[Any]] = []
        conn = await self._pool.acquire(timeout=CONNECT_TIMEOUT_S)
        try:
            async with asyncio.timeout(self._transaction_timeout):
                await self._run_transaction(conn, batch, outcomes, touched, deferred)
        except BaseException as exc:
            # An operation cut off mid-way leaves the connection unfit to serve again; an answered error does not,
            # once the transaction it aborted is rolled back.
            kept = False
            try:
                kept = not session_lost(exc) and await _rolled_back(conn)
            finally:
                if not kept:
                    terminate(conn)
                await release(self._pool, conn)
            raise
        # Committed: the callers hear it now, whatever happens to the connection afterwards.
        self._backoff = 0.0
        self._counters.commits += 1
        self._counters.write_ops += len(batch) - len(deferred)
        self._counters.largest_batch = max(self._counters.largest_batch, len(batch))
        self._counters.batch_sizes.observe(len(batch) - len(deferred))
        self._counters.deferred = deferred
        for op, result, error in outcomes:
            settle(op.future, result, error)
        if touched:
            self._on_committed(touched)
        await release(self._pool, conn)

    async def _run_at_once(
        self,
        conn: Any,
        batch: list[WriteOp[Any]],
        outcomes: list[tuple[WriteOp[Any], Any, BaseException | None]],
        touched: set[Inbox],
    ) -> bool:
        """The whole batch, with its notifications, as one statement outside a transaction: one round trip, its
        commit the statement's own. False if it cannot go that way (an operation that is not a merge's) or did not
        (refused or failed as a whole, so nothing was applied): the caller then runs it operation by operation."""
        merge = self._merge_for(batch)
        if merge is None:
            return False
        inboxes = {inbox for op in batch for inbox in op.inboxes}
        # The statement commits by itself: a connection lost meanwhile leaves its outcome unknown (an error the
        # server answered with does not: the statement was rolled back).
        self._in_hand.committing = True
        try:
            results = await merge(conn, [op.data for op in batch], (self._channel, self._publish(inboxes)))
        except asyncpg.PostgresError as exc:  # deadlock or anything else: the per-operation path sorts it out
            if is_connection_fault(exc):
                raise
            log.info("merged batch failed (%s); running its operations one by one", type(exc).__name__)
            results = None
        if results is None:
            self._in_hand.committing = False
            return False
        for op, result in zip(batch, results, strict=True):
            outcomes.append((op, result, None))
        touched.update(inboxes)
        return True

    def _merge_for(self, batch: list[WriteOp[Any]]) -> Merge | None:
        """`merge`, if every operation of the batch is one of its."""
        return self._merge if all(op.data is not None for op in batch) else None

    async def _run_transaction(
        self,
        conn: Any,
        batch: list[WriteOp[Any]],
        outcomes: list[tuple[WriteOp[Any], Any, BaseException | None]],
        touched: set[Inbox],
        deferred: list[WriteOp[Any]],
    ) -> None:
        """The batch's transaction: one statement if it goes at once, else one savepoint per operation."""
        if await self._run_at_once(conn, batch, outcomes, touched):
            return
        # An operation alone in its batch had its attempt 0 as the merged statement that just failed.
        first_attempt = 1 if len(batch) == 1 and self._merge_for(batch) is not None else 0
        # Savepoint commands go as one simple-protocol message with whatever came before: one round trip each.
        await conn.execute("BEGIN; SAVEPOINT op")
        # No ROLLBACK on failure here: the caller rolls back, or terminates the connection and PostgreSQL rolls
        # back what it held.
        for op in batch:
            attempt = first_attempt
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
                        failure: StoreError = StoreUnavailable(
                            "storage write failed (lock contention); not stored, retry"
                        )
                        failure.__cause__ = exc
                        outcomes.append((op, None, failure))
                except StoreError as exc:  # refused on purpose (LimitExceeded, ...)
                    await conn.execute("ROLLBACK TO SAVEPOINT op")
                    outcomes.append((op, None, exc))
                except asyncpg.PostgresError as exc:
                    if is_connection_fault(exc):
                        raise
                    # A statement failed but the session is fine: this operation alone is lost.
                    await conn.execute("ROLLBACK TO SAVEPOINT op")
                    self._faults.error(("operation", type(exc)), "store operation failed: %s", type(exc).__name__)
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
        self._in_hand.committing = True
        await conn.execute("COMMIT")
