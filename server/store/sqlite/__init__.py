"""The SQLite backend: one class per concern over one engine (`engine.SqliteEngine`), joined in `SqliteStore`."""

from __future__ import annotations

from .accounts import SqliteAccounts, SqliteSessions
from .blobs import SqliteBlobs
from .bot_keys import SqliteBotKeys
from .coffer import SqliteCoffer
from .directories import SqliteDirectories
from .endpoints import SqliteEndpoints
from .groups import SqliteGroups
from .idempotency import SqliteIdempotency
from .inboxes import SqliteInboxes
from .server_secrets import SqliteSecrets


class SqliteStore(
    SqliteAccounts,
    SqliteSessions,
    SqliteDirectories,
    SqliteInboxes,
    SqliteSecrets,
    SqliteGroups,
    SqliteIdempotency,
    SqliteBlobs,
    SqliteEndpoints,
    SqliteCoffer,
    SqliteBotKeys,
):
    """`Store` on one SQLite file (WAL, synchronous=FULL, group commit). Use `SqliteStore.open`."""


__all__ = ["SqliteStore"]
