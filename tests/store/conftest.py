"""One store suite for every backend: tests take the `store` (or `backend`) fixture and never name a backend.

Every test runs against SQLite and PostgreSQL. PostgreSQL is a throwaway cluster started once per session
(`tests/pgcluster.py`, fixtures `pg_server`/`pg_url` in tests/conftest.py), or the server named by
QPC_TEST_POSTGRES_URL; each test gets a database of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from quicnprotochat.server.store import Store
from tests.pgcluster import PgServer

from .store_testlib import Backend, FakeClock

BACKENDS = ["sqlite", "postgresql"]


@pytest_asyncio.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    server: PgServer | None = None
    if request.param == "sqlite":
        # tmp_path is absolute, so this is sqlite://// + path: the SQLAlchemy spelling of an absolute file.
        url = f"sqlite:///{tmp_path / 'store.db'}"
    elif request.param == "postgresql":
        # Requested only here, so that a run of SQLite tests alone never starts PostgreSQL.
        server = request.getfixturevalue("pg_server")
        url = await server.create_database()
    else:  # pragma: no cover - new backends register here
        raise AssertionError(request.param)
    backend = Backend(request.param, url, FakeClock())
    try:
        yield backend
    finally:
        await backend.close_all()
        if server is not None:
            await server.drop_database(url)


@pytest_asyncio.fixture
async def store(backend: Backend) -> Store:
    return await backend.open()


@pytest.fixture
def clock(backend: Backend) -> FakeClock:
    return backend.clock
