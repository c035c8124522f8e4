"""Interoperability with another MLS library (RFC 9420): mls-rs. A group made by mls-rs is joined and committed
in by our Vault, a group made by our Vault is joined and committed in by mls-rs; messages go both ways, every
member derives the same exporter secret, and mls-rs's commits arrive as PublicMessage, which we accept.

Both sides: suite 0x0001, BasicCredential holding the raw 32-byte Ed25519 key, the ratchet tree in the Welcome."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import quicnprotochat.native as native
from quicnprotochat.bench.mls_rs_peer import KEY_PACKAGE_MESSAGE_HEADER, MlsRsPeer, build_peer
from quicnprotochat.client import NodeClient, accounts
from quicnprotochat.client.node_client import Delivery
from quicnprotochat.server.node import Node
from tests.conftest import ClientFactory, loopback_config

# The first build of the peer compiles mls-rs: minutes on a busy machine.
pytestmark = pytest.mark.timeout(1500)


@pytest.fixture(scope="module")
def peer_binary() -> Path:
    return build_peer()


@pytest.fixture
def peer(peer_binary: Path) -> Iterator[MlsRsPeer]:
    peer = MlsRsPeer(peer_binary)
    yield peer
    peer.close()


def vault(tmp_path: Path, name: str) -> native.Vault:
    return native.Vault.open(str(tmp_path / f"{name}.vault"), os.urandom(32))


def agree(peer: MlsRsPeer, vaults: list[native.Vault], group_id: bytes) -> None:
    """Epoch, member set and exporter secret are the same on mls-rs and on every vault."""
    expected = (
        peer.epoch(group_id),
        sorted(peer.members(group_id)),
        peer.export_secret(group_id, "quicnprotochat interop", b"ctx", 32),
    )
    for v in vaults:
        assert (
            v.epoch(group_id),
            sorted(v.members(group_id)),
            v.export_secret(group_id, "quicnprotochat interop", b"ctx", 32),
        ) == expected


def talk(peer: MlsRsPeer, vaults: list[native.Vault], group_id: bytes) -> None:
    text = b"from mls-rs " + os.urandom(4).hex().encode()
    message = peer.encrypt(group_id, text)
    for v in vaults:
        processed = v.process(message)
        assert (processed.kind, processed.plaintext, processed.sender) == ("application", text, peer.identity_key)
    for sender in vaults:
        text = b"from openmls " + os.urandom(4).hex().encode()
        message = sender.encrypt(group_id, text)
        seen = peer.process(message)
        assert (seen["kind"], seen["plaintext"], seen["sender"]) == ("application", text, sender.identity_key)
        for v in vaults:
            if v is not sender:
                assert v.process(message).plaintext == text


def wire_format(message: bytes) -> str:
    return native.mls_message_info(message).wire_format


def test_group_made_by_mls_rs(tmp_path: Path, peer: MlsRsPeer) -> None:
    bob, carol = vault(tmp_path, "bob"), vault(tmp_path, "carol")
    group_id = peer.create_group()
    commit, welcome = peer.add(group_id, [KEY_PACKAGE_MESSAGE_HEADER + bob.create_key_package()])
    assert wire_format(commit) == "public"
    assert bob.join_group(welcome) == group_id
    agree(peer, [bob], group_id)
    talk(peer, [bob], group_id)

    # Our vault commits in mls-rs's group (PrivateMessage), and its Welcome brings in another vault.
    commit, welcome = bob.add_members(group_id, [carol.create_key_package()])
    bob.merge_pending_commit(group_id)
    assert wire_format(commit) == "private"
    assert (peer.process(commit)["kind"], peer.epoch(group_id)) == ("commit", 2)
    assert carol.join_group(welcome) == group_id
    agree(peer, [bob, carol], group_id)
    talk(peer, [bob, carol], group_id)

    # mls-rs commits in the clear: an update, then a removal.
    update = peer.commit("update", group_id)
    assert wire_format(update) == "public"
    for v in (bob, carol):
        assert (v.process(update).kind, v.epoch(group_id)) == ("commit", 3)
    removal = peer.commit("remove", group_id, identity_keys=[carol.identity_key])
    assert bob.process(removal).removed == [carol.identity_key]
    assert carol.process(removal).self_removed
    agree(peer, [bob], group_id)

    update = bob.self_update(group_id)
    bob.merge_pending_commit(group_id)
    assert peer.process(update)["epoch"] == 5
    agree(peer, [bob], group_id)
    talk(peer, [bob], group_id)


def test_group_made_by_our_vault(tmp_path: Path, peer: MlsRsPeer) -> None:
    alice, carol = vault(tmp_path, "alice"), vault(tmp_path, "carol")
    group_id = alice.create_group()
    package = peer.key_package()  # wrapped in an MLSMessage, as mls-rs sends it
    info = native.validate_key_package(package)
    assert (info.identity_key, info.ciphersuite) == (peer.identity_key, native.CIPHERSUITE_DEFAULT)
    _commit, welcome = alice.add_members(group_id, [package])
    alice.merge_pending_commit(group_id)
    assert peer.join(welcome) == group_id
    agree(peer, [alice], group_id)
    talk(peer, [alice], group_id)

    # mls-rs adds one of our vaults with its own Welcome (ratchet tree extension), then updates.
    commit, welcome = peer.add(group_id, [KEY_PACKAGE_MESSAGE_HEADER + carol.create_key_package()])
    assert wire_format(commit) == "public"
    assert alice.process(commit).added == [carol.identity_key]
    assert carol.join_group(welcome) == group_id
    update = peer.commit("update", group_id)
    for v in (alice, carol):
        v.process(update)
    agree(peer, [alice, carol], group_id)
    talk(peer, [alice, carol], group_id)

    # Our /leave: a proposal (PrivateMessage) that mls-rs commits.
    proposal = carol.leave_group(group_id)
    assert peer.process(proposal)["kind"] == "proposal"
    assert alice.process(proposal).removed == [carol.identity_key]
    commit = peer.commit("commit_proposals", group_id)
    assert alice.process(commit).removed == [carol.identity_key]
    assert carol.process(commit).self_removed
    agree(peer, [alice], group_id)

    update = alice.self_update(group_id)
    alice.merge_pending_commit(group_id)
    peer.process(update)
    agree(peer, [alice], group_id)
    talk(peer, [alice], group_id)


async def delivered(client: NodeClient, key: bytes) -> bytes:
    """The one envelope waiting in `key`'s inbox."""
    (envelope,) = await client.fetch(key)
    return envelope.data


