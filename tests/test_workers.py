"""`qpc-server run --workers N`: node processes sharing the ports (SO_REUSEPORT) and one PostgreSQL database, under
a supervisor that restarts a worker that dies and stops them all on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quicnprotochat.bench.pgcluster import free_port
from quicnprotochat.client import KnownHosts, NodeClient, accounts
from quicnprotochat.native import Vault
from quicnprotochat.server.config import NodeConfig
from quicnprotochat.server.node import parse_announcement
from quicnprotochat.server.workers import SERVING_LINE, worker_config

TRANSPORTS = ["quic", "tcp"]
_LISTENING_WORKER = re.compile(r"worker (?P<index>\d+) \(pid (?P<pid>\d+)\).*listening for QUIC")


class Workers:
    """A `qpc-server run --workers N` process; its log lines are collected as they come."""

    def __init__(self, data_dir: Path, store: str, count: int, *extra: str) -> None:
        command = [sys.executable, "-m", "quicnprotochat.server.cli", "--data-dir", str(data_dir), "run"]
        command += ["--workers", str(count), "--store", store, "--quic-listen", "127.0.0.1:0"]
        command += ["--tcp-listen", "127.0.0.1:0", *extra]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.ports: dict[str, int] = {}
        self.pids: list[int] = []

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # the end
            self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str], start: int = 0, timeout: float = 60.0) -> re.Match[str]:
        """The first line from `start` on that matches."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[start:]:
                    if match := pattern.search(line):
                        return match
                assert "" not in self.lines, "the supervisor ended:\n" + "".join(self.lines)
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no line matching {pattern.pattern!r}:\n" + "".join(self.lines)
                self._changed.wait(remaining)

    def start(self) -> Workers:
        serving = self.wait_for(SERVING_LINE)
        self.pids = [int(pid) for pid in serving["pids"].split(", ")]
        for line in self.lines:
            announced = parse_announcement(line)
            if announced is not None and announced[0] in TRANSPORTS:
                self.ports[announced[0]] = int(announced[1])
        return self

    def address(self, transport: str) -> str:
        return f"127.0.0.1:{self.ports[transport]}"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


@pytest.fixture
def workers(pg_url: str, tmp_path: Path) -> Iterator[Workers]:
    started = Workers(tmp_path / "node", pg_url, 2)
    try:
        yield started.start()
    finally:
        started.stop()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def client_on(workers: Workers, transport: str, pid: int, known: KnownHosts, **options: object) -> NodeClient:
    """A connected client whose connection a given worker serves (new connections until the kernel picks it)."""
    for _ in range(64):
        client = NodeClient(workers.address(transport), transport=transport, known_hosts=known, **options)  # type: ignore[arg-type]
        await client.connect()
        if (await client.node_status()).process_id == pid:
            return client
        await client.close()
    raise AssertionError(f"no {transport} connection reached worker {pid} in 64 tries")


async def test_connections_over_both_transports_spread_over_the_workers(workers: Workers, tmp_path: Path) -> None:
    known = KnownHosts(tmp_path / "known_hosts", notice=lambda _message: None)
    for transport in TRANSPORTS:
        served_by: list[int] = []
        for _ in range(16):
            async with NodeClient(workers.address(transport), transport=transport, known_hosts=known) as client:  # type: ignore[arg-type]
                status = await client.node_status()
                assert status.status == "ok"
                served_by.append(status.process_id)
        # 16 connections from 16 source ports: both workers serve some (all on one: 1 in 32,768).
        assert set(served_by) == set(workers.pids), (transport, served_by)


async def test_a_fetch_wait_on_one_worker_is_woken_by_an_enqueue_through_another(
    workers: Workers, tmp_path: Path
) -> None:
    known = KnownHosts(tmp_path / "known_hosts", notice=lambda _message: None)
    first, second = workers.pids
    vaults: list[Vault] = []
    clients: list[NodeClient] = []
    try:
        for name, pid, transport in (("alice", first, "quic"), ("bob", second, "tcp")):
            vault = Vault.open(str(tmp_path / f"vault-{name}.sqlite"), os.urandom(32))
            vaults.append(vault)
            client = await client_on(workers, transport, pid, known)
            clients.append(client)
            await accounts.register(client, vault, name, f"correct horse {name}")
            await accounts.login(client, vault, name, f"correct horse {name}")
        alice, bob = clients
        bob_key = vaults[1].identity_key
        started = time.monotonic()
        waiting = asyncio.ensure_future(bob.fetch_wait(bob_key, timeout_ms=20_000))
        await asyncio.sleep(0.5)  # parked on the second worker
        assert not waiting.done()
        await alice.enqueue(bob_key, b"across workers")  # stored through the first
        async with asyncio.timeout(10):
            received = await waiting
        assert [envelope.data for envelope in received] == [b"across workers"]
        assert time.monotonic() - started < 15  # woken, not timed out with the message found afterwards
    finally:
        for client in clients:
            await client.close()
        for vault in vaults:
            vault.close()


