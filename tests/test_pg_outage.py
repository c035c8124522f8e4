"""PostgreSQL outages under load with two nodes: the database killed and restarted, or every node connection cut.

Every call gets an answer within its timeout (success, or a clear `unavailable:` / `unknown_outcome:`), enqueues
work again within 2 s of the database being back without restarting a node, nothing acknowledged is lost, and
`health` says the store is unreachable while it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from quicnprotochat.bench.pgcluster import PgCluster, create_database, find_bin_dir
from quicnprotochat.client import KnownHosts, NodeClient, accounts
from quicnprotochat.common.errors import RpcError, Unavailable, UnknownOutcome
from quicnprotochat.native import Vault
from quicnprotochat.server.node import Node
from tests.conftest import loopback_config, node_address

ROUNDS = 20
CALL_TIMEOUT_S = 8.0
BACK_WITHIN_S = 2.0
SENDERS = 4


@pytest.fixture(scope="module")
def killable_pg() -> Iterator[PgCluster]:
    """A PostgreSQL server of this module's own: the session's shared one must not be killed."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        if os.environ.get("QPC_TEST_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is required here but no initdb/pg_ctl was found")
        pytest.skip("PostgreSQL not available: no initdb/pg_ctl found")
    cluster = PgCluster(bin_dir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@dataclass
class Load:
    """Senders on both nodes enqueueing to one receiver, recording what each call answered."""

    senders: list[NodeClient]
    recipient: bytes
    acknowledged: dict[int, bytes] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)
    tasks: list[asyncio.Future[None]] = field(default_factory=list)
    stopping: bool = False

    def start(self) -> None:
        self.tasks = [asyncio.ensure_future(self.send(i)) for i in range(len(self.senders))]

    async def stop(self) -> None:
        self.stopping = True
        await asyncio.wait_for(asyncio.gather(*self.tasks), CALL_TIMEOUT_S + 5)

    async def send(self, index: int) -> None:
        n = 0
        while not self.stopping:
            payload = f"sender {index} message {n}".encode()
            n += 1
            try:
                seq = await asyncio.wait_for(self.senders[index].enqueue(self.recipient, payload), CALL_TIMEOUT_S)
            except (Unavailable, UnknownOutcome) as error:
                self.refused[error.code] = self.refused.get(error.code, 0) + 1
                await asyncio.sleep(0.02)
                continue
            except (RpcError, TimeoutError, OSError) as error:
                self.wrong.append(f"{type(error).__name__}: {error}")
                await asyncio.sleep(0.02)
                continue
            self.acknowledged[seq] = payload

    async def progressed(self, by: int = 5, within: float = 10.0) -> None:
        target = len(self.acknowledged) + by
        deadline = time.monotonic() + within
        while len(self.acknowledged) < target:
            assert time.monotonic() < deadline, "enqueues stopped working"
            await asyncio.sleep(0.01)


@dataclass
class TwoNodes:
    nodes: list[Node]
    load: Load
    probes: list[NodeClient]
    reader: NodeClient


@contextlib.asynccontextmanager
async def two_nodes_under_load(url: str, tmp_path: Path) -> AsyncIterator[TwoNodes]:
    nodes = [Node(loopback_config(tmp_path / name, store=url)) for name in ("a", "b")]
    clients: list[NodeClient] = []
    vaults: list[Vault] = []
    load: Load | None = None
    known = KnownHosts(tmp_path / "known_hosts", notice=lambda _m: None)

    async def client_for(node: Node, index: int) -> NodeClient:
        vault = Vault.open(str(tmp_path / f"vault{index}.sqlite"), os.urandom(32))
        vaults.append(vault)
        # No retries of its own: every answer the node gives is seen (and counted) here.
        client = NodeClient(node_address(node, "quic"), known_hosts=known, retry_delays=())
        clients.append(client)
        await accounts.register(client, vault, f"user{index}", "pw")
        await accounts.login(client, vault, f"user{index}", "pw")
        return client

    try:
        for node in nodes:
            await node.start()
        reader = await client_for(nodes[1], 0)
        senders = [await client_for(nodes[i % 2], i + 1) for i in range(SENDERS)]
        probes = [await client_for(node, 10 + i) for i, node in enumerate(nodes)]
        load = Load(senders, vaults[0].identity_key)
        load.start()
        yield TwoNodes(nodes, load, probes, reader)
    finally:
        for task in load.tasks if load is not None else []:
            task.cancel()
        for client in clients:
            await client.close()
        for node in nodes:
            await node.stop()
        for vault in vaults:
            vault.close()


