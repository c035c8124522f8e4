"""Pinning the node's key, SSH style: a known-hosts file maps `host:port` to the node's fingerprint.

First contact is trust-on-first-use with a notice; an expected fingerprint given by the user makes it strict;
a changed fingerprint is refused with an error that says what changed and where the old one is recorded.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from quicnprotochat.common.fingerprint import fingerprints_equal, normalize_fingerprint


def default_known_hosts_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "quicnprotochat" / "known_hosts"


class FingerprintMismatch(ConnectionError):
    """The node presented a key other than the one pinned for it. Nothing was sent to it."""

    def __init__(self, address: str, presented: str, expected: str, source: str) -> None:
        super().__init__(
            f"the node at {address} presented key fingerprint {presented}, but {source} pins {expected}. "
            "This could be an attack. If the node's identity really changed, update that pin."
        )
        self.address = address
        self.presented = presented
        self.expected = expected


def _print_notice(message: str) -> None:
    print(message, file=sys.stderr)


class KnownHosts:
    def __init__(self, path: Path | None = None, notice: Callable[[str], None] = _print_notice) -> None:
        self.path = path if path is not None else default_known_hosts_path()
        self._notice = notice

    def entries(self) -> dict[str, tuple[str, int]]:
        """address -> (fingerprint, line number)."""
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return {}
        entries: dict[str, tuple[str, int]] = {}
        for number, line in enumerate(lines, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            parts = text.split()
            if len(parts) != 2:
                raise ValueError(f"{self.path}:{number}: expected `host:port fingerprint`")
            try:
                entries[parts[0]] = (normalize_fingerprint(parts[1]), number)
            except ValueError as error:
                raise ValueError(f"{self.path}:{number}: {error}") from None
        return entries

    def lookup(self, address: str) -> str | None:
        entry = self.entries().get(address)
        return entry[0] if entry else None

    def add(self, address: str, fingerprint: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(f"{address} {normalize_fingerprint(fingerprint)}\n")

    def verify(self, address: str, presented: str, expected: str | None = None) -> None:
        """Accepts `presented` for `address` or raises FingerprintMismatch; records first contacts."""
        presented = normalize_fingerprint(presented)
        if expected is not None:
            expected = normalize_fingerprint(expected)
            if not fingerprints_equal(presented, expected):
                raise FingerprintMismatch(address, presented, expected, "--server-fingerprint")
        entry = self.entries().get(address)
        if entry is not None:
            pinned, line = entry
            if not fingerprints_equal(presented, pinned):
                raise FingerprintMismatch(address, presented, pinned, f"{self.path} line {line}")
            return
        self.add(address, presented)
        if expected is None:
            self._notice(
                f"First contact with {address}: trusting its key fingerprint {presented} and recording it in "
                f"{self.path}. Compare it with `qpc-server info` on the node."
            )
