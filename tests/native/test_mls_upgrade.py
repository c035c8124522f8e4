"""Vaults written by the module before the vault kept its groups in memory and stored its message secrets in parts
(main at d62b2c0: every OpenMLS row JSON, all in OpenMLS's own table) open with this module and carry on.

data/old_vaults/ holds two members of one group written by that module: alice created the group and added bob
(epoch 1), sent a message bob has not read yet (`late`), then committed three times, each processed by bob
(epoch 4). Their keys, the group id and that message are in vaults.json.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import quicnprotochat.native as native

DATA = Path(__file__).parent / "data" / "old_vaults"


def test_vaults_of_the_previous_format_open_and_carry_on(tmp_path: Path) -> None:
    shutil.copytree(DATA, tmp_path / "vaults")
    meta = json.loads((tmp_path / "vaults" / "vaults.json").read_text())
    group_id = bytes.fromhex(meta["group_id"])

    def open_both() -> tuple[native.Vault, native.Vault]:
        alice = native.Vault.open(str(tmp_path / "vaults" / "alice.vault"), bytes.fromhex(meta["alice_key"]))
        bob = native.Vault.open(str(tmp_path / "vaults" / "bob.vault"), bytes.fromhex(meta["bob_key"]))
        return alice, bob

    alice, bob = open_both()
    assert alice.epoch(group_id) == bob.epoch(group_id) == meta["epoch"]
    # A past epoch's secrets, stored in the old format, still open the message sent then.
    assert bob.process(bytes.fromhex(meta["late"])).plaintext == b"sent at epoch 1, read after the upgrade"
    assert bob.process(alice.encrypt(group_id, b"to bob")).plaintext == b"to bob"
    assert alice.process(bob.encrypt(group_id, b"to alice")).plaintext == b"to alice"
    commit = bob.self_update(group_id)
    bob.merge_pending_commit(group_id)
    assert alice.process(commit).epoch == meta["epoch"] + 1
    alice.close()
    bob.close()
    alice, bob = open_both()
    assert bob.process(alice.encrypt(group_id, b"after a restart")).plaintext == b"after a restart"
    assert sorted(alice.members(group_id)) == sorted([alice.identity_key, bob.identity_key])
