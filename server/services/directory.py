"""The node's directories: MLS KeyPackages and hybrid (X-Wing) public keys (P2P endpoint records: `endpoints`)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from quicnprotochat.common.errors import InvalidArgument
from quicnprotochat.native import (
    HYBRID_PUBLIC_KEY_LEN,
    InvalidKeyError,
    InvalidKeyPackage,
    validate_hybrid_public_key,
    validate_key_package,
)
from quicnprotochat.server.services import validation
from quicnprotochat.server.services.errors import store_errors
from quicnprotochat.server.services.sessions import Caller
from quicnprotochat.server.store import Clock, DirectoryStore

MAX_KEY_PACKAGE_BYTES = 64 * 1024
MAX_BATCH_KEYS = 1000


class DirectoryService:
    def __init__(self, store: DirectoryStore, *, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    # -- KeyPackages -------------------------------------------------------------------------------------------

    async def upload_key_package(self, caller: Caller, identity_key: bytes, package: bytes) -> bytes:
        identity_key = validation.own_identity_key(caller, identity_key, "upload KeyPackages")
        if not package or len(package) > MAX_KEY_PACKAGE_BYTES:
            raise InvalidArgument(f"package must be 1 to {MAX_KEY_PACKAGE_BYTES} bytes")
        try:
            info = validate_key_package(package)
        except InvalidKeyPackage as error:
            raise InvalidArgument(f"invalid KeyPackage: {error}") from None
        if info.identity_key != identity_key:
            raise InvalidArgument("the KeyPackage's credential key is not identityKey")
        if info.not_after <= self._clock():
            raise InvalidArgument("the KeyPackage has expired")
        fingerprint = hashlib.sha256(package).digest()
        with store_errors():
            await self._store.add_key_package(
                identity_key, package, fingerprint, last_resort=info.is_last_resort, not_after=info.not_after
            )
        return fingerprint

    async def fetch_key_package(self, identity_key: bytes) -> bytes:
        package = await self._store.take_key_package(validation.identity_key(identity_key))
        return package.package if package else b""

    # -- hybrid keys -------------------------------------------------------------------------------------------

    async def upload_hybrid_key(self, caller: Caller, identity_key: bytes, public_key: bytes) -> None:
        identity_key = validation.own_identity_key(caller, identity_key, "upload a hybrid key")
        try:
            validate_hybrid_public_key(public_key)
        except InvalidKeyError:
            raise InvalidArgument(f"hybridPublicKey must be a {HYBRID_PUBLIC_KEY_LEN}-byte X-Wing public key") from None
        await self._store.put_hybrid_key(identity_key, public_key)

    async def fetch_hybrid_key(self, identity_key: bytes) -> bytes:
        return await self._store.get_hybrid_key(validation.identity_key(identity_key)) or b""

    async def fetch_hybrid_keys(self, identity_keys: Sequence[bytes]) -> list[bytes]:
        if len(identity_keys) > MAX_BATCH_KEYS:
            raise InvalidArgument(f"at most {MAX_BATCH_KEYS} identity keys per call")
        keys = await self._store.get_hybrid_keys([validation.identity_key(key) for key in identity_keys])
        return [key or b"" for key in keys]
