"""A real node on loopback, called over QUIC and TLS-over-TCP by the client library."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest
from aioquic.asyncio.client import connect as quic_connect
from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509

from quicnprotochat.common.errors import Unauthenticated
from quicnprotochat.common.fingerprint import spki_fingerprint
from quicnprotochat.common.schema import node_service_methods
from quicnprotochat.server.config import NodeConfig
from quicnprotochat.server.node import Node
from quicnprotochat.server.rpc_service import NodeServiceImpl
from tests.conftest import ClientFactory

TRANSPORTS = ["quic", "tcp"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_health_and_server_info(
    node: Node, connect: ClientFactory, transport: str, node_config: NodeConfig
) -> None:
    client = await connect(node, transport)
    assert await client.health() == "ok"
    info = await client.server_info()
    certificate = x509.load_pem_x509_certificate((node_config.data_dir / "node-cert.pem").read_bytes())
    assert info.cert_fingerprint == spki_fingerprint(certificate) == node.fingerprint == client.fingerprint
    assert info.protocol_version == 1
    assert info.allow_sealed_sender is False
    assert info.limits.max_payload_bytes == node_config.max_payload_bytes
    assert info.limits.max_wait_ms == node_config.max_wait_ms


def test_every_schema_method_has_a_handler() -> None:
    # pycapnp dispatches by name; a missing handler would surface as an internal error, not a clear answer.
    for name in node_service_methods():
        assert callable(getattr(NodeServiceImpl, name, None)), name


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_errors_leave_the_connection_usable(node: Node, connect: ClientFactory, transport: str) -> None:
    client = await connect(node, transport)
    with pytest.raises(Unauthenticated):
        await client.publish_endpoint(b"k" * 32, b"addr")
    assert await client.health() == "ok"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_many_connections_many_calls(node: Node, connect: ClientFactory, transport: str) -> None:
    clients = await asyncio.gather(*(connect(node, transport) for _ in range(50)))

    async def twenty_calls(index: int) -> list[str]:
        client = clients[index]
        # Issued together, so they are in flight on one connection at once.
        return await asyncio.gather(*(client.health() for _ in range(20)))

    results = await asyncio.gather(*(twenty_calls(i) for i in range(50)))
    assert [status for batch in results for status in batch] == ["ok"] * 1000


async def test_garbage_on_tcp_ends_only_that_connection(node: Node, connect: ClientFactory) -> None:
    healthy = await connect(node, "tcp")
    assert node.tcp_address is not None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(*node.tcp_address, ssl=context)
    # A segment table claiming a huge first segment, then junk: not a Cap'n Proto message the node accepts.
    writer.write(b"\x00\x00\x00\x00\xff\xff\xff\x7f" + bytes(range(256)) * 64)
    await writer.drain()
    # The node may say why (a Cap'n Proto Abort) and then closes: read() returns only at end of stream.
    await asyncio.wait_for(reader.read(), 10)
    assert reader.at_eof()
    writer.close()
    assert await healthy.health() == "ok"
    other = await connect(node, "tcp")
    assert await other.health() == "ok"


async def test_garbage_on_quic_ends_only_that_connection(node: Node, connect: ClientFactory) -> None:
    healthy = await connect(node, "quic")
    assert node.quic_address is not None
    host, port = node.quic_address
    configuration = QuicConfiguration(is_client=True, alpn_protocols=["capnp"], verify_mode=ssl.CERT_NONE)
    async with quic_connect(host, port, configuration=configuration) as protocol:
        _reader, writer = await protocol.create_stream()
        writer.write(b"\x00\x00\x00\x00\xff\xff\xff\x7f" + bytes(range(256)) * 64)
        await asyncio.wait_for(protocol.wait_closed(), 10)
    assert await healthy.health() == "ok"
    other = await connect(node, "quic")
    assert await other.health() == "ok"


async def test_second_stream_on_one_quic_connection_is_refused(node: Node) -> None:
    assert node.quic_address is not None
    configuration = QuicConfiguration(is_client=True, alpn_protocols=["capnp"], verify_mode=ssl.CERT_NONE)
    async with quic_connect(*node.quic_address, configuration=configuration) as protocol:
        _, first = await protocol.create_stream()
        first.write(b"\x00")
        _, second = await protocol.create_stream()
        second.write(b"\x00")
        await asyncio.wait_for(protocol.wait_closed(), 10)


async def test_wrong_alpn_is_refused(node: Node) -> None:
    assert node.quic_address is not None
    configuration = QuicConfiguration(is_client=True, alpn_protocols=["h3"], verify_mode=ssl.CERT_NONE)
    with pytest.raises(ConnectionError):
        async with quic_connect(*node.quic_address, configuration=configuration):
            pass


async def test_node_stop_closes_client_connections(node_config: NodeConfig, connect: ClientFactory) -> None:
    node = Node(node_config)
    await node.start()
    client = await connect(node, "quic")
    assert await client.health() == "ok"
    await node.stop()
    # The node is gone: the next call fails quickly instead of hanging.
    with pytest.raises((ConnectionError, OSError, asyncio.TimeoutError)):
        await asyncio.wait_for(client.health(), 15)


def test_listen_ports_are_loopback(node_config: NodeConfig) -> None:
    assert node_config.quic_listen.startswith("127.0.0.1:")
    assert socket.gethostbyname("127.0.0.1") == "127.0.0.1"


async def test_connecting_to_a_closed_port_fails_fast(connect: ClientFactory, node_config: NodeConfig) -> None:
    node = Node(node_config)
    await node.start()
    await node.stop()  # its port is closed now
    started = asyncio.get_running_loop().time()
    with pytest.raises(ConnectionRefusedError, match="nothing answers"):
        await connect(node, "quic", connect_timeout=30)
    assert asyncio.get_running_loop().time() - started < 10
