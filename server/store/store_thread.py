"""What the SQLite store's threads share: a queue filled on the event loop, a thread taking it in batches, answers
handed back to the loop, and a close that waits for the thread to finish what was queued."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

from .base import StoreClosed

_STOP = object()


def settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    """Answer a caller on the loop, unless it is already answered (or gave up)."""
    if future.done():
        return
    if exc is None:
        future.set_result(result)
    else:
        future.set_exception(exc)


class StoreThread:
    """Subclasses implement `_run` (on the thread) and call `__init__` last, once their own state is ready."""

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str) -> None:
        self._loop = loop
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._closing = False
        self._stopped: asyncio.Future[None] = loop.create_future()
        # Daemon: an interpreter exiting without close() must not hang on us.
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> None:
        # Checked and enqueued on the loop thread, as close() is, so nothing can slip in behind the stop marker.
        if self._closing:
            raise StoreClosed()
        self._queue.put(item)

    async def close(self) -> None:
        """Finish everything already queued, then stop the thread."""
        if not self._closing:
            self._closing = True
            self._queue.put(_STOP)
        await asyncio.shield(self._stopped)

    def _run(self) -> None:
        raise NotImplementedError

    # ── on the thread ────────────────────────────────────────────────────────────────────────────────────────

    def _take(self, limit: int) -> tuple[list[Any], bool]:
        """Wait for the next item, then take whatever else is queued, up to `limit`; and whether close() was
        called (nothing after the stop marker is taken)."""
        batch: list[Any] = []
        item = self._queue.get()
        while item is not _STOP:
            batch.append(item)
            if len(batch) >= limit:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False
        return batch, True

    def _drain(self) -> list[Any]:
        """Whatever is left in the queue after the thread stopped serving."""
        left: list[Any] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return left
            if item is not _STOP:
                left.append(item)

    def _call_on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        # RuntimeError: the loop is already closed, so nobody is left to receive the results.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)

    def _set_stopped(self) -> None:
        if not self._stopped.done():
            self._stopped.set_result(None)
