"""What only the SQLite backend has: its file, its migrations, its crash durability."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quicnprotochat.server.store import SchemaTooNew, StoreError, open_store, sqlite_path_from_url
from quicnprotochat.server.store.migrations import LATEST_VERSION, SQLITE_MIGRATIONS
from quicnprotochat.server.store.sqlite.inboxes import SHARE_HELD

from .store_testlib import ENQUEUE_FOREVER, key

R1 = key(1)


def test_acknowledged_enqueues_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    acknowledged: list[int] = []
    with subprocess.Popen([sys.executable, "-c", ENQUEUE_FOREVER, str(db)], stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 30
            while len(acknowledged) < 1000 and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                acknowledged.append(int(line))
            os.kill(proc.pid, signal.SIGKILL)
            # Lines already in the pipe were printed after their commit too.
            acknowledged.extend(int(line) for line in proc.stdout.read().split())
        finally:
            proc.kill()
            proc.wait()
    # 255 is asyncio's report for a child whose exit status something else in this process collected first
    # (its child watcher then cannot see it); the data checks below are what this test is about.
    assert proc.returncode in (-signal.SIGKILL, 255), proc.returncode
    assert len(acknowledged) >= 1000, "the child did not get going"

    async def stored_seqs() -> set[int]:
        store = await open_store(db)
        try:
            seqs: set[int] = set()
            while batch := await store.fetch(bytes(32), b""):
                seqs.update(m.seq for m in batch)
            return seqs
        finally:
            await store.close()

    stored = asyncio.run(stored_seqs())
    assert set(acknowledged) <= stored
    # Anything beyond the acknowledged seqs was committed but not yet printed; seqs stay gap-free.
    assert stored == set(range(1, max(stored) + 1))


@pytest.mark.asyncio
async def test_a_senders_share_is_counted_from_its_index_alone(tmp_path: Path) -> None:
    """The share count of an inbox deeper than the share reads only `messages_by_sender`, no message row."""
    db = tmp_path / "store.db"
    store = await open_store(db)
    await store.close()
    conn = sqlite3.connect(db)
    try:
        plan = " | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + SHARE_HELD, (R1, b"", key(2), 0.0)))
    finally:
        conn.close()
    assert "USING COVERING INDEX messages_by_sender" in plan, plan


@pytest.mark.asyncio
async def test_database_is_wal_owner_only_and_versioned(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    store = await open_store(f"sqlite:///{db}")
    await store.enqueue(R1, b"", b"x", None)
    await store.close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = [tuple(r) for r in conn.execute("SELECT version, name FROM schema_version ORDER BY version")]
    finally:
        conn.close()
    assert versions == [(m.version, m.name) for m in SQLITE_MIGRATIONS]
    # Reopening applies nothing twice.
    reopened = await open_store(db)
    assert await reopened.enqueue(R1, b"", b"y", None) == 2
    await reopened.close()


@pytest.mark.asyncio
async def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    store = await open_store(db)
    await store.close()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            "INSERT INTO schema_version (version, name, applied_at) VALUES (?, 'from the future', 0)",
            (LATEST_VERSION + 1,),
        )
    conn.close()
    with pytest.raises(SchemaTooNew) as refused:
        await open_store(db)
    assert refused.value.on_disk == LATEST_VERSION + 1 and refused.value.known == LATEST_VERSION
    assert str(LATEST_VERSION + 1) in str(refused.value)


@pytest.mark.asyncio
async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "garbage.db"
    db.write_bytes(b"this is not an sqlite database" * 100)
    with pytest.raises(StoreError):
        await open_store(db)


@pytest.mark.asyncio
async def test_store_urls(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        await open_store("mysql://localhost/qpc")
    with pytest.raises(ValueError):
        await open_store(":memory:")
    assert sqlite_path_from_url("sqlite:////var/lib/qpc.db") == "/var/lib/qpc.db"
    assert sqlite_path_from_url("sqlite:///qpc.db") == "qpc.db"
    assert sqlite_path_from_url("data/qpc.db") == "data/qpc.db"
    assert sqlite_path_from_url("postgresql://x/y") is None
    store = await open_store(tmp_path / "plain.db")
    await store.close()
