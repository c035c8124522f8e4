"""The nodes under test: `qpc-server run` subprocesses (default), Nodes in this process, or running targets; and
the store they share when there are several (a PostgreSQL database: given by URL, or a throwaway cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quicnprotochat.bench.pgcluster import PgCluster, create_database, find_bin_dir, redact
from quicnprotochat.bench.subprocesses import terminate
from quicnprotochat.server.config import ENV_PREFIX, NodeConfig
from quicnprotochat.server.node import Node, parse_announcement
from quicnprotochat.server.store import StoreMetrics

# The node's defaults would refuse a load test: every bench connection comes from 127.0.0.1 (one address bucket
# of 2000 calls/s) and a bot calls far more than 500 times a second. The bench's node runs with these instead,
# and the report says so.
BENCH_NODE_SETTINGS: dict[str, Any] = {
    "rate_per_identity": 10_000_000.0,
    "burst_per_identity": 10_000_000,
    "rate_per_address": 10_000_000.0,
    "burst_per_address": 10_000_000,
    "login_rate_per_username": 1000.0,
    "login_burst_per_username": 1000,
    "login_rate_per_address": 100_000.0,
    "login_burst_per_address": 100_000,
    "register_rate_per_address": 100_000.0,
    "register_burst_per_address": 100_000,
    "register_rate_total": 100_000.0,
    "register_burst_total": 100_000,
    "key_package_rate_per_pair": 100_000.0,
    "key_package_burst_per_pair": 100_000,
    "resolve_rate_per_identity": 100_000.0,
    "resolve_burst_per_identity": 100_000,
    "resolve_rate_per_address": 100_000.0,
    "resolve_burst_per_address": 100_000,
    "max_connections_per_address": 100_000,
    "connection_rate_per_address": 100_000.0,
    "connection_burst_per_address": 100_000,
    "max_unauthenticated_connections": 100_000,
    "log_level": "warning",
}


@dataclass
class NodeUnderTest:
    mode: str  # "process", "in-process" or "target"
    host: str
    quic_port: int | None
    tcp_port: int | None
    fingerprint: str
    pid: int | None  # whose CPU and RSS we read; None: not measurable (a remote target without --node-pid)
    settings: dict[str, Any] = field(default_factory=dict)
    data_dir: Path | None = None
    name: str = "node1"
    _process: asyncio.subprocess.Process | None = None
    _node: Node | None = None
    _stderr_tail: deque[str] = field(default_factory=lambda: deque(maxlen=50))
    _stderr_task: asyncio.Task[None] | None = None

    def address(self, transport: str) -> str:
        port = self.quic_port if transport == "quic" else self.tcp_port
        if port is None:
            raise ValueError(f"the node has no {transport} listener")
        return f"{self.host}:{port}"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode,
            "address": self.host,
            "quic_port": self.quic_port,
            "tcp_port": self.tcp_port,
            "fingerprint": self.fingerprint,
            "pid": self.pid,
            "settings_raised_for_load": self.settings,
        }

    def store_metrics(self) -> StoreMetrics | None:
        """The store's write-path counters; only known when the node runs in this process."""
        if self._node is None or self._node.state is None:
            return None
        return self._node.state.store.metrics()

    def stderr_tail(self) -> str:
        return "".join(self._stderr_tail)

    async def stop(self) -> None:
        if self._node is not None:
            await self._node.stop()
            self._node = None
        process, self._process = self._process, None
        if process is not None:
            await terminate(process, 20)
        if self._stderr_task is not None:
            self._stderr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stderr_task


