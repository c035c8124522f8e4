"""Connections a client can leave open (issue 13 rows: 2,000 idle TLS connections; 500 TCP connections that
never start TLS; 50 that send half a frame): handshake and idle timeouts, caps, memory per idle connection."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from pathlib import Path

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from quicnprotochat.bench.rawrpc import RawRpc, wire
from quicnprotochat.client import RateLimit
from quicnprotochat.common.schema import ALPN
from quicnprotochat.server.node import Node
from tests.conftest import UserFactory, loopback_config

from .conftest import StartProcessNode, Witness, as_node, closed_by_peer

# An idle, bootstrapped TLS connection cost about 320 KB before asyncio's per-connection TLS read buffer was cut
# from 256 KiB to 32 KiB; what remains is OpenSSL's state, pycapnp's and kj's per-connection objects.
IDLE_CONNECTION_BUDGET = 160 * 1024


async def test_tcp_without_tls_and_half_handshakes_are_closed(tmp_path: Path, make_user: UserFactory) -> None:
    node = Node(loopback_config(tmp_path / "n", handshake_timeout_s=0.5))
    await node.start()
    try:
        assert node.tcp_address is not None
        address = node.tcp_address
        silent = [socket.create_connection(address) for _ in range(50)]
        half = [socket.create_connection(address) for _ in range(20)]
        for sock in half:
            sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello, no more
        witness = Witness(await make_user(node, "alice"))
        await witness.during(asyncio.sleep(1.0))
        closed = await witness.during(asyncio.to_thread(lambda: [closed_by_peer(s, 2.0) for s in silent + half]))
        assert all(closed), closed.count(False)
        await witness.through()
        for sock in silent + half:
            sock.close()
    finally:
        await node.stop()


async def test_idle_tls_connections_and_half_frames_are_closed(tmp_path: Path, make_user: UserFactory) -> None:
    # Long enough for a login's two round trips on a loaded machine (the normal client's connection is not idle).
    node = Node(loopback_config(tmp_path / "n", max_wait_ms=200, quic_idle_timeout_s=2.0, tcp_idle_timeout_s=1.5))
    await node.start()
    try:
        assert node.tcp_address is not None
        address = node.tcp_address

        def open_idle() -> list[RawRpc]:
            opened = [RawRpc(*address) for _ in range(10)]
            for raw in opened[:5]:
                _question, frame = raw.call_frame("health", wire.Empty.new_message())
                raw.send(frame[: len(frame) // 2])  # half a frame, never the rest
            return opened

        opened = await asyncio.to_thread(open_idle)
        witness = Witness(await make_user(node, "alice", transport="tcp"))
        # A client that keeps calling is not idle.
        closed = await witness.during(asyncio.to_thread(lambda: [closed_by_peer(raw.sock, 5.0) for raw in opened]))
        assert all(closed), closed.count(False)
        assert node.counters.refused["tcp_idle_timeout_s"] >= 10
        await witness.through()
        for raw in opened:
            raw.close()
    finally:
        await node.stop()


async def test_connection_caps_per_address_and_unauthenticated(tmp_path: Path, make_user: UserFactory) -> None:
    node = Node(loopback_config(tmp_path / "n", max_connections_per_address=3, max_unauthenticated_connections=4))
    await node.start()
    try:
        assert node.tcp_address is not None
        address = node.tcp_address
        witness = Witness(await make_user(node, "alice", transport="tcp"))  # logged in: not unauthenticated
        assert node.counters.unauthenticated_connections == 0

        def health(raw: RawRpc) -> str | None:
            try:
                return "ok" if raw.ask("health", wire.Empty.new_message()).reason is None else "refused"
            except (ConnectionError, ssl.SSLError, OSError):
                return None

        def open_many(count: int, source: str | None = None) -> tuple[list[RawRpc], list[str | None]]:
            opened = [RawRpc(*address, source=source) for _ in range(count)]
            return opened, [health(raw) for raw in opened]

        # 127.0.0.1: alice's connection and two more make three; the fourth is closed at once.
        local, answers = await witness.during(asyncio.to_thread(open_many, 3))
        assert answers == ["ok", "ok", None]
        assert node.counters.refused["max_connections_per_address"] == 1
        # 127.0.0.2: two more not logged in make four; the fifth is closed at once.
        other, answers = await witness.during(asyncio.to_thread(open_many, 3, "127.0.0.2"))
        assert answers == ["ok", "ok", None]
        assert node.counters.refused["max_unauthenticated_connections"] == 1
        await witness.through()
        for raw in local + other:
            raw.close()
        await asyncio.sleep(0.3)
        assert node.counters.unauthenticated_connections == 0  # freed as they closed
        again, answers = await asyncio.to_thread(open_many, 2, "127.0.0.2")
        assert answers == ["ok", "ok"]
        for raw in again:
            raw.close()
    finally:
        await node.stop()


async def test_a_quic_handshake_that_never_finishes_is_dropped(tmp_path: Path, make_user: UserFactory) -> None:
    node = Node(loopback_config(tmp_path / "n", handshake_timeout_s=0.3))
    await node.start()
    try:
        witness = Witness(await make_user(node, "alice"))
        assert node.quic_address is not None
        configuration = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE)
        client = QuicConnection(configuration=configuration)
        client.connect(node.quic_address, now=time.time())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for datagram, _address in client.datagrams_to_send(now=time.time()):
                udp.sendto(datagram, node.quic_address)  # the client's first flight, then silence
            await witness.during(asyncio.sleep(1.0))
        assert node.counters.refused["handshake_timeout_s"] == 1
        await witness.through()
    finally:
        await node.stop()


async def test_memory_per_idle_tls_connection(process_node: StartProcessNode, make_user: UserFactory) -> None:
    node = await process_node(
        max_connections_per_address=1000, max_unauthenticated_connections=1000, connection_burst_per_address=1000
    )
    witness = Witness(await make_user(as_node(node), "alice"))

    def open_idle(count: int) -> list[RawRpc]:
        opened = [RawRpc(*node.tcp_address) for _ in range(count)]
        for raw in opened:  # every one bootstrapped and answering
            assert raw.ask("health", wire.Empty.new_message()).reason is None
        return opened

    warm = await asyncio.to_thread(open_idle, 20)  # first-use allocations out of the way
    await asyncio.sleep(0.5)
    before = node.rss()
    opened = await asyncio.to_thread(open_idle, 300)
    await asyncio.sleep(0.5)
    per_connection = (node.rss() - before) / 300
    print(f"memory per idle TLS connection: {per_connection / 1024:.0f} KiB")
    assert per_connection < IDLE_CONNECTION_BUDGET
    await witness.through()  # the 320 connections still open
    for raw in warm + opened:
        raw.close()


async def test_server_info_gives_the_connection_caps_timeouts_and_rates(tmp_path: Path, make_user: UserFactory) -> None:
    """A client can stay inside every limit the node enforces on connections, and pace itself by its buckets."""
    settings = {
        "max_unsent_bytes_per_connection": 3 * 1024 * 1024,
        "max_incoming_bytes_in_progress": 100 * 1024 * 1024,
        "max_bootstraps_per_connection": 5,
        "max_connections": 900,
        "max_connections_per_address": 90,
        "max_unauthenticated_connections": 80,
        "handshake_timeout_s": 7.5,
        "tcp_idle_timeout_s": 45.0,
        "quic_idle_timeout_s": 50.0,
        "rate_per_identity": 123.0,
        "burst_per_identity": 456,
        "login_rate_per_username": 0.5,
        "register_burst_total": 333,
        "key_package_rate_per_pair": 0.25,
        "resolve_endpoint_burst_per_address": 77,
        "connection_rate_per_address": 2.5,
    }
    node = Node(loopback_config(tmp_path / "n", **settings))
    await node.start()
    try:
        config = node.config
        limits = (await (await make_user(node, "alice", register=False, login=False)).client.server_info()).limits
        assert (
            limits.max_unsent_bytes_per_connection,
            limits.max_message_bytes,
            limits.max_incoming_bytes_in_progress,
            limits.max_bootstraps_per_connection,
            limits.max_connections,
            limits.max_connections_per_address,
            limits.max_unauthenticated_connections,
            limits.handshake_timeout_s,
            limits.tcp_idle_timeout_s,
            limits.quic_idle_timeout_s,
        ) == (
            3 * 1024 * 1024,
            config.max_message_bytes,
            100 * 1024 * 1024,
            5,
            900,
            90,
            80,
            7.5,
            45.0,
            50.0,
        )
        buckets = {
            "calls_per_identity": ("rate_per_identity", "burst_per_identity"),
            "calls_per_address": ("rate_per_address", "burst_per_address"),
            "failed_logins_per_username": ("login_rate_per_username", "login_burst_per_username"),
            "logins_per_address": ("login_rate_per_address", "login_burst_per_address"),
            "sealed_enqueues_per_connection": ("sealed_rate_per_connection", "sealed_burst_per_connection"),
            "registrations_per_address": ("register_rate_per_address", "register_burst_per_address"),
            "registrations_total": ("register_rate_total", "register_burst_total"),
            "key_package_fetches_per_pair": ("key_package_rate_per_pair", "key_package_burst_per_pair"),
            "resolves_per_identity": ("resolve_rate_per_identity", "resolve_burst_per_identity"),
            "resolves_per_address": ("resolve_rate_per_address", "resolve_burst_per_address"),
            "resolve_endpoints_per_identity": (
                "resolve_endpoint_rate_per_identity",
                "resolve_endpoint_burst_per_identity",
            ),
            "resolve_endpoints_per_address": (
                "resolve_endpoint_rate_per_address",
                "resolve_endpoint_burst_per_address",
            ),
            "new_connections_per_address": ("connection_rate_per_address", "connection_burst_per_address"),
        }
        for name, (rate, burst) in buckets.items():
            expected = RateLimit(per_second=getattr(config, rate), burst=getattr(config, burst))
            assert getattr(limits, name) == expected, name
        assert (limits.calls_per_identity, limits.registrations_total.burst) == (RateLimit(123.0, 456), 333)
        assert (limits.key_package_fetches_per_pair.per_second, limits.resolve_endpoints_per_address.burst) == (
            0.25,
            77,
        )
        assert limits.new_connections_per_address == RateLimit(2.5, config.connection_burst_per_address)
    finally:
        await node.stop()
