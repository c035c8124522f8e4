"""`Store`: every concern's protocol together, plus the store's lifecycle. The node opens one (`open_store`) and
hands each service only the protocol of its concern."""

from __future__ import annotations

from typing import Protocol

from .accounts import AccountStore, SessionStore
from .base import StoreHealth, StoreLimits, StoreMetrics
from .blobs import BlobStore
from .bot_keys import BotKeyStore
from .coffer import CofferStore
from .directories import DirectoryStore
from .endpoints import EndpointStore
from .groups import GroupStore
from .idempotency import IdempotencyStore
from .inboxes import InboxStore
from .server_secrets import SecretStore


class StoreLifecycle(Protocol):
    """Operations after `close()` raise `StoreClosed`."""

    @property
    def limits(self) -> StoreLimits: ...

    @property
    def closed(self) -> bool: ...

    def metrics(self) -> StoreMetrics: ...

    async def close(self) -> None:
        """Finish every operation already submitted, then release the database. Idempotent."""
        ...

    def reusable_bytes(self) -> int:
        """Space on this node's disk that the store freed and reuses for new data (SQLite's free pages)."""
        ...

    async def probe(self) -> StoreHealth:
        """Whether the database answers now (a trivial query, bounded in time) and how the writer fares."""
        ...


class Store(
    StoreLifecycle,
    AccountStore,
    SessionStore,
    DirectoryStore,
    InboxStore,
    SecretStore,
    GroupStore,
    IdempotencyStore,
    BlobStore,
    EndpointStore,
    CofferStore,
    BotKeyStore,
    Protocol,
):
    """Async storage of one node, all concerns."""
