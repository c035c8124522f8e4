"""Keys of the client's local state: one Argon2id computation per state password, split by HKDF.

Derivation
----------
``master = Argon2id(password, salt)`` with a random 16-byte salt kept next to the database in a salt file (raw
16 bytes, mode 0600, created once; losing it makes the encrypted state unreadable). Parameters: time cost 3,
memory 64 MiB, parallelism 4, 32-byte output -- the same as the OPAQUE suite of the native core, about 0.2 s on
a laptop core. The password is NFC-normalized and UTF-8 encoded first, so the same typed password gives the
same key whatever the keyboard's composition.

The master key is never used directly: ``StateKeys.from_master`` derives independent 32-byte keys with
HKDF-SHA256 and distinct labels, one for the conversation database (SQLCipher), one for the native Vault
(SQLCipher inside Rust), one for sealed files (the session token cache). A leak of one (for instance the vault
key, which crosses into Rust and sits in a PRAGMA string there) does not give the others.

Wiping
------
Keys are kept in ``bytearray`` buffers that ``wipe`` zeroes. This is best effort: Argon2 and HKDF return
immutable ``bytes`` that are copied and dropped at once, the SQLCipher key PRAGMA is an immutable ``str``, and
PyO3 takes ``bytes``; those copies are freed, not zeroed.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import CorruptState, StateError
from .files import create_once_private

ARGON2_TIME_COST = 3
ARGON2_MEMORY_KIB = 64 * 1024
ARGON2_PARALLELISM = 4
KEY_LEN = 32
SALT_LEN = 16

_LABEL_DATABASE = b"quicnprotochat/client-state/v1/conversation-db"
_LABEL_VAULT = b"quicnprotochat/client-state/v1/native-vault"
_LABEL_SEALING = b"quicnprotochat/client-state/v1/sealed-files"


def wipe(buffer: bytearray) -> None:
    """Overwrite `buffer` with zeros in place (same length, so CPython writes into the same memory)."""
    buffer[:] = bytes(len(buffer))


def read_salt(salt_file: Path, *, create: bool = True) -> bytes:
    """The salt in `salt_file`; with `create`, a new random one is written first if the file is missing."""
    try:
        salt = salt_file.read_bytes()
    except FileNotFoundError:
        if not create:
            raise CorruptState(
                f"{salt_file} is missing: the encrypted state next to it cannot be decrypted without it"
            ) from None
        salt = create_once_private(salt_file, os.urandom(SALT_LEN))
    if len(salt) != SALT_LEN:
        raise CorruptState(f"{salt_file}: malformed salt file: expected {SALT_LEN} bytes, found {len(salt)}")
    return salt


def argon2id(password: str, salt: bytes) -> bytearray:
    """The raw 32-byte Argon2id output for `password` and `salt` (parameters in the module docstring)."""
    if not password:
        raise StateError("the state password is empty (leave it unset to keep state unencrypted)")
    if len(salt) != SALT_LEN:
        raise ValueError(f"salt must be {SALT_LEN} bytes")
    secret = bytearray(unicodedata.normalize("NFC", password).encode("utf-8"))
    try:
        return bytearray(
            hash_secret_raw(
                bytes(secret),
                salt,
                time_cost=ARGON2_TIME_COST,
                memory_cost=ARGON2_MEMORY_KIB,
                parallelism=ARGON2_PARALLELISM,
                hash_len=KEY_LEN,
                type=Type.ID,
            )
        )
    finally:
        wipe(secret)


def derive_state_key(password: str, salt_file: Path, *, create: bool = True) -> bytearray:
    """Argon2id(password, salt from `salt_file`) as a wipeable 32-byte buffer.

    The salt file is created (16 random bytes, mode 0600, atomically) on first use unless `create` is false;
    an existing one is reused; a malformed one raises `CorruptState`. Blocks for about 0.2 s: from asyncio,
    call it through ``asyncio.to_thread``.
    """
    if not password:
        raise StateError("the state password is empty (leave it unset to keep state unencrypted)")
    return argon2id(password, read_salt(salt_file, create=create))


def hkdf(key: bytes | bytearray, info: bytes, salt: bytes | None = None) -> bytearray:
    """HKDF-SHA256 of `key` with `info` (and optional `salt`), 32 bytes, as a wipeable buffer."""
    return bytearray(HKDF(algorithm=hashes.SHA256(), length=KEY_LEN, salt=salt, info=info).derive(bytes(key)))


def sqlcipher_key_literal(key: bytes | bytearray) -> str:
    """The SQLCipher raw-key literal ``x'<64 hex>'`` (used as the value of PRAGMA key or ATTACH ... KEY)."""
    if len(key) != KEY_LEN:
        raise ValueError(f"a state key is {KEY_LEN} bytes")
    return f"x'{key.hex()}'"


class StateKeys:
    """The independent keys of one state directory, all from one master key."""

    __slots__ = ("database", "sealing", "vault")

    def __init__(self, database: bytearray, vault: bytearray, sealing: bytearray) -> None:
        self.database = database
        self.vault = vault
        self.sealing = sealing

    @classmethod
    def from_master(cls, master: bytes | bytearray) -> StateKeys:
        if len(master) != KEY_LEN:
            raise ValueError(f"the master key is {KEY_LEN} bytes")
        return cls(hkdf(master, _LABEL_DATABASE), hkdf(master, _LABEL_VAULT), hkdf(master, _LABEL_SEALING))

    @classmethod
    def derive(cls, password: str, salt_file: Path, *, create: bool = True) -> StateKeys:
        """One Argon2id computation, then HKDF; the master key is wiped before returning."""
        master = derive_state_key(password, salt_file, create=create)
        try:
            return cls.from_master(master)
        finally:
            wipe(master)

    def wipe(self) -> None:
        for key in (self.database, self.vault, self.sealing):
            wipe(key)

    def __repr__(self) -> str:
        return "StateKeys(<redacted>)"
