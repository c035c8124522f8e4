"""Coffer shards: each bot's operator-provisioned secrets, one sealed record per bot key.

The store keeps only what `server/sealed_coffer.py` sealed under the root key; the name, key and number of secrets
are in clear (`qpc-server coffer list` shows them without the root key). A load replaces every shard in one
transaction: a reader sees the old set or the new one, never a mix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class CofferShard:
    name: str
    identity_key: bytes
    secret_count: int
    sealed: bytes = field(repr=False)
    loaded_at: float = 0.0


def shard_from_row(row: Any) -> CofferShard:
    """A shard from a row of (name, identity_key, secret_count, sealed, loaded_at), on either backend."""
    return CofferShard(str(row[0]), bytes(row[1]), int(row[2]), bytes(row[3]), float(row[4]))


class CofferStore(Protocol):
    async def replace_coffer(self, shards: list[CofferShard]) -> None:
        """Every shard replaced by `shards`, at once (one transaction); `loaded_at` is set by the store."""
        ...

    async def coffer_shards(self) -> list[CofferShard]:
        """Every shard, by name."""
        ...

    async def get_coffer_shard(self, identity_key: bytes) -> CofferShard | None: ...

    async def replace_coffer_shard(self, identity_key: bytes, expected: bytes, sealed: bytes) -> bool:
        """Stores `sealed` for `identity_key` if its record is still `expected` (a rekey moving it)."""
        ...
