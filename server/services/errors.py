"""Turning store errors into what the caller is told.

Store faults (an unreachable database, a full disk) can fail thousands of calls a second: each kind is logged
once per period with a count (LogThrottle), never with a traceback per call.
"""

from __future__ import annotations

import logging
from types import TracebackType

from quicnprotochat.common.errors import (
    AlreadyExists,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    RpcError,
    Unavailable,
    UnknownOutcome,
)
from quicnprotochat.server import store
from quicnprotochat.server.log_throttle import LogThrottle

log = logging.getLogger("quicnprotochat.server.store")
faults = LogThrottle(log, period_s=30.0)
"""Shared by every service: one line per fault kind and period for the whole node."""


def _cause(error: BaseException) -> str:
    cause = error.__cause__
    return "" if cause is None else f" ({type(cause).__name__})"


def rpc_error(error: store.StoreError) -> RpcError:
    """What the caller of a failed call is told (logged once per kind and period where it is a fault)."""
    if isinstance(error, store.LimitExceeded):
        return ResourceExhausted(str(error))
    if isinstance(error, store.AlreadyExists):
        return AlreadyExists(str(error))
    if isinstance(error, store.NotFound):
        return NotFound(str(error))
    if isinstance(error, store.KeyReused):
        return InvalidArgument(str(error))
    if isinstance(error, store.DiskFull):
        faults.warning("disk full", "calls failed: the store's disk is full")
        return ResourceExhausted("disk full: the node has no space for it; not stored, retry later")
    if isinstance(error, store.StoreClosed):
        return Unavailable("the node is shutting down; not stored, retry on another node or later")
    if isinstance(error, store.StoreUnavailable):
        faults.warning("store unavailable", "calls failed: %s%s", error, _cause(error))
        return Unavailable(str(error))
    if isinstance(error, store.OutcomeUnknown):
        faults.warning("store outcome unknown", "calls failed: %s%s", error, _cause(error))
        return UnknownOutcome(str(error))
    faults.error(("store error", str(error)), "calls failed: %s%s", error, _cause(error))
    return Internal(str(error))


class _StoreErrors:
    """A store error raised inside becomes what the caller is told (a class, not a generator-based context
    manager: most store calls pass through one, and this costs a fifth as much)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if isinstance(error, store.StoreError):
            raise rpc_error(error) from None


_STORE_ERRORS = _StoreErrors()


def store_errors() -> _StoreErrors:
    return _STORE_ERRORS
