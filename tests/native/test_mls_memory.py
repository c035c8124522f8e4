"""The vault keeps at most a bounded number of MLS groups in memory (a bot may be in thousands): past the bound
the least recently used group is dropped, and read again from the encrypted file when next used, its state
(ratchets, epoch, pending commit) intact."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import quicnprotochat.native as native
from quicnprotochat.client.chat import ChatConfig
from quicnprotochat.client.state import StateDir


def test_groups_in_memory_never_exceed_the_bound_and_evicted_groups_carry_on(tmp_path: Path) -> None:
    alice = native.Vault.open(str(tmp_path / "alice.vault"), os.urandom(32), max_groups_in_memory=3)
    bob = native.Vault.open(str(tmp_path / "bob.vault"), os.urandom(32), max_groups_in_memory=3)
    groups = []
    for _ in range(8):
        group_id = alice.create_group()
        _, welcome = alice.add_members(group_id, [bob.create_key_package()])
        alice.merge_pending_commit(group_id)
        bob.join_group(welcome)
        groups.append(group_id)
        assert alice.groups_in_memory <= 3 and bob.groups_in_memory <= 3
    # Messages in every group, oldest first (long evicted), then a commit in each: nothing was lost on the way.
    for round_ in range(2):
        for index, group_id in enumerate(groups):
            text = f"round {round_} group {index}".encode()
            assert bob.process(alice.encrypt(group_id, text)).plaintext == text
            assert alice.groups_in_memory <= 3 and bob.groups_in_memory <= 3
    # A pending commit survives its group's eviction: it is merged once the node accepted it.
    pending = alice.self_update(groups[0])
    for group_id in groups[1:]:
        alice.epoch(group_id)
    assert alice.pending_commit(groups[0]) == (pending, None)
    alice.merge_pending_commit(groups[0])
    assert bob.process(pending).epoch == alice.epoch(groups[0]) == 2
    assert bob.process(alice.encrypt(groups[0], b"epoch 2")).plaintext == b"epoch 2"
    assert alice.groups_in_memory == 3
    alice.close()
    bob.close()


def test_the_bound_is_at_least_one_and_defaults_to_the_vaults(tmp_path: Path) -> None:
    with pytest.raises(native.StateError, match="at least one group"):
        native.Vault.open(str(tmp_path / "zero.vault"), os.urandom(32), max_groups_in_memory=0)
    assert ChatConfig("h:1", "u", tmp_path).vault_groups_in_memory == native.VAULT_GROUPS_IN_MEMORY == 64


async def test_client_state_opens_its_vault_with_the_configured_bound(tmp_path: Path) -> None:
    state = await StateDir(tmp_path / "state").open("state pw")
    try:
        vault = state.open_vault(2)
        peer = native.Vault.open(str(tmp_path / "peer.vault"), os.urandom(32))
        for _ in range(4):
            group_id = vault.create_group()
            _, welcome = vault.add_members(group_id, [peer.create_key_package()])
            vault.merge_pending_commit(group_id)
            peer.join_group(welcome)
        assert vault.groups_in_memory == 2
        vault.close()
        peer.close()
    finally:
        await state.close()
