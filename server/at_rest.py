"""The node's secrets at rest, at start and at rekey: everything is checked read-only first, then written.

At start, every sealed secret (the TLS key in the data dir, the server secrets and coffer shards in the store) must
open under the given root key, or the node refuses with one line and has changed nothing. Then a clear secret left
by a node that ran without a root key is sealed, and its clear copy removed. Without a root key the node runs with
its secrets in clear, as before (and says so), unless something is already sealed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from quicnprotochat.native import OpaqueServer, RootKey
from quicnprotochat.server.config import ConfigError, NodeConfig
from quicnprotochat.server.identity import (
    NodeIdentity,
    ensure_data_dir,
    identity_root_key_id,
    load_identity,
    load_or_create_identity,
    rekey_identity,
    wipe,
)
from quicnprotochat.server.root_key import (
    NEW_PASSPHRASE_ENV,
    PASSPHRASE_ENV,
    SALT_FILE,
    RootKeySource,
    create_passphrase_salt,
    derive,
    load_root_key,
    new_passphrase,
    read_salt,
)
from quicnprotochat.server.sealed_coffer import check_coffer, check_coffer_rekey, rekey_coffer
from quicnprotochat.server.sealed_secrets import (
    check_rekey,
    check_secrets,
    load_or_create_opaque_setup,
    rekey_secrets,
    seal_clear_secrets,
)
from quicnprotochat.server.store import CofferStore, SecretStore

log = logging.getLogger("quicnprotochat.server")

# While a passphrase rekey runs, the new key's salt waits here; it replaces SALT_FILE once every record moved.
NEXT_SALT_FILE = SALT_FILE + ".next"


class SealedStore(SecretStore, CofferStore, Protocol):
    """The store's concerns that hold records sealed under the root key."""


def root_key_source(config: NodeConfig, environ: Mapping[str, str] | None = None) -> RootKeySource | None:
    """How this node gets its root key; None when it has none (secrets in clear)."""
    environ = os.environ if environ is None else environ
    passphrase = config.root_key_passphrase or PASSPHRASE_ENV in environ
    if config.root_key_file and passphrase:
        raise ConfigError("give the root key either as a file (root_key_file) or as a passphrase, not both")
    if config.root_key_file:
        return RootKeySource(key_file=Path(config.root_key_file).expanduser())
    if passphrase:
        return RootKeySource(passphrase=True, salt_file=config.data_dir / SALT_FILE)
    return None


def node_root_key(config: NodeConfig) -> RootKey | None:
    source = root_key_source(config)
    return None if source is None else load_root_key(source)


@dataclass
class SecretsAtRest:
    identity: NodeIdentity
    identity_created: bool
    opaque: OpaqueServer


async def open_secrets(config: NodeConfig, root: RootKey | None, store: SealedStore) -> SecretsAtRest:
    """Checks that every sealed secret opens (writing nothing), then seals what is still clear and creates what is
    missing."""
    load_identity(config.data_dir, root)  # raises before any write when the key cannot open it
    check = await check_secrets(store, root)
    await check_coffer(store, root)
    if root is None:
        log.warning("no root key configured: the node's TLS key and OPAQUE setup are stored in clear")
    identity, created = load_or_create_identity(config.data_dir, root)
    if root is not None and check.clear:
        log.warning("sealing server secrets stored in clear: %s", ", ".join(check.clear))
        await seal_clear_secrets(store, root, check.clear)
    opaque = await load_or_create_opaque_setup(store, root)
    return SecretsAtRest(identity, created, opaque)


def new_root_key(config: NodeConfig, new_key_file: Path | None, environ: Mapping[str, str] | None = None) -> RootKey:
    """The root key a rekey moves to: a key file, or a passphrase with a fresh salt (kept in NEXT_SALT_FILE until
    the rekey finishes, so that a rekey run again derives the same key)."""
    if new_key_file is not None:
        return load_root_key(RootKeySource(key_file=new_key_file))
    next_salt = config.data_dir / NEXT_SALT_FILE
    if not next_salt.exists():
        create_passphrase_salt(next_salt)
    salt, cost = read_salt(next_salt)
    passphrase = new_passphrase(NEW_PASSPHRASE_ENV, environ)
    try:
        return derive(passphrase, salt, cost)
    finally:
        wipe(passphrase)


async def rekey(config: NodeConfig, old: RootKey, new: RootKey, store: SealedStore) -> int:
    """Moves every sealed record of this data dir and the store to `new`. Everything is checked to open under the
    old or the new key before the first record moves; each record is replaced atomically, and a rekey run again
    after an interruption resumes. Returns how many records moved."""
    ensure_data_dir(config.data_dir)
    key_id = identity_root_key_id(config.data_dir)
    load_identity(config.data_dir, new if key_id == new.key_id else old)
    await check_rekey(store, old, new)
    await check_coffer_rekey(store, old, new)
    moved = int(rekey_identity(config.data_dir, old, new))
    moved += await rekey_secrets(store, old, new)
    moved += await rekey_coffer(store, old, new)
    next_salt = config.data_dir / NEXT_SALT_FILE
    if next_salt.exists():
        next_salt.replace(config.data_dir / SALT_FILE)
    return moved
