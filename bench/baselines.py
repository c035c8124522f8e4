"""Ceilings measured in the same run, on the same machine, with the same payloads, connections and concurrency:

- transport: a bare aioquic echo (framed payloads on one stream per connection; TLS-over-TCP for --transport tcp);
- RPC: a one-method pycapnp echo interface served and called through the node's own bridge (`QuicListener`,
  `RpcSessions`, `QuicStreamTransport`; the client's `open_quic`/`open_tcp`);
- storage: `open_store` in the same kind of directory, concurrent `enqueue`s with the node's durability.

The echo servers run in a subprocess like the node (`python -m quicnprotochat.bench.baselines serve DIR`),
or in this process when the node does.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import os
import signal
import ssl
import struct
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import capnp  # type: ignore[import-untyped]
from aioquic.asyncio.client import connect as quic_connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration

from quicnprotochat.bench.budget import Budget, split
from quicnprotochat.bench.metrics import ErrorCounts, Latencies, ProcessWatch, machine_cpu, now_ns
from quicnprotochat.bench.subprocesses import start_announcing, terminate
from quicnprotochat.common import kj_loop
from quicnprotochat.common.connect import RpcConnection, open_quic, open_tcp
from quicnprotochat.server.config import NodeConfig
from quicnprotochat.server.identity import NodeIdentity, load_or_create_identity
from quicnprotochat.server.node_counters import NodeCounters
from quicnprotochat.server.node_state import connection_limits, store_limits
from quicnprotochat.server.quic_listener import QuicListener, quic_server_configuration
from quicnprotochat.server.quic_resets import StatelessResets
from quicnprotochat.server.rpc_session import RpcSessions
from quicnprotochat.server.store import open_store
from quicnprotochat.server.tcp_listener import TcpListener, tls_server_context

ECHO_ALPN = "qpc-bench-echo"
ECHO_SCHEMA = """@0xc1a7e0d25b3f4e91;
interface Echo {
  echo @0 (data :Data) -> (data :Data);
}
"""
_FRAME = struct.Struct("<I")
# Enough for any payload the node accepts.
MAX_MESSAGE_BYTES = NodeConfig().max_message_bytes


@functools.cache
def echo_schema() -> Any:
    # pycapnp loads schemas from files; the interface is tiny, so it lives here and goes to a temp file.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "echo.capnp"
        path.write_text(ECHO_SCHEMA)
        return capnp.load(str(path))


class EchoImpl(echo_schema().Echo.Server):  # type: ignore[misc]
    async def echo(self, data: bytes, _context: Any, **_: Any) -> bytes:
        return data


# -- servers ---------------------------------------------------------------------------------------------------


class _QuicEchoProtocol(QuicConnectionProtocol):
    """Sends every byte back on the stream it came on; aioquic transmits once per received datagram."""

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            self._quic.send_stream_data(event.stream_id, event.data, event.end_stream)


class _TcpEchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance-checked: uvloop's transports do not derive from asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


@dataclass
class EchoServers:
    fingerprint: str
    ports: dict[str, int]  # quic-echo, tcp-echo, capnp-quic, capnp-tcp
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def close(self) -> None:
        for closer in reversed(self._closers):
            with contextlib.suppress(Exception):
                await closer()
        self._closers.clear()


async def start_echo_servers(data_dir: Path) -> EchoServers:
    """All four echo servers on loopback ports; their certificate is a node identity made in data_dir."""
    identity: NodeIdentity = load_or_create_identity(data_dir)[0]
    loop = asyncio.get_running_loop()
    servers = EchoServers(identity.fingerprint, {})
    try:
        configuration = QuicConfiguration(is_client=False, alpn_protocols=[ECHO_ALPN], idle_timeout=60.0)
        configuration.certificate, configuration.private_key = identity.certificate, identity.private_key
        transport, _ = await loop.create_datagram_endpoint(
            lambda: QuicServer(configuration=configuration, create_protocol=_QuicEchoProtocol),
            local_addr=("127.0.0.1", 0),
        )
        servers.ports["quic-echo"] = transport.get_extra_info("sockname")[1]

        async def close_quic() -> None:
            transport.close()

        servers._closers.append(close_quic)

        tcp_server = await loop.create_server(
            _TcpEchoProtocol, "127.0.0.1", 0, ssl=tls_server_context(identity), reuse_address=True
        )
        servers.ports["tcp-echo"] = tcp_server.sockets[0].getsockname()[1]

        async def close_tcp() -> None:
            tcp_server.close()

        servers._closers.append(close_tcp)

        await kj_loop.acquire()
        servers._closers.append(kj_loop.release)
        defaults = NodeConfig()
        sessions = RpcSessions(
            lambda _peer, _budget: EchoImpl(), MAX_MESSAGE_BYTES, connection_limits(defaults), NodeCounters()
        )
        servers._closers.append(sessions.close)
        quic = QuicListener(
            sessions,
            quic_server_configuration(identity, 60.0),
            4 * MAX_MESSAGE_BYTES,
            resets=StatelessResets.of(identity),
        )
        servers.ports["capnp-quic"] = (await quic.start("127.0.0.1", 0))[1]
        servers._closers.append(quic.close)
        tcp = TcpListener(
            sessions, tls_server_context(identity), write_buffer_high=defaults.max_unsent_bytes_per_connection
        )
        servers.ports["capnp-tcp"] = (await tcp.start("127.0.0.1", 0))[1]
        servers._closers.append(tcp.close)
    except BaseException:
        await servers.close()
        raise
    return servers


async def _serve_forever(data_dir: Path) -> None:
    servers = await start_echo_servers(data_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(json.dumps({"fingerprint": servers.fingerprint, "ports": servers.ports}), flush=True)
    try:
        await stop.wait()
    finally:
        await servers.close()


@dataclass
class EchoProcess:
    servers: EchoServers
    pid: int
    process: asyncio.subprocess.Process | None = None

    async def close(self) -> None:
        if self.process is None:
            await self.servers.close()
            return
        await terminate(self.process, 10)


async def start_echo_process(data_dir: Path) -> EchoProcess:
    process, announced = await start_announcing(
        sys.executable, "-m", "quicnprotochat.bench.baselines", "serve", str(data_dir)
    )
    servers = EchoServers(announced["fingerprint"], {k: int(v) for k, v in announced["ports"].items()})
    return EchoProcess(servers, process.pid, process)


async def start_echo_in_process(data_dir: Path) -> EchoProcess:
    servers = await start_echo_servers(data_dir)
    return EchoProcess(servers, os.getpid())


# -- clients ---------------------------------------------------------------------------------------------------


class _EchoClientProtocol(QuicConnectionProtocol):
    """Frames go out on one stream; replies come back in order (all frames have the same size)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stream_id: int | None = None
        self._buffer = bytearray()
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self.frame_size = 0

    async def call(self, frame: bytes) -> None:
        if self._stream_id is None:
            self._stream_id = self._quic.get_next_available_stream_id()
        future: asyncio.Future[None] = self._loop.create_future()
        self._waiting.append(future)
        self._quic.send_stream_data(self._stream_id, frame)
        self._transmit_soon()  # coalesced per loop tick, as QuicStreamTransport does
        await future

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            self._buffer += event.data
            while self.frame_size and len(self._buffer) >= self.frame_size:
                del self._buffer[: self.frame_size]
                future = self._waiting.popleft()
                if not future.done():
                    future.set_result(None)
        elif isinstance(event, events.ConnectionTerminated):
            while self._waiting:
                future = self._waiting.popleft()
                if not future.done():
                    future.set_exception(ConnectionError(event.reason_phrase or "connection closed"))


