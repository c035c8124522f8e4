"""Runs Cap'n Proto two-party RPC over one connected stream until it ends, whatever the transport."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import capnp  # type: ignore[import-untyped]

from quicnprotochat.common.capnp_bridge import reader_limit_words
from quicnprotochat.server.peer import Peer

log = logging.getLogger("quicnprotochat.server.session")


class RpcSessions:
    """The RPC sessions of a node: started per connection, all ended on shutdown."""

    def __init__(self, bootstrap_for: Callable[[Peer], Any], max_message_bytes: int) -> None:
        self._bootstrap_for = bootstrap_for
        self._reader_limit = reader_limit_words(max_message_bytes)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> int:
        return len(self._tasks)

    def start(self, stream: Any, peer: Peer, on_end: Callable[[], None]) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(stream, peer, on_end))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, stream: Any, peer: Peer, on_end: Callable[[], None]) -> None:
        server = capnp.TwoPartyServer(
            stream, bootstrap=self._bootstrap_for(peer), traversal_limit_in_words=self._reader_limit
        )
        log.debug("session started: %s", peer)
        try:
            await server.on_disconnect()
        except Exception as error:  # noqa: BLE001 -- whatever the peer did wrong ends its session only
            log.info("session with %s ended: %s", peer, error)
        finally:
            server.close()
            on_end()
            log.debug("session ended: %s", peer)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