async def test_a_worker_killed_under_load_leaves_the_others_serving_and_loses_nothing(
    workers: Workers, tmp_path: Path
) -> None:
    known = KnownHosts(tmp_path / "known_hosts", notice=lambda _message: None)
    victim, survivor = workers.pids
    vault = Vault.open(str(tmp_path / "vault-carol.sqlite"), os.urandom(32))
    setup = await client_on(workers, "tcp", survivor, known)
    await accounts.register(setup, vault, "carol", "correct horse carol")
    await accounts.login(setup, vault, "carol", "correct horse carol")
    key = vault.identity_key
    # Producers on both workers over both transports, sending as fast as they can, with idempotency keys: a call
    # cut by the kill is retried and stored once. What was acknowledged is what the node must still have.
    producers = [
        await client_on(workers, transport, pid, known, access_token=setup.access_token)
        for transport in TRANSPORTS
        for pid in (victim, survivor)
    ]
    acknowledged: set[bytes] = set()
    acknowledged_by: dict[int, int] = {}
    killed_at: list[float] = []
    stop = asyncio.Event()

    async def produce(index: int, client: NodeClient) -> None:
        sent = 0
        while not stop.is_set():
            payload = f"{index}-{sent}".encode()
            sent += 1
            try:
                await client.enqueue(key, payload, idempotency_key=os.urandom(16))
            except Exception:  # cut by the kill and out of retries: not acknowledged, so it may be missing
                await asyncio.sleep(0.05)
                continue
            acknowledged.add(payload)
            if killed_at:
                acknowledged_by[index] = acknowledged_by.get(index, 0) + 1

    try:
        tasks = [asyncio.ensure_future(produce(index, client)) for index, client in enumerate(producers)]
        await asyncio.sleep(1.0)
        assert len(acknowledged) > 0
        mark = len(workers.lines)
        os.kill(victim, signal.SIGKILL)
        killed_at.append(time.monotonic())
        restarted = await asyncio.to_thread(workers.wait_for, _LISTENING_WORKER, mark)
        assert int(restarted["pid"]) not in (victim, survivor)
        assert any(f"pid {victim}) was killed by SIGKILL; restarting it" in line for line in workers.lines[mark:])
        await asyncio.sleep(1.5)  # the producers the victim served reconnect, to either worker
        stop.set()
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks)
        # Every producer went on: those of the survivor at once, the victim's after a reset or a reconnection.
        assert sorted(acknowledged_by) == [0, 1, 2, 3], acknowledged_by
        assert alive(survivor) and not alive(victim)
        stored: set[bytes] = set()
        while batch := await setup.fetch(key):
            stored.update(envelope.data for envelope in batch)
        assert acknowledged <= stored, f"{len(acknowledged - stored)} acknowledged messages lost"
    finally:
        for client in [setup, *producers]:
            await client.close()
        vault.close()
    assert workers.stop() == 0
    assert not any(alive(pid) for pid in (survivor, int(restarted["pid"])))


def test_workers_on_sqlite_are_refused_with_the_reason(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "quicnprotochat.server.cli", "--data-dir", str(tmp_path), "run", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "qpc-server: workers > 1 needs the PostgreSQL store (store = postgresql://...): a SQLite store is written "
        "by one process's writer thread, and its wake-ups reach only that process's waiters"
    ]


def test_a_worker_that_cannot_start_stops_the_supervisor_with_its_reason(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "quicnprotochat.server.cli", "--data-dir", str(tmp_path), "run", "--workers", "2"]
    command += ["--store", f"postgresql://postgres@127.0.0.1:{free_port()}/none"]
    command += ["--quic-listen", "127.0.0.1:0", "--tcp-listen", "127.0.0.1:0"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1  # no restart loop: a worker that never started is not restarted
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("qpc-server: worker 0: cannot open the database at postgresql://"), lines
    assert "Traceback" not in result.stderr
    assert "worker 0 (pid" in lines[-1] and "did not start: exited with code 1" in lines[-1], lines


@pytest.mark.parametrize(
    ("metrics_listen", "index", "expected"),
    [
        ("", 1, ""),
        ("127.0.0.1:9464", 0, "127.0.0.1:9464"),
        ("127.0.0.1:9464", 3, "127.0.0.1:9467"),
        ("127.0.0.1:0", 2, "127.0.0.1:0"),  # port 0: each worker gets its own from the kernel
        ("[::1]:9464", 1, "[::1]:9465"),
    ],
)
def test_each_worker_serves_metrics_on_its_own_port(metrics_listen: str, index: int, expected: str) -> None:
    config = NodeConfig(metrics_listen=metrics_listen)
    assert worker_config(config, index).metrics_listen == expected


def test_a_worker_that_keeps_dying_is_restarted_after_growing_pauses(workers: Workers) -> None:
    # Each death comes within QUICK_DEATH_S of the worker's start: 0.5 s, then 1 s, before the next start.
    pid = workers.pids[0]
    for pause in ("0.5", "1.0"):
        mark = len(workers.lines)
        os.kill(pid, signal.SIGKILL)
        died = workers.wait_for(re.compile(rf"pid {pid}\) was killed by SIGKILL; restarting it in (\S+) s"), mark)
        assert died[1] == pause
        pid = int(workers.wait_for(re.compile(r"worker 0 restarted \(pid (\d+)\)"), mark)[1])
    assert workers.stop() == 0
