"""Fan-out of a `ChatClient`'s events to streams (`events()`) and callbacks (`add_listener`)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .events import Event

log = logging.getLogger(__name__)

EventCallback = Callable[[Event], Awaitable[None] | None]


class _Closed:
    pass


_CLOSED: Any = _Closed()


class EventStream:
    """An async iterator over a `ChatClient`'s events; subscribed from its creation on."""

    def __init__(self, queues: list[asyncio.Queue[Event]]) -> None:
        self._queues = queues
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._done = False
        queues.append(self._queue)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self._done:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is _CLOSED:
            self.close()
            raise StopAsyncIteration
        return event

    def close(self) -> None:
        """Unsubscribe; iteration ends."""
        self._done = True
        if self._queue in self._queues:
            self._queues.remove(self._queue)


class EventBus:
    """Delivers every event to every subscriber; also owns the background tasks callbacks and parts start."""

    def __init__(self) -> None:
        self._queues: list[asyncio.Queue[Event]] = []
        self._callbacks: list[EventCallback] = []
        self.background: set[asyncio.Future[Any]] = set()
        self.closed = False

    def stream(self) -> EventStream:
        stream = EventStream(self._queues)
        if self.closed:
            stream.close()
        return stream

    def add_listener(self, callback: EventCallback) -> None:
        self._callbacks.append(callback)

    def emit(self, event: Event) -> None:
        for queue in self._queues:
            queue.put_nowait(event)
        for callback in self._callbacks:
            try:
                result = callback(event)
            except Exception:
                log.exception("event callback failed")
                continue
            if inspect.isawaitable(result):
                self.spawn(_awaited(result))

    def spawn(self, coroutine: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    def close(self) -> None:
        """End every stream (after the background tasks were cancelled)."""
        self.closed = True
        for queue in self._queues:
            queue.put_nowait(_CLOSED)


async def _awaited(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("event callback failed")
