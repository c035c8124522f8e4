"""Incoming messages a client starts and never finishes (issue 13 row: 20 connections each announce a 16 MiB
frame and send 15 MiB of it), over TLS and QUIC, against a node in a subprocess whose memory is measured."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import struct
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, QuicEvent

from quicnprotochat.bench.rawrpc import RawRpc
from quicnprotochat.common.schema import ALPN
from quicnprotochat.server.node import Node
from tests.conftest import UserFactory, loopback_config

from .conftest import MIB, ProcessNode, StartProcessNode, Witness, as_node, closed_by_peer

# Small limits keep the test quick: the largest message is about 4.1 MiB (what max_message_bytes derives from
# these), and the node holds at most 8 MiB of incoming messages in progress. Twenty attackers send 60 MiB of
# messages they never finish: without the bound the node grew by about as much.
SMALL_MESSAGES = {
    "max_fetch_bytes": 4 * MIB,
    "max_blob_bytes": 4 * MIB,
    "max_commit_bytes": 2 * MIB,
    "max_incoming_bytes_in_progress": 8 * MIB,
}
ATTACKERS = 20
ANNOUNCED = 4 * MIB
SENT = 3 * MIB
# The node's bound (8 MiB) and room for allocator slack and buffers in the kernel and the transports.
GROWTH_BUDGET = 32 * MIB


def _half_message() -> bytes:
    """The head of a one-segment message announcing ANNOUNCED bytes, and SENT bytes of it."""
    return struct.pack("<II", 0, ANNOUNCED // 8) + bytes(SENT - 8)


async def _watch(node: ProcessNode, witness: Witness, attack: Awaitable[None]) -> int:
    """Runs `attack` (which leaves its connections open and returns once the node has what it sent) while the
    witness keeps calling; returns how much the node grew."""
    await witness.still_serves()
    await asyncio.sleep(0.5)
    before = node.rss()
    task = asyncio.ensure_future(attack)
    while not task.done():
        await witness.still_serves()
        await asyncio.sleep(0.1)
    await task
    await asyncio.sleep(1.0)
    await witness.through()
    grown = node.rss() - before
    print(f"{ATTACKERS} x {SENT // MIB} MiB of {ANNOUNCED // MIB} MiB messages: node grew {grown / MIB:.1f} MiB")
    return grown


async def test_half_sent_messages_over_tls_are_bounded(process_node: StartProcessNode, make_user: UserFactory) -> None:
    node = await process_node(**SMALL_MESSAGES)
    witness = Witness(await make_user(as_node(node), "alice"), await make_user(as_node(node), "bob", transport="tcp"))
    opened: list[RawRpc] = []

    def attack() -> None:
        for _ in range(ATTACKERS):
            raw = RawRpc(*node.tcp_address)
            opened.append(raw)
            with contextlib.suppress(ConnectionError, ssl.SSLError):  # closed while sending: the node sheds
                raw.send(_half_message())

    try:
        grown = await _watch(node, witness, asyncio.to_thread(attack))
        closed = await asyncio.to_thread(lambda: sum(closed_by_peer(raw.sock, 0.5) for raw in opened))
        assert grown < GROWTH_BUDGET, f"the node grew by {grown / MIB:.0f} MiB"
        # 60 MiB sent against an 8 MiB bound: all but about two were closed.
        assert closed >= ATTACKERS - 3, closed
    finally:
        for raw in opened:
            raw.close()


class _Attacker(QuicConnectionProtocol):
    """A QUIC client that sends half a message on its stream and then nothing; `ended` learns when the node
    closed its connection."""

    def __init__(self, *args: Any, ended: asyncio.Queue[None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ended = ended

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ConnectionTerminated):
            self._ended.put_nowait(None)


async def test_half_sent_messages_over_quic_are_bounded(process_node: StartProcessNode, make_user: UserFactory) -> None:
    node = await process_node(**SMALL_MESSAGES)
    witness = Witness(await make_user(as_node(node), "alice", transport="tcp"), await make_user(as_node(node), "bob"))
    configuration = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE)
    ended: asyncio.Queue[None] = asyncio.Queue()
    create_protocol = functools.partial(_Attacker, ended=ended)

    async def attack(connections: contextlib.AsyncExitStack) -> None:
        for _ in range(ATTACKERS):
            context = connect(*node.quic_address, configuration=configuration, create_protocol=create_protocol)
            attacker = await connections.enter_async_context(context)
            _reader, writer = await attacker.create_stream()
            writer.write(_half_message())
        # Sent is not received: wait for the node to close the connections past its bound.
        async with asyncio.timeout(60):
            for _ in range(ATTACKERS - 3):
                await ended.get()

    async with contextlib.AsyncExitStack() as connections:
        grown = await _watch(node, witness, attack(connections))
    assert grown < GROWTH_BUDGET, f"the node grew by {grown / MIB:.0f} MiB"


async def test_bytes_in_progress_are_counted_and_freed(tmp_path: Path, make_user: UserFactory) -> None:
    """What the node counts (and /metrics shows as qpc_incoming_bytes_in_progress) follows a stalled message."""
    node = Node(loopback_config(tmp_path / "n"))
    await node.start()
    try:
        witness = Witness(await make_user(node, "alice"))
        assert node.tcp_address is not None
        raw = await asyncio.to_thread(RawRpc, *node.tcp_address)
        await asyncio.to_thread(raw.send, struct.pack("<II", 0, 1 << 20) + bytes(MIB - 8))  # 1 MiB of 8 MiB
        async with asyncio.timeout(10):
            while node.counters.incoming_bytes_in_progress < MIB:
                await witness.still_serves()
        raw.close()
        async with asyncio.timeout(10):
            while node.counters.incoming_bytes_in_progress:
                await witness.still_serves()
        await witness.through()
    finally:
        await node.stop()
