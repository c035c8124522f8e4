"""Owner-only files: atomic replacement, create-once, best-effort scrubbing of replaced plaintext."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
_SCRUB_CHUNK = 1 << 16


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new_private(path: Path, data: bytes) -> None:
    """Write `data` to a new file (O_EXCL) created mode 0600, and fsync it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # umask can only narrow the mode; make it exactly 0600
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_sibling(path: Path, purpose: str) -> Path:
    """A fresh, hidden name next to `path` (same directory, so that os.replace is atomic)."""
    return path.with_name(f".{path.name}.{purpose}-{secrets.token_hex(6)}")


def atomic_write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically: a crash leaves either the old or the new content, mode 0600."""
    tmp = temp_sibling(path, "tmp")
    try:
        _write_new_private(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def create_once_private(path: Path, data: bytes) -> bytes:
    """Create `path` with `data` (mode 0600) unless it exists; return what `path` holds afterwards.

    The content is written to a temporary file and hard-linked into place, so a reader never sees a partial
    file and two concurrent creators agree on one content (the loser reads the winner's).
    """
    tmp = temp_sibling(path, "new")
    try:
        _write_new_private(tmp, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return path.read_bytes()
        fsync_dir(path.parent)
        return data
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def scrub_fd(fd: int) -> None:
    """Overwrite an open file's content with zeros and fsync (best effort: SSDs and copy-on-write
    filesystems may keep the old blocks elsewhere)."""
    size = os.fstat(fd).st_size
    zeros = bytes(min(size, _SCRUB_CHUNK))
    os.lseek(fd, 0, os.SEEK_SET)
    remaining = size
    while remaining > 0:
        remaining -= os.write(fd, zeros[: min(remaining, len(zeros))])
    os.fsync(fd)


def scrub_and_unlink(path: Path) -> None:
    """Zero `path` (best effort, see `scrub_fd`) and remove it; a missing file is fine."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return
    try:
        scrub_fd(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) with the leaf mode 0700; tighten the leaf to 0700 if it already exists."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != PRIVATE_DIR_MODE:
        path.chmod(PRIVATE_DIR_MODE)
