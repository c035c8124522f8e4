"""What other parties read from MLS bytes: the clear header of group messages (the node orders
commits by it), KeyPackages raw or wrapped in an MLSMessage, and the group's exporter secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import quicnprotochat.native as native

# MLSMessage.version = mls10, wire_format = mls_key_package (RFC 9420 section 6).
KEY_PACKAGE_MESSAGE_HEADER = b"\x00\x01\x00\x05"


def open_vault(tmp_path: Path, name: str) -> native.Vault:
    return native.Vault.open(str(tmp_path / f"{name}.vault"), os.urandom(32))


def test_message_info_of_each_content_type(tmp_path: Path) -> None:
    alice, bob = open_vault(tmp_path, "alice"), open_vault(tmp_path, "bob")
    group_id = alice.create_group()
    commit, welcome = alice.add_members(group_id, [bob.create_key_package()])
    alice.merge_pending_commit(group_id)
    bob.join_group(welcome)

    info = native.mls_message_info(commit)
    assert (info.group_id, info.epoch, info.content_type, info.wire_format) == (
        group_id,
        0,
        "commit",
        "private",
    )
    application = bob.encrypt(group_id, b"hello")
    info = native.mls_message_info(application)
    assert (info.group_id, info.epoch, info.content_type) == (group_id, 1, "application")
    proposal = bob.leave_group(group_id)
    info = native.mls_message_info(proposal)
    assert (info.epoch, info.content_type, info.wire_format) == (1, "proposal", "private")
    assert "proposal" in repr(info)

    key_package = alice.create_key_package()
    for bad, reason in [
        (welcome, "carries a welcome"),
        (KEY_PACKAGE_MESSAGE_HEADER + key_package, "carries a key package"),
        (key_package, "does not parse"),
        (application + b"\x00", "does not parse"),
        (application[:-1], "does not parse"),
        (b"", "does not parse"),
        (os.urandom(64), "does not parse"),
    ]:
        with pytest.raises(native.MalformedError, match=reason):
            native.mls_message_info(bad)


def test_key_package_raw_or_wrapped(tmp_path: Path) -> None:
    alice, bob = open_vault(tmp_path, "alice"), open_vault(tmp_path, "bob")
    raw = bob.create_key_package()
    wrapped = KEY_PACKAGE_MESSAGE_HEADER + raw
    assert native.validate_key_package(wrapped).reference == native.validate_key_package(raw).reference
    assert native.validate_key_package(wrapped).identity_key == bob.identity_key
    tampered = bytearray(wrapped)
    tampered[-5] ^= 1
    with pytest.raises(native.InvalidKeyPackage):
        native.validate_key_package(bytes(tampered))
    with pytest.raises(native.InvalidKeyPackage, match="wrapped key package does not parse"):
        native.validate_key_package(wrapped + b"\x00")

    group_id = alice.create_group()
    _commit, welcome = alice.add_members(group_id, [wrapped])
    alice.merge_pending_commit(group_id)
    assert bob.join_group(welcome) == group_id


def test_export_secret_agrees_across_members(tmp_path: Path) -> None:
    alice, bob = open_vault(tmp_path, "alice"), open_vault(tmp_path, "bob")
    group_id = alice.create_group(ciphersuite=native.CIPHERSUITE_XWING)
    _commit, welcome = alice.add_members(group_id, [bob.create_key_package(ciphersuite=native.CIPHERSUITE_XWING)])
    alice.merge_pending_commit(group_id)
    bob.join_group(welcome)
    secret = alice.export_secret(group_id, "qpc test", b"context", 32)
    assert len(secret) == 32
    assert secret == bob.export_secret(group_id, "qpc test", b"context", 32)
    assert secret != alice.export_secret(group_id, "qpc test", b"other", 32)
    assert len(alice.export_secret(group_id, "qpc test", b"", 64)) == 64
    with pytest.raises(native.StateError, match="exporter length"):
        alice.export_secret(group_id, "qpc test", b"", 0)
    with pytest.raises(native.GroupNotFound):
        alice.export_secret(b"unknown", "qpc test", b"", 32)
