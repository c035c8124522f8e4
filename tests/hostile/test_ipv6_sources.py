"""Every per-address limit counts an IPv6 client by its /64, as the new-connection rate does: one host or home
network commonly holds a whole /64, so counting by full address would give one client 2^64 buckets.

Loopback has one IPv6 address (::1), so these tests hand the node's own admission and service objects peers
from documentation prefixes (2001:db8::/32) instead of connecting from them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from quicnprotochat.common.errors import InvalidArgument, ResourceExhausted
from quicnprotochat.server.config import NodeConfig
from quicnprotochat.server.connection_budget import ConnectionBudget
from quicnprotochat.server.node import Node
from quicnprotochat.server.node_state import connection_limits
from quicnprotochat.server.peer import Peer, address_key, peer_from_address
from quicnprotochat.server.rpc_service import NodeServiceImpl
from tests.conftest import loopback_config


def test_the_key_of_a_peer_is_its_ipv4_address_or_its_ipv6_64() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("192.0.2.7") == "192.0.2.7" != address_key("192.0.2.8")
    assert Peer("quic", "2001:db8:1:2::9", 443).source == "2001:db8:1:2::/64"
    # An IPv4 client reaching a dual-stack socket is its IPv4 address, not the mapped IPv6 one.
    assert peer_from_address("tcp", ("::ffff:192.0.2.7", 5, 0, 0)).source == "192.0.2.7"
    assert Peer("tcp", "unknown", 0).source == "unknown"


@pytest.fixture
def node_config(tmp_path: Path) -> NodeConfig:
    """Strict per-address limits, for the suite's `node` fixture."""
    return replace(
        loopback_config(tmp_path / "node"),
        max_connections_per_address=3,
        login_rate_per_address=0.001,
        login_burst_per_address=4,
    )


async def test_connections_from_one_64_share_the_per_address_cap(node: Node) -> None:
    sessions = node._sessions  # the node's own admission, as its listeners call it
    assert sessions is not None
    same_64 = [Peer("tcp", f"2001:db8:7:8::{index:x}", 1000 + index) for index in range(1, 5)]
    for peer in same_64[:3]:
        assert sessions.admit(peer) is None
        sessions.counters.connections_by_address[peer.source] += 1  # what `start` counts for an admitted one
    assert sessions.admit(same_64[3]) == "max_connections_per_address"
    assert sessions.admit(Peer("tcp", "2001:db8:7:9::1", 1)) is None  # the next /64 is someone else
    assert sessions.admit(Peer("quic", "192.0.2.1", 1)) is None


async def test_login_attempts_from_one_64_share_one_bucket(node: Node) -> None:
    state = node.state
    assert state is not None
    limits = connection_limits(node.config)

    def service(host: str) -> NodeServiceImpl:
        return NodeServiceImpl(state, Peer("quic", host, 4433), ConnectionBudget(limits))

    async def login_start(host: str) -> None:
        # Past the address's bucket, the request itself is refused as malformed: not this test's concern.
        with pytest.raises(InvalidArgument):
            await service(host).opaqueLoginStart("nobody", b"not a credential request", None)

    # Four attempts, each from another address of one /64, spend the /64's burst of four.
    for index in range(1, 5):
        await login_start(f"2001:db8:7:8::{index:x}")
    with pytest.raises(ResourceExhausted, match="login attempts from this address"):
        await login_start("2001:db8:7:8:ffff::1")
    await login_start("2001:db8:7:9::1")  # another /64 still has its own
