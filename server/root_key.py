"""Where the node's root key comes from: a key file of 32 random bytes, or a passphrase through Argon2id.

The key itself never reaches Python: the native module reads the key file or runs Argon2id and keeps the result on
a locked page (`quicnprotochat.native.RootKey`). A passphrase passes through Python on its way there (a prompt or
the environment cannot avoid that); it is kept in a bytearray and wiped once the key is derived.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from quicnprotochat.native import InvalidKeyError, RootKey
from quicnprotochat.server.identity import write_private_file

PASSPHRASE_ENV = "QPC_SERVER_ROOT_PASSPHRASE"  # noqa: S105 -- the variable's name, not a secret
NEW_PASSPHRASE_ENV = "QPC_SERVER_NEW_ROOT_PASSPHRASE"  # noqa: S105
# The salt and Argon2id cost of a passphrase-derived root key; not secret. Nodes sharing a database copy it.
SALT_FILE = "root-key.salt"
SALT_BYTES = 16


class RootKeyError(RuntimeError):
    """The root key cannot be had: the message is one line for the operator."""


@dataclass(frozen=True)
class PassphraseCost:
    memory_kib: int = 64 * 1024
    iterations: int = 3
    lanes: int = 1


@dataclass(frozen=True)
class RootKeySource:
    """How to get a root key: `key_file`, or a passphrase (from `passphrase_env`, else a prompt) with the salt
    kept in `salt_file`."""

    key_file: Path | None = None
    passphrase: bool = False
    salt_file: Path | None = None
    passphrase_env: str = PASSPHRASE_ENV

    def describe(self) -> str:
        if self.key_file is not None:
            return f"the root key file {self.key_file}"
        return "the root key passphrase"


def load_root_key(source: RootKeySource, environ: Mapping[str, str] | None = None) -> RootKey:
    if source.key_file is not None:
        if not source.key_file.exists():
            raise RootKeyError(f"the root key file {source.key_file} does not exist (`qpc-server init` creates one)")
        try:
            return RootKey.from_key_file(str(source.key_file))
        except InvalidKeyError as error:
            raise RootKeyError(_reason(error)) from None
    assert source.passphrase and source.salt_file is not None
    salt, cost = read_salt(source.salt_file)
    passphrase = _passphrase(source.passphrase_env, environ, confirm=False)
    try:
        return derive(passphrase, salt, cost)
    finally:
        _wipe(passphrase)


def create_passphrase_salt(salt_file: Path, cost: PassphraseCost | None = None) -> None:
    cost = cost or PassphraseCost()
    document = {
        "kdf": "argon2id",
        "salt": secrets.token_hex(SALT_BYTES),
        "memory_kib": cost.memory_kib,
        "iterations": cost.iterations,
        "lanes": cost.lanes,
    }
    write_private_file(salt_file, (json.dumps(document, indent=1) + "\n").encode())


def read_salt(salt_file: Path) -> tuple[bytes, PassphraseCost]:
    try:
        document = json.loads(salt_file.read_text())
        salt = bytes.fromhex(document["salt"])
        cost = PassphraseCost(int(document["memory_kib"]), int(document["iterations"]), int(document["lanes"]))
    except FileNotFoundError:
        raise RootKeyError(
            f"no passphrase salt at {salt_file} (`qpc-server init --root-passphrase` creates it; nodes sharing a "
            "database copy it)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RootKeyError(f"the passphrase salt file {salt_file} cannot be read: {error}") from None
    return salt, cost


def derive(passphrase: bytearray, salt: bytes, cost: PassphraseCost) -> RootKey:
    try:
        return RootKey.from_passphrase(
            passphrase, salt, memory_kib=cost.memory_kib, iterations=cost.iterations, lanes=cost.lanes
        )
    except InvalidKeyError as error:
        raise RootKeyError(_reason(error)) from None


def new_passphrase(env: str, environ: Mapping[str, str] | None = None) -> bytearray:
    """A passphrase for a new root key: from `env`, else asked twice."""
    return _passphrase(env, environ, confirm=True)


def _passphrase(env: str, environ: Mapping[str, str] | None, *, confirm: bool) -> bytearray:
    environ = os.environ if environ is None else environ
    value = environ.get(env)
    if value is not None:
        if not value:
            raise RootKeyError(f"{env} is set but empty")
        return bytearray(value.encode())
    if not sys.stdin.isatty():
        raise RootKeyError(f"the root key passphrase is needed: set {env} or run on a terminal to be asked")
    first = bytearray(getpass.getpass("root key passphrase: ").encode())
    if confirm:
        again = bytearray(getpass.getpass("root key passphrase (again): ").encode())
        same = secrets.compare_digest(bytes(first), bytes(again))
        _wipe(again)
        if not same:
            _wipe(first)
            raise RootKeyError("the two passphrases differ")
    if not first:
        raise RootKeyError("the root key passphrase is empty")
    return first


def _wipe(buffer: bytearray) -> None:
    buffer[:] = bytes(len(buffer))


def _reason(error: Exception) -> str:
    text = str(error)
    return text.removeprefix("invalid key: ")
