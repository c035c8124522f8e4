"""Errors that cross the wire.

A node reports every failure as a Cap'n Proto exception whose reason starts with a stable code and a colon
(`forbidden: ...`). Clients map the code back to one of the classes below, so bots can branch on the class
instead of parsing text.
"""

from __future__ import annotations

import re
from typing import ClassVar


class RpcError(Exception):
    """A failure with a stable code; `reason` is for people and never carries secrets."""

    code: ClassVar[str] = "internal"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


class Unauthenticated(RpcError):
    code = "unauthenticated"


class Forbidden(RpcError):
    code = "forbidden"


class InvalidArgument(RpcError):
    code = "invalid_argument"


class NotFound(RpcError):
    code = "not_found"


class AlreadyExists(RpcError):
    code = "already_exists"


class ResourceExhausted(RpcError):
    """A quota or rate limit was hit; `retry_after` (seconds) is set when waiting helps."""

    code = "resource_exhausted"

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        if retry_after is not None:
            reason = f"{reason} (retry after {retry_after:.3f}s)"
        super().__init__(reason)
        self.retry_after = retry_after


class FailedPrecondition(RpcError):
    code = "failed_precondition"


class Unimplemented(RpcError):
    code = "unimplemented"


class Internal(RpcError):
    code = "internal"


class Unavailable(RpcError):
    """The node could not do it now and nothing was changed (the store is unreachable, the node is shutting
    down): the same call may be retried safely."""

    code = "unavailable"


class UnknownOutcome(RpcError):
    """The node lost track of whether the call took effect (the store connection broke during its commit): a
    retry is safe only when the call carries an idempotency key."""

    code = "unknown_outcome"


class Disconnected(RpcError, ConnectionError):
    """The connection to the node ended before the call completed (raised on the client side only)."""

    code = "disconnected"


ERROR_CLASSES: dict[str, type[RpcError]] = {
    cls.code: cls
    for cls in (
        Unauthenticated,
        Forbidden,
        InvalidArgument,
        NotFound,
        AlreadyExists,
        ResourceExhausted,
        FailedPrecondition,
        Unimplemented,
        Internal,
        Unavailable,
        UnknownOutcome,
        Disconnected,
    )
}

# kj prefixes a remote reason with "remote exception: "; pycapnp's server path adds "message = " (see
# quicnprotochat.server.rpc_errors). Both are framing, not part of our reason.
_REMOTE_REASON = re.compile(r"^(?:remote exception: )?(?:message = )?(?P<code>[a-z_]+): (?P<reason>.*)$", re.S)
_RETRY_AFTER = re.compile(r"\(retry after (?P<seconds>[0-9.]+)s\)$")


def error_from_reason(description: str) -> RpcError:
    """The RpcError a remote exception's description stands for (Internal when it has no known code)."""
    match = _REMOTE_REASON.match(description)
    if match is None or match["code"] not in ERROR_CLASSES:
        return Internal(description)
    cls = ERROR_CLASSES[match["code"]]
    reason = match["reason"]
    if cls is ResourceExhausted:
        retry = _RETRY_AFTER.search(reason)
        error = ResourceExhausted(reason)
        error.retry_after = float(retry["seconds"]) if retry else None
        return error
    return cls(reason)
