"""StateDir: one password opens everything; nothing in clear on disk; wrong passwords change nothing;
plain state converts in place."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path
from types import ModuleType

import pytest

from quicnprotochat.client.state import (
    CachedSession,
    ConversationStore,
    CorruptState,
    StateDir,
    StateError,
    StatePasswordRequired,
    WrongStatePassword,
)
from quicnprotochat.client.state.keys import StateKeys

from .conftest import files_containing, mode, names, snapshot

PASSWORD = "tr0ub4dor & 3"
BODY = "the eagle lands at midnight QX7Z"
USERNAME = "wilhelmina_quux"
PEER = bytes(range(32))
TOKEN = bytes.fromhex("a1b2c3d4" * 8)
SESSION = CachedSession(token=TOKEN, expires_at=4_000_000_000.0, username=USERNAME, node_address="node.example:7000")


def secrets_on_disk() -> tuple[bytes, ...]:
    return (
        BODY.encode(),
        USERNAME.encode(),
        TOKEN,
        TOKEN.hex().encode(),
        PASSWORD.encode(),
        b"node.example",
    )


def native_or_skip() -> ModuleType:
    try:
        import quicnprotochat.native as native
    except ImportError as error:
        pytest.skip(f"the native module is not importable (build it with the README's install command): {error}")
    return native


async def fill(state_dir: StateDir, password: str | None) -> None:
    """Write a conversation, a member, a message, settings and a session token."""
    state = await state_dir.open(password)
    try:
        store = state.conversations
        dm = await store.create_conversation("dm", USERNAME, peer_identity_key=PEER, channel_id=bytes(16))
        await store.add_member(dm.id, PEER, USERNAME)
        await store.add_message(dm.id, b"msg-1", BODY, sender_identity_key=PEER, sender_username=USERNAME)
        await store.set_setting("username", USERNAME)
        state.tokens.save(SESSION)
    finally:
        await state.close()


async def check_content(state_dir: StateDir, password: str | None) -> None:
    async with await state_dir.open(password) as state:
        store = state.conversations
        dm = await store.find_dm(PEER)
        assert dm is not None and dm.name == USERNAME
        assert [m.username for m in await store.list_members(dm.id)] == [USERNAME]
        assert [(m.body, m.sender_username) for m in await store.history(dm.id)] == [(BODY, USERNAME)]
        assert await store.get_setting("username") == USERNAME
        assert state.tokens.load() == SESSION


async def test_encrypted_state_has_no_plaintext(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path / "state")
    await fill(state_dir, PASSWORD)
    state = await state_dir.open(PASSWORD)
    try:
        assert state.encrypted and state.warning is None
        assert state.conversations.encrypted and state.tokens.encrypted
        # Also while the database is open.
        assert files_containing(state_dir.root, *secrets_on_disk()) == []
    finally:
        await state.close()
    await check_content(state_dir, PASSWORD)
    assert files_containing(state_dir.root, *secrets_on_disk()) == []
    assert names(state_dir.root) == [".convdb-salt", "convdb.sqlite", "session"]
    assert mode(state_dir.root) == 0o700
    for name in names(state_dir.root):
        assert mode(state_dir.root / name) == 0o600, name


async def test_keys_themselves_are_not_on_disk(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path / "state")
    await fill(state_dir, PASSWORD)
    keys = StateKeys.derive(PASSWORD, state_dir.salt_path, create=False)
    material = [bytes(k) for k in (keys.database, keys.vault, keys.sealing)]
    assert files_containing(state_dir.root, *material, *(k.hex().encode() for k in material)) == []


async def test_vault_uses_its_own_key_and_has_no_plaintext(tmp_path: Path) -> None:
    native = native_or_skip()
    state_dir = StateDir(tmp_path / "state")
    await fill(state_dir, PASSWORD)
    async with await state_dir.open(PASSWORD) as state:
        with state.open_vault() as vault:
            group = vault.create_group()
            identity = vault.identity_key
            signature = vault.sign(BODY.encode())
        assert mode(state.vault_path) == 0o600
        keys = StateKeys.derive(PASSWORD, state_dir.salt_path, create=False)
        assert state.vault_key() == bytes(keys.vault)
        # The vault key is not the database key: a leak of one does not open the other.
        with pytest.raises(native.VaultKeyError):
            native.Vault.open(str(state.vault_path), bytes(keys.database))
    assert files_containing(state_dir.root, *secrets_on_disk(), group, signature) == []
    assert names(state_dir.root) == [".convdb-salt", "convdb.sqlite", "session", "vault.sqlite"]
    async with await state_dir.open(PASSWORD) as state:
        with state.open_vault() as vault:
            assert vault.identity_key == identity and vault.group_ids() == [group]


async def test_wrong_password_is_clear_and_changes_nothing(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path / "state")
    await fill(state_dir, PASSWORD)
    before = snapshot(state_dir.root)
    with pytest.raises(WrongStatePassword, match=r"wrong state password|does not decrypt") as info:
        await state_dir.open("not the password")
    assert "not the password" not in str(info.value)
    assert snapshot(state_dir.root) == before
    with pytest.raises(StatePasswordRequired):
        await state_dir.open(None)
    assert snapshot(state_dir.root) == before
    await check_content(state_dir, PASSWORD)


async def test_wrong_password_with_vault_changes_nothing(tmp_path: Path) -> None:
    native_or_skip()
    state_dir = StateDir(tmp_path / "state")
    await fill(state_dir, PASSWORD)
    async with await state_dir.open(PASSWORD) as state:
        with state.open_vault() as vault:
            vault.create_group()
    before = snapshot(state_dir.root)
    with pytest.raises(WrongStatePassword):
        await state_dir.open("wrong")
    assert snapshot(state_dir.root) == before
    # Even with the database gone, the vault alone refuses the wrong password before anything is created.
    state_dir.convdb_path.unlink()
    state_dir.session_path.unlink()
    before = snapshot(state_dir.root)
    with pytest.raises(WrongStatePassword, match="vault"):
        await state_dir.open("wrong")
    assert snapshot(state_dir.root) == before


async def test_the_session_alone_refuses_a_wrong_password(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path / "state")
    await fill(state_dir, PASSWORD)
    state_dir.convdb_path.unlink()
    before = snapshot(state_dir.root)
    with pytest.raises(WrongStatePassword):
        await state_dir.open("wrong")
    assert snapshot(state_dir.root) == before


async def test_plain_state_warns_and_is_in_clear(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path / "state")
    await fill(state_dir, None)
    async with await state_dir.open(None) as state:
        assert not state.encrypted and not state.tokens.encrypted
        assert state.warning is not None and "in clear" in state.warning and str(state_dir.root) in state.warning
    assert names(state_dir.root) == [".vault-key", "convdb.sqlite", "session"]
    assert files_containing(state_dir.root, BODY.encode()) != []
    assert not state_dir.is_encrypted()
    for name in names(state_dir.root):
        assert mode(state_dir.root / name) == 0o600, name


async def test_plain_state_is_encrypted_in_place(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path / "state")
    await fill(state_dir, None)
    assert files_containing(state_dir.root, BODY.encode(), USERNAME.encode())  # in clear before

    async with await state_dir.open(PASSWORD) as state:
        assert state.encrypted
    # No plaintext anywhere, and no leftover: no temp copy, no journal, no -wal/-shm, no clear vault key.
    assert files_containing(state_dir.root, *secrets_on_disk()) == []
    assert names(state_dir.root) == [".convdb-salt", "convdb.sqlite", "session"]
    assert state_dir.is_encrypted()
    await check_content(state_dir, PASSWORD)

    with pytest.raises(StatePasswordRequired):
        await state_dir.open(None)
    with pytest.raises(WrongStatePassword):
        await state_dir.open("wrong")
    with pytest.raises(StatePasswordRequired):
        await ConversationStore.open(state_dir.convdb_path, None)
    await check_content(state_dir, PASSWORD)


async def test_plain_vault_is_rekeyed_in_place(tmp_path: Path) -> None:
    native = native_or_skip()
    state_dir = StateDir(tmp_path / "state")
    await fill(state_dir, None)
    async with await state_dir.open(None) as state:
        with state.open_vault() as vault:
            group = vault.create_group()
            identity = vault.identity_key
        clear_key = state.vault_key()
    assert state_dir.vault_keyfile_path.read_bytes() == clear_key

    async with await state_dir.open(PASSWORD) as state:
        with state.open_vault() as vault:
            assert vault.identity_key == identity and vault.group_ids() == [group]
        assert state.vault_key() != clear_key
    assert names(state_dir.root) == [".convdb-salt", "convdb.sqlite", "session", "vault.sqlite"]
    with pytest.raises(native.VaultKeyError):
        native.Vault.open(str(state_dir.vault_path), clear_key)
    assert files_containing(state_dir.root, *secrets_on_disk(), clear_key, group) == []

    # A crash after the re-key but before the key file was removed: the next open only removes it.
    state_dir.vault_keyfile_path.write_bytes(clear_key)
    async with await state_dir.open(PASSWORD) as state:
        with state.open_vault() as vault:
            assert vault.identity_key == identity
    assert not state_dir.vault_keyfile_path.exists()


async def test_plain_database_with_uncheckpointed_wal(tmp_path: Path, db_key: bytes) -> None:
    """A plain database left by a crash with its content still in -wal converts with nothing left behind."""
    source = tmp_path / "source"
    source.mkdir()
    await (await ConversationStore.open(source / "convdb.sqlite", None)).close()
    conn = sqlite3.connect(source / "convdb.sqlite", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("INSERT INTO conversations (kind, name, created_at, last_activity) VALUES ('group', 'g', 0, 0)")
    conn.execute(
        "INSERT INTO messages (conversation_id, message_id, body, received_at, outgoing) VALUES (1, x'01', ?, 0, 0)",
        (BODY,),
    )
    crashed = tmp_path / "crashed"
    shutil.copytree(source, crashed)  # a snapshot while the connection is open: the crash image
    conn.close()
    assert (crashed / "convdb.sqlite-wal").exists()
    assert files_containing(crashed, BODY.encode())

    async with await ConversationStore.open(crashed / "convdb.sqlite", db_key) as store:
        assert [m.body for m in await store.history(1)] == [BODY]
    assert names(crashed) == ["convdb.sqlite"]
    assert files_containing(crashed, BODY.encode()) == []


async def test_missing_salt_with_encrypted_state(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path / "state")
    await fill(state_dir, PASSWORD)
    state_dir.salt_path.unlink()
    before = snapshot(state_dir.root)
    with pytest.raises(CorruptState, match="salt"):
        await state_dir.open(PASSWORD)
    assert snapshot(state_dir.root) == before


async def test_state_dir_mode(tmp_path: Path) -> None:
    fresh = StateDir(tmp_path / "a" / "b" / "state")
    async with await fresh.open(None):
        pass
    assert mode(fresh.root) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    StateDir(loose).create()
    assert mode(loose) == 0o700


async def test_salt_reused_across_opens(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path / "state")
    await fill(state_dir, PASSWORD)
    salt = state_dir.salt_path.read_bytes()
    assert mode(state_dir.salt_path) == 0o600
    await check_content(state_dir, PASSWORD)
    assert state_dir.salt_path.read_bytes() == salt


async def test_closed_state_wipes_keys(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path / "state")
    await fill(state_dir, PASSWORD)
    state = await state_dir.open(PASSWORD)
    await state.close()
    with pytest.raises(StateError, match="closed"):
        state.vault_key()
    # The token cache's key is zeroed: it no longer decrypts the session file.
    with pytest.raises(WrongStatePassword):
        state.tokens.load()


async def test_crash_leftovers_are_removed(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path / "state")
    await fill(state_dir, None)
    for name in (".session.tmp-0011aa", ".convdb.sqlite.encrypting-22bb33", ".convdb-salt.new-44cc55"):
        (state_dir.root / name).write_bytes(BODY.encode())
    async with await state_dir.open(None):
        pass
    assert names(state_dir.root) == [".vault-key", "convdb.sqlite", "session"]