def node_environment(settings: dict[str, Any], store: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in settings.items():
        env[ENV_PREFIX + name.upper()] = str(value)
    # The store is ours to choose: none means the node's default (SQLite in its data dir), not an inherited one.
    env.pop(ENV_PREFIX + "STORE", None)
    if store:
        env[ENV_PREFIX + "STORE"] = store
    return env


async def start_node_process(
    data_dir: Path,
    settings: dict[str, Any],
    timeout: float = 60.0,
    *,
    store: str | None = None,
    name: str = "node1",
    workers: int = 1,
) -> NodeUnderTest:
    """Runs `qpc-server run` on loopback ports picked by the kernel; raised limits go in as QPC_SERVER_* vars.
    With `workers` > 1 (PostgreSQL only) `pid` is the supervisor's: its workers are its children; this returns
    once the first worker listens (the supervisor's "N workers serving" line in the stderr tail says when all do)."""
    data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 -- once, before the node starts
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "quicnprotochat.server.cli",
        "--data-dir",
        str(data_dir),
        "run",
        "--quic-listen",
        "127.0.0.1:0",
        "--tcp-listen",
        "127.0.0.1:0",
        *(["--workers", str(workers)] if workers != 1 else []),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=node_environment(settings, store),
    )
    assert process.stderr is not None
    node = NodeUnderTest(
        "process", "127.0.0.1", None, None, "", process.pid, settings, data_dir, name=name, _process=process
    )
    ports: dict[str, int] = {}
    try:
        async with asyncio.timeout(timeout):
            while len(ports) < 2:
                line = (await process.stderr.readline()).decode(errors="replace")
                if not line:
                    raise RuntimeError("the node process ended before listening:\n" + node.stderr_tail())
                node._stderr_tail.append(line)
                announced = parse_announcement(line)
                if announced is not None and announced[0] == "fingerprint":
                    node.fingerprint = announced[1]
                elif announced is not None:
                    ports[announced[0]] = int(announced[1])
    except BaseException:
        await node.stop()
        raise
    node.quic_port, node.tcp_port = ports["quic"], ports["tcp"]

    async def drain_stderr() -> None:
        # Keep reading so the pipe never fills up and blocks the node; keep the tail for error reports.
        assert process.stderr is not None
        while line := await process.stderr.readline():
            node._stderr_tail.append(line.decode(errors="replace"))

    node._stderr_task = asyncio.get_running_loop().create_task(drain_stderr())
    return node


async def start_node_in_process(
    data_dir: Path, settings: dict[str, Any], *, store: str | None = None, name: str = "node1"
) -> NodeUnderTest:
    config = dataclasses.replace(
        NodeConfig(data_dir=data_dir, quic_listen="127.0.0.1:0", tcp_listen="127.0.0.1:0", store=store or ""),
        **settings,
    )
    node = Node(config)
    await node.start()
    assert node.quic_address is not None and node.tcp_address is not None
    return NodeUnderTest(
        "in-process",
        "127.0.0.1",
        node.quic_address[1],
        node.tcp_address[1],
        node.fingerprint,
        os.getpid(),
        settings,
        data_dir,
        name=name,
        _node=node,
    )


def target_node(address: str, transport: str, fingerprint: str, pid: int | None, name: str = "node1") -> NodeUnderTest:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--target must be host:port, got {address!r}")
    quic_port = int(port) if transport == "quic" else None
    tcp_port = int(port) if transport == "tcp" else None
    return NodeUnderTest("target", host.strip("[]"), quic_port, tcp_port, fingerprint, pid, name=name)


# -- the shared store --------------------------------------------------------------------------------------------

BENCH_DATABASE = "qpc_bench"


@dataclass
class StoreUnderTest:
    """What the nodes store into: None (each node's own SQLite file), a URL given, or a throwaway cluster."""

    url: str | None = None
    cluster: PgCluster | None = None

    @property
    def kind(self) -> str:
        if self.url is None:
            return "sqlite"
        return "postgresql" if self.url.startswith(("postgresql:", "postgres:")) else "sqlite"

    @property
    def server_pid(self) -> int | None:
        """The throwaway cluster's postmaster (its backends are its children), to measure its CPU."""
        return self.cluster.server_pid() if self.cluster is not None else None

    def describe(self) -> dict[str, Any]:
        if self.url is None:
            return {"kind": "sqlite", "where": "node.sqlite3 in each node's data dir"}
        figures: dict[str, Any] = {"kind": self.kind, "url": redact(self.url)}
        if self.cluster is not None:
            figures["throwaway_cluster"] = {
                "directory": str(self.cluster.base),
                "bin_dir": str(self.cluster.bin_dir),
                "settings": self.cluster.settings,
                "server_pid": self.server_pid,
            }
        return figures

    async def stop(self) -> None:
        if self.cluster is not None:
            await asyncio.to_thread(self.cluster.stop)
            self.cluster = None


async def start_pg_cluster(parent: Path) -> StoreUnderTest:
    """A throwaway PostgreSQL cluster (fsync on: commits cost what they would in production) under `parent`, with
    an empty database for the nodes."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError("--pg-cluster: no PostgreSQL binaries found (Debian: apt-get install postgresql-15)")
    cluster = PgCluster(bin_dir, fsync=True, parent=parent)
    await asyncio.to_thread(cluster.start)
    try:
        url = await create_database(cluster.url, BENCH_DATABASE)
    except BaseException:
        await asyncio.to_thread(cluster.stop)
        raise
    return StoreUnderTest(url, cluster)
