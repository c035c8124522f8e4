"""What a failed call tells the caller.

pycapnp 2.2.4 reports an exception raised by a Python server method to the remote caller as the full Python
traceback text (`void_task_done_callback` formats it with `traceback.format_exception`). That would leak file
paths and internals, so we swap the formatter pycapnp uses for one that renders our `RpcError`s as
`code: reason` and anything else as a generic `internal:` reason, logging the real traceback on the node only.
pycapnp also fixes the kj exception type to FAILED and its description begins with "message = ": clients find
the code after that prefix (quicnprotochat.common.errors.error_from_reason).
"""

from __future__ import annotations

import logging
import secrets
import traceback
import types
from typing import Any

import capnp.lib.capnp as pycapnp_lib  # type: ignore[import-untyped]

from quicnprotochat.common.errors import RpcError
from quicnprotochat.server.log_throttle import LogThrottle
from quicnprotochat.server.services.errors import rpc_error
from quicnprotochat.server.store import StoreError

log = logging.getLogger("quicnprotochat.server.rpc")

# asyncio logs this once per write to a socket whose peer went away, until the transport's close is processed:
# a client that sends thousands of calls and closes leaves thousands of lines.
_ASYNCIO_SEND_FAILED = "socket.send() raised exception."


def render_error(exc: BaseException) -> str:
    if isinstance(exc, RpcError):
        return str(exc)
    if isinstance(exc, StoreError):  # a store failure outside a service's store_errors(): same codes, no traceback
        return str(rpc_error(exc))
    reference = secrets.token_hex(4)
    log.error("unexpected error in an RPC handler (ref %s)", reference, exc_info=exc)
    return f"internal: unexpected error (ref {reference}; details are in the node's log)"


class _SanitizingTraceback(types.ModuleType):
    def format_exception(self, exc_type: Any, exc: BaseException, tb: Any = None, *_args: Any) -> list[str]:
        return [render_error(exc)]

    def __getattr__(self, name: str) -> Any:
        return getattr(traceback, name)


def install_error_sanitizer() -> None:
    if not isinstance(pycapnp_lib._traceback, _SanitizingTraceback):
        pycapnp_lib._traceback = _SanitizingTraceback("traceback")
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _ThrottleSendFailures) for f in asyncio_log.filters):
        asyncio_log.addFilter(_ThrottleSendFailures())


class _ThrottleSendFailures(logging.Filter):
    """Turns asyncio's per-write "socket.send() raised exception." into one line per minute with a count."""

    def __init__(self) -> None:
        super().__init__()
        self._throttle = LogThrottle(logging.getLogger("quicnprotochat.server.transport"))

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != _ASYNCIO_SEND_FAILED:
            return True
        self._throttle.info("send after close", "answers to peers that went away were dropped")
        return False
