"""Key derivation: Argon2id with a per-database salt file, HKDF separation, wiping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from argon2.low_level import Type, hash_secret_raw

from quicnprotochat.client.state import (
    ARGON2_MEMORY_KIB,
    ARGON2_PARALLELISM,
    ARGON2_TIME_COST,
    CorruptState,
    StateError,
    StateKeys,
    derive_state_key,
    wipe,
)

from .conftest import mode


def test_salt_file_created_owner_only_and_reused(tmp_path: Path) -> None:
    salt_file = tmp_path / ".convdb-salt"
    first = derive_state_key("correct horse", salt_file)
    assert isinstance(first, bytearray) and len(first) == 32
    assert mode(salt_file) == 0o600
    salt = salt_file.read_bytes()
    assert len(salt) == 16
    second = derive_state_key("correct horse", salt_file)
    assert second == first
    assert salt_file.read_bytes() == salt
    assert derive_state_key("wrong horse", salt_file) != first
    # No temporary file left next to it.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".convdb-salt"]


def test_parameters_are_argon2id_t3_64mib_p4(tmp_path: Path) -> None:
    assert (ARGON2_TIME_COST, ARGON2_MEMORY_KIB, ARGON2_PARALLELISM) == (3, 65536, 4)
    salt_file = tmp_path / "salt"
    key = derive_state_key("pässword", salt_file)
    expected = hash_secret_raw(
        "pässword".encode(),
        salt_file.read_bytes(),
        time_cost=3,
        memory_cost=65536,
        parallelism=4,
        hash_len=32,
        type=Type.ID,
    )
    assert bytes(key) == expected


def test_password_is_nfc_normalized(tmp_path: Path) -> None:
    salt_file = tmp_path / "salt"
    composed = "caf\u00e9"
    decomposed = "cafe\u0301"
    assert derive_state_key(composed, salt_file) == derive_state_key(decomposed, salt_file)


def test_per_database_salts_differ(tmp_path: Path) -> None:
    a = derive_state_key("pw", tmp_path / "a")
    b = derive_state_key("pw", tmp_path / "b")
    assert (tmp_path / "a").read_bytes() != (tmp_path / "b").read_bytes()
    assert a != b


@pytest.mark.parametrize("content", [b"", b"short", os.urandom(17), os.urandom(64)])
def test_malformed_salt_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    salt_file = tmp_path / "salt"
    salt_file.write_bytes(content)
    with pytest.raises(CorruptState, match="malformed salt file"):
        derive_state_key("pw", salt_file)
    assert salt_file.read_bytes() == content


def test_missing_salt_without_create(tmp_path: Path) -> None:
    with pytest.raises(CorruptState, match="missing"):
        derive_state_key("pw", tmp_path / "salt", create=False)
    assert not (tmp_path / "salt").exists()


def test_empty_password_refused(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="empty"):
        derive_state_key("", tmp_path / "salt")
    assert not (tmp_path / "salt").exists()


def test_state_keys_are_separated_and_wipeable(tmp_path: Path) -> None:
    keys = StateKeys.derive("pw", tmp_path / "salt")
    master = derive_state_key("pw", tmp_path / "salt")
    parts = [bytes(keys.database), bytes(keys.vault), bytes(keys.sealing)]
    assert len(set(parts)) == 3
    assert bytes(master) not in parts
    assert all(len(part) == 32 for part in parts)
    assert StateKeys.from_master(master).vault == keys.vault
    assert "redacted" in repr(keys) and keys.database.hex() not in repr(keys)
    keys.wipe()
    assert keys.database == bytearray(32) and keys.vault == bytearray(32) and keys.sealing == bytearray(32)
    wipe(master)
    assert master == bytearray(32)


def test_errors_do_not_contain_the_password(tmp_path: Path) -> None:
    salt_file = tmp_path / "salt"
    salt_file.write_bytes(b"bad")
    with pytest.raises(CorruptState) as info:
        derive_state_key("hunter2-secret", salt_file)
    assert "hunter2" not in str(info.value)
