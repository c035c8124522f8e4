"""What a failed PostgreSQL call means for its caller: not stored (retry), outcome unknown, or a refused statement.

A connection that failed in the middle of an operation must never be used again: asyncpg keeps the protocol state
of the interrupted operation, and the next call on it fails with `InternalClientError: cannot switch to state ..;
another operation is in progress` (the returned-to-pool reset fails the same way). Callers terminate it instead.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from quicnprotochat.server.log_throttle import LogThrottle

from .base import OutcomeUnknown, StoreError, StoreUnavailable

CONNECT_TIMEOUT_S = 5.0
"""How long opening a pooled connection may take before the store counts as unreachable."""

_CONNECTION_FAULTS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,  # class 08: the connection is gone
    asyncpg.OperatorInterventionError,  # class 57: shutting down, starting up, cancelled
    asyncpg.InsufficientResourcesError,  # class 53: disk full, out of memory, too many connections
)


def is_connection_fault(exc: BaseException) -> bool:
    """True when the database, not the statement, failed (the session, or the server's resources or patience): the
    operation may be retried once the database answers again (`unavailable`). Whether the session survived is
    `session_lost`'s question."""
    return isinstance(exc, _CONNECTION_FAULTS)


_LEFT_UNANSWERED: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # class 08, and asyncpg's "the connection was closed in the middle"
    asyncpg.AdminShutdownError,  # 57P01, 57P02, 57P03: FATAL, the session ends, possibly after a commit it had no
    asyncpg.CrashShutdownError,  # time to report
    asyncpg.CannotConnectNowError,
)


def answered(exc: BaseException) -> bool:
    """True when the server answered with an error: the failed statement, and the transaction it ran in (its own
    implicit one for a lone statement, or the one its COMMIT ended), was rolled back, nothing of it stored. That
    holds for class 53 (disk full, out of memory) and 57014 (cancelled, statement_timeout) too.

    False when no answer came (the connection was lost or timed out, the call was cancelled, a FATAL error ended
    the session), or the failure was not the server's: a commit may have happened without our hearing of it."""
    if not isinstance(exc, asyncpg.PostgresError) or isinstance(exc, _LEFT_UNANSWERED):
        return False
    severity = getattr(exc, "severity_en", None) or getattr(exc, "severity", None)
    return severity not in ("FATAL", "PANIC")


def session_lost(exc: BaseException) -> bool:
    """True when the connection `exc` came from may be dead or stuck mid-operation: it must be terminated, the
    pool's other connections may be as dead (the server restarted), and the database deserves a rest before the
    next try. That is a connection fault no answer came with, or a cancellation of our own mid-operation.

    An error the server answered with, even 57014 (statement_timeout, a cancel) or class 53 (disk full), left the
    session usable: the statement was rolled back, and asyncpg rolls back an open transaction on release. So does
    our own exception raised between statements."""
    if not isinstance(exc, Exception):
        return True
    return is_connection_fault(exc) and not answered(exc)


def store_error(exc: BaseException, *, committing: bool, what: str = "operation") -> StoreError:
    """The StoreError a caller gets for `exc`, raised while its transaction was running or (committing=True)
    while its commit was on the way: a COMMIT sent, or a lone statement outside a transaction (its commit is its
    own). Only a commit left unanswered has an unknown outcome."""
    if isinstance(exc, StoreError):
        return exc
    error: StoreError
    if committing and not answered(exc):
        error = OutcomeUnknown()
    elif is_connection_fault(exc):
        error = StoreUnavailable()
    else:
        error = StoreError(f"storage {what} failed")
    error.__cause__ = exc
    return error


def terminate(conn: Any) -> None:
    """Close a pooled connection at once, without a goodbye to the server (which rolls back what it held).

    A connection asyncpg already saw die has been handed back to its pool; there is nothing left to close."""
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


@contextlib.asynccontextmanager
async def pooled(pool: Any) -> AsyncIterator[Any]:
    """A connection from `pool`, terminated instead of returned when what ran on it failed on the session.

    Failing to get one (the server is down, the pool's connect timed out) raises StoreUnavailable.
    """
    try:
        conn = await pool.acquire(timeout=CONNECT_TIMEOUT_S)
    except Exception as exc:  # whatever stops us from connecting, nothing was done
        raise store_error(exc, committing=False) from exc
    try:
        yield conn
    except BaseException as exc:
        lost = session_lost(exc)
        if lost:
            terminate(conn)
        await release(pool, conn)
        if lost and isinstance(exc, Exception):
            # The server may have restarted: its other pooled connections are as dead as this one.
            await pool.expire_connections()
        raise
    await release(pool, conn)


async def release(pool: Any, conn: Any) -> None:
    """Hand a connection back. When the pool's reset of it fails (the session died after the work was done),
    asyncpg terminates it; the work stands, so that is not the caller's failure."""
    with contextlib.suppress(Exception):
        await pool.release(conn)


def describe(exc: BaseException) -> str:
    """One line naming an exception, for logs: its type and the first line of its text."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class PoolLogThrottle(logging.Filter):
    """asyncpg's pool logs a traceback each time it fails to reconnect (every second or so while the server is
    down): its records are routed through a LogThrottle instead, one line per kind and period, no traceback."""

    def __init__(self, throttle: LogThrottle) -> None:
        super().__init__()
        self._throttle = throttle

    def filter(self, record: logging.LogRecord) -> bool:
        cause = record.exc_info[1] if record.exc_info else None
        message = record.getMessage() + (f" ({describe(cause)})" if cause is not None else "")
        self._throttle.log(record.levelno, ("asyncpg", record.msg), "%s", message)
        return False


_pool_log_installed = False


def quiet_pool_log(throttle: LogThrottle) -> None:
    """Install PoolLogThrottle on asyncpg's pool logger (once per process)."""
    global _pool_log_installed
    if not _pool_log_installed:
        logging.getLogger("asyncpg.pool").addFilter(PoolLogThrottle(throttle))
        _pool_log_installed = True
