"""QUIC stateless retry: tokens under rotating keys, and a spoofed-source flood that costs the node no state."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Literal

import pytest
from aioquic._buffer import Buffer
from aioquic.quic.packet import QuicPacketType, pull_quic_header

from quicnprotochat.bench.node_runner import NodeUnderTest, start_node_process
from quicnprotochat.client import KnownHosts, NodeClient
from quicnprotochat.server.node import Node, retry_advice
from quicnprotochat.server.quic_retry import RotatingRetryTokens
from tests.conftest import ClientFactory, FakeClock, loopback_config
from tests.test_metrics import scrape

PERIOD = 60.0
CLIENT = ("127.0.0.1", 50000)


def token_for(tokens: RotatingRetryTokens, address: tuple[str, int] = CLIENT) -> bytes:
    return tokens.create_token(
        address=address, original_destination_connection_id=b"odcid-01", retry_source_connection_id=b"rscid-01", now=0
    )


def validate(tokens: RotatingRetryTokens, token: bytes, address: tuple[str, int] = CLIENT) -> bytes:
    return tokens.validate_token(address=address, destination_cid=b"rscid-01", token=token, now=0)


def test_tokens_of_this_and_the_previous_period_are_accepted_older_ones_refused() -> None:
    clock = FakeClock(1_000_020.0)  # 20 s into a period
    tokens = RotatingRetryTokens(PERIOD, clock)
    token = token_for(tokens)
    assert validate(tokens, token) == b"odcid-01"
    clock.advance(PERIOD)  # the next period: the token's key is the previous one
    assert validate(tokens, token) == b"odcid-01"
    fresh = token_for(tokens)
    clock.advance(PERIOD)  # two periods on: that key is gone
    with pytest.raises(ValueError, match="expired"):
        validate(tokens, token)
    assert validate(tokens, fresh) == b"odcid-01"  # made one period ago
    assert (tokens.stats.tokens_accepted, tokens.stats.tokens_refused, tokens.stats.retries_sent) == (3, 1, 2)


def test_tokens_are_bound_to_the_source_address_and_connection_id() -> None:
    tokens = RotatingRetryTokens(PERIOD, FakeClock())
    token = token_for(tokens)
    with pytest.raises(ValueError, match="another address"):
        validate(tokens, token, ("127.0.0.2", CLIENT[1]))
    with pytest.raises(ValueError, match="another address"):
        validate(tokens, token, (CLIENT[0], CLIENT[1] + 1))
    with pytest.raises(ValueError, match="another connection id"):
        tokens.validate_token(address=CLIENT, destination_cid=b"other-id", token=token, now=0)
    tampered = token[:-1] + bytes([token[-1] ^ 1])
    with pytest.raises(ValueError, match="does not authenticate"):
        validate(tokens, tampered)
    for garbage in (b"", b"short", os.urandom(64)):
        with pytest.raises(ValueError):
            validate(tokens, garbage)
    assert tokens.stats.tokens_refused == 7 and tokens.stats.tokens_accepted == 0


def test_a_token_of_another_node_or_restart_is_refused() -> None:
    clock = FakeClock()
    token = token_for(RotatingRetryTokens(PERIOD, clock))
    with pytest.raises(ValueError, match="does not authenticate"):
        validate(RotatingRetryTokens(PERIOD, clock), token)


async def test_a_client_connects_through_a_retry(tmp_path: Path, connect: ClientFactory) -> None:
    config = replace(loopback_config(tmp_path / "node"), quic_retry=True, metrics_listen="127.0.0.1:0")
    node = Node(config)
    await node.start()
    try:
        client = await connect(node)
        assert await client.health() == "ok"
        status = await client.node_status()
        assert status.quic_retry
        assert status.retries_sent >= 1 and status.retry_tokens_accepted >= 1
        assert status.retry_tokens_refused == 0
        assert status.quic_connections == 1
        samples = await scrape(node)
        assert samples[("qpc_quic_retry_tokens_accepted_total", ())] >= 1
        assert samples[("qpc_quic_retry_tokens_refused_total", ())] == 0
        assert samples[("qpc_quic_connections", ())] == 1
    finally:
        await node.stop()


# ── A spoofed-source flood ──────────────────────────────────────────────────────────────────────────────────────

FLOOD_PACKETS = 20_000
SOURCES = 200  # addresses in 127.0.0.0/8, one socket each
BATCH = 50  # well under what the node's default socket buffer holds (about 90 such datagrams)


def _varint2(value: int) -> bytes:
    return struct.pack("!H", 0x4000 | value)


def initial_packet(token: bytes, dcid: bytes | None = None) -> bytes:
    """A QUIC v1 Initial of 1200 bytes whose header parses: what a spoofer sends to make a server create state."""
    dcid, scid = dcid or os.urandom(8), os.urandom(8)
    head = bytes([0xC3]) + struct.pack("!I", 1) + bytes([8]) + dcid + bytes([8]) + scid
    head += bytes([len(token)]) + token if len(token) < 64 else _varint2(len(token)) + token
    rest = 1200 - len(head) - 2
    return head + _varint2(rest) + os.urandom(rest)


@contextlib.contextmanager
def spoofing_sockets() -> Iterator[list[socket.socket]]:
    sockets = []
    try:
        for index in range(SOURCES):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind((f"127.{1 + index // 250}.{index % 250}.{1 + index % 7}", 0))
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def answered(observer: NodeClient) -> int:
    status = await observer.node_status()
    return status.retries_sent + status.retry_tokens_refused


async def flood(observer: NodeClient, sockets: list[socket.socket], port: int, count: int, sent_so_far: int) -> None:
    """Sends `count` Initials in small bursts, each time waiting until the node has answered most of the burst: an
    unpaced flood would mostly be dropped by the node's socket buffer and show nothing."""
    for start in range(0, count, BATCH):
        before = await answered(observer)
        burst = range(sent_so_far + start, sent_so_far + min(start + BATCH, count))
        for number in burst:
            # Half without a token (each is answered with a Retry), half with a forged one (each is refused).
            packet = initial_packet(b"" if number % 2 == 0 else os.urandom(80))
            with contextlib.suppress(BlockingIOError):
                sockets[number % SOURCES].sendto(packet, ("127.0.0.1", port))
        for _ in range(2000):
            if await answered(observer) >= before + 0.9 * len(burst):
                break
            await asyncio.sleep(0.005)
        else:
            raise AssertionError(f"the node answered under 90% of a burst of {len(burst)} Initials within 10 s")