async def test_mls_rs_member_through_the_node(tmp_path: Path, peer: MlsRsPeer, connect: ClientFactory) -> None:
    """mls-rs signs in with its own Ed25519 identity key, publishes its wrapped KeyPackage, and its PublicMessage
    commits are ordered by the node's sequencer like ours: of two commits for one epoch one is accepted, and the
    loser (either side) clears its own, catches up from its inbox and commits again."""
    node = Node(loopback_config(tmp_path / "node"))
    await node.start()
    try:
        alice = vault(tmp_path, "alice")
        alice_node, peer_node = await connect(node), await connect(node)
        for client, signer, name in ((alice_node, alice, "alice"), (peer_node, peer, "mlsrs")):
            await accounts.register(client, signer, name, f"pw {name}")
            await accounts.login(client, signer, name, f"pw {name}")
        await peer_node.upload_key_package(peer.identity_key, peer.key_package())
        package = await alice_node.fetch_key_package(peer.identity_key)
        assert package is not None and package.startswith(KEY_PACKAGE_MESSAGE_HEADER)
        keys = [alice.identity_key, peer.identity_key]

        group_id = alice.create_group()
        commit, welcome = alice.add_members(group_id, [package])
        result = await alice_node.submit_commit(group_id, 0, commit, [], [Delivery(peer.identity_key, welcome)], keys)
        assert result.outcome == "accepted"
        alice.merge_pending_commit(group_id)
        assert peer.join(await delivered(peer_node, peer.identity_key)) == group_id

        ours = alice.self_update(group_id)
        theirs = peer.commit("update", group_id, pending=True)
        assert (wire_format(ours), wire_format(theirs)) == ("private", "public")
        mine, its = await asyncio.gather(
            alice_node.submit_commit(group_id, 1, ours, [Delivery(peer.identity_key, ours)], [], keys),
            peer_node.submit_commit(group_id, 1, theirs, [Delivery(alice.identity_key, theirs)], [], keys),
        )
        assert sorted((mine.outcome, its.outcome)) == ["accepted", "stale"]
        if mine.outcome == "accepted":
            alice.merge_pending_commit(group_id)
            peer.clear(group_id)
            assert peer.process(await delivered(peer_node, peer.identity_key))["epoch"] == 2
            again = peer.commit("update", group_id, pending=True)
            result = await peer_node.submit_commit(group_id, 2, again, [Delivery(alice.identity_key, again)], [], keys)
            assert result.outcome == "accepted"
            peer.merge(group_id)
            assert alice.process(await delivered(alice_node, alice.identity_key)).epoch == 3
        else:
            peer.merge(group_id)
            alice.clear_pending_commit(group_id)
            assert alice.process(await delivered(alice_node, alice.identity_key)).epoch == 2
            again = alice.self_update(group_id)
            result = await alice_node.submit_commit(group_id, 2, again, [Delivery(peer.identity_key, again)], [], keys)
            assert result.outcome == "accepted"
            alice.merge_pending_commit(group_id)
            assert peer.process(await delivered(peer_node, peer.identity_key))["epoch"] == 3
        agree(peer, [alice], group_id)
        assert alice.epoch(group_id) == 3
        talk(peer, [alice], group_id)
    finally:
        await node.stop()
