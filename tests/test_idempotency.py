"""Idempotent enqueue: the answer to an enqueue is lost with its connection (for real: a TCP proxy swallows the
node's reply, then cuts the connection), and the retry with the same key is stored once and gets the first seq.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from quicnprotochat.client import KnownHosts, NodeClient, accounts
from quicnprotochat.common.errors import Disconnected, InvalidArgument
from quicnprotochat.native import Vault
from quicnprotochat.server.node import Node
from tests.conftest import FakeClock, User, UserFactory, loopback_config, node_address


class CuttingProxy:
    """Forwards TCP to the node. While `swallow` is set, what the node sends is dropped; `cut()` ends every
    connection (and stops swallowing), as a network failure would."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._pumps: set[asyncio.Task[None]] = set()
        self.swallow = False
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        node_reader, node_writer = await asyncio.open_connection(*self._target)
        self._writers += [client_writer, node_writer]
        for pump in (self._pump(client_reader, node_writer, False), self._pump(node_reader, client_writer, True)):
            task = asyncio.ensure_future(pump)
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, from_node: bool) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if from_node and self.swallow:
                    continue
                writer.write(data)
                await writer.drain()
        writer.close()

    def cut(self) -> None:
        self.swallow = False
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._pumps):
            task.cancel()


@pytest.fixture(params=["sqlite", "postgresql"])
async def keyed_node(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Node]:
    store = ""
    pg_server = request.getfixturevalue("pg_server") if request.param == "postgresql" else None
    if pg_server is not None:
        store = await pg_server.create_database()
    node = Node(loopback_config(tmp_path / "node", store=store))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()
        if pg_server is not None:
            await pg_server.drop_database(store)


@pytest.fixture
async def proxy(keyed_node: Node) -> AsyncIterator[CuttingProxy]:
    started = CuttingProxy(node_address(keyed_node, "tcp"))
    await started.start()
    try:
        yield started
    finally:
        await started.close()


async def through_proxy(node: Node, proxy: CuttingProxy, tmp_path: Path, name: str) -> NodeClient:
    vault = Vault.open(str(tmp_path / f"vault-{name}.sqlite"), os.urandom(32))
    client = NodeClient(
        f"127.0.0.1:{proxy.port}",
        transport="tcp",
        known_hosts=KnownHosts(tmp_path / "known_hosts", notice=lambda _m: None),
        server_fingerprint=node.fingerprint,
    )
    await accounts.register(client, vault, name, "pw")
    await accounts.login(client, vault, name, "pw")
    return client


async def answer_lost(proxy: CuttingProxy, sending: asyncio.Future[int], bob: User, stored: int) -> None:
    """Waits until the node has stored the message whose answer the proxy swallows, then cuts the connection."""
    for _ in range(500):
        if len(await bob.client.peek(bob.key)) == stored:
            break
        await asyncio.sleep(0.01)
    assert len(await bob.client.peek(bob.key)) == stored
    assert not sending.done()
    proxy.cut()


async def test_retry_with_the_same_key_is_stored_once(
    keyed_node: Node, proxy: CuttingProxy, tmp_path: Path, make_user: UserFactory
) -> None:
    bob = await make_user(keyed_node, "bob")
    alice = await through_proxy(keyed_node, proxy, tmp_path, "alice")
    try:
        key = os.urandom(16)
        proxy.swallow = True
        sending = asyncio.ensure_future(alice.enqueue(bob.key, b"exactly once", idempotency_key=key))
        await answer_lost(proxy, sending, bob, 1)
        # The client saw Disconnected, reconnected and sent the same enqueue with the same key.
        seq = await asyncio.wait_for(sending, 10)
        queued = await bob.client.peek(bob.key)
        assert [(e.seq, e.data) for e in queued] == [(seq, b"exactly once")]
        # Later repeats get the same answer; another message under that key is refused.
        assert await alice.enqueue(bob.key, b"exactly once", idempotency_key=key) == seq
        with pytest.raises(InvalidArgument, match="idempotencyKey"):
            await alice.enqueue(bob.key, b"something else", idempotency_key=key)
        assert await alice.batch_enqueue([bob.key], b"batch", idempotency_key=b"k2") == [seq + 1]
        assert await alice.batch_enqueue([bob.key], b"batch", idempotency_key=b"k2") == [seq + 1]
        assert len(await bob.client.peek(bob.key)) == 2

        # Without a key the client cannot know, so it does not retry: the caller hears of the lost answer.
        proxy.swallow = True
        sending = asyncio.ensure_future(alice.enqueue(bob.key, b"no key"))
        await answer_lost(proxy, sending, bob, 3)
        with pytest.raises(Disconnected):
            await asyncio.wait_for(sending, 10)
        assert [e.data for e in await bob.client.peek(bob.key)] == [b"exactly once", b"batch", b"no key"]
    finally:
        await alice.close()


async def test_keys_are_forgotten_after_their_window(tmp_path: Path, make_user: UserFactory) -> None:
    clock = FakeClock(time.time())
    node = Node(loopback_config(tmp_path / "node", idempotency_window_s=60), clock=clock)
    await node.start()
    try:
        alice = await make_user(node, "alice")
        bob = await make_user(node, "bob")
        assert await alice.client.enqueue(bob.key, b"m", idempotency_key=b"k") == 1
        clock.advance(59)
        assert await alice.client.enqueue(bob.key, b"m", idempotency_key=b"k") == 1
        clock.advance(2)
        # Past the window the key is unknown again: the same request is a new message.
        assert await alice.client.enqueue(bob.key, b"m", idempotency_key=b"k") == 2
        assert node.state is not None
        assert await node.state.store.purge_expired_idempotency_keys() == 0  # the live one (re-stored at 61 s)
        clock.advance(61)
        assert await node.state.store.purge_expired_idempotency_keys() == 1
    finally:
        await node.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_sender_keeps_at_most_its_cap_of_keys(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, make_user: UserFactory
) -> None:
    pg_server = request.getfixturevalue("pg_server") if backend == "postgresql" else None
    store = await pg_server.create_database() if pg_server is not None else ""
    node = Node(loopback_config(tmp_path / "node", store=store, max_idempotency_keys_per_sender=3))
    await node.start()
    try:
        alice = await make_user(node, "alice")
        bob = await make_user(node, "bob")
        for n in range(1, 5):
            assert await alice.client.enqueue(bob.key, b"%d" % n, idempotency_key=b"k%d" % n) == n
        # The newest three are remembered; the oldest was forgotten to stay within the cap.
        for n in (2, 3, 4):
            assert await alice.client.enqueue(bob.key, b"%d" % n, idempotency_key=b"k%d" % n) == n
        assert await alice.client.enqueue(bob.key, b"1", idempotency_key=b"k1") == 5
        # Another sender has a cap of its own.
        assert await bob.client.enqueue(alice.key, b"x", idempotency_key=b"k1") == 1
    finally:
        await node.stop()
        if pg_server is not None:
            await pg_server.drop_database(store)
