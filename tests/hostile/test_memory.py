"""A connection cannot make the node hold memory without bound: answers not read, calls piled up, long-polls
parked. Rows of the hostile-client table (issue 13); budgets are stated next to each assertion."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted, StreamDataReceived

from quicnprotochat.bench.rawrpc import Frames, RawRpc, auth, wire
from quicnprotochat.common.errors import ResourceExhausted
from quicnprotochat.common.schema import ALPN
from quicnprotochat.server.node import Node
from tests.conftest import UserFactory, loopback_config

from .conftest import MIB, StartProcessNode, Witness, as_node

# What the node may grow by while one client sends peeks of a 1 MiB message and never reads: its answer budget
# (max_unsent_bytes_per_connection, 4 MiB), one answer past it, kernel and TLS buffers and the calls parked in
# kj's read buffer. Before the bound, 400 such calls grew the node by about 400 MB.
PEEK_FLOOD_BUDGET = 48 * MIB
# Peeks of a 1 MiB message sent by the QUIC client that then goes silent: without the bound the node would hold
# every answer (about 200 MiB) until its idle timeout.
QUIC_SILENT_CALLS = 200


def _flood_peeks(address: tuple[str, int], token: bytes, key: bytes, calls: int, seconds: float) -> tuple[RawRpc, int]:
    """Sends up to `calls` peek(limit=0) calls and reads nothing; stops when the node stops reading."""
    raw = RawRpc(*address)
    raw.sock.settimeout(0.5)
    params = wire.ReadInbox.new_message(recipientKey=key, channelId=b"", version=1, auth=auth(token), limit=0)
    deadline = time.monotonic() + seconds
    sent = 0
    while sent < calls and time.monotonic() < deadline:
        _question, frame = raw.call_frame("peek", params)
        try:
            raw.send(frame)
        except TimeoutError:
            break  # the node stopped reading this connection: backpressure
        sent += 1
    return raw, sent


async def test_peeks_never_read_keep_the_node_bounded(process_node: StartProcessNode, make_user: UserFactory) -> None:
    node = await process_node()
    alice = await make_user(as_node(node), "alice", transport="tcp")
    witness = Witness(await make_user(as_node(node), "bob"), alice)
    await alice.client.enqueue(alice.key, os.urandom(MIB))
    assert alice.client.access_token is not None
    await asyncio.sleep(0.5)
    before = node.rss()
    flood = asyncio.to_thread(_flood_peeks, node.tcp_address, alice.client.access_token, alice.key, 1000, 8)
    raw, sent = await witness.during(flood)
    try:
        await witness.during(asyncio.sleep(1.0))
        grown = node.rss() - before
        print(f"peek flood: {sent} calls sent, node grew by {grown / MIB:.1f} MiB")
        assert grown < PEEK_FLOOD_BUDGET, f"the node grew by {grown / MIB:.0f} MiB after {sent} unread peeks"
        assert sent > 100  # the attack happened: calls went out (small ones fit in kernel and node buffers)
    finally:
        raw.close()
    await asyncio.sleep(1.0)
    await witness.through()
    assert node.rss() - before < PEEK_FLOOD_BUDGET
    # Nothing acknowledged was lost: alice's message is still there for a normal read.
    assert len((await alice.client.peek(alice.key))[0].data) == MIB


class _SilentQuicClient:
    """A QUIC client (aioquic's sans-I/O connection on a plain UDP socket) that sends its calls, reads the first
    answers, and then goes silent: no acknowledgements, no flow-control credit, nothing read."""

    def __init__(self, address: tuple[str, int]) -> None:
        configuration = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE)
        self.quic = QuicConnection(configuration=configuration)
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.02)
        self.received = 0
        self.connected = False
        self.quic.connect(address, now=time.time())

    def pump(self, until: Callable[[], bool], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not until():
            assert time.monotonic() < deadline, "the node did not answer in time"
            for datagram, to in self.quic.datagrams_to_send(now=time.time()):
                self.sock.sendto(datagram, to)
            try:
                self.quic.receive_datagram(self.sock.recv(65536), self.address, now=time.time())
            except TimeoutError:
                self.quic.handle_timer(now=time.time())
            while (event := self.quic.next_event()) is not None:
                if isinstance(event, HandshakeCompleted):
                    self.connected = True
                elif isinstance(event, StreamDataReceived):
                    self.received += len(event.data)

    def call_then_go_silent(self, frames: bytes, answer_bytes: int) -> None:
        self.pump(lambda: self.connected, 10)
        self.quic.send_stream_data(self.quic.get_next_available_stream_id(), frames)
        self.pump(lambda: self.received >= answer_bytes, 10)
        # From here on nothing is sent or read: the node's answers wait for acknowledgements that never come.


async def test_a_quic_client_that_stops_acknowledging_keeps_the_node_bounded(
    process_node: StartProcessNode, make_user: UserFactory
) -> None:
    """The QUIC side of the unread-peeks row: answers the client never acknowledges stay in the node's stream
    buffer, where max_unsent_bytes_per_connection counts them, so the node stops reading further calls."""
    node = await process_node()
    alice = await make_user(as_node(node), "alice", transport="tcp")
    witness = Witness(await make_user(as_node(node), "bob"), alice)
    await alice.client.enqueue(alice.key, os.urandom(MIB))
    token = alice.client.access_token
    assert token is not None
    params = wire.ReadInbox.new_message(recipientKey=alice.key, channelId=b"", version=1, auth=auth(token), limit=0)
    builder = Frames()
    calls = b"".join(builder.call_frame("peek", params)[1] for _ in range(QUIC_SILENT_CALLS))
    client = _SilentQuicClient(node.quic_address)
    await asyncio.sleep(0.5)
    before = node.rss()
    try:
        await witness.during(asyncio.to_thread(client.call_then_go_silent, Frames.bootstrap_frame() + calls, MIB))
        await witness.during(asyncio.sleep(2.0))
        grown = node.rss() - before
        print(f"silent QUIC client: {QUIC_SILENT_CALLS} peeks of 1 MiB sent, node grew by {grown / MIB:.1f} MiB")
        assert grown < PEEK_FLOOD_BUDGET, f"the node grew by {grown / MIB:.0f} MiB"
        await witness.through()
        assert len((await alice.client.peek(alice.key))[0].data) == MIB  # nothing acknowledged was lost
    finally:
        client.sock.close()


async def test_calls_past_the_per_connection_cap_wait_and_are_served(tmp_path: Path, make_user: UserFactory) -> None:
    """With max_calls_per_connection calls running (three of them parked), further calls wait for a slot instead
    of failing, and are served as slots free up."""
    node = Node(loopback_config(tmp_path / "n", max_calls_per_connection=4, max_parked_per_connection=3))
    await node.start()
    try:
        alice = await make_user(node, "alice")
        witness = Witness(alice)
        bob = await make_user(node, "bob")
        waits = [asyncio.ensure_future(bob.client.fetch_wait(bob.key, timeout_ms=3000)) for _ in range(3)]
        await witness.during(asyncio.sleep(0.3))
        # Three parked + this one = 4 running: health still answers, a fifth call would wait.
        assert await bob.client.health() == "ok"
        blocked = [asyncio.ensure_future(bob.client.health()) for _ in range(2)]
        await witness.during(asyncio.sleep(0.3))
        await alice.client.enqueue(bob.key, b"wake one")
        done = await asyncio.gather(*blocked)
        assert done == ["ok", "ok"]
        results = await asyncio.gather(*waits)
        assert sorted(len(r) for r in results) == [0, 0, 1]
        await witness.through()
    finally:
        await node.stop()


async def test_parked_waits_are_capped_per_connection(node: Node, make_user: UserFactory) -> None:
    config = node.config
    bob = await make_user(node, "bob")
    alice = await make_user(node, "alice")
    witness = Witness(alice)
    limits = (await bob.client.server_info()).limits  # clients can stay inside the caps
    assert (limits.max_parked_per_connection, limits.max_parked_per_identity, limits.max_calls_per_connection) == (
        config.max_parked_per_connection,
        config.max_parked_per_identity,
        config.max_calls_per_connection,
    )
    waits = [
        asyncio.ensure_future(bob.client.fetch_wait(bob.key, timeout_ms=5000))
        for _ in range(config.max_parked_per_connection)
    ]
    await witness.during(asyncio.sleep(0.3))
    assert node.counters.parked_waits == config.max_parked_per_connection
    with pytest.raises(ResourceExhausted, match="parked on this connection"):
        await bob.client.peek_wait(bob.key, timeout_ms=5000)
    assert node.counters.refused["max_parked_per_connection"] == 1
    # Other clients are not held up, and the parked ones still get what arrives.
    await witness.through()
    await alice.client.enqueue(bob.key, b"for a parked wait")
    done, pending = await asyncio.wait(waits, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    assert [len(task.result()) for task in done] == [1]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await bob.client.close()  # cancelled waits end with the connection: all freed
    for _ in range(50):
        if node.counters.parked_waits == 0:
            break
        await asyncio.sleep(0.1)
    assert node.counters.parked_waits == 0 and not node.counters.parked_by_identity


async def test_parked_waits_per_identity_span_connections(tmp_path: Path, make_user: UserFactory) -> None:
    node = Node(loopback_config(tmp_path / "n", max_parked_per_connection=3, max_parked_per_identity=5))
    await node.start()
    try:
        witness = Witness(await make_user(node, "alice"))
        bob = await make_user(node, "bob")
        bob2 = await make_user(node, "bob", register=False, login=False)
        bob2.client.access_token = bob.client.access_token
        waits = [asyncio.ensure_future(bob.client.fetch_wait(bob.key, timeout_ms=3000)) for _ in range(3)]
        waits += [asyncio.ensure_future(bob2.client.fetch_wait(bob.key, timeout_ms=3000)) for _ in range(2)]
        await witness.during(asyncio.sleep(0.3))
        with pytest.raises(ResourceExhausted, match="parked for this identity"):
            await bob2.client.fetch_wait(bob.key, timeout_ms=3000)
        assert node.counters.refused["max_parked_per_identity"] == 1
        await witness.through()
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    finally:
        await node.stop()
