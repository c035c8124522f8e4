"""Storage of the node, split by concern. The node opens one `Store` (`open_store`); each service sees only its
concern's protocol and never writes SQL itself.

Layout, per concern (accounts and sessions, directories, endpoint records, inboxes and channels, server secrets,
groups, blobs, coffer shards, bot keys):
- `<concern>.py`: the records, the protocol, and the code both backends share (`<Concern>Base`, template methods
  over small backend hooks);
- `sqlite/<concern>.py` and `postgres/<concern>.py`: that concern's SQL, one class over the backend's engine
  (`sqlite/engine.py`, `postgres/engine.py`, both on `engine.StoreEngine`);
- `sqlite/__init__.py` and `postgres/__init__.py` join the concern classes into `SqliteStore` / `PostgresStore`;
  `interface.Store` joins the protocols;
- schema changes: appended to `migrations.py` (SQLite) and `postgres_migrations.py` (PostgreSQL).
"""

from __future__ import annotations

import os
import time

from .accounts import Account, AccountStore, LoginState, Session, SessionStore
from .base import (
    DEFAULT_CHANNEL,
    AlreadyExists,
    Clock,
    DiskFull,
    Inbox,
    LimitExceeded,
    NotFound,
    OutcomeUnknown,
    SchemaTooNew,
    StoreClosed,
    StoreError,
    StoreHealth,
    StoreLimits,
    StoreMetrics,
    StoreUnavailable,
)
from .blobs import BlobStore
from .bot_keys import ApprovalState, BotApproval, BotKey, BotKeyStore
from .coffer import CofferShard, CofferStore
from .directories import DirectoryStore, KeyPackage
from .endpoints import EndpointStore
from .fetch_wait import fetch_wait
from .groups import GroupStore
from .idempotency import IdempotencyKey, IdempotencyStore, KeyReused
from .inboxes import InboxMessage, InboxStats, InboxStore
from .interface import Store
from .server_secrets import SecretStore
from .wakeups import InboxWaiter, InboxWakeups, InProcessWakeups

__all__ = [
    "DEFAULT_CHANNEL",
    "Account",
    "AccountStore",
    "AlreadyExists",
    "ApprovalState",
    "BlobStore",
    "BotApproval",
    "BotKey",
    "BotKeyStore",
    "Clock",
    "CofferShard",
    "CofferStore",
    "DirectoryStore",
    "DiskFull",
    "EndpointStore",
    "GroupStore",
    "IdempotencyKey",
    "IdempotencyStore",
    "InProcessWakeups",
    "Inbox",
    "InboxMessage",
    "InboxStats",
    "InboxStore",
    "InboxWaiter",
    "InboxWakeups",
    "KeyPackage",
    "KeyReused",
    "LimitExceeded",
    "LoginState",
    "NotFound",
    "OutcomeUnknown",
    "SchemaTooNew",
    "SecretStore",
    "Session",
    "SessionStore",
    "Store",
    "StoreClosed",
    "StoreError",
    "StoreHealth",
    "StoreLimits",
    "StoreMetrics",
    "StoreUnavailable",
    "fetch_wait",
    "open_store",
    "sqlite_path_from_url",
]

_SQLITE_PREFIX = "sqlite:///"


def sqlite_path_from_url(url_or_path: str | os.PathLike[str]) -> str | None:
    """The file path an SQLite location names, or None if it names another backend.

    `sqlite:///relative.db` and `sqlite:////absolute.db` follow the SQLAlchemy convention; anything without a
    scheme is a plain path.
    """
    location = os.fspath(url_or_path)
    if location.startswith(_SQLITE_PREFIX):
        path = location[len(_SQLITE_PREFIX) :]
    elif "://" in location:
        return None
    else:
        path = location
    if not path or path == ":memory:" or path.startswith("file:"):
        raise ValueError(
            "the store needs a database file (in-memory SQLite cannot be shared by the writer and reader threads)"
        )
    return path


async def open_store(
    url_or_path: str | os.PathLike[str],
    limits: StoreLimits | None = None,
    *,
    clock: Clock = time.time,
) -> Store:
    """Open (creating and migrating as needed) the store at a path, `sqlite:///path` or `postgresql://...`.

    The returned store belongs to the running event loop.
    """
    location = os.fspath(url_or_path)
    if location.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        # Pool sizes and group commit are URL options: ?pool_min_size=2&pool_max_size=10&group_commit=on
        return await PostgresStore.open(location, limits, clock=clock)
    path = sqlite_path_from_url(location)
    if path is None:
        scheme = location.split("://", 1)[0]
        raise ValueError(f"unsupported store URL scheme {scheme!r} (expected a path, sqlite:/// or postgresql://)")
    from .sqlite import SqliteStore

    return await SqliteStore.open(path, limits, clock=clock)
