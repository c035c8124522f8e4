"""A node killed with SIGKILL loses no message whose seq it returned, and brings back none it handed out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from quicnprotochat.client import KnownHosts, NodeClient, accounts
from quicnprotochat.native import Vault
from quicnprotochat.server.store import open_store
from tests.pgcluster import PgServer
from tests.test_cli import start_node_process, stop_node_process

SENDERS = 10


async def test_sigkill_loses_no_acknowledged_message(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    process, fingerprint, ports, _ = start_node_process(data_dir)
    known = KnownHosts(tmp_path / "known_hosts", notice=lambda _m: None)
    address = f"127.0.0.1:{ports['quic']}"
    vaults = [Vault.open(str(tmp_path / f"v{i}.sqlite"), os.urandom(32)) for i in range(SENDERS + 1)]
    clients: list[NodeClient] = []
    try:
        for index, vault in enumerate(vaults):
            client = NodeClient(address, known_hosts=known, server_fingerprint=fingerprint)
            await accounts.register(client, vault, f"user{index}", "pw")
            await accounts.login(client, vault, f"user{index}", "pw")
            clients.append(client)
        recipient = vaults[0].identity_key
        acknowledged: dict[int, bytes] = {}
        enough = asyncio.Event()

        async def send(index: int) -> None:
            n = 0
            while True:
                payload = f"sender {index} message {n}".encode()
                try:
                    seq = await clients[index].enqueue(recipient, payload)
                except (ConnectionError, OSError):
                    return  # the node is gone; this message may or may not have landed
                acknowledged[seq] = payload
                if len(acknowledged) >= 300:
                    enough.set()
                n += 1

        senders = [asyncio.ensure_future(send(i)) for i in range(1, SENDERS + 1)]
        await asyncio.wait_for(enough.wait(), 60)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        await asyncio.wait_for(asyncio.gather(*senders), 60)
    finally:
        for client in clients:
            await client.close()
        if process.poll() is None:
            process.kill()

    process, fingerprint_again, ports, _ = start_node_process(data_dir)
    try:
        assert fingerprint_again == fingerprint
        reader = NodeClient(f"127.0.0.1:{ports['quic']}", known_hosts=KnownHosts(tmp_path / "kh2", notice=print))
        await accounts.login(reader, vaults[0], "user0", "pw")
        stored: dict[int, bytes] = {}
        while batch := await reader.fetch(vaults[0].identity_key):
            stored.update((envelope.seq, envelope.data) for envelope in batch)
        await reader.close()
    finally:
        stop_node_process(process)
        for vault in vaults:
            vault.close()
    missing = sorted(set(acknowledged) - set(stored))
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. seqs {missing[:5]}"
    assert all(stored[seq] == payload for seq, payload in acknowledged.items())
    # Seqs stay gap-free: whatever landed got the next number.
    assert sorted(stored) == list(range(1, len(stored) + 1))


def _traced_pid(tracer: int) -> int:
    """The node strace started (killing strace itself would leave its tracee running)."""
    (child,) = Path(f"/proc/{tracer}/task/{tracer}/children").read_text().split()
    return int(child)


def _wal_syncs(log: Path) -> int:
    """fsync/fdatasync calls on the store's WAL so far, in the node's strace log."""
    return log.read_text().count("node.sqlite3-wal>")


def _can_trace() -> bool:
    """strace is installed and may trace its children here (a container may forbid ptrace)."""
    if shutil.which("strace") is None:
        return False
    return subprocess.run(["strace", "-f", "-qq", "-o", os.devnull, "true"], check=False).returncode == 0


async def _registered(port: int, known: KnownHosts, fingerprint: str, vaults: list[Vault]) -> NodeClient:
    """A client of the node at `port`: every vault registered, logged in as the first."""
    client = NodeClient(f"127.0.0.1:{port}", known_hosts=known, server_fingerprint=fingerprint)
    for index, vault in enumerate(vaults):
        await accounts.register(client, vault, f"user{index}", "pw")
    await accounts.login(client, vaults[0], "user0", "pw")
    return client


async def _removals(client: NodeClient, me: bytes, after_each: Callable[[], Awaitable[None]]) -> None:
    """The removals both backends' tests make of messages 1-6: fetch 1, fetch 2 and 3, peek 4 and ack it,
    fetchWait 5; `after_each` runs after each of the four."""
    assert [e.seq for e in await client.fetch(me, limit=1)] == [1]
    await after_each()
    assert [e.seq for e in await client.fetch(me, limit=2)] == [2, 3]
    await after_each()
    assert [e.seq for e in await client.peek(me, limit=1)] == [4]
    await client.ack(me, 4)
    await after_each()
    assert [e.seq for e in await client.fetch_wait(me, timeout_ms=1000, limit=1)] == [5]
    await after_each()


async def _nothing() -> None:
    return None


async def _left_after_restart(
    data_dir: Path, known: KnownHosts, fingerprint: str, vault: Vault, env: dict[str, str] | None = None
) -> list[tuple[int, bytes]]:
    """The node started again on `data_dir`: what is left in the inbox of `vault` (user0)."""
    process, _, ports, _ = start_node_process(data_dir, env=env)
    try:
        reader = NodeClient(f"127.0.0.1:{ports['quic']}", known_hosts=known, server_fingerprint=fingerprint)
        try:
            await accounts.login(reader, vault, "user0", "pw")
            return [(e.seq, e.data) for e in await reader.fetch(vault.identity_key)]
        finally:
            await reader.close()
    finally:
        stop_node_process(process)


@dataclass
class _TracedNode:
    """A node process under strace, which logs its fsync and fdatasync calls, with two users registered."""

    process: subprocess.Popen[str]
    pid: int
    log: Path
    fingerprint: str
    known: KnownHosts
    vaults: list[Vault]

    def wal_syncs(self) -> int:
        return _wal_syncs(self.log)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@contextlib.asynccontextmanager
async def _traced_node(
    data_dir: Path, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[_TracedNode, NodeClient]]:
    """A `_TracedNode` on `data_dir` and a client logged in as its first user; the node is killed at the end."""
    log = data_dir.with_name("syscalls")
    strace = ["strace", "-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-e", "signal=none", "-o", str(log)]
    process, fingerprint, ports, _ = start_node_process(data_dir, env=env, wrapper=strace)
    known = KnownHosts(data_dir.with_name("known_hosts"), notice=lambda _m: None)
    vaults = [Vault.open(str(data_dir.with_name(f"v{i}.sqlite")), os.urandom(32)) for i in range(2)]
    node = _TracedNode(process, _traced_pid(process.pid), log, fingerprint, known, vaults)
    try:
        client = await _registered(ports["quic"], known, fingerprint, vaults)
        try:
            yield node, client
        finally:
            await client.close()
    finally:
        node.kill()
        for vault in vaults:
            vault.close()


@pytest.mark.skipif(not _can_trace(), reason="needs strace allowed to trace (Debian package strace; scripts/install)")
async def test_removals_commit_without_fsync_and_survive_sigkill(tmp_path: Path) -> None:
    """fetch and ack answer once committed, without waiting for an fsync of their own; a killed node keeps them
    anyway (only a power loss could bring such messages back), while every enqueue still syncs before its seq."""
    data_dir = tmp_path / "node"
    async with _traced_node(data_dir) as (node, client):
        me = node.vaults[0].identity_key
        for n in range(1, 7):
            before = node.wal_syncs()
            assert await client.enqueue(me, f"message {n}".encode()) == n
            assert node.wal_syncs() > before, "an enqueue's seq came back before its commit was synced"
        synced = node.wal_syncs()
        await _removals(client, me, _nothing)
        assert node.wal_syncs() == synced
        node.kill()
        left = await _left_after_restart(data_dir, node.known, node.fingerprint, node.vaults[0])
        assert left == [(6, b"message 6")]


@pytest.mark.skipif(not _can_trace(), reason="needs strace allowed to trace (Debian package strace; scripts/install)")
async def test_an_expiry_sweep_commits_without_fsync(tmp_path: Path) -> None:
    """Removing expired messages is a removal like fetch and ack: a power loss may bring them back, and the next
    sweep removes them again, so its commit does not wait for an fsync of the WAL."""
    env = {**os.environ, "QPC_SERVER_MESSAGE_TTL_SECONDS": "1", "QPC_SERVER_SWEEP_INTERVAL_S": "0.2"}
    async with _traced_node(tmp_path / "node", env) as (node, client):
        me = node.vaults[0].identity_key
        before = node.wal_syncs()
        for n in range(1, 4):
            assert await client.enqueue(me, f"expiring {n}".encode()) == n
        synced = node.wal_syncs()
        assert synced > before  # the enqueues' commits were synced: the count sees a sync when there is one
        stderr = node.process.stderr
        assert stderr is not None
        dropped = 0
        async with asyncio.timeout(20):
            while dropped < 3:
                line = await asyncio.to_thread(stderr.readline)
                if found := re.search(r"dropped (\d+) expired messages", line):
                    dropped += int(found[1])
        assert node.wal_syncs() == synced


PAGE_HEADER = 40
"""Bytes of WAL a flushed position may lag the insert position by with nothing unflushed: the header of the page
(at most the long one of a segment's first page) that the insert position skips once the previous record filled
its page."""


async def _unflushed_wal(admin: Any) -> int:
    """Bytes of WAL inserted but not yet flushed: a commit answered before its flush leaves its own records here."""
    lag = await admin.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), pg_current_wal_flush_lsn())")
    return int(lag)


@contextlib.asynccontextmanager
async def _lazy_wal_writer(pg_server: PgServer) -> AsyncIterator[Any]:
    """An admin connection to the suite's PostgreSQL, whose WAL writer meanwhile flushes on its own only every 10 s
    (`wal_writer_delay`, the most): it does not hide an unflushed removal by flushing it in the moment between its
    answer and our look. Skips the test without a superuser."""
    admin = await asyncpg.connect(pg_server.admin_url)
    try:
        await admin.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
    except asyncpg.InsufficientPrivilegeError:
        await admin.close()
        pytest.skip("needs a PostgreSQL superuser (to set wal_writer_delay): QPC_TEST_POSTGRES_URL's role is not")
    await admin.execute("SELECT pg_reload_conf()")
    try:
        yield admin
    finally:
        await admin.execute("ALTER SYSTEM RESET wal_writer_delay")
        await admin.execute("SELECT pg_reload_conf()")
        await admin.close()


async def test_postgres_removals_commit_without_a_wal_flush_and_survive_sigkill(
    tmp_path: Path, pg_server: PgServer, pg_url: str
) -> None:
    """On PostgreSQL too, fetch and ack answer once committed without waiting for their WAL flush
    (synchronous_commit off for those transactions alone); every enqueue is answered only once flushed, which
    flushes the removals before it as well; a node killed after a removal keeps it."""
    data_dir = tmp_path / "node"
    env = {**os.environ, "QPC_SERVER_STORE": pg_url}
    known = KnownHosts(tmp_path / "known_hosts", notice=lambda _m: None)
    vaults = [Vault.open(str(tmp_path / f"v{i}.sqlite"), os.urandom(32)) for i in range(2)]
    async with _lazy_wal_writer(pg_server) as admin:
        process, fingerprint, ports, _ = start_node_process(data_dir, env=env)
        try:
            client = await _registered(ports["quic"], known, fingerprint, vaults)
            me = vaults[0].identity_key
            for n in range(1, 7):
                assert await client.enqueue(me, f"message {n}".encode()) == n
                assert await _unflushed_wal(admin) <= PAGE_HEADER, "an enqueue's seq came back before its WAL flush"
            unflushed: list[int] = []

            async def look() -> None:
                unflushed.append(await _unflushed_wal(admin))

            await _removals(client, me, look)
            assert len(unflushed) == 4
            # Each removal left its commit unflushed (but for one the WAL writer's own flush may have caught).
            assert sum(lag > PAGE_HEADER for lag in unflushed) >= len(unflushed) - 1, unflushed
            assert await client.enqueue(me, b"message 7") == 7
            assert await _unflushed_wal(admin) <= PAGE_HEADER, "the enqueue's flush left earlier removals unflushed"
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            await client.close()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)

    try:
        stored = await _left_after_restart(data_dir, known, fingerprint, vaults[0], env)
        assert stored == [(6, b"message 6"), (7, b"message 7")]
    finally:
        for vault in vaults:
            vault.close()


async def test_a_postgres_expiry_sweep_commits_without_a_wal_flush(pg_server: PgServer, pg_url: str) -> None:
    """PostgreSQL's expiry sweep is a removal like fetch and ack: expired messages a crash of the database brings
    back are swept again, so its commit does not wait for the WAL flush."""
    async with _lazy_wal_writer(pg_server) as admin:
        store = await open_store(pg_url)
        try:
            unflushed: list[int] = []
            for sweep in range(2):
                for n in range(3):
                    await store.enqueue(bytes(32), b"", b"expiring %d" % n, 100.0 + sweep)
                assert await _unflushed_wal(admin) <= PAGE_HEADER
                assert await store.sweep_expired(now=101.0 + sweep) == 3
                unflushed.append(await _unflushed_wal(admin))
            # Each sweep left its commit unflushed, but for one the WAL writer's own flush may have caught.
            assert any(lag > PAGE_HEADER for lag in unflushed), unflushed
            assert (await store.inbox_stats(bytes(32), b"")).depth == 0
        finally:
            await store.close()
