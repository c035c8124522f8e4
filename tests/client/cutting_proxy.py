"""A TCP proxy in front of a node's TLS port that loses the answer to one large request, for real: the request
reaches the node, the answer never reaches the client (the connection is cut, or left hanging)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

LARGE = 1500
"""A read this large from the client is a call carrying sealed envelopes (submitCommit), not a small call."""


class CuttingProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.mode: Literal["pass", "cut", "hold"] = "pass"
        self.triggered = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    def arm(self, mode: Literal["cut", "hold"]) -> None:
        """The next large request goes through; its answer is lost: `cut` closes the connection half a second
        later, `hold` keeps it open and answers nothing more."""
        self.mode = mode
        self.triggered.clear()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        self._writers |= {client_writer, server_writer}
        muted = asyncio.Event()

        async def upstream() -> None:
            while data := await client_reader.read(65536):
                server_writer.write(data)
                await server_writer.drain()
                if self.mode != "pass" and len(data) >= LARGE:
                    mode, self.mode = self.mode, "pass"
                    muted.set()
                    self.triggered.set()
                    if mode == "cut":
                        await asyncio.sleep(0.5)  # the node has the request and answers it: the answer is lost
                        break
            for writer in (client_writer, server_writer):
                writer.close()

        async def downstream() -> None:
            while data := await server_reader.read(65536):
                if not muted.is_set():
                    client_writer.write(data)
                    await client_writer.drain()
            client_writer.close()

        with contextlib.suppress(OSError, ConnectionError):
            await asyncio.gather(upstream(), downstream())

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
