"""What the TLS listener does when accept fails: out of file descriptors (for real: the node's RLIMIT_NOFILE lowered
under it) it pauses, as asyncio's own server does, and serves again; after an error that belongs to one broken
connection it goes on accepting at once; an error that comes back on every call pauses it rather than spinning."""

from __future__ import annotations

import asyncio
import errno
import math
import os
import resource
import socket
import time
from pathlib import Path

import pytest

from quicnprotochat.server import tcp_listener
from quicnprotochat.server.listen_sockets import ListenSockets
from quicnprotochat.server.node import Node
from tests.conftest import ClientFactory, loopback_config

from .conftest import StartProcessNode, as_node


async def test_out_of_descriptors_accepting_pauses_then_serves_again(
    process_node: StartProcessNode, connect: ClientFactory
) -> None:
    node = await process_node()
    soft, hard = resource.prlimit(node.pid, resource.RLIMIT_NOFILE)
    # A new descriptor takes the lowest free number, and the limit bounds the number: with the limit there, the
    # next accept fails with EMFILE.
    in_use = {int(fd) for fd in os.listdir(f"/proc/{node.pid}/fd")}
    lowest_free = min(set(range(len(in_use) + 1)) - in_use)
    resource.prlimit(node.pid, resource.RLIMIT_NOFILE, (lowest_free, hard))
    clients = [socket.create_connection(node.tcp_address) for _ in range(2)]
    try:
        deadline = time.monotonic() + 15
        while "Too many open files" not in node.log_tail():
            assert time.monotonic() < deadline, f"accept never failed:\n{node.log_tail()}"
            await asyncio.sleep(0.05)
        line = next(line for line in node.log_tail().splitlines() if "Too many open files" in line)
        assert "accepting TLS connections failed" in line and f"pausing {tcp_listener.ACCEPT_RETRY_S:g} s" in line
    finally:
        resource.prlimit(node.pid, resource.RLIMIT_NOFILE, (soft, hard))
        for sock in clients:
            sock.close()
    client = await connect(as_node(node), "tcp")
    async with asyncio.timeout(15):
        assert await client.health() == "ok"


class BrokenInBacklog(socket.socket):
    """A listening socket whose accept fails, for the connections `errors` names, as Linux's accept does for a
    connection that broke while it waited in the backlog: that connection is gone, and the call raises its error
    (EPROTO, a firewall's EPERM, ENETDOWN...), which cannot be caused for real on loopback."""

    errors: list[int]

    def accept(self) -> tuple[socket.socket, object]:
        sock, address = super().accept()
        if self.errors:
            sock.close()
            code = self.errors.pop(0)
            raise OSError(code, os.strerror(code))
        return sock, address


async def test_an_error_of_one_connection_does_not_stall_accepting(
    tmp_path: Path, connect: ClientFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A pause after these errors would outlast the wait for the client below.
    monkeypatch.setattr(tcp_listener, "ACCEPT_RETRY_S", 3600.0)
    listening = BrokenInBacklog(socket.AF_INET, socket.SOCK_STREAM)
    listening.errors = [errno.EPROTO, errno.EPERM, errno.ENETDOWN]
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    listening.setblocking(False)
    node = Node(loopback_config(tmp_path / "node"), sockets=ListenSockets(tcp=listening))
    await node.start()
    try:
        broken = [socket.create_connection(listening.getsockname()) for _ in listening.errors]
        client = await connect(node, "tcp")
        async with asyncio.timeout(15):
            assert await client.health() == "ok"
        assert listening.errors == []
        for sock in broken:
            sock.close()
    finally:
        await node.stop()
    logged = [r.getMessage() for r in caplog.records if "accepting a TLS connection failed" in r.getMessage()]
    assert len(logged) == 3, logged


class FailingForAWhile(socket.socket):
    """A listening socket whose accept fails with `code` on every call until `until` (time.monotonic()), as an error
    of the listening socket itself would, counting the calls."""

    code: int
    until: float
    calls: int = 0

    def accept(self) -> tuple[socket.socket, object]:
        if time.monotonic() < self.until:
            self.calls += 1
            raise OSError(self.code, os.strerror(self.code))
        return super().accept()


async def test_an_error_that_comes_back_on_every_call_pauses_accepting(
    tmp_path: Path, connect: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tcp_listener, "ACCEPT_RETRY_S", 0.25)
    listening = FailingForAWhile(socket.AF_INET, socket.SOCK_STREAM)
    listening.code = errno.EINVAL
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    listening.setblocking(False)
    listening.until = math.inf
    node = Node(loopback_config(tmp_path / "node"), sockets=ListenSockets(tcp=listening))
    await node.start()
    # Counted for one second from here, however long the node took to start on a busy machine.
    listening.calls = 0
    listening.until = time.monotonic() + 1.0
    # Left in the backlog by the failing accepts, it keeps the listening socket readable: the loop is told to
    # accept again at once, every time.
    pending = socket.create_connection(listening.getsockname())
    try:
        await asyncio.sleep(max(0.0, listening.until - time.monotonic()))
        # Paused 0.25 s after each failure: a handful of calls in that second. Retried at once it makes thousands.
        assert 1 <= listening.calls <= 10, listening.calls
        client = await connect(node, "tcp")
        async with asyncio.timeout(15):
            assert await client.health() == "ok"
    finally:
        pending.close()
        await node.stop()
