"""Fixtures of the hostile-client tests: a node in a subprocess (so that its memory can be measured alone), the
raw client, and the normal client that must keep working during every attack."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from quicnprotochat.bench.node_runner import NodeUnderTest, start_node_process
from quicnprotochat.server.node import Node
from tests.conftest import User, UserFactory

MIB = 1 << 20
T = TypeVar("T")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def closed_by_peer(sock: socket.socket | ssl.SSLSocket, within: float) -> bool:
    """Whether the node closes the connection within `within` seconds (answers it sent before are skipped)."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if sock.recv(65536) == b"":
                return True
        except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


@dataclass
class ProcessNode:
    """A `qpc-server run` subprocess, addressable like an in-process Node by the suite's client fixtures."""

    process: NodeUnderTest

    @property
    def quic_address(self) -> tuple[str, int]:
        assert self.process.quic_port is not None
        return (self.process.host, self.process.quic_port)

    @property
    def tcp_address(self) -> tuple[str, int]:
        assert self.process.tcp_port is not None
        return (self.process.host, self.process.tcp_port)

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def log_tail(self) -> str:
        return self.process.stderr_tail()


StartProcessNode = Callable[..., Awaitable[ProcessNode]]


@pytest.fixture
async def process_node(tmp_path: Path) -> AsyncIterator[StartProcessNode]:
    """Starts `qpc-server run` subprocesses with the given settings; all stopped when the test ends."""
    started: list[NodeUnderTest] = []

    async def start(**settings: Any) -> ProcessNode:
        settings.setdefault("log_level", "info")
        process = await start_node_process(tmp_path / f"node{len(started)}", settings)
        started.append(process)
        return ProcessNode(process)

    yield start
    for process in started:
        await process.stop()


def as_node(node: ProcessNode | Node) -> Node:
    """The suite's client fixtures take a Node; they only read its addresses."""
    return cast(Node, node)


class Witness:
    """A normal client that must keep working during an attack, and must lose nothing the node acknowledged.

    `still_serves()` checks that health answers and that an enqueue from `sender` to `recipient` (the sender
    itself unless given) is accepted, remembering each accepted message; `during(attack)` runs those checks
    over and over while the attack runs; `nothing_lost()` checks that every accepted message is still queued,
    in order (read with peek, so other checks may follow). Tests whose attacker enqueues as well check the
    attacker's accepted messages themselves.
    """

    def __init__(self, sender: User, recipient: User | None = None) -> None:
        self.sender = sender
        self.recipient = recipient or sender
        self.accepted: list[bytes] = []

    async def still_serves(self) -> None:
        payload = b"still here %d" % len(self.accepted)
        async with asyncio.timeout(15):
            assert await self.sender.client.health() == "ok"
            seq = await self.sender.client.enqueue(self.recipient.key, payload)
        assert seq >= 1
        self.accepted.append(payload)

    async def during(self, attack: Awaitable[T]) -> T:
        """Awaits `attack`, checking `still_serves()` over and over until it is done; returns its result."""
        task = asyncio.ensure_future(attack)
        try:
            while not task.done():
                await self.still_serves()
                await asyncio.wait([task], timeout=0.05)
        except BaseException:
            task.cancel()
            raise
        return await task

    async def nothing_lost(self) -> None:
        async with asyncio.timeout(15):
            queued = [envelope.data for envelope in await self.recipient.client.peek(self.recipient.key)]
        witnessed = [data for data in queued if data.startswith(b"still here ")]
        assert witnessed == self.accepted, f"acknowledged {len(self.accepted)}, still queued {len(witnessed)}"

    async def through(self) -> None:
        """The end of an attack: the client still works, and nothing it was acknowledged is gone."""
        await self.still_serves()
        await self.nothing_lost()


__all__ = [
    "MIB",
    "ProcessNode",
    "StartProcessNode",
    "UserFactory",
    "Witness",
    "as_node",
    "closed_by_peer",
    "rss_bytes",
]
