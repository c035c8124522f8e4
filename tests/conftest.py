"""Fixtures shared by the test suite: real nodes on loopback ports, real clients, temporary data dirs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from quicnprotochat.client import KnownHosts, NodeClient
from quicnprotochat.server.config import NodeConfig
from quicnprotochat.server.node import Node

ClientFactory = Callable[..., Awaitable[NodeClient]]


def loopback_config(data_dir: Path, **settings: Any) -> NodeConfig:
    return replace(NodeConfig(data_dir=data_dir, quic_listen="127.0.0.1:0", tcp_listen="127.0.0.1:0"), **settings)


@pytest.fixture
def node_config(tmp_path: Path) -> NodeConfig:
    return loopback_config(tmp_path / "node")


@pytest.fixture
async def node(node_config: NodeConfig) -> AsyncIterator[Node]:
    started = Node(node_config)
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


@pytest.fixture
def notices() -> list[str]:
    return []


@pytest.fixture
def known_hosts(tmp_path: Path, notices: list[str]) -> KnownHosts:
    return KnownHosts(tmp_path / "known_hosts", notice=notices.append)


def node_address(node: Node, transport: str) -> str:
    address = node.quic_address if transport == "quic" else node.tcp_address
    assert address is not None
    return f"{address[0]}:{address[1]}"


@pytest.fixture
async def connect(known_hosts: KnownHosts) -> AsyncIterator[ClientFactory]:
    """Opens clients to a node; all are closed when the test ends."""
    opened: list[NodeClient] = []

    async def factory(node: Node, transport: str = "quic", **options: Any) -> NodeClient:
        options.setdefault("known_hosts", known_hosts)
        client = NodeClient(node_address(node, transport), transport=transport, **options)  # type: ignore[arg-type]
        opened.append(client)
        await client.connect()
        return client

    yield factory
    for client in opened:
        await client.close()
