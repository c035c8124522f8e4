"""Small sealed files (QPCE) and the session token cache built on them.

Format
------
Sealed: ``b"QPCE" | version (1 byte) | salt (16) | nonce (12) | ChaCha20-Poly1305 ciphertext``; the 33-byte
header is the AEAD's associated data, so no header byte can be changed unnoticed. Versions:

- ``1``: key = Argon2id(state password, salt) with the state parameters (t=3, 64 MiB, p=4). For a file used on
  its own, with only a password (``SealedFile(path, password=...)``); costs one Argon2id per salt (~0.2 s; the
  derived key is cached per object, so later writes reuse the salt with a fresh random nonce).
- ``2``: key = HKDF-SHA256(ikm = the state directory's sealing key, salt, info "quicnprotochat/QPCE/v2"), the
  sealing key being derived from the one Argon2id computation of `StateDir` (see `keys`). Every write draws a
  new salt, hence a new file key. This is what `StateDir` uses: no second Argon2id.

Plain (no state password): ``b"QPCP" | 0x01 | content``. A plain file read through a `SealedFile` that has a
key is resealed on the spot (atomically replaced by its sealed form). All writes are atomic, mode 0600.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .errors import CorruptState, StateError, StatePasswordRequired, WrongStatePassword
from .files import atomic_write_private
from .keys import KEY_LEN, SALT_LEN, argon2id, hkdf, wipe

SEALED_MAGIC = b"QPCE"
PLAIN_MAGIC = b"QPCP"
VERSION_PASSWORD = 1
VERSION_STATE_KEY = 2
PLAIN_VERSION = 1
NONCE_LEN = 12
TAG_LEN = 16
HEADER_LEN = len(SEALED_MAGIC) + 1 + SALT_LEN + NONCE_LEN
_FILE_KEY_INFO = b"quicnprotochat/QPCE/v2"


class SealedFile:
    """One small file, sealed (QPCE) when given a `key` (v2) or a `password` (v1), plain otherwise."""

    def __init__(self, path: Path, *, key: bytes | bytearray | None = None, password: str | None = None) -> None:
        if key is not None and password is not None:
            raise ValueError("give a key or a password, not both")
        if key is not None and len(key) != KEY_LEN:
            raise ValueError(f"a sealing key is {KEY_LEN} bytes")
        self.path = path
        self._key = None if key is None else bytearray(key)
        self._password = password
        # v1 only: the last (salt, Argon2id key) pair, so that rewrites do not pay for Argon2id again.
        self._password_key: tuple[bytes, bytearray] | None = None

    @property
    def encrypted(self) -> bool:
        """False: the file is written in clear (no state password)."""
        return self._key is not None or self._password is not None

    def __repr__(self) -> str:
        return f"SealedFile({str(self.path)!r}, encrypted={self.encrypted})"

    def _file_key(self, version: int, salt: bytes) -> bytearray:
        if version == VERSION_STATE_KEY:
            if self._key is None:
                raise StateError(f"{self.path} is sealed with a state directory's key: open it through StateDir")
            return hkdf(self._key, _FILE_KEY_INFO, salt=salt)
        if version == VERSION_PASSWORD:
            if self._password is None:
                raise StateError(f"{self.path} is sealed with a password of its own, not a state directory's key")
            if self._password_key is not None and self._password_key[0] == salt:
                return bytearray(self._password_key[1])
            key = argon2id(self._password, salt)
            if self._password_key is not None:
                wipe(self._password_key[1])
            self._password_key = (salt, bytearray(key))
            return key
        raise CorruptState(f"{self.path}: unknown sealed-file version {version}")

    def read(self) -> bytes | None:
        """The content, or None if the file does not exist.

        Raises `WrongStatePassword` (wrong key or password, or a modified file), `StatePasswordRequired`
        (sealed, but this object has neither key nor password), `CorruptState` (not our format, truncated).
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if data.startswith(PLAIN_MAGIC):
            if len(data) < len(PLAIN_MAGIC) + 1 or data[len(PLAIN_MAGIC)] != PLAIN_VERSION:
                raise CorruptState(f"{self.path}: unknown plain state file version")
            content = data[len(PLAIN_MAGIC) + 1 :]
            if self.encrypted:
                self.write(content)
            return content
        if not data.startswith(SEALED_MAGIC):
            raise CorruptState(f"{self.path} is not a quicnprotochat state file")
        if not self.encrypted:
            raise StatePasswordRequired(f"{self.path} is encrypted: a state password is needed to read it")
        if len(data) < HEADER_LEN + TAG_LEN:
            raise CorruptState(f"{self.path} is truncated ({len(data)} bytes)")
        header = data[:HEADER_LEN]
        version = header[len(SEALED_MAGIC)]
        salt = header[len(SEALED_MAGIC) + 1 : len(SEALED_MAGIC) + 1 + SALT_LEN]
        nonce = header[len(SEALED_MAGIC) + 1 + SALT_LEN :]
        key = self._file_key(version, salt)
        try:
            return ChaCha20Poly1305(bytes(key)).decrypt(nonce, data[HEADER_LEN:], header)
        except InvalidTag:
            raise WrongStatePassword(
                f"{self.path}: cannot decrypt: wrong state password, or the file was modified"
            ) from None
        finally:
            wipe(key)

    def write(self, content: bytes) -> None:
        """Replace the file atomically (mode 0600), sealed if this object has a key or password."""
        if not self.encrypted:
            atomic_write_private(self.path, PLAIN_MAGIC + bytes([PLAIN_VERSION]) + content)
            return
        if self._key is not None:
            version, salt = VERSION_STATE_KEY, os.urandom(SALT_LEN)
        else:
            version = VERSION_PASSWORD
            salt = self._password_key[0] if self._password_key is not None else os.urandom(SALT_LEN)
        nonce = os.urandom(NONCE_LEN)
        header = SEALED_MAGIC + bytes([version]) + salt + nonce
        key = self._file_key(version, salt)
        try:
            ciphertext = ChaCha20Poly1305(bytes(key)).encrypt(nonce, content, header)
        finally:
            wipe(key)
        atomic_write_private(self.path, header + ciphertext)

    def delete(self) -> bool:
        """Remove the file; False if there was none."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True

    def wipe_keys(self) -> None:
        """Zero the keys this object holds; it cannot read or write sealed content afterwards."""
        if self._key is not None:
            wipe(self._key)
        if self._password_key is not None:
            wipe(self._password_key[1])
            self._password_key = None


@dataclass(frozen=True, slots=True)
class CachedSession:
    """A session token as cached by the client (the token is never shown by repr)."""

    token: bytes = field(repr=False)
    expires_at: float
    """Unix seconds."""
    username: str
    node_address: str

    def is_valid(self, now: float | None = None, *, margin: float = 30.0) -> bool:
        """True while the token has more than `margin` seconds left."""
        return (time.time() if now is None else now) + margin < self.expires_at


class TokenCache:
    """The session token cache: one `SealedFile` holding a `CachedSession` as JSON.

    Sync by design: a read or write is one small file (with a state key: HKDF and ChaCha20, microseconds).
    With `password=` the first access runs Argon2id (~0.2 s): call it through ``asyncio.to_thread`` then.
    """

    def __init__(self, path: Path, *, key: bytes | bytearray | None = None, password: str | None = None) -> None:
        self._file = SealedFile(path, key=key, password=password)

    @property
    def path(self) -> Path:
        return self._file.path

    @property
    def encrypted(self) -> bool:
        return self._file.encrypted

    def load(self) -> CachedSession | None:
        """The cached session (expired or not: check `is_valid`), None if none is cached.

        Raises `WrongStatePassword`, `StatePasswordRequired` or `CorruptState` as `SealedFile.read`.
        """
        content = self._file.read()
        if content is None:
            return None
        try:
            record = json.loads(content)
            if not isinstance(record, dict) or record.get("v") != 1:
                raise ValueError("unknown record version")
            token = bytes.fromhex(record["token"])
            expires_at = float(record["expires_at"])
            username = record["username"]
            node_address = record["node_address"]
            if not isinstance(username, str) or not isinstance(node_address, str):
                raise TypeError("username and node_address must be text")
        except (ValueError, KeyError, TypeError) as error:
            raise CorruptState(f"{self.path}: malformed session record ({type(error).__name__})") from None
        return CachedSession(token=token, expires_at=expires_at, username=username, node_address=node_address)

    def save(self, session: CachedSession) -> None:
        record = {
            "v": 1,
            "token": session.token.hex(),
            "expires_at": session.expires_at,
            "username": session.username,
            "node_address": session.node_address,
        }
        self._file.write(json.dumps(record, separators=(",", ":")).encode())

    def clear(self) -> bool:
        """Forget the cached session (on logout or when the node rejects it)."""
        return self._file.delete()

    def wipe_keys(self) -> None:
        self._file.wipe_keys()


__all__ = ["CachedSession", "SealedFile", "TokenCache"]
