"""Server secrets in the store, sealed under the root key: the OPAQUE server setup, and any later one.

Each secret is sealed under its own purpose (`server-secret/NAME`; the OPAQUE setup under the native module's
`OPAQUE_SETUP_PURPOSE`, so that its bytes never pass through Python) and bound to its place
(`server_secrets/NAME`). A stored value is either a sealed record (it says its scheme and root key id) or, for a
node that ran without a root key, the clear secret.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from quicnprotochat.native import (
    OPAQUE_SETUP_PURPOSE,
    InvalidKeyError,
    MalformedError,
    NativeError,
    OpaqueServer,
    RootKey,
    UnsupportedError,
    sealed_record_info,
)
from quicnprotochat.server.identity import wipe
from quicnprotochat.server.store import SecretStore

OPAQUE_SETUP_NAME = "opaque_server_setup"  # the store key under which the setup is kept


class SealedDataError(RuntimeError):
    """Sealed data that the given root key (or no root key) cannot open; the message is one line."""


def purpose(name: str) -> str:
    return OPAQUE_SETUP_PURPOSE if name == OPAQUE_SETUP_NAME else f"server-secret/{name}"


def context(name: str) -> bytes:
    return b"server_secrets/" + name.encode()


def sealed_key_id(value: bytes, where: str) -> bytes | None:
    """The root key id of a sealed record; None for a clear value."""
    try:
        return sealed_record_info(value)[1]
    except MalformedError:
        return None
    except UnsupportedError as error:
        raise SealedDataError(f"{where} is sealed with a scheme this node does not know ({error})") from None


@dataclass(frozen=True)
class SecretsCheck:
    """What a read-only pass over the store found: clear secrets to seal (with a root key)."""

    clear: tuple[str, ...]


async def check_secrets(store: SecretStore, root: RootKey | None) -> SecretsCheck:
    """Opens every sealed secret (then forgets it), writing nothing: a wrong or missing root key, or a damaged
    record, raises SealedDataError before anything changes."""
    clear: list[str] = []
    for name in await store.secret_names():
        value = await store.get_secret(name)
        if value is None:
            continue
        where = f"the server secret {name!r} in the store"
        if sealed_key_id(value, where) is None:
            clear.append(name)
            continue
        if root is None:
            raise SealedDataError(f"{where} is sealed: give the root key (--root-key-file or --root-passphrase)")
        wipe(open_secret(root, name, value, where))
    return SecretsCheck(tuple(clear))


def open_secret(root: RootKey, name: str, value: bytes, where: str) -> bytearray:
    try:
        return root.open(purpose(name), context(name), value)
    except InvalidKeyError:
        raise SealedDataError(f"{where} is sealed under another root key") from None
    except NativeError:
        raise SealedDataError(f"{where} cannot be opened: damaged or tampered with") from None


async def seal_clear_secrets(store: SecretStore, root: RootKey, names: tuple[str, ...]) -> None:
    """Replaces each clear secret with its sealed record, then scrubs the old values from the database's files."""
    for name in names:
        value = await store.get_secret(name)
        if value is None or sealed_key_id(value, name) is not None:
            continue  # another node sealed it first
        await store.replace_secret(name, value, root.seal(purpose(name), context(name), value))
    if names:
        await store.scrub_replaced_secrets()


async def load_or_create_opaque_setup(store: SecretStore, root: RootKey | None) -> OpaqueServer:
    """The OPAQUE server setup, made once and kept in the store (sealed with a root key): every node of a shared
    database must use the same one, since password files depend on its OPRF key."""
    candidate = OpaqueServer.generate()
    if root is None:
        stored = await store.get_or_create_secret(OPAQUE_SETUP_NAME, candidate.to_bytes())
    else:
        stored = await store.get_or_create_secret(
            OPAQUE_SETUP_NAME, root.seal_opaque_server(candidate, context(OPAQUE_SETUP_NAME))
        )
    where = "the OPAQUE server setup in the store"
    try:
        if sealed_key_id(stored, where) is None:
            return OpaqueServer.from_bytes(stored)
        if root is None:
            raise SealedDataError(f"{where} is sealed: give the root key (--root-key-file or --root-passphrase)")
        return root.open_opaque_server(context(OPAQUE_SETUP_NAME), stored)
    except InvalidKeyError:
        raise SealedDataError(f"{where} is sealed under another root key") from None
    except NativeError:
        raise SealedDataError(f"{where} is damaged") from None


async def load_or_create_secret(
    store: SecretStore, root: RootKey | None, name: str, make: Callable[[], bytes]
) -> bytearray:
    """A later server secret made by `make` once, kept sealed like the others; the caller wipes the result."""
    value = make()
    candidate = value if root is None else root.seal(purpose(name), context(name), value)
    stored = await store.get_or_create_secret(name, candidate)
    where = f"the server secret {name!r} in the store"
    if sealed_key_id(stored, where) is None:
        if root is not None:
            raise SealedDataError(f"{where} is in clear although the node has a root key")
        return bytearray(stored)
    if root is None:
        raise SealedDataError(f"{where} is sealed: give the root key (--root-key-file or --root-passphrase)")
    return open_secret(root, name, stored, where)


async def rekey_secrets(store: SecretStore, old: RootKey, new: RootKey) -> int:
    """Moves every secret to `new`; one already there is left alone, so a rekey run again after an interruption
    resumes. Returns how many were moved."""
    moved = 0
    for name in await store.secret_names():
        value = await store.get_secret(name)
        if value is None:
            continue
        key_id = sealed_key_id(value, name)
        if key_id == new.key_id:
            continue
        if key_id is None:
            record = new.seal(purpose(name), context(name), value)
        else:
            try:
                record = old.reseal(new, purpose(name), context(name), value)
            except NativeError:
                raise SealedDataError(
                    f"the server secret {name!r} opens under neither the old nor the new root key"
                ) from None
        if await store.replace_secret(name, value, record):
            moved += 1
    await store.scrub_replaced_secrets()
    return moved


async def check_rekey(store: SecretStore, old: RootKey, new: RootKey) -> None:
    """Every secret opens under the old or the new key (read-only), so a rekey never starts with a wrong key."""
    for name in await store.secret_names():
        value = await store.get_secret(name)
        if value is None:
            continue
        where = f"the server secret {name!r} in the store"
        key_id = sealed_key_id(value, where)
        if key_id is None:
            continue
        wipe(open_secret(new if key_id == new.key_id else old, name, value, where))
