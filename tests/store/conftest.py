"""One store suite for every backend: tests take the `store` (or `backend`) fixture and never name a backend.

A PostgreSQL backend is added later as another `backend` param, not as a copy of the tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from quicnprotochat.server.store import Store

from .store_testlib import Backend, FakeClock

BACKENDS = ["sqlite"]


@pytest_asyncio.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        # tmp_path is absolute, so this is sqlite://// + path: the SQLAlchemy spelling of an absolute file.
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:  # pragma: no cover - new backends register here
        raise AssertionError(request.param)
    backend = Backend(request.param, url, FakeClock())
    try:
        yield backend
    finally:
        await backend.close_all()


@pytest_asyncio.fixture
async def store(backend: Backend) -> Store:
    return await backend.open()


@pytest.fixture
def clock(backend: Backend) -> FakeClock:
    return backend.clock
