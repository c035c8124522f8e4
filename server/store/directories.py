"""Directories: MLS KeyPackages and hybrid (X-Wing) public keys, one protocol, `DirectoryStore`, and what both
backends' implementations share. (P2P endpoint records are their own concern: `endpoints`.)"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .engine import StoreEngine


@dataclass(frozen=True, slots=True)
class KeyPackage:
    fingerprint: bytes
    last_resort: bool
    not_after: float | None
    package: bytes = field(repr=False)


class DirectoryStore(Protocol):
    # KeyPackages
    async def add_key_package(
        self,
        identity_key: bytes,
        package: bytes,
        fingerprint: bytes,
        *,
        last_resort: bool = False,
        not_after: float | None = None,
    ) -> None:
        """Raises AlreadyExists("fingerprint") or LimitExceeded("max_key_packages_per_identity")."""
        ...

    async def take_key_package(self, identity_key: bytes) -> KeyPackage | None:
        """Remove and return the oldest unexpired ordinary package; else return (and keep) a last-resort one."""
        ...

    async def count_key_packages(self, identity_key: bytes) -> int:
        """Unexpired packages, last-resort ones included."""
        ...

    # Hybrid (X-Wing) public keys, one per identity
    async def put_hybrid_key(self, identity_key: bytes, public_key: bytes) -> None: ...

    async def get_hybrid_key(self, identity_key: bytes) -> bytes | None: ...

    async def get_hybrid_keys(self, identity_keys: Sequence[bytes]) -> list[bytes | None]:
        """In the order asked; None where nothing is published."""
        ...


class DirectoriesBase(StoreEngine):
    """The backend-independent half of `DirectoryStore`."""

    async def get_hybrid_key(self, identity_key: bytes) -> bytes | None:
        return (await self.get_hybrid_keys([identity_key]))[0]

    async def get_hybrid_keys(self, identity_keys: Sequence[bytes]) -> list[bytes | None]:
        keys = [bytes(k) for k in identity_keys]
        if not keys:
            self._check_open()
            return []
        found = await self._find_hybrid_keys(list(dict.fromkeys(keys)))
        return [found.get(k) for k in keys]

    @abstractmethod
    async def _find_hybrid_keys(self, distinct: list[bytes]) -> dict[bytes, bytes]:
        """identity key -> public key, for those of `distinct` (no repeats, not empty) that have one."""
