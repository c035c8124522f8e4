"""`StateDir`: the layout of one client state directory, opened from one state password.

Layout (directory mode 0700, files 0600)::

    convdb.sqlite   ConversationStore (SQLCipher, or plain SQLite without a state password)
    .convdb-salt    16 random bytes: the Argon2id salt of the state password (never secret, never to lose)
    vault.sqlite    the native Vault (SQLCipher, always): MLS state, Ed25519 identity, X-Wing key
    .vault-key      only without a state password: a random 32-byte vault key, in clear
    session         the session token cache (QPCE sealed, or QPCP plain)

With a password, one Argon2id computation gives the master key, and HKDF gives three independent keys
(`StateKeys`): the database key, the vault key, the sealing key of the token cache. The vault never sees the
master or the database key.

Without a password, everything is readable by whoever reads the files (the vault's key sits next to it), and
`ClientState.encrypted` is false: the client must show `PLAINTEXT_WARNING`. The first time a password is given
to such a directory, everything is converted in place: the database by ``sqlcipher_export``, the vault re-keyed
the same way (its ``.vault-key`` scrubbed and removed), the token cache resealed. Before anything is converted,
every part already encrypted is checked against the password: a wrong password changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from . import _sqlcipher as sql
from .conversations import ConversationStore, database_file_kind, encrypt_in_place
from .errors import CorruptState, StateError, StatePasswordRequired, WrongStatePassword
from .files import PRIVATE_FILE_MODE, create_once_private, ensure_private_dir, scrub_and_unlink
from .keys import KEY_LEN, StateKeys, sqlcipher_key_literal, wipe
from .sealed import SEALED_MAGIC, TokenCache

if TYPE_CHECKING:
    from quicnprotochat.native import Vault

CONVDB_NAME = "convdb.sqlite"
SALT_NAME = ".convdb-salt"
VAULT_NAME = "vault.sqlite"
VAULT_KEYFILE_NAME = ".vault-key"
SESSION_NAME = "session"
# Purposes of `files.temp_sibling` names: see `StateDir.remove_leftovers`.
_TEMP_PURPOSES = ("tmp", "new", "encrypting")

PLAINTEXT_WARNING = (
    "state is stored in clear in {root}: conversations, messages, keys and the session token are readable by "
    "anyone who can read these files. Set a state password to encrypt them."
)


def _starts_with(path: Path, prefix: bytes) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(len(prefix)) == prefix
    except FileNotFoundError:
        return False


def _non_empty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def _database_opens_with(path: Path, key: bytes | bytearray) -> bool:
    """Whether the SQLCipher file at `path` decrypts with `key` (reads page 1 only; writes nothing)."""
    conn = sql.connect(path)
    try:
        conn.execute("PRAGMA cipher_log_level = NONE")
        conn.execute(f'PRAGMA key = "{sqlcipher_key_literal(key)}"')
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sql.DatabaseError:
            return False
        return True
    finally:
        conn.close()


class StateDir:
    """Paths of one client state directory, and `open` to unlock it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"StateDir({str(self.root)!r})"

    @property
    def convdb_path(self) -> Path:
        return self.root / CONVDB_NAME

    @property
    def salt_path(self) -> Path:
        return self.root / SALT_NAME

    @property
    def vault_path(self) -> Path:
        return self.root / VAULT_NAME

    @property
    def vault_keyfile_path(self) -> Path:
        return self.root / VAULT_KEYFILE_NAME

    @property
    def session_path(self) -> Path:
        return self.root / SESSION_NAME

    def create(self) -> None:
        """Create the directory (and parents) with mode 0700; tighten an existing one to 0700."""
        ensure_private_dir(self.root)

    def remove_leftovers(self) -> list[str]:
        """Scrub and remove temporary files a crash left behind (atomic-write and in-place-encryption
        copies, all named ``.<file>.<purpose>-<hex>``); return their names."""
        removed = []
        for path in self.root.iterdir():
            if path.name.startswith(".") and any(f".{purpose}-" in path.name for purpose in _TEMP_PURPOSES):
                scrub_and_unlink(path)
                removed.append(path.name)
        return sorted(removed)

    def _vault_is_encrypted(self) -> bool:
        """A vault under the password-derived key (it exists, and no clear key file sits next to it)."""
        return _non_empty(self.vault_path) and not self.vault_keyfile_path.exists()

    def is_encrypted(self) -> bool:
        """True if any part of the state is encrypted under a state password."""
        return (
            database_file_kind(self.convdb_path) == "encrypted"
            or _starts_with(self.session_path, SEALED_MAGIC)
            or self._vault_is_encrypted()
        )

    async def open(self, password: str | None) -> ClientState:
        """Unlock the directory (created if missing) and open its conversation store and token cache.

        `password` None keeps (or creates) plain state and fails with `StatePasswordRequired` if anything is
        encrypted. With a password: `WrongStatePassword` if it does not match what is encrypted (nothing is
        changed then); plain parts are encrypted in place. Argon2id runs once, off the event loop.
        """
        self.create()
        await asyncio.to_thread(self.remove_leftovers)
        if password is None:
            return await self._open_plain()
        return await self._open_encrypted(password)

    async def _open_plain(self) -> ClientState:
        if self.is_encrypted():
            raise StatePasswordRequired(f"{self.root} holds encrypted state: a state password is needed")
        vault_key = bytearray(
            await asyncio.to_thread(create_once_private, self.vault_keyfile_path, os.urandom(KEY_LEN))
        )
        if len(vault_key) != KEY_LEN:
            raise CorruptState(f"{self.vault_keyfile_path}: malformed vault key file")
        try:
            store = await ConversationStore.open(self.convdb_path, None)
        except BaseException:
            wipe(vault_key)
            raise
        return ClientState(self, store, TokenCache(self.session_path), vault_key)

    async def _open_encrypted(self, password: str) -> ClientState:
        encrypted = self.is_encrypted()
        if encrypted and not self.salt_path.exists():
            raise CorruptState(f"{self.salt_path} is missing: the encrypted state in {self.root} cannot be decrypted")
        keys = await asyncio.to_thread(StateKeys.derive, password, self.salt_path, create=not encrypted)
        store: ConversationStore | None = None
        try:
            tokens = TokenCache(self.session_path, key=keys.sealing)
            # 1. Check the password against every part that is already encrypted, changing nothing.
            if _starts_with(self.session_path, SEALED_MAGIC):
                await asyncio.to_thread(tokens.load)
            if self._vault_is_encrypted() and not await asyncio.to_thread(
                _database_opens_with, self.vault_path, keys.vault
            ):
                raise WrongStatePassword(f"{self.vault_path}: the state password does not decrypt the vault")
            # 2. Open the database (checks it if encrypted, else encrypts it in place), then convert the rest.
            store = await ConversationStore.open(self.convdb_path, keys.database)
            if _starts_with(self.session_path, b"QPCP"):
                await asyncio.to_thread(tokens.load)  # reseals it
            if self.vault_keyfile_path.exists():
                await asyncio.to_thread(self._rekey_vault, keys.vault)
            vault_key = bytearray(keys.vault)
        except BaseException:
            if store is not None:
                await store.close()
            keys.wipe()
            raise
        wipe(keys.database)
        wipe(keys.vault)
        # `tokens` keeps its own copy of the sealing key; this one is no longer needed.
        wipe(keys.sealing)
        return ClientState(self, store, tokens, vault_key)

    def _rekey_vault(self, new_key: bytearray) -> None:
        """Move a vault from its clear key file to the password-derived key, then scrub the key file."""
        old_key = bytearray(self.vault_keyfile_path.read_bytes())
        try:
            if len(old_key) != KEY_LEN:
                raise CorruptState(f"{self.vault_keyfile_path}: malformed vault key file")
            # A crash after the re-key but before the key file was removed leaves a vault already under the
            # new key: then only the key file is left to remove.
            if _non_empty(self.vault_path) and not _database_opens_with(self.vault_path, new_key):
                if not _database_opens_with(self.vault_path, old_key):
                    raise CorruptState(f"{self.vault_path} opens with neither its key file nor the state password")
                encrypt_in_place(self.vault_path, new_key, old_key=old_key)
        finally:
            wipe(old_key)
        scrub_and_unlink(self.vault_keyfile_path)


