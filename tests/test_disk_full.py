"""A full disk, for real: the node's SQLite store on a small tmpfs, mounted here (we are root) and filled up.

New messages are refused with `resource_exhausted: disk full` (under the free-space floor, and when something
else took the rest), nothing acknowledged is lost, the receiver drains everything (the writer gives up its disk
reserve when a delete finds no space), the node recovers by itself once there is space again, and the WAL is
back near its normal size after the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quicnprotochat.common.errors import ResourceExhausted
from quicnprotochat.server.node import Node
from quicnprotochat.server.store.sqlite_writer import WAL_TRUNCATE_BYTES
from tests.conftest import User, UserFactory, loopback_config

DISK_MIB = 48
FLOOR = 6 << 20
PAYLOAD = 64 << 10


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from mounted_tmpfs(tmp_path / "disk", DISK_MIB)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    yield from mounted_tmpfs(tmp_path / "tiny", 28)


def mounted_tmpfs(mount_point: Path, mib: int) -> Iterator[Path]:
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(path: Path) -> None:
    """Takes every free byte of the disk (as another process might)."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        for chunk in (256 << 10, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * chunk):
                    pass
    finally:
        os.close(fd)


async def send_until_refused(alice: User, bob: User, acknowledged: dict[int, bytes]) -> str:
    refusal = ""

    async def sender() -> None:
        nonlocal refusal
        while not refusal:
            payload = os.urandom(PAYLOAD)
            try:
                acknowledged[await alice.client.enqueue(bob.key, payload)] = payload
            except ResourceExhausted as error:
                refusal = str(error)

    await asyncio.wait_for(asyncio.gather(*(sender() for _ in range(4))), 120)
    return refusal


async def test_full_disk_refuses_drains_and_recovers(
    small_disk: Path, make_user: UserFactory, caplog: pytest.LogCaptureFixture
) -> None:
    config = loopback_config(small_disk / "node", min_free_disk_bytes=FLOOR)
    node = Node(config)
    await node.start()
    wal = small_disk / "node" / "node.sqlite3-wal"
    try:
        alice = await make_user(node, "alice")
        bob = await make_user(node, "bob")
        acknowledged: dict[int, bytes] = {}

        # Under the floor: refused before the disk is full.
        refusal = await send_until_refused(alice, bob, acknowledged)
        assert refusal.startswith("resource_exhausted: disk full"), refusal
        assert len(acknowledged) > 100
        assert (await alice.client.node_status()).status.startswith("unhealthy: disk low")

        # Something else takes the rest, after the WAL was given back to the disk (an operator's checkpoint): every
        # delete now needs space that only the node's reserve has. Still a clear refusal, and the receiver still
        # drains everything.
        with contextlib.closing(sqlite3.connect(small_disk / "node" / "node.sqlite3")) as outside:
            outside.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        fill(small_disk / "filler")
        assert shutil.disk_usage(small_disk).free < PAYLOAD
        with pytest.raises(ResourceExhausted, match="disk full"):
            await alice.client.enqueue(bob.key, os.urandom(PAYLOAD))
        stored: dict[int, bytes] = {}
        while batch := await bob.client.peek_wait(bob.key, timeout_ms=0, limit=50):
            stored.update((envelope.seq, envelope.data) for envelope in batch)
            await bob.client.ack(bob.key, batch[-1].seq)
        assert stored == acknowledged
        assert any("released the 8 MiB disk reserve" in record.getMessage() for record in caplog.records)

        # Space comes back: the node takes new messages again by itself, and its health says ok.
        (small_disk / "filler").unlink()
        deadline = time.monotonic() + 10
        while True:
            try:
                seq = await alice.client.enqueue(bob.key, b"space is back")
                break
            except ResourceExhausted:
                assert time.monotonic() < deadline, "the node did not take messages again once there was space"
                await asyncio.sleep(0.1)
        assert seq == max(acknowledged) + 1
        assert [e.data for e in await bob.client.fetch(bob.key)] == [b"space is back"]
        while (status := await alice.client.health()) != "ok":
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.1)

        # The drain's WAL is given back to the disk.
        while wal.stat().st_size > WAL_TRUNCATE_BYTES:
            assert time.monotonic() < deadline, f"WAL stayed at {wal.stat().st_size} bytes"
            await asyncio.sleep(0.1)
    finally:
        await node.stop()


async def test_write_that_finds_no_space_is_refused_and_the_reserve_kept_for_drains(
    tiny_disk: Path, make_user: UserFactory
) -> None:
    """With the floor at one byte and a little space left, an enqueue reaches SQLite and finds no room: a clear
    refusal, and the reserve is not spent on it (it is only for deletions); the receiver drains everything."""
    node = Node(loopback_config(tiny_disk / "node", min_free_disk_bytes=1))
    await node.start()
    reserve = tiny_disk / "node" / "node.sqlite3.reserve"
    try:
        alice = await make_user(node, "alice")
        bob = await make_user(node, "bob")
        assert reserve.exists()
        acknowledged = {await alice.client.enqueue(bob.key, b"%d" % n): b"%d" % n for n in range(5)}
        fill(tiny_disk / "filler")
        os.truncate(tiny_disk / "filler", (tiny_disk / "filler").stat().st_size - (16 << 10))
        await asyncio.sleep(0.3)  # the node's reading of the free space is at most 0.25 s old
        with pytest.raises(ResourceExhausted, match="disk full: the node has no space"):
            await alice.client.enqueue(bob.key, os.urandom(PAYLOAD))
        assert (await alice.client.node_status()).store_failed_batches >= 1
        assert reserve.exists()
        stored: dict[int, bytes] = {}
        while batch := await bob.client.peek_wait(bob.key, timeout_ms=0, limit=2):
            stored.update((envelope.seq, envelope.data) for envelope in batch)
            await bob.client.ack(bob.key, batch[-1].seq)
        assert stored == acknowledged
    finally:
        await node.stop()
