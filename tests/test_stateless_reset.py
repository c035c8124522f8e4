"""QUIC stateless resets: a node that no longer knows a connection (restarted, or another worker of the port got
the packet) says so at once, and the client reconnects instead of waiting out its idle timeout."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quicnprotochat.client import KnownHosts, NodeClient
from quicnprotochat.common.errors import Disconnected
from quicnprotochat.common.stateless_reset import MIN_TRIGGER_BYTES, TOKEN_BYTES, is_reset, reset_packet, reset_token
from quicnprotochat.server.node import parse_announcement
from quicnprotochat.server.quic_resets import StatelessResets
from quicnprotochat.server.services.rate_limits import RateLimit
from tests.conftest import FakeClock

KEY = os.urandom(32)
CID = os.urandom(8)


def short_packet(size: int, cid: bytes = CID) -> bytes:
    return bytes([0x41]) + cid + os.urandom(size - 1 - len(cid))


def test_a_reset_is_smaller_than_its_trigger_and_carries_the_connection_ids_token() -> None:
    resets = StatelessResets(KEY)
    for size in (MIN_TRIGGER_BYTES, 30, 1200):
        answer = resets.answer(short_packet(size), known={}, connection_id_length=8)
        assert answer is not None
        assert 21 <= len(answer) < size  # never answered back and forth by two endpoints
        assert answer[0] & 0xC0 == 0x40  # looks like any short header packet
        assert answer[-TOKEN_BYTES:] == reset_token(KEY, CID) == resets.token(CID)
        assert is_reset(answer, [os.urandom(16), reset_token(KEY, CID)])
        assert not is_reset(answer, [reset_token(KEY, os.urandom(8))])  # another connection's token
    assert resets.sent == 3


def test_what_is_not_answered() -> None:
    resets = StatelessResets(KEY)
    assert resets.answer(short_packet(MIN_TRIGGER_BYTES - 1), known={}, connection_id_length=8) is None  # too small
    assert resets.answer(short_packet(100), known={CID: object()}, connection_id_length=8) is None  # a live one
    long_header = bytes([0xC3]) + os.urandom(1199)  # Initial, Handshake...: aioquic's own business
    assert resets.answer(long_header, known={}, connection_id_length=8) is None
    assert reset_packet(MIN_TRIGGER_BYTES - 1, resets.token(CID), os.urandom(64)) is None
    assert resets.sent == 0


def test_resets_are_rate_limited() -> None:
    clock = FakeClock()
    resets = StatelessResets(KEY, RateLimit(rate=10.0, burst=3), clock)
    answers = [resets.answer(short_packet(100), known={}, connection_id_length=8) for _ in range(5)]
    assert [answer is not None for answer in answers] == [True, True, True, False, False]
    clock.advance(0.15)  # a token back (10 a second)
    assert resets.answer(short_packet(100), known={}, connection_id_length=8) is not None


def start_node(data_dir: Path, quic_listen: str) -> tuple[subprocess.Popen[str], int]:
    command = [sys.executable, "-m", "quicnprotochat.server.cli", "--data-dir", str(data_dir), "run"]
    process = subprocess.Popen(
        [*command, "--quic-listen", quic_listen, "--tcp-listen", ""],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines: list[str] = []
    while line := process.stderr.readline():
        lines.append(line)
        announced = parse_announcement(line)
        if announced is not None and announced[0] == "quic":
            return process, int(announced[1])
    raise AssertionError("the node ended before listening:\n" + "".join(lines))


async def test_a_client_of_a_killed_and_restarted_node_is_reset_and_reconnects(tmp_path: Path) -> None:
    first, port = await asyncio.to_thread(start_node, tmp_path / "node", "127.0.0.1:0")
    processes = [first]
    known = KnownHosts(tmp_path / "known_hosts", notice=lambda _message: None)
    client = NodeClient(f"127.0.0.1:{port}", transport="quic", known_hosts=known)
    try:
        assert await client.health() == "ok"
        # Acknowledgements settle first: a packet sent while nothing listens would come back as an ICMP error,
        # which ends the connection by another path (see common/connect.py).
        await asyncio.sleep(0.5)
        first.kill()  # no CONNECTION_CLOSE: the client's connection lives on, unknown to the next process
        first.wait()
        second, _ = await asyncio.to_thread(start_node, tmp_path / "node", f"127.0.0.1:{port}")
        processes.append(second)
        assert client.connected  # the client sent nothing meanwhile: it has not noticed
        started = time.monotonic()
        with pytest.raises(Disconnected):
            async with asyncio.timeout(20):
                await client.health()
        assert time.monotonic() - started < 5  # told by a reset, not left to the 30 s idle timeout
        assert await client.health() == "ok"  # a new connection, to the new process
    finally:
        await client.close()
        for process in processes:
            process.kill()
            process.wait()