class _TcpEchoClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, frame_size: int) -> None:
        self._reader, self._writer, self._frame_size = reader, writer, frame_size
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                await self._reader.readexactly(self._frame_size)
                future = self._waiting.popleft()
                if not future.done():
                    future.set_result(None)
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            while self._waiting:
                self._waiting.popleft().set_exception(ConnectionError(str(error)))

    async def call(self, frame: bytes) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._writer.write(frame)
        await future

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._writer.close()


@dataclass
class Load:
    """What a baseline is driven with: the scenario's connections, in-flight calls, payload and budget."""

    connections: int
    concurrency: int
    payload_size: int
    duration: float | None
    count: int | None


async def _drive(calls: Sequence[Callable[[], Awaitable[Any]]], load: Load, pid: int | None) -> dict[str, Any]:
    """Runs load.concurrency loops spread over the connections' call functions until the budget is spent."""
    budget = Budget(load.duration, load.count)
    latency, errors = Latencies(), ErrorCounts()
    done = 0

    async def loop(call: Callable[[], Awaitable[Any]]) -> None:
        nonlocal done
        while budget.take():
            started = now_ns()
            try:
                await call()
            except Exception as error:
                errors.add(error)
                continue
            latency.add_ns(now_ns() - started)
            done += 1

    server = ProcessWatch(pid) if pid is not None and pid != os.getpid() else None
    client = ProcessWatch(os.getpid())
    for watch in (server, client):
        if watch is not None:
            watch.start()
    machine_before = machine_cpu()
    budget.start()
    per_connection = split(load.concurrency, len(calls))
    await asyncio.gather(*(loop(call) for index, call in enumerate(calls) for _ in range(per_connection[index])))
    seconds = budget.elapsed()
    figures: dict[str, Any] = {
        "calls": done,
        "calls_per_s": round(done / seconds, 1) if seconds else 0.0,
        "latency_ms": latency.summary(),
        "errors": errors.report(),
    }
    if server is not None:
        figures["server"] = server.stop()
    figures["client"] = client.stop()
    busy, total = (after - before for after, before in zip(machine_cpu(), machine_before, strict=True))
    figures["machine_busy_percent_of_all_cores"] = round(100 * busy / total, 1) if total else 0.0
    return figures


