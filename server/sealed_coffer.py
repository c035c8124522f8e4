"""Coffer shards sealed under the node's root key, the way `sealed_secrets` seals the server's own secrets.

Each shard is sealed under the purpose `coffer-shard` and bound to its place (`coffer_shards/` + the bot's key),
so a record copied to another bot's row does not open. Shards exist only under a root key: without one the node
refuses to load a coffer, and refuses to start on a store that holds shards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from quicnprotochat.common.bot_keys import bot_key_text
from quicnprotochat.common.coffer_shard import coffer_info
from quicnprotochat.native import InvalidKeyError, NativeError, RootKey
from quicnprotochat.server.coffer_file import CofferDefinition
from quicnprotochat.server.identity import wipe
from quicnprotochat.server.sealed_secrets import SealedDataError, sealed_key_id
from quicnprotochat.server.store import CofferShard, CofferStore

PURPOSE = "coffer-shard"


def context(identity_key: bytes) -> bytes:
    return b"coffer_shards/" + bytes(identity_key)


def seal_definition(root: RootKey, definition: CofferDefinition) -> list[CofferShard]:
    return [
        CofferShard(
            client.name,
            client.identity_key,
            len(client.secrets),
            root.seal(PURPOSE, context(client.identity_key), client.shard),
        )
        for client in definition.clients
    ]


def _where(shard: CofferShard) -> str:
    return f"the coffer shard of {shard.name!r} ({bot_key_text(shard.identity_key)})"


def open_shard(root: RootKey, shard: CofferShard) -> bytearray:
    """The shard's CBOR; the caller wipes it. SealedDataError when it does not open under `root`."""
    with _opening(shard):
        return root.open(PURPOSE, context(shard.identity_key), shard.sealed)


def shard_envelope(root: RootKey, shard: CofferShard, hybrid_key: bytes) -> bytes:
    """The shard sealed in the hybrid envelope to its bot's `hybrid_key`, opened and sealed again inside the native
    module: the clear shard never reaches Python."""
    key = shard.identity_key
    with _opening(shard):
        return root.open_to_envelope(PURPOSE, context(key), shard.sealed, hybrid_key, coffer_info(key))


@contextmanager
def _opening(shard: CofferShard) -> Iterator[None]:
    where = _where(shard)
    if sealed_key_id(shard.sealed, where) is None:
        raise SealedDataError(f"{where} is not a sealed record")
    try:
        yield
    except InvalidKeyError:
        raise SealedDataError(f"{where} is sealed under another root key") from None
    except NativeError:
        raise SealedDataError(f"{where} cannot be opened: damaged or tampered with") from None


async def check_coffer(store: CofferStore, root: RootKey | None) -> int:
    """Every shard opens under `root` (read-only, each forgotten at once); returns how many there are."""
    shards = await store.coffer_shards()
    for shard in shards:
        if root is None:
            where = _where(shard)
            raise SealedDataError(f"{where} is sealed: give the root key (--root-key-file or --root-passphrase)")
        wipe(open_shard(root, shard))
    return len(shards)


async def check_coffer_rekey(store: CofferStore, old: RootKey, new: RootKey) -> None:
    for shard in await store.coffer_shards():
        key_id = sealed_key_id(shard.sealed, _where(shard))
        wipe(open_shard(new if key_id == new.key_id else old, shard))


async def rekey_coffer(store: CofferStore, old: RootKey, new: RootKey) -> int:
    """Moves every shard to `new` (one already there is left alone, so an interrupted rekey resumes)."""
    moved = 0
    for shard in await store.coffer_shards():
        if sealed_key_id(shard.sealed, _where(shard)) == new.key_id:
            continue
        try:
            record = old.reseal(new, PURPOSE, context(shard.identity_key), shard.sealed)
        except NativeError:
            raise SealedDataError(f"{_where(shard)} opens under neither the old nor the new root key") from None
        if await store.replace_coffer_shard(shard.identity_key, shard.sealed, record):
            moved += 1
    return moved
