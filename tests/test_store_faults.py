"""The store writers cannot die: an unexpected exception fails the batch in hand with an answer to every caller,
and the writer (restarted by its supervisor if it ended) goes on with the next batch.

The exceptions are injected from here, on the running node's writer, not through hooks in the production classes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from quicnprotochat.common.errors import Unavailable, UnknownOutcome
from quicnprotochat.server.node import Node
from tests.conftest import UserFactory, loopback_config


class Injected(Exception):
    """An exception no store code expects."""


class InjectedFatal(BaseException):
    """Not even an Exception: it ends whatever loop it reaches, as a bug in the writer itself would."""


class FaultyConnection:
    """An sqlite3 connection that raises `exc` once, on the statement `when`."""

    def __init__(self, conn: sqlite3.Connection, when: str, exc: BaseException) -> None:
        self._conn = conn
        self._when = when
        self._exc: BaseException | None = exc

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == self._when and self._exc is not None:
            exc, self._exc = self._exc, None
            raise exc
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def _writer(node: Node) -> Any:
    assert node.state is not None
    return node.state.store._writer  # type: ignore[attr-defined]


async def _status(node: Node) -> dict[str, Any]:
    assert node.state is not None
    return await node.state.status()


async def test_sqlite_writer_survives_unexpected_exceptions(node: Node, make_user: UserFactory) -> None:
    alice = await make_user(node, "alice")
    bob = await make_user(node, "bob")
    alice.client.retry_delays = ()  # every answer of the node is seen here, not retried away
    assert await alice.client.enqueue(bob.key, b"before") == 1
    writer = _writer(node)
    real = writer._conn

    # During COMMIT: nobody can say whether it landed, and the caller is told exactly that.
    writer._conn = FaultyConnection(real, "COMMIT", Injected("injected at commit"))
    with pytest.raises(UnknownOutcome):
        await alice.client.enqueue(bob.key, b"at commit")
    assert await alice.client.enqueue(bob.key, b"after commit fault") == 2

    # Something that ends the writer's loop itself: the supervisor answers the batch and starts it again.
    writer._conn = FaultyConnection(real, "BEGIN IMMEDIATE", InjectedFatal())
    with pytest.raises(Unavailable):
        await alice.client.enqueue(bob.key, b"loop killed")
    writer._conn = real
    assert await alice.client.enqueue(bob.key, b"after restart") == 3
    status = await _status(node)
    assert status["storeWriterRestarts"] == 1
    assert status["storeFailedBatches"] >= 1
    assert status["storeWriterAlive"] and status["status"] == "ok"
    assert [e.data for e in await bob.client.fetch(bob.key)] == [b"before", b"after commit fault", b"after restart"]

    # The client's own retries: "not stored" is sent again by itself; an unknown outcome without a key is not.
    alice.client.retry_delays = (0.05,)
    writer._conn = FaultyConnection(real, "BEGIN IMMEDIATE", Injected("injected before the transaction"))
    assert await alice.client.enqueue(bob.key, b"retried") == 4
    writer._conn = FaultyConnection(real, "COMMIT", Injected("injected at commit"))
    with pytest.raises(UnknownOutcome):
        await alice.client.enqueue(bob.key, b"unknown")
    writer._conn = real
    assert [e.data for e in await bob.client.fetch(bob.key)] == [b"retried"]


def _inject_once(writer: Any, exc: BaseException) -> None:
    original: Callable[..., Awaitable[None]] = writer._run_transaction

    async def faulty(*args: Any) -> None:
        writer._run_transaction = original
        raise exc

    writer._run_transaction = faulty


async def test_postgres_writer_survives_unexpected_exceptions(
    pg_url: str, tmp_path: Path, make_user: UserFactory
) -> None:
    node = Node(loopback_config(tmp_path / "node", store=pg_url))
    await node.start()
    try:
        alice = await make_user(node, "alice")
        bob = await make_user(node, "bob")
        alice.client.retry_delays = ()  # every answer of the node is seen here, not retried away
        assert await alice.client.enqueue(bob.key, b"before") == 1
        writer = _writer(node)

        _inject_once(writer, Injected("injected in the transaction"))
        with pytest.raises(Unavailable):
            await alice.client.enqueue(bob.key, b"bug in the batch")
        assert await alice.client.enqueue(bob.key, b"after the bug") == 2

        _inject_once(writer, InjectedFatal())
        with pytest.raises(Unavailable):
            await alice.client.enqueue(bob.key, b"task killed")
        assert await alice.client.enqueue(bob.key, b"after restart") == 3
        status = await _status(node)
        assert status["storeWriterRestarts"] == 1
        assert status["storeWriterAlive"] and status["status"] == "ok"
        assert [e.data for e in await bob.client.fetch(bob.key)] == [b"before", b"after the bug", b"after restart"]
    finally:
        await node.stop()