@contextlib.asynccontextmanager
async def client_of(
    node: NodeUnderTest, transport: Literal["quic", "tcp"], tmp_path: Path
) -> AsyncIterator[NodeClient]:
    known = KnownHosts(tmp_path / f"known_hosts_{transport}", notice=lambda _message: None)
    client = NodeClient(
        node.address(transport), transport=transport, known_hosts=known, server_fingerprint=node.fingerprint
    )
    try:
        await client.connect()
        yield client
    finally:
        await client.close()


async def test_a_spoofed_flood_leaves_no_state_and_a_real_client_connects(tmp_path: Path) -> None:
    node = await start_node_process(tmp_path / "node", {"quic_retry": True, "log_level": "warning"})
    try:
        assert node.pid is not None and node.quic_port is not None
        async with client_of(node, "tcp", tmp_path) as observer:  # TLS over TCP: not a QUIC connection
            with spoofing_sockets() as sockets:
                await flood(observer, sockets, node.quic_port, 2_000, 0)  # warm up: the node's first allocations
                await asyncio.sleep(0.5)
                rss_before = rss_kib(node.pid)
                await flood(observer, sockets, node.quic_port, FLOOD_PACKETS // 2, 2_000)
                mid = await observer.node_status()
                assert mid.quic_connections == 0
                async with client_of(node, "quic", tmp_path) as real:  # a real client, through a Retry
                    assert await real.health() == "ok"
                await flood(observer, sockets, node.quic_port, FLOOD_PACKETS // 2, 2_000 + FLOOD_PACKETS // 2)
                await asyncio.sleep(0.5)
                rss_after = rss_kib(node.pid)
            status = await observer.node_status()
            for _ in range(50):  # the real client's connection closes with a short handshake
                if status.quic_connections == 0:
                    break
                await asyncio.sleep(0.1)
                status = await observer.node_status()
        assert status.quic_connections == 0
        assert status.retry_tokens_accepted >= 1  # the real client's
        # Most of the flood reached the node and was answered statelessly (loopback may drop a little).
        assert status.retries_sent + status.retry_tokens_refused >= 0.9 * (FLOOD_PACKETS + 2_000)
        assert status.retry_tokens_refused >= 0.4 * (FLOOD_PACKETS + 2_000)
        # Flat: 20,000 connections would cost hundreds of MiB; no state costs nothing that grows.
        assert rss_after - rss_before < 4 * 1024, (rss_before, rss_after)
    finally:
        await node.stop()


def test_retry_is_recommended_beyond_loopback(tmp_path: Path) -> None:
    config = loopback_config(tmp_path / "node")
    assert retry_advice(config) is None  # loopback: a Retry would only cost a round trip
    public = replace(config, quic_listen="0.0.0.0:7700")  # never bound here: only the advice is computed
    advice = retry_advice(public)
    assert advice is not None and "--quic-retry" in advice
    assert retry_advice(replace(public, quic_retry=True)) is None
    assert retry_advice(replace(config, quic_listen="localhost:7700")) is None


async def retry_token(sock: socket.socket, port: int) -> tuple[bytes, bytes]:
    """(token, the Retry's source connection id) the node answers an Initial without a token with."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendto(sock, initial_packet(b""), ("127.0.0.1", port))
    async with asyncio.timeout(5):
        datagram = await loop.sock_recv(sock, 2048)
    header = pull_quic_header(Buffer(data=datagram), host_cid_length=8)
    assert header.packet_type == QuicPacketType.RETRY and header.token
    return header.token, header.source_cid


def period_of(token: bytes) -> int:
    """The key period a token was made in: its clear, authenticated first 8 bytes."""
    return int(struct.unpack("!Q", token[:8])[0])


# The standard loop: the test speaks raw QUIC through loop.sock_sendto, which uvloop does not implement.
@pytest.mark.asyncio(loop_factories=["asyncio"])
async def test_the_node_accepts_the_previous_periods_token_and_refuses_older_ones(tmp_path: Path) -> None:
    """End to end, on real time: a node whose retry key turns over every second."""
    period = 1.0
    node = Node(replace(loopback_config(tmp_path / "node"), quic_retry=True, quic_retry_period_s=period))
    await node.start()
    assert node.quic_address is not None and node.state is not None and node.state.retry is not None
    port, stats = node.quic_address[1], node.state.retry
    loop = asyncio.get_running_loop()

    async def next_period(periods_on: int, made_in: int) -> None:
        await asyncio.sleep(max(0.0, (made_in + periods_on) * period + 0.2 - time.monotonic()))

    async def answer(sock: socket.socket, token: bytes, rscid: bytes) -> str:
        accepted, refused = stats.tokens_accepted, stats.tokens_refused
        await loop.sock_sendto(sock, initial_packet(token, rscid), ("127.0.0.1", port))
        for _ in range(100):
            if stats.tokens_accepted > accepted:
                return "accepted"
            if stats.tokens_refused > refused:
                return "refused"
            await asyncio.sleep(0.01)
        raise AssertionError("the node did not answer the Initial")

    client, other = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    try:
        for sock, address in ((client, "127.0.0.1"), (other, "127.0.0.3")):
            sock.setblocking(False)
            sock.bind((address, 0))
        token, rscid = await retry_token(client, port)
        made_in = period_of(token)
        assert await answer(other, token, rscid) == "refused"  # another source address
        await next_period(1, made_in)
        assert await answer(client, token, rscid) == "accepted"  # the previous period's key
        token, rscid = await retry_token(client, port)
        made_in = period_of(token)
        await next_period(2, made_in)
        assert await answer(client, token, rscid) == "refused"  # two periods old
    finally:
        client.close()
        other.close()
        await node.stop()
