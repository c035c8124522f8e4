"""QPCE sealed files and the token cache: round trips, format, tampering, wrong keys, plain mode."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quicnprotochat.client.state import (
    CachedSession,
    CorruptState,
    SealedFile,
    StateError,
    StatePasswordRequired,
    TokenCache,
    WrongStatePassword,
)
from quicnprotochat.client.state.sealed import HEADER_LEN, TAG_LEN

from .conftest import files_containing, mode

TOKEN = bytes.fromhex("5ec2e7" * 10 + "ab")
SESSION = CachedSession(token=TOKEN, expires_at=2_000_000_000.0, username="zebulon_the_user", node_address="n:7000")


def needles() -> tuple[bytes, ...]:
    return (TOKEN, TOKEN.hex().encode(), b"zebulon_the_user", b"n:7000")


def test_token_cache_sealed_with_state_key(tmp_path: Path) -> None:
    key = os.urandom(32)
    cache = TokenCache(tmp_path / "session", key=key)
    assert cache.encrypted
    assert cache.load() is None
    cache.save(SESSION)
    assert cache.load() == SESSION
    assert TokenCache(tmp_path / "session", key=key).load() == SESSION
    data = (tmp_path / "session").read_bytes()
    assert data[:4] == b"QPCE" and data[4] == 2
    assert len(data) > HEADER_LEN + TAG_LEN
    assert mode(tmp_path / "session") == 0o600
    assert files_containing(tmp_path, *needles()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["session"]
    assert TOKEN.hex() not in repr(SESSION)


def test_each_write_uses_a_fresh_salt_and_nonce(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path / "session", key=os.urandom(32))
    cache.save(SESSION)
    first = (tmp_path / "session").read_bytes()
    cache.save(SESSION)
    second = (tmp_path / "session").read_bytes()
    assert first[5:HEADER_LEN] != second[5:HEADER_LEN]
    assert first[HEADER_LEN:] != second[HEADER_LEN:]


def test_token_cache_sealed_with_password(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path / "session", password="state pw")
    cache.save(SESSION)
    data = (tmp_path / "session").read_bytes()
    assert data[:5] == b"QPCE\x01"
    assert TokenCache(tmp_path / "session", password="state pw").load() == SESSION
    assert files_containing(tmp_path, *needles()) == []
    with pytest.raises(WrongStatePassword):
        TokenCache(tmp_path / "session", password="other pw").load()
    # A password-sealed file is not readable with a state key, and says why.
    with pytest.raises(StateError, match="password of its own"):
        TokenCache(tmp_path / "session", key=os.urandom(32)).load()


def test_wrong_key_is_a_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    TokenCache(tmp_path / "session", key=os.urandom(32)).save(SESSION)
    before = (tmp_path / "session").read_bytes()
    with pytest.raises(WrongStatePassword, match="wrong state password"):
        TokenCache(tmp_path / "session", key=os.urandom(32)).load()
    assert (tmp_path / "session").read_bytes() == before


def test_sealed_file_without_password(tmp_path: Path) -> None:
    TokenCache(tmp_path / "session", key=os.urandom(32)).save(SESSION)
    with pytest.raises(StatePasswordRequired):
        TokenCache(tmp_path / "session").load()


@pytest.mark.parametrize(
    "offset",
    [4, 5, 5 + 15, 21, 21 + 11, HEADER_LEN, HEADER_LEN + 5, -TAG_LEN, -1],
    ids=["version", "salt0", "salt15", "nonce0", "nonce11", "ct0", "ct5", "tag0", "tag-last"],
)
def test_tampered_token_cache_rejected(tmp_path: Path, offset: int) -> None:
    key = os.urandom(32)
    path = tmp_path / "session"
    TokenCache(path, key=key).save(SESSION)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises((WrongStatePassword, CorruptState)):
        TokenCache(path, key=key).load()
    assert path.read_bytes() == bytes(data)


@pytest.mark.parametrize(
    "content",
    [b"", b"QPCE", b"QPCE\x02" + bytes(40), b"XXXX\x02" + bytes(60), b"QPCE\x09" + bytes(60), b"QPCP\x07{}"],
    ids=["empty", "magic-only", "truncated", "bad-magic", "unknown-version", "plain-unknown-version"],
)
def test_malformed_files_rejected(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "session"
    path.write_bytes(content)
    with pytest.raises(CorruptState):
        TokenCache(path, key=os.urandom(32)).load()


def test_sealed_garbage_record_rejected(tmp_path: Path) -> None:
    key = os.urandom(32)
    SealedFile(tmp_path / "session", key=key).write(b'{"v": 1, "token": "zz"}')
    with pytest.raises(CorruptState, match="malformed session record"):
        TokenCache(tmp_path / "session", key=key).load()


def test_plain_token_cache(tmp_path: Path) -> None:
    cache = TokenCache(tmp_path / "session")
    assert not cache.encrypted
    cache.save(SESSION)
    assert cache.load() == SESSION
    data = (tmp_path / "session").read_bytes()
    assert data.startswith(b"QPCP\x01")
    assert b"zebulon_the_user" in data  # in clear, as announced by encrypted=False
    assert mode(tmp_path / "session") == 0o600
    assert cache.clear() is True
    assert cache.clear() is False
    assert cache.load() is None


def test_plain_cache_is_resealed_when_a_key_is_given(tmp_path: Path) -> None:
    TokenCache(tmp_path / "session").save(SESSION)
    key = os.urandom(32)
    assert TokenCache(tmp_path / "session", key=key).load() == SESSION
    assert (tmp_path / "session").read_bytes().startswith(b"QPCE\x02")
    assert files_containing(tmp_path, *needles()) == []
    assert TokenCache(tmp_path / "session", key=key).load() == SESSION


def test_session_validity() -> None:
    assert SESSION.is_valid(now=1_000.0)
    assert not SESSION.is_valid(now=2_000_000_000.0)
    assert not SESSION.is_valid(now=2_000_000_000.0 - 10)  # inside the 30 s margin


def test_sealed_file_api(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SealedFile(tmp_path / "f", key=b"short")
    with pytest.raises(ValueError):
        SealedFile(tmp_path / "f", key=os.urandom(32), password="pw")
    sealed = SealedFile(tmp_path / "f", key=os.urandom(32))
    sealed.write(b"")
    assert sealed.read() == b""
    sealed.write(b"x" * 100_000)
    assert sealed.read() == b"x" * 100_000
    sealed.wipe_keys()
    with pytest.raises(WrongStatePassword):
        sealed.read()