class ClientState:
    """An unlocked state directory: the conversation store, the token cache and the vault's key."""

    def __init__(
        self, state_dir: StateDir, conversations: ConversationStore, tokens: TokenCache, vault_key: bytearray
    ) -> None:
        self.dir = state_dir
        self.conversations = conversations
        self.tokens = tokens
        self._vault_key = vault_key
        self._closed = False

    @property
    def encrypted(self) -> bool:
        """False: state is stored in clear; show `warning` to the user."""
        return self.conversations.encrypted

    @property
    def warning(self) -> str | None:
        """The notice to show when state is not encrypted, else None."""
        return None if self.encrypted else PLAINTEXT_WARNING.format(root=self.dir.root)

    @property
    def vault_path(self) -> Path:
        return self.dir.vault_path

    def vault_key(self) -> bytes:
        """A copy of the vault's 32-byte key, for ``Vault.open`` (which takes ``bytes``)."""
        if self._closed:
            raise StateError("the client state is closed")
        return bytes(self._vault_key)

    def open_vault(self, max_groups_in_memory: int | None = None) -> Vault:
        """Open (or create, mode 0600) the native Vault of this state, keeping at most `max_groups_in_memory` MLS
        groups loaded (None: the vault's default). Raises `WrongStatePassword` if the vault does not decrypt,
        ImportError if the native module is not built."""
        from quicnprotochat.native import VAULT_GROUPS_IN_MEMORY, Vault, VaultKeyError

        path = self.vault_path
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
        try:
            return Vault.open(
                str(path),
                self.vault_key(),
                VAULT_GROUPS_IN_MEMORY if max_groups_in_memory is None else max_groups_in_memory,
            )
        except VaultKeyError:
            raise WrongStatePassword(f"{path}: the state key does not decrypt the vault") from None

    async def close(self) -> None:
        """Close the store and wipe the keys held here."""
        self._closed = True
        try:
            await self.conversations.close()
        finally:
            self.tokens.wipe_keys()
            wipe(self._vault_key)

    async def __aenter__(self) -> ClientState:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


__all__ = [
    "CONVDB_NAME",
    "PLAINTEXT_WARNING",
    "SALT_NAME",
    "SESSION_NAME",
    "VAULT_KEYFILE_NAME",
    "VAULT_NAME",
    "ClientState",
    "StateDir",
]