async def bare_echo(servers: EchoServers, transport: str, load: Load, pid: int | None) -> dict[str, Any]:
    frame = _FRAME.pack(load.payload_size) + b"\xa5" * load.payload_size
    async with contextlib.AsyncExitStack() as stack:
        calls: list[Callable[[], Awaitable[Any]]] = []
        if transport == "quic":
            configuration = QuicConfiguration(
                is_client=True, alpn_protocols=[ECHO_ALPN], verify_mode=ssl.CERT_NONE, idle_timeout=60.0
            )
            for _ in range(load.connections):
                protocol = await stack.enter_async_context(
                    quic_connect(
                        "127.0.0.1",
                        servers.ports["quic-echo"],
                        configuration=configuration,
                        create_protocol=_EchoClientProtocol,
                    )
                )
                assert isinstance(protocol, _EchoClientProtocol)
                protocol.frame_size = len(frame)
                calls.append(functools.partial(protocol.call, frame))
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            for _ in range(load.connections):
                reader, writer = await asyncio.open_connection("127.0.0.1", servers.ports["tcp-echo"], ssl=context)
                client = _TcpEchoClient(reader, writer, len(frame))
                stack.push_async_callback(client.close)
                calls.append(functools.partial(client.call, frame))
        return await _drive(calls, load, pid)


def pinned(fingerprint: str) -> Callable[[str], None]:
    """The key check a bench connection makes: the server must present the key of `fingerprint`."""

    def verify(presented: str) -> None:
        if presented != fingerprint:
            raise ConnectionError("the server presented another key")

    return verify


async def drive_rpc(
    port: int,
    fingerprint: str,
    transport: str,
    load: Load,
    pid: int | None,
    call_on: Callable[[RpcConnection], Callable[[], Awaitable[Any]]],
) -> dict[str, Any]:
    """`_drive` over load.connections RPC connections opened as the client library opens them (`open_quic` or
    `open_tcp`, the key pinned); `call_on(connection)` is what each connection's call loops call."""
    opener = open_quic if transport == "quic" else open_tcp
    verify = pinned(fingerprint)
    await kj_loop.acquire()
    connections: list[RpcConnection] = []
    try:
        calls: list[Callable[[], Awaitable[Any]]] = []
        for _ in range(load.connections):
            connection = await opener("127.0.0.1", port, verify)
            connections.append(connection)
            calls.append(call_on(connection))
        return await _drive(calls, load, pid)
    finally:
        for connection in connections:
            await connection.close()
        await kj_loop.release()


async def capnp_echo(servers: EchoServers, transport: str, load: Load, pid: int | None) -> dict[str, Any]:
    payload = b"\xa5" * load.payload_size
    port = servers.ports["capnp-quic" if transport == "quic" else "capnp-tcp"]

    def echo_call(connection: RpcConnection) -> Callable[[], Awaitable[Any]]:
        # The same client path as NodeClient's; only the bootstrap capability's interface differs.
        echo = connection._client.bootstrap().cast_as(echo_schema().Echo)
        return functools.partial(echo.echo, payload)

    return await drive_rpc(port, servers.fingerprint, transport, load, pid, echo_call)


async def store_inserts(directory: Path, load: Load, inboxes: int) -> dict[str, Any]:
    """Concurrent enqueues straight into a fresh store (SQLite WAL, synchronous=FULL, group commit)."""
    with tempfile.TemporaryDirectory(dir=directory, prefix="store-baseline-") as tmp:
        # The node's limits, but inboxes that never fill up: nobody drains them here.
        limits = dataclasses.replace(store_limits(NodeConfig()), max_inbox_depth=2**40, max_inbox_bytes=2**50)
        store = await open_store(Path(tmp) / "baseline.sqlite3", limits)
        payload = b"\xa5" * load.payload_size
        recipients = [os.urandom(32) for _ in range(max(1, inboxes))]
        counter = iter(range(1 << 62))
        expires = time.time() + 3600

        async def enqueue() -> None:
            await store.enqueue(recipients[next(counter) % len(recipients)], b"", payload, expires)

        before = store.metrics()
        try:
            figures = await _drive(
                [enqueue], Load(1, load.concurrency, load.payload_size, load.duration, load.count), None
            )
        finally:
            after = store.metrics()
            await store.close()
        figures["commits"] = after.commits - before.commits
        figures["largest_batch"] = after.largest_batch
        return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="echo servers for qpc-bench's baselines (prints their ports)")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("data_dir", type=Path)
    args = parser.parse_args(argv)
    asyncio.run(_serve_forever(args.data_dir))


if __name__ == "__main__":
    main()
