"""The PostgreSQL engine every PostgreSQL concern stands on, for several nodes sharing one database.

Enqueues go through the group-commit writer (`postgres_writer`); other writes run as their own transactions on a
connection pool (asyncpg); reads use the pool without a transaction. Wake-ups cross nodes by LISTEN/NOTIFY
(`postgres_wakeups`). Concurrency is settled by the database, never by this process alone, since other nodes
write too: counter rows updated with RETURNING, ON CONFLICT for get-or-create, SKIP LOCKED for single-use rows,
an advisory lock for the per-identity KeyPackage cap.

URL options (removed before the URL reaches asyncpg): `pool_min_size` (default 2), `pool_max_size` (default 10),
`group_commit` (default on; off runs each enqueue in its own transaction, for comparison).

The store belongs to the event loop that opened it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Self, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

from quicnprotochat.server.log_throttle import LogThrottle

from ..base import AlreadyExists, Clock, StoreError, StoreHealth, StoreLimits, StoreMetrics, StoreUnavailable
from ..engine import StoreEngine
from ..postgres_faults import (
    CONNECT_TIMEOUT_S,
    describe,
    pooled,
    quiet_pool_log,
    store_error,
)
from ..postgres_migrations import migrate
from ..postgres_wakeups import CHANNEL, PostgresWakeups
from ..postgres_writer import Again, GroupCommitWriter
from .enqueue import enqueue_many

T = TypeVar("T")

_RETRIES = 5
PROBE_TIMEOUT_S = 2.0

_UNIQUE_FIELDS = {
    "accounts_username_key": "username",
    "accounts_identity_key_key": "identity_key",
    "key_packages_fingerprint_key": "fingerprint",
    "sessions_pkey": "token_hash",
    "login_states_pkey": "state_id",
}

_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

# What the database rolls back whole, to be tried again: two transactions locking in a cycle, or (not expected
# under the READ COMMITTED the sessions pin) a snapshot that cannot be serialized.
_CONTENDED = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


@dataclass(frozen=True, slots=True)
class PostgresOptions:
    pool_min_size: int = 2
    pool_max_size: int = 10
    group_commit: bool = True


_TRUE = {"1", "true", "on", "yes"}
_FALSE = {"0", "false", "off", "no"}


def parse_url(url: str) -> tuple[str, PostgresOptions]:
    """Split our options off a postgresql:// URL; the rest (host, sslmode, ...) is asyncpg's."""
    parts = urlsplit(url)
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in PostgresOptions.__dataclass_fields__:
            ours[name] = value
        else:
            theirs.append((name, value))
    defaults = PostgresOptions()
    try:
        min_size = int(ours.get("pool_min_size", defaults.pool_min_size))
        max_size = int(ours.get("pool_max_size", defaults.pool_max_size))
    except ValueError:
        raise ValueError("pool_min_size and pool_max_size must be integers") from None
    group = ours.get("group_commit", "on").lower()
    if group not in _TRUE | _FALSE:
        raise ValueError("group_commit must be on or off")
    if not 0 <= min_size <= max_size or max_size < 1:
        raise ValueError("need 0 <= pool_min_size <= pool_max_size and pool_max_size >= 1")
    dsn = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(theirs), parts.fragment))
    return dsn, PostgresOptions(min_size, max_size, group in _TRUE)


