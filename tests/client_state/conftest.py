"""Helpers for the client state tests: real files under tmp_path, nothing mocked."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


def all_files(root: Path) -> Iterator[Path]:
    for directory, _dirs, files in os.walk(root):
        for name in files:
            yield Path(directory) / name


def files_containing(root: Path, *needles: bytes) -> list[tuple[str, bytes]]:
    """(file name relative to root, needle) for every needle found in the raw bytes of any file under root."""
    found: list[tuple[str, bytes]] = []
    for path in all_files(root):
        data = path.read_bytes()
        found.extend((str(path.relative_to(root)), needle) for needle in needles if needle in data)
    return found


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in all_files(root)}


def names(root: Path) -> list[str]:
    """Sorted names of every file under root (relative paths)."""
    return sorted(str(path.relative_to(root)) for path in all_files(root))


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def db_key() -> bytes:
    return os.urandom(32)
