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
from quicnprotochat.common.stream_bridge import StreamBufferOverflow, TlsStreamProtocol
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


class _FakeSocketTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.paused = False
        self.closed = False
        self.written: list[bytes] = []

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))


class _FakeCapnpProtocol(asyncio.BufferedProtocol):
    """Reads like pycapnp's stream protocol: into its own buffer, only while it has a read pending."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.buffer = bytearray(1000)
        self.lost: list[Exception | None] = []
        self.eof = False
        self.write_paused = False

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.received += self.buffer[:nbytes]

    def eof_received(self) -> None:
        self.eof = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False


def _tls_bridge() -> tuple[TlsStreamProtocol, _FakeSocketTransport, _FakeCapnpProtocol]:
    socket_transport = _FakeSocketTransport()
    capnp_protocol = _FakeCapnpProtocol()
    protocol = TlsStreamProtocol(
        lambda bridge: bridge.set_protocol(capnp_protocol), max_buffered=10_000, pause_above=3000
    )
    protocol.connection_made(socket_transport)
    return protocol, socket_transport, capnp_protocol


def test_tls_bridge_hands_bytes_over_only_while_reading_and_pauses_the_socket() -> None:
    protocol, socket_transport, capnp_protocol = _tls_bridge()
    assert protocol.bridge is not None
    protocol.data_received(b"a" * 2500)
    assert capnp_protocol.received == b""  # no read pending: kept in the bridge
    protocol.data_received(b"b" * 1000)
    paused_while_lagging = socket_transport.paused  # more than pause_above waiting: stop reading the socket
    protocol.bridge.resume_reading()  # pycapnp starts a read
    assert capnp_protocol.received == b"a" * 2500 + b"b" * 1000
    assert (paused_while_lagging, socket_transport.paused) == (True, False)
    protocol.bridge.write(b"out")
    assert socket_transport.written == [b"out"]
    protocol.pause_writing()  # the socket's write buffer is full: pycapnp must hold its writes
    held = capnp_protocol.write_paused
    protocol.resume_writing()
    assert (held, capnp_protocol.write_paused) == (True, False)


def test_tls_bridge_reports_end_of_stream_as_connection_lost_and_bounds_its_buffer() -> None:
    protocol, socket_transport, capnp_protocol = _tls_bridge()
    assert protocol.eof_received() is False
    protocol.connection_lost(None)
    assert capnp_protocol.lost == [None]
    assert not capnp_protocol.eof  # pycapnp 2.2.4 crashes on EOF without a pending read
    protocol, socket_transport, capnp_protocol = _tls_bridge()
    protocol.data_received(b"x" * 10_001)  # the peer ignores the paused socket: too much buffered
    assert len(capnp_protocol.lost) == 1 and isinstance(capnp_protocol.lost[0], StreamBufferOverflow)
    assert socket_transport.closed
