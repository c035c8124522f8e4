"""`GET /metrics` for Prometheus, on its own loopback port, served on the node's event loop.

On the loop (not prometheus_client's thread server) so that collecting reads the node's state from the thread
that owns it, and so that a scrape can probe the store first. Bounded: a few concurrent scrapes, a small request,
a few seconds each; anything else is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from quicnprotochat.server.metrics import NodeMetrics

log = logging.getLogger("quicnprotochat.server.metrics")

MAX_SCRAPES = 4
MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_S = 5.0


class MetricsEndpoint:
    def __init__(self, metrics: NodeMetrics, before_scrape: Callable[[], Awaitable[None]]) -> None:
        self._metrics = metrics
        self._before_scrape = before_scrape
        self._server: asyncio.Server | None = None
        self._scrapes = asyncio.Semaphore(MAX_SCRAPES)
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_REQUEST_BYTES)
        address = self._server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            if self._scrapes.locked():
                return  # enough scrapes in flight: this one is closed unanswered
            async with self._scrapes:
                await asyncio.wait_for(self._answer(reader, writer), REQUEST_TIMEOUT_S)
        except (OSError, TimeoutError, asyncio.LimitOverrunError, asyncio.IncompleteReadError, ValueError):
            pass  # a client that went away or sent garbage gets nothing more
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, path, _version = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if method != b"GET" or path.split(b"?", 1)[0] != b"/metrics":
            writer.write(_response(b"404 Not Found", b"text/plain; charset=utf-8", b"only GET /metrics here\n"))
        else:
            await self._before_scrape()
            body = generate_latest(self._metrics.registry)
            writer.write(_response(b"200 OK", CONTENT_TYPE_LATEST.encode(), body))
        await writer.drain()


def _response(status: bytes, content_type: bytes, body: bytes) -> bytes:
    head = b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (
        status,
        content_type,
        len(body),
    )
    return head + body
