"""KeyPackage, hybrid-key and endpoint directories on a real node."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from quicnprotochat.common.errors import AlreadyExists, InvalidArgument, ResourceExhausted
from quicnprotochat.native import HybridKeyPair
from quicnprotochat.server.node import Node
from tests.conftest import UserFactory, loopback_config


async def test_key_package_upload_and_single_use_fetch(node: Node, make_user: UserFactory) -> None:
    alice = await make_user(node, "alice")
    bob = await make_user(node, "bob")
    packages = [bob.vault.create_key_package() for _ in range(10)]
    for package in packages:
        assert await bob.client.upload_key_package(bob.key, package) == hashlib.sha256(package).digest()
    with pytest.raises(AlreadyExists):
        await bob.client.upload_key_package(bob.key, packages[0])
    taken = await asyncio.gather(*(alice.client.fetch_key_package(bob.key) for _ in range(12)))
    handed_out = [package for package in taken if package is not None]
    assert sorted(handed_out) == sorted(packages)  # every package exactly once, never twice
    assert await alice.client.fetch_key_package(bob.key) is None


async def test_last_resort_package_is_kept(node: Node, make_user: UserFactory) -> None:
    alice = await make_user(node, "alice")
    bob = await make_user(node, "bob")
    single = bob.vault.create_key_package()
    last_resort = bob.vault.create_key_package(last_resort=True)
    await bob.client.upload_key_package(bob.key, last_resort)
    await bob.client.upload_key_package(bob.key, single)
    assert await alice.client.fetch_key_package(bob.key) == single  # single-use ones go first
    assert await alice.client.fetch_key_package(bob.key) == last_resort
    assert await alice.client.fetch_key_package(bob.key) == last_resort  # and it stays


async def test_invalid_or_foreign_packages_are_refused(node: Node, make_user: UserFactory) -> None:
    alice = await make_user(node, "alice")
    bob = await make_user(node, "bob")
    with pytest.raises(InvalidArgument, match="invalid KeyPackage"):
        await alice.client.upload_key_package(alice.key, b"\x00\x01not a key package")
    tampered = bytearray(alice.vault.create_key_package())
    tampered[-10] ^= 0x01
    with pytest.raises(InvalidArgument, match="invalid KeyPackage"):
        await alice.client.upload_key_package(alice.key, bytes(tampered))
    # Bob's package uploaded under Alice's own key: the credential does not match.
    with pytest.raises(InvalidArgument, match="credential key"):
        await alice.client.upload_key_package(alice.key, bob.vault.create_key_package())


async def test_key_package_cap(tmp_path: Path, make_user: UserFactory) -> None:
    node = Node(loopback_config(tmp_path / "node", max_key_packages_per_identity=2))
    await node.start()
    try:
        bob = await make_user(node, "bob")
        for _ in range(2):
            await bob.client.upload_key_package(bob.key, bob.vault.create_key_package())
        with pytest.raises(ResourceExhausted, match="max_key_packages_per_identity"):
            await bob.client.upload_key_package(bob.key, bob.vault.create_key_package())
    finally:
        await node.stop()


async def test_hybrid_keys(node: Node, make_user: UserFactory) -> None:
    alice = await make_user(node, "alice")
    bob = await make_user(node, "bob")
    assert await alice.client.fetch_hybrid_key(bob.key) is None
    await bob.client.upload_hybrid_key(bob.key, bob.vault.hybrid_public_key())
    assert await alice.client.fetch_hybrid_key(bob.key) == bob.vault.hybrid_public_key()
    replacement = HybridKeyPair.generate().public_key
    await bob.client.upload_hybrid_key(bob.key, replacement)  # replaceable
    unknown = os.urandom(32)
    assert await alice.client.fetch_hybrid_keys([bob.key, unknown, bob.key]) == [replacement, None, replacement]
    with pytest.raises(InvalidArgument, match="1216-byte"):
        await bob.client.upload_hybrid_key(bob.key, b"\x01" * 100)
