"""Free space where the node writes, and the floor below which it refuses new data.

SQLite needs room to write: a full disk fails every write, deletions included (they grow the WAL too). The node
refuses new messages while free space is under a configurable floor, so that what remains is enough for
receivers to drain their inboxes and for the WAL to be checkpointed; once space is back, enqueues work again.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from quicnprotochat.common.errors import ResourceExhausted

REFRESH_S = 0.25
"""statvfs is cheap but not free: one reading serves every enqueue for this long."""


class DiskSpace:
    def __init__(
        self,
        path: Path,
        floor_bytes: int,
        *,
        guards_writes: bool = True,
        reusable: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._reusable = reusable
        """Space the store freed inside its own files (counts as free: new messages reuse it first)."""
        self.floor_bytes = floor_bytes
        self.guards_writes = guards_writes
        """False where the node's data does not live on this disk (PostgreSQL): reported, not enforced."""
        self._clock = clock
        self._read_at = -REFRESH_S
        self._free = 0

    @property
    def path(self) -> Path:
        return self._path

    def free_bytes(self) -> int:
        """Free space on the disk, plus what the store can reuse inside its files."""
        now = self._clock()
        if now - self._read_at >= REFRESH_S:
            try:
                self._free = shutil.disk_usage(self._path).free + self._reusable()
            except OSError:
                self._free = 0
            self._read_at = now
        return self._free

    @property
    def low(self) -> bool:
        return self.free_bytes() < self.floor_bytes

    def check_room(self) -> None:
        """Refuses new data while free space is under the floor (where the store lives on this disk)."""
        if self.guards_writes and self.low:
            raise ResourceExhausted(
                f"disk full: {self.free_bytes() >> 20} MiB free on the node, under its floor of "
                f"{self.floor_bytes >> 20} MiB; not stored, retry later"
            )


def store_disk_path(store_location: str, data_dir: Path) -> tuple[Path, bool]:
    """Where a store keeps its data on this machine, and whether that is the store itself (SQLite) or only the
    node's data dir (PostgreSQL keeps its data on the database server)."""
    from quicnprotochat.server.store import sqlite_path_from_url

    path = sqlite_path_from_url(store_location)
    if path is None:
        return data_dir, False
    return Path(os.path.abspath(path)).parent, True