def redacted(url: str) -> str:
    """host:port/database, for messages: never the user's password."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"postgresql://{host}{port}{parts.path}"


def rowcount(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 3" or "INSERT 0 1".
    return int(status.rsplit(" ", 1)[-1])


def already_exists(exc: asyncpg.UniqueViolationError, default: str) -> AlreadyExists:
    """The unique column (by constraint name) a write ran into; `default` for a constraint not listed."""
    return AlreadyExists(_UNIQUE_FIELDS.get(getattr(exc, "constraint_name", None) or "", default))


async def keep_session(conn: Any) -> None:
    """The pool's reset of a connection handed back: nothing to do, so no round trip.

    asyncpg's default reset sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` on every
    release, a round trip as long as the statement the connection was taken for. The store leaves no session
    state to undo: its advisory locks are transaction-level, its settings `SET LOCAL` (or `set_config(..., true)`),
    it opens no cursor outside a transaction and listens on a connection of its own, never a pooled one. asyncpg
    still rolls back a transaction left open before calling this.
    """


@contextlib.asynccontextmanager
async def transaction(conn: Any, *, sync: bool = True) -> AsyncIterator[None]:
    """A transaction on `conn`, committed when the block ends without an exception, else rolled back.

    `sync=False` commits without waiting for the WAL flush (`synchronous_commit = off` for this transaction only),
    for transactions made only of removals that may come undone: an expiry sweep, an inbox's fetch or ack (the
    database's functions qpc_fetch and qpc_ack set the same for their own statement: `_remove`). The COMMIT still
    returns only once the transaction is committed and visible to every session, so no node hands those messages out
    again, and a node killed afterwards changes nothing. Only a crash of the database server (or its machine)
    within a few `wal_writer_delay`s can undo it, and then it is undone as a whole: the messages are back with their
    seqs, delivered again, never lost. The WAL is one sequence, so any later synchronous commit (the next enqueue,
    on any node) flushes it too, and crash recovery never keeps a later commit while losing an earlier one.
    """
    if sync:
        async with conn.transaction():
            yield
        return
    # One message, so one round trip, as asyncpg's own BEGIN would be.
    await conn.execute("BEGIN; SET LOCAL synchronous_commit = off")
    try:
        yield
    except Exception:
        if not conn.is_closed():
            # A failed statement leaves the session usable once rolled back; a dead one is terminated by `pooled`.
            with contextlib.suppress(*_DB_ERRORS):
                await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")


class PostgresEngine(StoreEngine):
    def __init__(
        self,
        url: str,
        limits: StoreLimits,
        clock: Clock,
        pool: Any,
        wakeups: PostgresWakeups,
        options: PostgresOptions,
    ) -> None:
        """Use `open`."""
        super().__init__(limits, clock, wakeups)
        self.location = redacted(url)
        self._pool = pool
        self._pg_wakeups = wakeups
        self._options = options
        self._writer = GroupCommitWriter(pool, CHANNEL, wakeups.payloads, wakeups.notify, enqueue_many)
        self._in_flight = 0
        self._drained = asyncio.Event()
        self._drained.set()

    @classmethod
    async def open(
        cls,
        url: str,
        limits: StoreLimits | None = None,
        *,
        clock: Clock,
    ) -> Self:
        dsn, options = parse_url(url)
        quiet_pool_log(LogThrottle(logging.getLogger(__name__), period_s=30.0))
        where = redacted(dsn)
        # The database's functions (qpc_fetch, qpc_ack, qpc_enqueue) see other sessions' commits made while they
        # waited for a lock only with a snapshot per statement: READ COMMITTED, whatever the database's default.
        settings = {"application_name": "quicnprotochat", "default_transaction_isolation": "read committed"}
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=options.pool_min_size,
                max_size=options.pool_max_size,
                server_settings=settings,
                timeout=CONNECT_TIMEOUT_S,
                reset=keep_session,
            )
        except (*_DB_ERRORS, ValueError) as exc:
            raise StoreError(f"cannot open the database at {where}: {type(exc).__name__}: {exc}") from exc
        wakeups = PostgresWakeups(
            lambda: asyncpg.connect(dsn, server_settings={**settings, "application_name": "quicnprotochat-listen"}),
            secrets.token_hex(8),
        )
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
            await wakeups.start()
        except StoreError:
            await wakeups.close()
            await pool.close()
            raise
        except _DB_ERRORS as exc:
            await wakeups.close()
            await pool.close()
            raise StoreError(f"cannot open the database at {where}: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            await wakeups.close()
            pool.terminate()
            raise
        return cls(dsn, limits or StoreLimits(), clock, pool, wakeups, options)

    # ── lifecycle ─────────────────────────────────────────────────────────────────────────────────────────────

    @property
    def pg_wakeups(self) -> PostgresWakeups:
        """The same object as `wakeups`, with the listener's controls (tests, health reporting)."""
        return self._pg_wakeups

    @property
    def options(self) -> PostgresOptions:
        return self._options

    def metrics(self) -> StoreMetrics:
        return self._writer.metrics()

    def reusable_bytes(self) -> int:
        return 0  # the database's files are on its server, not on this node's disk

    async def probe(self) -> StoreHealth:
        writer = self._writer
        reachable, detail = True, ""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S), pooled(self._pool) as conn:
                await conn.fetchval("SELECT 1")
        except Exception as exc:  # noqa: BLE001 - anything that stops the probe means: not reachable now
            reachable = False
            detail = describe(exc.__cause__ if isinstance(exc, StoreError) and exc.__cause__ else exc)
        return StoreHealth(reachable, writer.alive, detail, writer.queue_depth, writer.failed_batches, writer.restarts)

    async def _shut_down(self) -> None:
        await self._writer.close()
        await self._drained.wait()
        await self._pg_wakeups.close()
        await self._pool.close()

    def _enter(self) -> None:
        self._check_open()
        self._in_flight += 1
        self._drained.clear()

    def _leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._drained.set()

    async def _transact(self, fn: Callable[[Any], Awaitable[T]], *, attempts: int = _RETRIES, sync: bool = True) -> T:
        """Run `fn` in its own transaction on a pooled connection; retried on deadlock or serialization failure.

        `fn` may raise `Again` to be rerun from scratch with a fresh transaction (used by the ungrouped enqueue).
        `sync=False`: only for a transaction that removes messages a crash may bring back (an expiry sweep); see
        `transaction`.
        """

        async def once() -> T:
            committing = False
            try:
                async with pooled(self._pool) as conn, transaction(conn, sync=sync):
                    result = await fn(conn)
                    committing = True
            except (Again, *_CONTENDED):
                raise
            except Exception as exc:  # every failure becomes a StoreError that says what happened
                raise store_error(exc, committing=committing, what="write") from exc
            self._writer.count_commit(1)
            return result

        return await self._retried(once, attempts)

    async def _remove(self, query: str, *args: object) -> list[Any]:
        """One statement calling a removal function of the database's (qpc_fetch, qpc_ack): the function locks the
        inbox, removes and commits without the WAL flush wait (see `transaction`), all in this one round trip.

        Retried on deadlock or serialization failure (not expected under the pinned READ COMMITTED), which rolled
        the statement back whole, as any error the server answered with did. A connection lost meanwhile may have
        been lost after the commit: the outcome is unknown. Counted as a write by the caller, if it removed
        anything.
        """

        async def once() -> list[Any]:
            try:
                async with pooled(self._pool) as conn:
                    rows: list[Any] = await conn.fetch(query, *args)
            except _CONTENDED:
                raise
            except Exception as exc:  # every failure becomes a StoreError that says what happened
                raise store_error(exc, committing=True, what="write") from exc
            return rows

        return await self._retried(once, _RETRIES)

    async def _retried(self, once: Callable[[], Awaitable[T]], attempts: int) -> T:
        """`once()`, called again after `Again` and, up to `attempts` calls in all, after a deadlock or a
        serialization failure: the database rolled back what it did, so nothing is lost by running it again."""
        self._enter()
        try:
            attempt = 0
            while True:
                try:
                    return await once()
                except Again:
                    continue
                except _CONTENDED as exc:
                    attempt += 1
                    if attempt >= attempts:
                        raise StoreUnavailable("storage write failed (lock contention); not stored, retry") from exc
        finally:
            self._leave()

    async def _with_conn(self, fn: Callable[[Any], Awaitable[T]], what: str = "read") -> T:
        """A read (or a single autocommit statement) on a pooled connection."""
        self._enter()
        try:
            async with pooled(self._pool) as conn:
                try:
                    return await fn(conn)
                except Exception as exc:  # every failure becomes a StoreError that says what happened
                    # An autocommit write's commit is its statement's own.
                    raise store_error(exc, committing=what == "write", what=what) from exc
        finally:
            self._leave()

    async def _fetchrow(self, query: str, *args: object) -> Any:
        return await self._with_conn(lambda conn: conn.fetchrow(query, *args))

    async def _fetchrows(self, query: str, *args: object) -> list[Any]:
        rows: list[Any] = await self._with_conn(lambda conn: conn.fetch(query, *args))
        return rows

    async def _write1(self, query: str, *args: object) -> Any:
        """One autocommit write statement returning its first row (or None)."""
        row = await self._with_conn(lambda conn: conn.fetchrow(query, *args), "write")
        self._writer.count_commit(1)
        return row

    async def _execute1(self, query: str, *args: object) -> int:
        """One autocommit write statement; returns the affected row count."""
        status: str = await self._with_conn(lambda conn: conn.execute(query, *args), "write")
        self._writer.count_commit(1)
        return rowcount(status)

    async def _notify_in(self, conn: Any, inboxes: list[tuple[bytes, bytes]]) -> None:
        """Tell the other nodes, from inside the caller's transaction (delivered only if it commits), that these
        inboxes' waiters should look again; the caller wakes this node's own after the commit."""
        if inboxes:
            payloads = self._pg_wakeups.payloads(inboxes)
            await conn.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", CHANNEL, payloads)
