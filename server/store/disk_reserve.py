"""Space held back for draining: a file the SQLite writer gives up when the disk is full.

The node refuses new messages under its free-space floor, but something else can still fill the disk (another
process, the WAL of a burst). SQLite then fails every write, deletions included, so receivers could not drain
and nothing would ever free space. This file is that space: deleted when a write fails for lack of space (the
write is tried again at once), made again once the disk has room for it three times over.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path


class DiskReserve:
    """Used from the store's writer thread only."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size

    @property
    def held(self) -> bool:
        return self.path.exists()

    def ensure(self) -> bool:
        """Creates the reserve when missing and the disk has room; whether it is held now."""
        if self.held:
            return True
        try:
            if shutil.disk_usage(self.path.parent).free < 3 * self.size:
                return False
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)
            finally:
                os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                self.path.unlink()
            return False
        return True

    def release(self) -> bool:
        """Gives the space back to the disk; False if there was none held."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True