async def enqueue_works_again(setup: TwoNodes, since: float) -> float:
    """Seconds from `since` until an enqueue succeeded through every node."""
    for probe in setup.probes:
        while True:
            try:
                await asyncio.wait_for(probe.enqueue(setup.load.recipient, b"probe"), CALL_TIMEOUT_S)
                break
            except (Unavailable, UnknownOutcome):
                await asyncio.sleep(0.02)
    return time.monotonic() - since


def qpc_server_health(node: Node, data_dir: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "quicnprotochat.server.cli", "--data-dir", str(data_dir), "health"]
    address = ["--transport", "tcp", "--address", node_address(node, "tcp")]
    return subprocess.run([*command, *address], capture_output=True, text=True, timeout=30, check=False)


async def health_says_unreachable(setup: TwoNodes, within: float = 5.0) -> None:
    for probe in setup.probes:
        deadline = time.monotonic() + within
        while "store unreachable" not in (status := await asyncio.wait_for(probe.health(), CALL_TIMEOUT_S)):
            assert time.monotonic() < deadline, f"health said {status!r} during the outage"
            await asyncio.sleep(0.05)
        assert status.startswith("unhealthy: ")


async def stop_and_drain(setup: TwoNodes) -> dict[int, bytes]:
    """Stops the load, then reads (peek + ack) everything in the receiver's inbox."""
    await setup.load.stop()
    stored: dict[int, bytes] = {}
    key = setup.load.recipient
    while batch := await setup.reader.peek(key):
        stored.update((envelope.seq, envelope.data) for envelope in batch)
        await setup.reader.ack(key, batch[-1].seq)
    return stored


async def run_rounds(
    setup: TwoNodes, fault: Callable[[], Awaitable[None]], recover: Callable[[], Awaitable[None]]
) -> list[float]:
    back_after: list[float] = []
    for _ in range(ROUNDS):
        await setup.load.progressed()
        await fault()
        await recover()
        back_after.append(await enqueue_works_again(setup, time.monotonic()))
    await setup.load.progressed()
    return back_after


def check_outcome(setup: TwoNodes, stored: dict[int, bytes], back_after: list[float]) -> None:
    load = setup.load
    # Shown with `pytest -s`: the figures a run measured.
    print(
        f"{ROUNDS} rounds: {len(load.acknowledged)} acknowledged, refused {load.refused}, "
        f"enqueues back after {min(back_after):.2f}..{max(back_after):.2f} s"
    )
    assert not load.wrong, f"calls answered without a clear store code: {load.wrong[:5]}"
    assert max(back_after) < BACK_WITHIN_S, back_after
    missing = sorted(set(load.acknowledged) - set(stored))
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. seqs {missing[:5]}"
    assert all(stored[seq] == payload for seq, payload in load.acknowledged.items())
    assert sorted(stored) == list(range(1, len(stored) + 1))


async def test_postgres_killed_and_restarted_under_load(killable_pg: PgCluster, tmp_path: Path) -> None:
    url = await create_database(killable_pg.url, "qpc_outage")
    async with two_nodes_under_load(url, tmp_path) as setup:
        probed_from_outside = False

        async def kill() -> None:
            nonlocal probed_from_outside
            killable_pg.kill_server()
            await health_says_unreachable(setup)
            if not probed_from_outside:  # once: the container's probe says so too, and fails
                probe = await asyncio.to_thread(qpc_server_health, setup.nodes[0], tmp_path / "a")
                assert probe.returncode == 1 and probe.stdout.startswith("unhealthy: store unreachable"), probe
                probed_from_outside = True

        async def restart() -> None:
            await asyncio.to_thread(killable_pg.restart)

        back_after = await run_rounds(setup, kill, restart)
        for probe in setup.probes:
            assert await probe.health() == "ok"
        stored = await stop_and_drain(setup)
    check_outcome(setup, stored, back_after)
    assert setup.load.refused.get("unavailable", 0) > 0  # the outages were felt, and said so


async def test_postgres_connections_cut_under_load(pg_url: str, tmp_path: Path) -> None:
    database = pg_url.rsplit("/", 1)[1].split("?")[0]
    admin_url = pg_url.rsplit("/", 1)[0] + "/postgres"
    async with two_nodes_under_load(pg_url, tmp_path) as setup:
        admin = await asyncpg.connect(admin_url)
        try:

            async def cut() -> None:
                cut_off = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = $1 AND pid <> pg_backend_pid()",
                    database,
                )
                assert cut_off > 0

            async def nothing() -> None:
                pass

            back_after = await run_rounds(setup, cut, nothing)
        finally:
            await admin.close()
        stored = await stop_and_drain(setup)
    check_outcome(setup, stored, back_after)
