"""The node's identity persists, and clients pin it: TOFU with a notice, strict when told, loud on change."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from quicnprotochat.client import FingerprintMismatch, KnownHosts, NodeClient
from quicnprotochat.client.known_hosts import default_known_hosts_path
from quicnprotochat.server.config import NodeConfig
from quicnprotochat.server.node import Node
from tests.conftest import ClientFactory, node_address


async def test_identity_survives_restart(node_config: NodeConfig, connect: ClientFactory) -> None:
    first = Node(node_config)
    await first.start()
    fingerprint = first.fingerprint
    assert first.identity_created
    await first.stop()

    second = Node(node_config)
    await second.start()
    try:
        assert not second.identity_created
        assert second.fingerprint == fingerprint
        client = await connect(second, "quic")
        assert (await client.server_info()).cert_fingerprint == fingerprint
    finally:
        await second.stop()


async def test_private_key_is_private(node: Node, node_config: NodeConfig) -> None:
    mode = stat.S_IMODE(os.stat(node_config.data_dir / "node-key.pem").st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(node_config.data_dir).st_mode) == 0o700


@pytest.mark.parametrize("transport", ["quic", "tcp"])
async def test_first_contact_is_recorded_with_a_notice(
    node: Node, connect: ClientFactory, known_hosts: KnownHosts, notices: list[str], transport: str
) -> None:
    client = await connect(node, transport)
    assert await client.health() == "ok"
    assert known_hosts.lookup(node_address(node, transport)) == node.fingerprint
    assert len(notices) == 1 and node.fingerprint in notices[0]
    # Second contact: silently accepted.
    again = await connect(node, transport)
    assert await again.health() == "ok"
    assert len(notices) == 1


@pytest.mark.parametrize("transport", ["quic", "tcp"])
async def test_changed_fingerprint_is_refused(
    node: Node, connect: ClientFactory, known_hosts: KnownHosts, transport: str
) -> None:
    stale = "ab" * 32
    known_hosts.add(node_address(node, transport), stale)
    with pytest.raises(FingerprintMismatch) as raised:
        await connect(node, transport)
    message = str(raised.value)
    assert node.fingerprint in message and stale in message and str(known_hosts.path) in message
    # The stale pin stays: nothing overwrote it.
    assert known_hosts.lookup(node_address(node, transport)) == stale


@pytest.mark.parametrize("transport", ["quic", "tcp"])
async def test_strict_fingerprint(node: Node, connect: ClientFactory, notices: list[str], transport: str) -> None:
    with pytest.raises(FingerprintMismatch, match="--server-fingerprint"):
        await connect(node, transport, server_fingerprint="cd" * 32)
    client = await connect(node, transport, server_fingerprint=node.fingerprint.upper())
    assert await client.health() == "ok"
    assert notices == []  # an expected fingerprint is not a trust-on-first-use event


async def test_restarted_node_with_new_identity_is_refused(
    node_config: NodeConfig, connect: ClientFactory, tmp_path: Path
) -> None:
    first = Node(node_config)
    await first.start()
    client = await connect(first, "tcp")
    assert await client.health() == "ok"
    address = first.tcp_address
    await first.stop()

    # Same address, a fresh data dir: a different key answers.
    impostor_config = NodeConfig(
        data_dir=tmp_path / "impostor", quic_listen="", tcp_listen=f"{address[0]}:{address[1]}" if address else ""
    )
    impostor = Node(impostor_config)
    await impostor.start()
    try:
        with pytest.raises(FingerprintMismatch):
            await connect(impostor, "tcp")
    finally:
        await impostor.stop()


def test_known_hosts_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text("# comment\n127.0.0.1:7700 not-a-fingerprint\n")
    with pytest.raises(ValueError, match="known_hosts:2"):
        KnownHosts(path).lookup("127.0.0.1:7700")


async def test_a_client_left_to_the_default_known_hosts_records_nodes_in_this_tests_own_file(node: Node) -> None:
    """The suite's guard (tests/conftest.py `own_client_homes`): a node of an earlier test, or of an earlier run,
    that had this node's port must not pin it to another key."""
    default = default_known_hosts_path()
    assert not default.exists()
    assert not default.is_relative_to(Path.home())
    address = node_address(node, "quic")
    async with NodeClient(address, server_fingerprint=node.fingerprint) as client:
        await client.health()
    assert KnownHosts(default).lookup(address) == node.fingerprint
