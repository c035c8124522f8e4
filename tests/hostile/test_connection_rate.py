"""New connections per source address (issue 13, left over: a Bootstrap or handshake flooder reconnected as fast as
handshakes completed). Past the bucket a TCP connection is reset when accepted, before TLS, and a QUIC Initial is
answered with CONNECTION_REFUSED before any handshake cryptography; other addresses keep connecting."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from pathlib import Path
from typing import Any

from aioquic.quic.packet import QuicErrorCode
from aioquic.tls import State

from quicnprotochat.bench.hostile import STRANGER, quic_attempt
from quicnprotochat.bench.rawrpc import RawRpc
from quicnprotochat.server.connection_rate import SETTING, ConnectionRate
from quicnprotochat.server.node import Node
from quicnprotochat.server.node_counters import NodeCounters
from quicnprotochat.server.peer import Peer
from quicnprotochat.server.quic_admission import REASON
from quicnprotochat.server.services.rate_limits import RateLimit
from tests.conftest import ClientFactory, FakeClock, loopback_config
from tests.hostile.conftest import UserFactory, Witness
from tests.test_metrics import scrape

# One new connection per 100 s: nothing refills during a test, so what the bucket lets through is its burst.
SLOW = 0.01


def tls_flood(address: tuple[str, int], attempts: int) -> tuple[int, list[str]]:
    """TLS connections from STRANGER one after another (each closed once open): (how many opened, how the
    others failed)."""
    opened, failures = 0, []
    for _ in range(attempts):
        try:
            RawRpc(*address, source=STRANGER, timeout=10).close()
            opened += 1
        except OSError as error:
            failures.append(type(error).__name__)
    return opened, failures


def reset_before_tls(address: tuple[str, int]) -> bool:
    """Whether a TCP connection from STRANGER is closed without sending anything (a TLS server would wait for the
    ClientHello)."""
    try:
        with socket.create_connection(address, timeout=5, source_address=(STRANGER, 0)) as sock:
            return sock.recv(1) == b""
    except ConnectionResetError:  # while connecting (the reset can beat connect's return) or reading
        return True
    except TimeoutError:
        return False


def refused_with_retry_after(attempt: dict[str, Any]) -> bool:
    """Whether the node closed the attempt with CONNECTION_REFUSED, the reason and a retry-after of at least the
    time one token takes to come back, give or take the time the test took."""
    if attempt["closed"] is None:
        return False
    code, reason = attempt["closed"]
    match = re.fullmatch(re.escape(REASON) + r" ([0-9.]+) s", reason)
    return code == QuicErrorCode.CONNECTION_REFUSED and match is not None and float(match[1]) > 0.5 / SLOW


async def test_tls_connections_past_the_rate_are_reset_before_tls(
    tmp_path: Path, make_user: UserFactory, connect: ClientFactory
) -> None:
    node = Node(
        loopback_config(
            tmp_path / "n",
            connection_rate_per_address=SLOW,
            connection_burst_per_address=4,
            metrics_listen="127.0.0.1:0",
        )
    )
    await node.start()
    try:
        assert node.tcp_address is not None
        witness = Witness(await make_user(node, "alice", transport="tcp"))
        opened, failures = await witness.during(asyncio.to_thread(tls_flood, node.tcp_address, 30))
        assert opened == 4, failures  # the burst, then nothing
        assert len(failures) == 26 and set(failures) <= {"ConnectionResetError", "SSLEOFError", "SSLZeroReturnError"}
        assert await asyncio.to_thread(reset_before_tls, node.tcp_address)
        assert node.counters.refused[SETTING] == 27
        samples = await scrape(node)
        assert samples[("qpc_refused_total", (("limit", SETTING),))] == 27
        assert samples[("qpc_connection_rate_addresses", ())] == 2  # the witness's address and the stranger's
        # The same bucket for QUIC: the stranger's Initial is refused too.
        assert node.quic_address is not None
        attempt = await asyncio.to_thread(quic_attempt, node.quic_address)
        assert refused_with_retry_after(attempt)
        # Another address connects as usual, over both transports.
        for transport in ("tcp", "quic"):
            assert await (await connect(node, transport)).health() == "ok"
        await witness.through()
    finally:
        await node.stop()


async def test_quic_initials_past_the_rate_are_refused_before_the_handshake(
    tmp_path: Path, make_user: UserFactory, connect: ClientFactory
) -> None:
    node = Node(
        loopback_config(
            tmp_path / "n", connection_rate_per_address=SLOW, connection_burst_per_address=3, handshake_timeout_s=1.0
        )
    )
    await node.start()
    try:
        assert node.quic_address is not None
        address = node.quic_address
        witness = Witness(await make_user(node, "alice"))

        async def attempts() -> list[dict[str, Any]]:
            return [await asyncio.to_thread(quic_attempt, address) for _ in range(8)]

        outcomes = await witness.during(attempts())
        for accepted in outcomes[:3]:  # the node's handshake answer: its ServerHello was read
            assert accepted["closed"] is None and accepted["tls"] != State.CLIENT_EXPECT_SERVER_HELLO, accepted
        for refused in outcomes[3:]:  # closed with the reason, and no ServerHello: no handshake was started
            assert refused_with_retry_after(refused), refused
            assert refused["tls"] == State.CLIENT_EXPECT_SERVER_HELLO
        assert node.counters.refused[SETTING] == 5
        # Another address gets its handshake.
        other = await asyncio.to_thread(quic_attempt, address, "127.0.0.3")
        assert other["closed"] is None
        await witness.through()
        # The library's client, from the witness's address (one token spent), gets the node's reason.
        refusal: ConnectionError | None = None
        for _ in range(3):
            try:
                await connect(node)
            except ConnectionError as error:
                refusal = error
                break
        assert refusal is not None and str(refusal).startswith(REASON), refusal
    finally:
        await node.stop()


async def test_with_retry_only_initials_that_prove_their_address_count(tmp_path: Path, make_user: UserFactory) -> None:
    """Spoofed Initials (no token, or a forged one) cannot spend the bucket of the address they claim."""
    node = Node(
        loopback_config(
            tmp_path / "n",
            quic_retry=True,
            connection_rate_per_address=SLOW,
            connection_burst_per_address=2,
            handshake_timeout_s=1.0,
        )
    )
    await node.start()
    try:
        assert node.quic_address is not None and node.state is not None and node.state.retry is not None
        address = node.quic_address
        witness = Witness(await make_user(node, "alice"))

        async def spoofed_then_real() -> list[dict[str, Any]]:
            for _ in range(10):
                await asyncio.to_thread(quic_attempt, address, STRANGER, os.urandom(40))  # forged: INVALID_TOKEN
            return [await asyncio.to_thread(quic_attempt, address) for _ in range(3)]

        outcomes = await witness.during(spoofed_then_real())
        assert node.state.retry.tokens_refused >= 10
        assert [outcome["retries"] for outcome in outcomes] == [1, 1, 1]
        assert [outcome["closed"] for outcome in outcomes[:2]] == [None, None]
        assert refused_with_retry_after(outcomes[2])
        assert node.counters.refused[SETTING] == 1
        await witness.through()
    finally:
        await node.stop()


def test_ipv6_clients_count_by_their_64() -> None:
    rate = ConnectionRate(RateLimit(rate=1.0, burst=2), NodeCounters(), max_addresses=100, clock=FakeClock())
    refusals = [rate.refusal(Peer("quic", f"2001:db8:1:2::{index:x}", 443)) for index in range(4)]
    assert refusals == [None, None, 1.0, 1.0]  # a token a second: the next in a second
    assert rate.refusal(Peer("tcp", "2001:db8:1:3::1", 443)) is None


def test_the_addresses_tracked_are_bounded_and_a_busy_flooder_stays_tracked() -> None:
    """Thousands of addresses passing through keep at most `max_addresses` buckets; the flooder who keeps trying
    is the most recently seen, so it is never the one forgotten (a forgotten bucket would be a fresh burst)."""
    clock = FakeClock()
    counters = NodeCounters()
    rate = ConnectionRate(RateLimit(rate=0.01, burst=3), counters, max_addresses=100, clock=clock)
    flooder = Peer("tcp", "198.51.100.1", 1)
    assert [rate.refusal(flooder) is None for _ in range(4)] == [True, True, True, False]
    for index in range(5000):
        host = f"10.{index // 65536}.{index // 256 % 256}.{index % 256}"
        assert rate.refusal(Peer("tcp", host, 1)) is None
        assert rate.addresses <= 100
        assert rate.refusal(flooder) is not None, index
        clock.advance(0.001)
    assert counters.refused[SETTING] == 5001


def test_a_table_of_one_address_still_limits_the_latest() -> None:
    """At the smallest bound the address just seen keeps its bucket (forgetting it would be a fresh burst)."""
    rate = ConnectionRate(RateLimit(rate=0.01, burst=1), NodeCounters(), max_addresses=1, clock=FakeClock())
    assert rate.refusal(Peer("tcp", "192.0.2.1", 1)) is None
    assert rate.refusal(Peer("tcp", "192.0.2.2", 1)) is None  # the first is forgotten to make room
    assert rate.addresses == 1
    assert rate.refusal(Peer("tcp", "192.0.2.2", 1)) is not None
