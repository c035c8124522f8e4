"""Own keys on the node: the hybrid public key and the KeyPackage stock (counted locally: the node has no
count RPC; every Welcome joined consumed one package), and fetching a peer's KeyPackage to invite them."""

from __future__ import annotations

import asyncio
import hashlib

from quicnprotochat.native import NativeError, validate_key_package

from .context import ChatContext
from .errors import ChatError, NoKeyPackage
from .events import ErrorEvent

_SETTING_HYBRID = "account.hybrid_published"
_SETTING_KP_STOCK = "account.key_packages"


class KeyPackageStock:
    def __init__(self, context: ChatContext) -> None:
        self._context = context
        self._replenishing = asyncio.Lock()
        self._stock_lock = asyncio.Lock()

    async def publish_keys(self) -> None:
        """The hybrid key (once per key and node) and a last-resort package, then the stock topped up."""
        context = self._context
        hybrid = context.vault.hybrid_public_key()
        marker = f"{context.node.address}:{hashlib.sha256(hybrid).hexdigest()}"
        if await context.store.get_setting(_SETTING_HYBRID) != marker:
            await context.node.upload_hybrid_key(context.identity_key, hybrid)
            await context.store.set_setting(_SETTING_HYBRID, marker)
        if await context.store.get_setting(_SETTING_KP_STOCK) is None:
            package = await asyncio.to_thread(context.vault.create_key_package, True)
            await context.node.upload_key_package(context.identity_key, package)
            await context.store.set_setting(_SETTING_KP_STOCK, "0")
        await self._replenish()

    async def count(self) -> int:
        """How many (non last-resort) KeyPackages this client believes the node still holds for it."""
        return int(await self._context.store.get_setting(_SETTING_KP_STOCK) or 0)

    async def _adjust(self, delta: int) -> int:
        async with self._stock_lock:
            stock = max(0, await self.count() + delta)
            await self._context.store.set_setting(_SETTING_KP_STOCK, str(stock))
            return stock

    async def _replenish(self) -> None:
        context = self._context
        async with self._replenishing:
            if await self.count() > context.config.key_packages_low:
                return
            while await self.count() < context.config.key_packages:
                package = await asyncio.to_thread(context.vault.create_key_package, False)
                await context.node.upload_key_package(context.identity_key, package)
                await self._adjust(+1)

    async def consumed(self) -> None:
        """A Welcome was joined: one package fewer on the node; replenish in the background when low."""
        if await self._adjust(-1) <= self._context.config.key_packages_low:
            self._context.bus.spawn(self._replenish_in_background())

    async def _replenish_in_background(self) -> None:
        try:
            await self._context.guard(self._replenish())
        except ChatError as error:
            self._context.emit(ErrorEvent(f"could not publish new key packages: {error}", error))

    async def fetch_peer_package(self, peer: bytes, name: str) -> bytes:
        """A KeyPackage of `peer` from the node, checked to be valid and to be `peer`'s."""
        package = await self._context.guard(self._context.node.fetch_key_package(peer))
        if package is None:
            raise NoKeyPackage(f"{name} has no key package left on the node: they have to come online first")
        try:
            info = validate_key_package(package)
        except NativeError as error:
            raise ChatError(f"the node returned an invalid key package for {name}: {error}") from None
        if info.identity_key != peer:
            raise ChatError(f"the node returned a key package of another identity for {name}")
        return package
