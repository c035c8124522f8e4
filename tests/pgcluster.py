"""A throwaway PostgreSQL cluster for tests and benchmarks, plus per-test databases.

`PgCluster.start()` runs initdb and pg_ctl from a local PostgreSQL installation (Debian: postgresql-15, binaries in
/usr/lib/postgresql/15/bin) in a fresh temporary directory, listening on 127.0.0.1 with a free port and on a unix
socket in the same directory, trust authentication for the `postgres` role. PostgreSQL refuses to run as root, so
when the tests run as root the server is run as the `postgres` OS user (`runuser`).

`server_for_tests()` is what fixtures use: the server named by `QPC_TEST_POSTGRES_URL` if set (its role must be
allowed to CREATE DATABASE), else a cluster started here, else None with the reason.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ENV_URL = "QPC_TEST_POSTGRES_URL"
ENV_BIN = "QPC_TEST_POSTGRES_BIN"
"""Optional: the folder holding initdb and pg_ctl, when they are not in a standard place."""

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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_database(url: str, database: str) -> str:
    """The same server URL naming another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


@dataclass
class PgCluster:
    """A private PostgreSQL server in a temporary directory. Use as a context manager or call start/stop."""

    bin_dir: Path
    fsync: bool = False
    """Off by default: tests need no crash durability from the server, and fsync-free commits keep them fast.
    Benchmarks of commit costs must pass fsync=True."""
    base: Path | None = None
    port: int = 0

    @property
    def url(self) -> str:
        """The superuser URL of the `postgres` maintenance database."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_server_user(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        # Root may not run PostgreSQL; its Debian package creates the `postgres` user.
        try:
            pwd.getpwnam("postgres")
        except KeyError as exc:
            raise RuntimeError("running as root, but there is no `postgres` OS user to run the server as") from exc
        return ["runuser", "-u", "postgres", "--"]

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
        self.base = Path(tempfile.mkdtemp(prefix="qpc-pg-"))
        try:
            if os.geteuid() == 0:
                user = pwd.getpwnam("postgres")
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
            settings = [
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.base}",
                "-c max_connections=200",
                "-c shared_buffers=32MB",
                f"-c fsync={'on' if self.fsync else 'off'}",
                f"-c full_page_writes={'on' if self.fsync else 'off'}",
            ]
            last_error: Exception | None = None
            for _ in range(5):  # the free port can be taken between probing and binding
                self.port = _free_port()
                try:
                    self._run(
                        str(self.bin_dir / "pg_ctl"),
                        "-D",
                        str(data),
                        "-l",
                        str(self.base / "server.log"),
                        "-w",
                        "-t",
                        str(_START_TIMEOUT),
                        "-o",
                        " ".join([*settings, f"-p {self.port}"]),
                        "start",
                    )
                except RuntimeError as exc:
                    last_error = exc
                    continue
                return self
            raise RuntimeError(f"could not start PostgreSQL: {last_error}; log: {self.log_tail()}")
        except BaseException:
            self.stop()
            raise

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


@dataclass
class PgServer:
    """A server that tests may create databases on; `cluster` is set when it was started here."""

    admin_url: str
    cluster: PgCluster | None = None

    def new_database_name(self) -> str:
        return f"qpc_test_{os.getpid()}_{secrets.token_hex(4)}"

    async def create_database(self) -> str:
        """Create an empty database and return its URL."""
        import asyncpg  # type: ignore[import-untyped]

        name = self.new_database_name()
        conn = await asyncpg.connect(self.admin_url)
        try:
            # template0 and the name are ours (no user input); FILE_COPY is the fast strategy for tiny templates.
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
        finally:
            await conn.close()
        return with_database(self.admin_url, name)

    async def drop_database(self, url: str) -> None:
        import asyncpg

        name = urlsplit(url).path.lstrip("/")
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()


def server_for_tests() -> tuple[PgServer | None, str]:
    """A server to test against, or None and why not."""
    if url := os.environ.get(ENV_URL):
        return PgServer(url), ""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        return None, (
            f"PostgreSQL not available: no initdb/pg_ctl found (install Debian's postgresql-15, "
            f"or set {ENV_BIN} or {ENV_URL})"
        )
    cluster = PgCluster(bin_dir)
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return None, f"PostgreSQL could not be started from {bin_dir}: {exc}"
    return PgServer(cluster.url, cluster), ""
