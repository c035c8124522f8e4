"""The vault keeps its groups in memory between calls and stores each past epoch's member list once: what it
keeps must never drift from what it stored.

A kept group is dropped when its transaction fails (here: the disk fills up under a message being received, for
real, on a tmpfs) and when another handle on the same file changed it. Message secrets of past epochs, stored in
parts, come back whole after a restart.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import quicnprotochat.native as native
from tests.test_disk_full import fill, mounted_tmpfs


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from mounted_tmpfs(tmp_path / "disk", 8)


def pair(alice_path: Path, bob_path: Path) -> tuple[native.Vault, native.Vault, bytes]:
    alice = native.Vault.open(str(alice_path), os.urandom(32))
    bob = native.Vault.open(str(bob_path), os.urandom(32))
    group_id = alice.create_group()
    _, welcome = alice.add_members(group_id, [bob.create_key_package()])
    alice.merge_pending_commit(group_id)
    bob.join_group(welcome)
    return alice, bob, group_id


def test_a_message_whose_processing_failed_on_a_full_disk_decrypts_once_there_is_room(
    tmp_path: Path, small_disk: Path
) -> None:
    alice, bob, group_id = pair(tmp_path / "alice.vault", small_disk / "bob.vault")
    assert bob.process(alice.encrypt(group_id, b"before")).plaintext == b"before"
    # Its plaintext goes into the processing journal: more than the disk has left.
    big = os.urandom(2 << 20)
    message = alice.encrypt(group_id, big)
    filler = small_disk / "filler"
    fill(filler)
    with pytest.raises(native.StorageError):
        bob.process(message)
    filler.unlink()
    # The failed attempt used the message's key in memory only: the retry reads the stored state again.
    assert bob.process(message).plaintext == big
    assert bob.process(alice.encrypt(group_id, b"after")).plaintext == b"after"


def test_two_handles_on_one_vault_file_see_each_others_changes(tmp_path: Path) -> None:
    alice_path = tmp_path / "alice.vault"
    alice_key = os.urandom(32)
    alice = native.Vault.open(str(alice_path), alice_key)
    bob = native.Vault.open(str(tmp_path / "bob.vault"), os.urandom(32))
    group_id = alice.create_group()
    _, welcome = alice.add_members(group_id, [bob.create_key_package()])
    alice.merge_pending_commit(group_id)
    bob.join_group(welcome)
    second = native.Vault.open(str(alice_path), alice_key)
    # Each handle sends in turn: each message must take the next generation of the one sender ratchet.
    messages = []
    for i in range(4):
        handle = alice if i % 2 == 0 else second
        messages.append(handle.encrypt(group_id, f"message {i}".encode()))
    assert [bob.process(m).plaintext for m in messages] == [f"message {i}".encode() for i in range(4)]
    # A commit merged through one handle moves the epoch the other one reports and sends in.
    commit = second.self_update(group_id)
    second.merge_pending_commit(group_id)
    assert bob.process(commit).epoch == alice.epoch(group_id) == 2
    assert bob.process(alice.encrypt(group_id, b"in epoch 2")).plaintext == b"in epoch 2"
    for vault in (alice, second, bob):
        vault.close()


def test_late_messages_of_past_epochs_decrypt_across_a_restart(tmp_path: Path) -> None:
    bob_path, bob_key = str(tmp_path / "bob.vault"), os.urandom(32)
    alice = native.Vault.open(str(tmp_path / "alice.vault"), os.urandom(32))
    bob = native.Vault.open(bob_path, bob_key)
    group_id = alice.create_group()
    _, welcome = alice.add_members(group_id, [bob.create_key_package()])
    alice.merge_pending_commit(group_id)
    bob.join_group(welcome)
    late = []
    for epoch in range(1, 9):
        late.append((epoch, alice.encrypt(group_id, b"sent at epoch %d" % epoch)))
        commit = alice.self_update(group_id)
        alice.merge_pending_commit(group_id)
        bob.process(commit)
    # Half of them before a restart (each changes its epoch's stored secrets), half after.
    for epoch, message in late[:4]:
        assert bob.process(message).plaintext == b"sent at epoch %d" % epoch
    bob.close()
    bob = native.Vault.open(bob_path, bob_key)
    for epoch, message in late[4:]:
        assert bob.process(message).plaintext == b"sent at epoch %d" % epoch
    assert bob.process(alice.encrypt(group_id, b"now")).plaintext == b"now"
    bob.close()
    bob = native.Vault.open(bob_path, bob_key)
    assert bob.process(alice.encrypt(group_id, b"and again")).plaintext == b"and again"
