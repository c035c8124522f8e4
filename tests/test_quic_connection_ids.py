"""A QUIC connection's end costs its own connection ids, not every id of every connection (aioquic's server walks
them all, which makes a mass disconnect O(N²)); and the ids of connections that came and went are all gone."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aioquic.asyncio.client import connect as quic_connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration

from quicnprotochat.client import NodeClient
from quicnprotochat.common.schema import ALPN
from quicnprotochat.server.node import Node
from quicnprotochat.server.quic_connection_ids import ConnectionIdMap
from tests.conftest import ClientFactory, loopback_config
from tests.test_metrics import scrape

CLIENTS = 24
RAW = 3
ID_CHANGES = 4  # per raw connection: each retires an id the node issued, and the node issues another


@dataclass
class Termination:
    ids_before: int
    ids_after: int
    walked: int


@dataclass
class WalkCounter:
    """Counts the map entries iterated over (items, keys, values or plain iteration) inside each termination."""

    walked: int = 0
    terminations: list[Termination] = field(default_factory=list)


def install_counters(server: Any) -> WalkCounter:
    """Replaces the server's (still empty) connection-id map with one of the same class that counts the entries
    anything iterates over, and wraps the server's termination handler (aioquic binds it to each new connection)."""
    counter = WalkCounter()

    def counted(entries: Iterator[Any]) -> Iterator[Any]:
        for entry in entries:
            counter.walked += 1
            yield entry

    base: type[dict[bytes, QuicConnectionProtocol]] = type(server._protocols)
    assert not server._protocols, "install before any connection opens"

    class CountingMap(base):  # type: ignore[valid-type,misc]
        def __iter__(self) -> Iterator[bytes]:
            return counted(super().__iter__())

        def items(self) -> Any:
            return list(counted(iter(super().items())))

        def keys(self) -> Any:
            return list(counted(iter(super().keys())))

        def values(self) -> Any:
            return list(counted(iter(super().values())))

    server._protocols = CountingMap()
    terminated = server._connection_terminated

    def wrapper(protocol: QuicConnectionProtocol) -> None:
        before, walked = len(server._protocols), counter.walked
        terminated(protocol=protocol)
        counter.terminations.append(Termination(before, len(server._protocols), counter.walked - walked))

    server._connection_terminated = wrapper
    return counter


async def eventually(condition: Any, what: str, tries: int = 750) -> None:
    """Polls `condition` every 20 ms, up to 15 s by default."""
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(what)


async def change_ids(protocol: QuicConnectionProtocol, changes: int) -> None:
    """Moves a plain aioquic client to a new connection id of the node's `changes` times (retiring each old one),
    pinging after each so that the node has seen the retirement and issued a replacement."""
    for _ in range(changes):
        protocol.change_connection_id()
        await protocol.ping()


@pytest.mark.parametrize("retry", [False, True], ids=["no-retry", "retry"])
async def test_a_termination_walks_only_its_own_connection_ids(
    tmp_path: Path, connect: ClientFactory, retry: bool
) -> None:
    node = Node(loopback_config(tmp_path / "n", quic_retry=retry, tcp_listen="", metrics_listen="127.0.0.1:0"))
    await node.start()
    try:
        listener = node._quic  # the test reads the node's QUIC listener and aioquic server; production never does
        assert listener is not None and listener._server is not None and node.quic_address is not None
        server = listener._server
        counter = install_counters(server)

        clients: list[NodeClient] = []
        for _ in range(CLIENTS):
            client = await connect(node)
            assert await client.health() == "ok"
            clients.append(client)
        async with contextlib.AsyncExitStack() as raw:
            # Ids issued and retired over a connection's life: plain aioquic connections that change theirs.
            configuration = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE)
            for _ in range(RAW):
                protocol = await raw.enter_async_context(quic_connect(*node.quic_address, configuration=configuration))
                await change_ids(protocol, ID_CHANGES)
            held = len(server._protocols)
            assert held >= 8 * (CLIENTS + RAW), held  # each connection: its initial id and the ids the node issued
            assert listener.connection_ids == held
            assert (await scrape(node))[("qpc_quic_connection_ids", ())] == held
            for client in clients:
                await client.close()
        await eventually(lambda: listener.connections == 0 and listener.connection_ids == 0, "every id dropped")

        assert len(counter.terminations) == CLIENTS + RAW
        for ended in counter.terminations:
            dropped = ended.ids_before - ended.ids_after
            # Its own ids and none of the others': the (at most 8) ids the node issued and still holds, retired ones
            # gone, plus the client's initial destination id (the Retry's source id with retry).
            assert 2 <= dropped <= 9, ended
            # aioquic's own handler walks every entry of the map here: hundreds while the clients close.
            assert ended.walked <= dropped, (ended, held)
        assert isinstance(server._protocols, ConnectionIdMap) and server._protocols.connections == 0
        assert (await scrape(node))[("qpc_quic_connection_ids", ())] == 0
        # The node still serves new connections after all that.
        assert await (await connect(node)).health() == "ok"
    finally:
        await node.stop()


def test_the_map_drops_only_ids_still_leading_to_the_connection() -> None:
    first, second = object(), object()
    ids = ConnectionIdMap()
    ids[b"a"] = first  # type: ignore[assignment]
    ids[b"b"] = first  # type: ignore[assignment]
    ids[b"b"] = second  # type: ignore[assignment]  # re-pointed: now the second connection's
    ids[b"c"] = second  # type: ignore[assignment]
    del ids[b"c"]  # retired
    assert ids.drop(first) == 1  # type: ignore[arg-type]
    assert dict(ids) == {b"b": second} and ids.connections == 1
    assert ids.drop(second) == 1 and not ids and ids.connections == 0  # type: ignore[arg-type]
    ids[b"d"] = first  # type: ignore[assignment]
    ids.clear()
    assert ids.connections == 0 and ids.drop(first) == 0  # type: ignore[arg-type]
