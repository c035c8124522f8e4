"""A throwaway PostgreSQL cluster: for `qpc-bench --pg-cluster`, `bench/store_bench.py --pg-cluster` and the tests.

`PgCluster.start()` runs initdb and pg_ctl from a local PostgreSQL installation (Debian: postgresql-15, binaries in
/usr/lib/postgresql/15/bin) in a fresh directory (under `parent`, or the system's temporary directory), listening
on 127.0.0.1 with a free port and on a unix socket in the same directory, trust authentication for the `postgres`
role. PostgreSQL refuses to run as root, so when run as root the server is run as the `postgres` OS user
(`runuser`); the cluster's directory is then owned by that user, and `parent` must be reachable by it.
`stop()` stops the server and removes the directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ENV_BIN = "QPC_TEST_POSTGRES_BIN"
"""Optional: the folder holding initdb and pg_ctl, when they are not in a standard place (tests and benchmarks)."""

SERVER_USER = "postgres"
_START_TIMEOUT = 60


def find_bin_dir() -> Path | None:
    """The folder with initdb and pg_ctl: $QPC_TEST_POSTGRES_BIN, the newest /usr/lib/postgresql/*/bin, or PATH."""
    candidates: list[Path] = []
    if explicit := os.environ.get(ENV_BIN):
        candidates.append(Path(explicit))
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = sorted(
            (p for p in debian.iterdir() if p.name.isdigit()),
            key=lambda p: int(p.name),
            reverse=True,
        )
        candidates.extend(p / "bin" for p in versions)
    if found := shutil.which("initdb"):
        candidates.append(Path(found).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_database(url: str, database: str) -> str:
    """The same server URL naming another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def redact(url: str) -> str:
    """A store URL without its password, for reports and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def create_database(admin_url: str, name: str) -> str:
    """Creates an empty database `name` (ours, never user input) on the server of `admin_url`; returns its URL."""
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(admin_url)
    try:
        # template0; FILE_COPY is the fast strategy for tiny templates.
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
    finally:
        await conn.close()
    return with_database(admin_url, name)


def _unreachable_by_server_user(folder: Path) -> Path | None:
    """The first folder on the way to `folder` that the server user may not enter (we run as root), if any."""
    user = pwd.getpwnam(SERVER_USER)
    for part in [*reversed(folder.resolve().parents), folder.resolve()]:
        mode = part.stat()
        if mode.st_uid == user.pw_uid:
            allowed = bool(mode.st_mode & stat.S_IXUSR)
        elif mode.st_gid == user.pw_gid:
            allowed = bool(mode.st_mode & stat.S_IXGRP)
        else:
            allowed = bool(mode.st_mode & stat.S_IXOTH)
        if not allowed:
            return part
    return None


@dataclass
class PgCluster:
    """A private PostgreSQL server in its own directory. Use as a context manager or call start/stop."""

    bin_dir: Path
    fsync: bool = False
    """Off by default: tests need no crash durability from the server, and fsync-free commits keep them fast.
    Benchmarks of commit costs must pass fsync=True."""
    base: Path | None = None
    port: int = 0
    parent: Path | None = None
    """Where the cluster's directory is made (default: the system's temporary directory)."""
    max_connections: int = 200

    @property
    def url(self) -> str:
        """The superuser URL of the `postgres` maintenance database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def settings(self) -> dict[str, str]:
        return {"fsync": "on" if self.fsync else "off", "full_page_writes": "on" if self.fsync else "off"}

    def _as_server_user(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        # Root may not run PostgreSQL; its Debian package creates the `postgres` user.
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError as exc:
            raise RuntimeError("running as root, but there is no `postgres` OS user to run the server as") from exc
        return ["runuser", "-u", SERVER_USER, "--"]

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [*self._as_server_user(), *args],
            capture_output=True,
            text=True,
            timeout=_START_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({result.returncode}): {result.stderr or result.stdout}")

    def start(self) -> PgCluster:
        if os.geteuid() == 0 and self.parent is not None:
            self._as_server_user()
            if (blocked := _unreachable_by_server_user(self.parent)) is not None:
                raise RuntimeError(
                    f"the PostgreSQL server runs as the `{SERVER_USER}` user, which may not enter {blocked} "
                    f"(mode {blocked.stat().st_mode & 0o777:o}): put the cluster elsewhere or allow it (chmod o+x)"
                )
        self.base = Path(tempfile.mkdtemp(prefix="qpc-pg-", dir=self.parent))
        try:
            if os.geteuid() == 0:
                user = pwd.getpwnam(SERVER_USER)
                os.chown(self.base, user.pw_uid, user.pw_gid)
            data = self.base / "data"
            self._run(
                str(self.bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            )
            last_error: Exception | None = None
            for _ in range(5):  # the free port can be taken between probing and binding
                self.port = free_port()
                try:
                    self._pg_ctl_start()
                except RuntimeError as exc:
                    last_error = exc
                    continue
                return self
            raise RuntimeError(f"could not start PostgreSQL: {last_error}; log: {self.log_tail()}")
        except BaseException:
            self.stop()
            raise

    def _pg_ctl_start(self) -> None:
        assert self.base is not None
        settings = [
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.base}",
            f"-c max_connections={self.max_connections}",
            "-c shared_buffers=32MB",
            *(f"-c {name}={value}" for name, value in self.settings.items()),
            f"-p {self.port}",
        ]
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.base / "data"),
            "-l",
            str(self.base / "server.log"),
            "-w",
            "-t",
            str(_START_TIMEOUT),
            "-o",
            " ".join(settings),
            "start",
        )

    def kill_server(self) -> None:
        """SIGKILL the postmaster, as a crash would; its backends notice and exit by themselves."""
        pid = self.server_pid()
        if pid is None:
            raise RuntimeError("the PostgreSQL server is not running")
        os.kill(pid, signal.SIGKILL)

    def restart(self, timeout: float = _START_TIMEOUT) -> None:
        """Start the server again on the same port and data after `kill_server` (crash recovery runs).

        PostgreSQL refuses to start while backends of the killed postmaster still hold its shared memory; they
        exit within moments of noticing, so the start is retried until `timeout`.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._pg_ctl_start()
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def server_pid(self) -> int | None:
        """The postmaster's pid (its backends are its children), from postmaster.pid; None when not running."""
        if self.base is None:
            return None
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.base / "data" / "postmaster.pid").read_text().splitlines()[0])
        return None

    def log_tail(self, lines: int = 20) -> str:
        if self.base is None:
            return ""
        with contextlib.suppress(OSError):
            return "\n".join((self.base / "server.log").read_text().splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.base is None:
            return
        data = self.base / "data"
        if (data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)
        self.base = None

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
