"""`ConnectionWatch`: one view of whether the node answers, shared by the receive loops and the outbox.

When a background call finds the node unreachable, it reports it here and waits. The watch tells the user once
(`ConnectionLost`, with when it tries again), probes the node with `health` at growing intervals, and when it
answers tells the user once more (`ConnectionRestored`) and wakes every waiter. So the user sees one line per
outage, not one per failed call, and pending messages go out as soon as the node is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from quicnprotochat.common.errors import Disconnected, RpcError, Unavailable

from .context import ChatContext
from .errors import NodeUnavailable
from .events import ConnectionLost, ConnectionRestored

RETRY_DELAYS: tuple[float, ...] = (1.0, 2.0, 4.0)
"""Seconds between probes of an unreachable node; the last one repeats."""


def is_unreachable(error: BaseException) -> bool:
    """Whether `error` says the node could not be reached (as opposed to a refusal of the call)."""
    if isinstance(error, Disconnected | Unavailable | NodeUnavailable | TimeoutError):
        return True
    return isinstance(error, OSError) and not isinstance(error, RpcError)


def retry_delay(attempt: int) -> float:
    return RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]


class ConnectionWatch:
    def __init__(self, context: ChatContext) -> None:
        self._context = context
        self._up = asyncio.Event()
        self._up.set()
        self._restored: list[Callable[[], None]] = []

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def on_restored(self, callback: Callable[[], None]) -> None:
        self._restored.append(callback)

    def lost(self, error: BaseException) -> None:
        """A call found the node unreachable: say so (once per outage) and start probing."""
        if not self._up.is_set() or self._context.bus.closed:
            return
        self._up.clear()
        reason = getattr(error, "reason", None) or str(error) or type(error).__name__
        self._context.emit(ConnectionLost(reason, retry_delay(0)))
        self._context.bus.spawn(self._probe())

    async def wait_up(self) -> None:
        await self._up.wait()

    async def _probe(self) -> None:
        attempt = 0
        while True:
            await asyncio.sleep(retry_delay(attempt))
            attempt += 1
            try:
                await self._context.node.health()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - any failure of the probe means: not back yet
                if is_unreachable(error):
                    continue
            break
        self._up.set()
        self._context.emit(ConnectionRestored())
        for callback in self._restored:
            callback()
