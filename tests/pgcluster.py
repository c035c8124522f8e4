"""PostgreSQL for the tests: a server to create a database per test on.

The cluster itself (`PgCluster`, `find_bin_dir`) lives in the installed package, `quicnprotochat.bench.pgcluster`,
so that `qpc-bench --pg-cluster` can start one too. What is here is test-specific: `server_for_tests()` is what
fixtures use: the server named by `QPC_TEST_POSTGRES_URL` if set (its role must be allowed to CREATE DATABASE),
else a cluster started here (fsync off), else None with the reason; `PgServer` makes and drops the databases.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from urllib.parse import urlsplit

from quicnprotochat.bench.pgcluster import ENV_BIN, PgCluster, create_database, find_bin_dir, with_database

__all__ = ["ENV_BIN", "ENV_URL", "PgCluster", "PgServer", "find_bin_dir", "server_for_tests", "with_database"]

ENV_URL = "QPC_TEST_POSTGRES_URL"


@dataclass
class PgServer:
    """A server that tests may create databases on; `cluster` is set when it was started here."""

    admin_url: str
    cluster: PgCluster | None = None

    def new_database_name(self) -> str:
        return f"qpc_test_{os.getpid()}_{secrets.token_hex(4)}"

    async def create_database(self) -> str:
        """Create an empty database and return its URL."""
        return await create_database(self.admin_url, self.new_database_name())

    async def drop_database(self, url: str) -> None:
        import asyncpg  # type: ignore[import-untyped]

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
