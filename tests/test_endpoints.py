"""publishEndpoint / resolveEndpoint against a real node: only records signed by the caller's identity key, naming
it, unexpired and not too long-lived are kept; none is handed out past its expiry; an empty record takes it down;
resolving is rate-limited."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from quicnprotochat.common import endpoint_record
from quicnprotochat.common.endpoint_record import EndpointRecord
from quicnprotochat.common.errors import InvalidArgument, ResourceExhausted
from quicnprotochat.native import Vault, verify_ed25519
from quicnprotochat.server.node import Node
from tests.conftest import FakeClock, UserFactory, loopback_config

pytestmark = pytest.mark.asyncio

ADDRESSES = ("127.0.0.1:40000", "[::1]:40001")


def signed(vault: Vault, expires_at: float, *, identity_key: bytes | None = None) -> EndpointRecord:
    return endpoint_record.sign_record(
        vault.sign, identity_key or vault.identity_key, os.urandom(32), ADDRESSES, None, int(expires_at)
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def clocked_node(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Node]:
    node = Node(loopback_config(tmp_path / "node", resolve_endpoint_burst_per_identity=5), clock=clock)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def test_a_signed_record_is_kept_and_resolved_until_it_expires(
    clocked_node: Node, clock: FakeClock, make_user: UserFactory
) -> None:
    alice = await make_user(clocked_node, "alice")
    bob = await make_user(clocked_node, "bob")
    assert await alice.client.resolve_endpoint(bob.key) is None
    record = signed(bob.vault, clock.now + 60)
    await bob.client.publish_endpoint(bob.key, endpoint_record.encode(record))
    got = await alice.client.resolve_endpoint(bob.key)
    assert got is not None
    assert endpoint_record.decode_checked(got, identity_key=bob.key, now=clock.now, verify=verify_ed25519) == record
    clock.advance(60)
    assert await alice.client.resolve_endpoint(bob.key) is None
    state = clocked_node.state
    assert state is not None
    await state.sweep()
    assert await state.store.get_endpoint(bob.key) is None


async def test_an_empty_record_takes_it_down(clocked_node: Node, clock: FakeClock, make_user: UserFactory) -> None:
    alice = await make_user(clocked_node, "alice")
    bob = await make_user(clocked_node, "bob")
    await bob.client.publish_endpoint(bob.key, endpoint_record.encode(signed(bob.vault, clock.now + 60)))
    await bob.client.publish_endpoint(bob.key, b"")
    assert await alice.client.resolve_endpoint(bob.key) is None


async def test_records_that_break_a_rule_are_refused(
    clocked_node: Node, clock: FakeClock, make_user: UserFactory
) -> None:
    alice = await make_user(clocked_node, "alice")
    bob = await make_user(clocked_node, "bob")
    mallory = await make_user(clocked_node, "mallory")
    good = endpoint_record.encode(signed(bob.vault, clock.now + 60))
    refused = {
        "has expired": endpoint_record.encode(signed(bob.vault, clock.now - 1)),
        "more than 86400 s ahead": endpoint_record.encode(signed(bob.vault, clock.now + 86_401)),
        # Another identity signs a record naming bob: the node checks the signature against bob's key.
        "not signed by its identity key": endpoint_record.encode(
            signed(mallory.vault, clock.now + 60, identity_key=bob.key)
        ),
        # Mallory's own valid record, published under bob's account: it names another key.
        "names another identity key": endpoint_record.encode(signed(mallory.vault, clock.now + 60)),
        "truncated": good[:-1],
        "trailing bytes": good + b"\x00",
        "unknown endpoint record version 2": b"\x02" + good[1:],
        "not in canonical form": endpoint_record.encode(
            EndpointRecord(bob.key, os.urandom(32), ("[0:0::1]:40001",), None, int(clock.now + 60), bytes(64))
        ),
    }
    for reason, data in refused.items():
        with pytest.raises(InvalidArgument, match=reason):
            await bob.client.publish_endpoint(bob.key, data)
    limit = clocked_node.config.max_endpoint_bytes
    with pytest.raises(InvalidArgument, match=f"at most {limit} bytes"):
        await bob.client.publish_endpoint(bob.key, good + b"x" * limit)
    assert await alice.client.resolve_endpoint(bob.key) is None  # nothing refused was kept
    # A refused record leaves the one already published in place.
    await bob.client.publish_endpoint(bob.key, good)
    with pytest.raises(InvalidArgument):
        await bob.client.publish_endpoint(bob.key, refused["not signed by its identity key"])
    assert await alice.client.resolve_endpoint(bob.key) == good


async def test_resolving_is_rate_limited(clocked_node: Node, clock: FakeClock, make_user: UserFactory) -> None:
    alice = await make_user(clocked_node, "alice")
    bob = await make_user(clocked_node, "bob")
    for _ in range(5):
        await alice.client.resolve_endpoint(bob.key)
    with pytest.raises(ResourceExhausted, match="endpoint look-ups for this identity"):
        await alice.client.resolve_endpoint(bob.key)
    assert clocked_node.counters.refused["resolve_endpoint_rate_per_identity"] == 1
    assert await bob.client.resolve_endpoint(alice.key) is None  # another account has its own bucket
