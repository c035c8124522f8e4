"""MLS groups through the encrypted vault: membership, messages, removal, restart, tampering."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import quicnprotochat.native as native

SUITES = [
    pytest.param(native.CIPHERSUITE_DEFAULT, id="x25519-aes128gcm"),
    pytest.param(native.CIPHERSUITE_XWING, id="xwing-chacha20poly1305"),
]


class Member:
    def __init__(self, tmp_path: Path, name: str) -> None:
        self.path = str(tmp_path / f"{name}.vault")
        self.key = os.urandom(32)
        self.name = name
        self.vault = native.Vault.open(self.path, self.key)

    def reopen(self) -> None:
        self.vault.close()
        del self.vault
        self.vault = native.Vault.open(self.path, self.key)


def build_group(tmp_path: Path, suite: int) -> tuple[list[Member], bytes]:
    alice, bob, carol = (Member(tmp_path, n) for n in ("alice", "bob", "carol"))
    group_id = alice.vault.create_group(ciphersuite=suite)
    kp_bob = bob.vault.create_key_package(ciphersuite=suite)
    kp_carol = carol.vault.create_key_package(last_resort=True, ciphersuite=suite)
    info = native.validate_key_package(kp_carol)
    assert info.identity_key == carol.vault.identity_key
    assert info.ciphersuite == suite
    assert info.is_last_resort
    commit, welcome = alice.vault.add_members(group_id, [kp_bob, kp_carol])
    assert commit and welcome
    alice.vault.merge_pending_commit(group_id)
    assert bob.vault.join_group(welcome) == group_id
    assert carol.vault.join_group(welcome) == group_id
    members = [alice, bob, carol]
    for m in members:
        assert m.vault.epoch(group_id) == 1
        assert sorted(m.vault.members(group_id)) == sorted(x.vault.identity_key for x in members)
        assert m.vault.group_ciphersuite(group_id) == suite
    return members, group_id


def exchange(members: list[Member], group_id: bytes) -> None:
    for sender in members:
        text = f"hello from {sender.name} {os.urandom(4).hex()}".encode()
        ciphertext = sender.vault.encrypt(group_id, text)
        assert text not in ciphertext
        for receiver in members:
            if receiver is sender:
                continue
            processed = receiver.vault.process(ciphertext)
            assert processed.kind == "application"
            assert processed.plaintext == text
            assert processed.sender == sender.vault.identity_key
            assert processed.group_id == group_id


@pytest.mark.parametrize("suite", SUITES)
def test_three_members_remove_and_restart(tmp_path: Path, suite: int) -> None:
    members, group_id = build_group(tmp_path, suite)
    alice, bob, carol = members
    exchange(members, group_id)

    commit = alice.vault.remove_members(group_id, [carol.vault.identity_key])
    alice.vault.merge_pending_commit(group_id)
    seen_by_bob = bob.vault.process(commit)
    assert seen_by_bob.kind == "commit"
    assert seen_by_bob.removed == [carol.vault.identity_key]
    assert seen_by_bob.sender == alice.vault.identity_key
    assert seen_by_bob.epoch == 2
    assert not seen_by_bob.self_removed
    seen_by_carol = carol.vault.process(commit)
    assert seen_by_carol.self_removed
    assert not carol.vault.is_active(group_id)

    after = alice.vault.encrypt(group_id, b"carol must not read this")
    with pytest.raises(native.NativeError):
        carol.vault.process(after)
    assert bob.vault.process(after).plaintext == b"carol must not read this"

    # Drop every object, reopen from disk, continue the group.
    for m in (alice, bob):
        m.reopen()
    assert alice.vault.group_ids() == [group_id]
    assert bob.vault.epoch(group_id) == 2
    exchange([alice, bob], group_id)
    update = bob.vault.self_update(group_id)
    bob.vault.merge_pending_commit(group_id)
    assert alice.vault.process(update).epoch == 3
    exchange([alice, bob], group_id)
    # A replay is answered from the journal until the caller forgets it; then it is refused.
    assert bob.vault.process(commit).digest == seen_by_bob.digest
    bob.vault.forget_processed([seen_by_bob.digest])
    with pytest.raises(native.WrongEpoch):
        bob.vault.process(commit)


@pytest.mark.parametrize("suite", SUITES)
def test_tampered_messages_rejected(tmp_path: Path, suite: int) -> None:
    members, group_id = build_group(tmp_path, suite)
    alice, bob, _ = members
    ciphertext = alice.vault.encrypt(group_id, b"integrity")
    for index in (len(ciphertext) - 1, len(ciphertext) - 20, len(ciphertext) // 2):
        tampered = bytearray(ciphertext)
        tampered[index] ^= 0x01
        with pytest.raises(native.NativeError):
            bob.vault.process(bytes(tampered))
    with pytest.raises(native.MalformedError):
        bob.vault.process(ciphertext[:10])
    with pytest.raises(native.MalformedError):
        bob.vault.process(b"")
    # The genuine message still decrypts after the rejected ones.
    assert bob.vault.process(ciphertext).plaintext == b"integrity"
    # A Welcome is not a group message; a group message is not a Welcome.
    with pytest.raises(native.NativeError):
        bob.vault.join_group(ciphertext)


def test_leave_via_proposal_and_commit(tmp_path: Path) -> None:
    members, group_id = build_group(tmp_path, native.CIPHERSUITE_DEFAULT)
    alice, bob, carol = members
    proposal = carol.vault.leave_group(group_id)
    for m in (alice, bob):
        seen = m.vault.process(proposal)
        assert seen.kind == "proposal"
        assert seen.removed == [carol.vault.identity_key]
    commit, welcome = alice.vault.commit_pending_proposals(group_id)
    assert welcome is None
    alice.vault.merge_pending_commit(group_id)
    assert bob.vault.process(commit).removed == [carol.vault.identity_key]
    assert carol.vault.process(commit).self_removed
    assert len(alice.vault.members(group_id)) == 2
    carol.vault.delete_group(group_id)
    assert carol.vault.group_ids() == []
    with pytest.raises(native.GroupNotFound):
        carol.vault.epoch(group_id)


def test_database_holds_no_plaintext(tmp_path: Path) -> None:
    members, group_id = build_group(tmp_path, native.CIPHERSUITE_DEFAULT)
    alice, bob, _ = members
    marker = b"PLAINTEXT-MARKER-" + os.urandom(8).hex().encode()
    bob.vault.process(alice.vault.encrypt(group_id, marker))
    identity = alice.vault.identity_key
    for m in members:
        m.vault.close()
    files = list(tmp_path.iterdir())
    assert files
    for f in files:
        data = f.read_bytes()
        assert marker not in data, f.name
        assert b"SQLite format 3" not in data, f.name
        assert identity not in data, f.name


def test_wrong_key_fails_cleanly(tmp_path: Path) -> None:
    member = Member(tmp_path, "dave")
    identity = member.vault.identity_key
    member.vault.close()
    with pytest.raises(native.VaultKeyError):
        native.Vault.open(member.path, os.urandom(32))
    with pytest.raises(native.InvalidKeyError):
        native.Vault.open(member.path, b"short")
    not_a_vault = tmp_path / "plain.txt"
    not_a_vault.write_bytes(b"hello world, not a database" * 100)
    with pytest.raises(native.VaultKeyError):
        native.Vault.open(str(not_a_vault), member.key)
    # The right key still works and the identity survived.
    assert native.Vault.open(member.path, member.key).identity_key == identity


def test_closed_vault_raises(tmp_path: Path) -> None:
    member = Member(tmp_path, "erin")
    member.vault.close()
    with pytest.raises(native.StateError):
        member.vault.create_group()


def test_key_package_validation(tmp_path: Path) -> None:
    member = Member(tmp_path, "frank")
    kp = member.vault.create_key_package()
    info = native.validate_key_package(kp)
    assert len(info.identity_key) == 32
    assert not info.is_last_resort
    assert info.not_before < info.not_after
    assert len(info.reference) == 32
    tampered = bytearray(kp)
    tampered[-5] ^= 0x01
    with pytest.raises(native.InvalidKeyPackage):
        native.validate_key_package(bytes(tampered))
    with pytest.raises(native.InvalidKeyPackage):
        native.validate_key_package(kp + b"\x00")
    with pytest.raises(native.InvalidKeyPackage):
        native.validate_key_package(b"")
    with pytest.raises(native.UnsupportedError):
        member.vault.create_key_package(ciphersuite=0x0002)
    group_id = member.vault.create_group()
    with pytest.raises(native.InvalidKeyPackage):
        member.vault.add_members(group_id, [bytes(tampered)])
    xwing_kp = Member(tmp_path, "gina").vault.create_key_package(ciphersuite=native.CIPHERSUITE_XWING)
    with pytest.raises(native.InvalidKeyPackage):
        member.vault.add_members(group_id, [xwing_kp])


def test_sign_and_verify(tmp_path: Path) -> None:
    member = Member(tmp_path, "hal")
    signature = member.vault.sign(b"proof of possession transcript")
    assert len(signature) == 64
    key = member.vault.identity_key
    assert native.verify_ed25519(key, b"proof of possession transcript", signature)
    assert not native.verify_ed25519(key, b"another transcript", signature)
    assert not native.verify_ed25519(key[:31], b"proof of possession transcript", signature)
    assert not native.verify_ed25519(key, b"proof of possession transcript", signature[:63])
    # Independent check with pyca/cryptography.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    Ed25519PublicKey.from_public_bytes(key).verify(signature, b"proof of possession transcript")


def test_messages_from_past_epochs_decrypt_up_to_the_kept_window(tmp_path: Path) -> None:
    """A message sent at epoch E and received after several later commits still decrypts while E is within the
    window of past epochs the vault keeps (the node orders commits, but a message can land behind a few)."""
    members, group_id = build_group(tmp_path, native.CIPHERSUITE_DEFAULT)
    alice, bob, carol = members
    kept = 8
    late = [alice.vault.encrypt(group_id, b"sent before the commits")]
    for _ in range(kept + 1):
        commit = carol.vault.self_update(group_id)
        carol.vault.merge_pending_commit(group_id)
        alice.vault.process(commit)
        bob.vault.process(commit)
        late.append(alice.vault.encrypt(group_id, b"sent at epoch %d" % alice.vault.epoch(group_id)))
    # late[0] is kept + 1 epochs old for bob now: beyond the window; late[1] is exactly `kept` epochs old.
    with pytest.raises(native.NativeError):
        bob.vault.process(late[0])
    for message in late[1:]:
        plaintext = bob.vault.process(message).plaintext
        assert plaintext is not None and plaintext.startswith(b"sent")
