"""`qpc-server coffer load FILE`, `check FILE` and `list`: the operator's side of the coffer.

A load reads and checks the whole file first (`coffer_file`), then checks that the root key given is this node's
(the node's sealed identity and its sealed records must open under it), and only then replaces every shard in one
transaction. Any error leaves the store as it was. Nothing here prints or logs a secret.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from quicnprotochat.common.bot_keys import bot_key_text
from quicnprotochat.native import RootKey
from quicnprotochat.server.at_rest import SealedStore
from quicnprotochat.server.coffer_file import CofferDefinition, CofferFileError, parse_coffer_file
from quicnprotochat.server.config import NodeConfig
from quicnprotochat.server.identity import load_identity
from quicnprotochat.server.sealed_coffer import check_coffer, seal_definition
from quicnprotochat.server.sealed_secrets import SealedDataError, check_secrets

MAX_FILE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Loaded:
    clients: int
    secrets: int


def read_definition_file(path: Path) -> str:
    """The file's text; CofferFileError (one line) when it cannot be read as UTF-8 text."""
    try:
        with path.open("rb") as source:
            data = source.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise CofferFileError(None, error.strerror or str(error)) from None
    if len(data) > MAX_FILE_BYTES:
        raise CofferFileError(None, f"larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise CofferFileError(line, "not UTF-8 text") from None


def read_definition(path: Path) -> CofferDefinition:
    """The checked definition in `path` (`coffer check` stops here)."""
    return parse_coffer_file(read_definition_file(path))


def counts(definition: CofferDefinition) -> Loaded:
    return Loaded(len(definition.clients), sum(len(client.secrets) for client in definition.clients))


async def load_coffer(config: NodeConfig, root: RootKey | None, store: SealedStore, path: Path) -> Loaded:
    definition = read_definition(path)
    if root is None:
        raise SealedDataError(
            "coffer secrets are sealed under the node's root key: give it (--root-key-file or --root-passphrase)"
        )
    # The key must be this node's, or the node could not open what we seal: everything sealed must open under it.
    load_identity(config.data_dir, root)
    await check_secrets(store, root)
    await check_coffer(store, root)
    shards = seal_definition(root, definition)
    await store.replace_coffer(shards)
    return counts(definition)


async def list_coffer(store: SealedStore) -> list[str]:
    """One line per bot: name, key, how many secrets, when loaded (never a secret's name or value)."""
    lines = []
    for shard in await store.coffer_shards():
        loaded = dt.datetime.fromtimestamp(shard.loaded_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        count = f"{shard.secret_count} secret{'s' if shard.secret_count != 1 else ''}"
        lines.append(f"{shard.name}\t{bot_key_text(shard.identity_key)}\t{count}\tloaded {loaded}")
    return lines
