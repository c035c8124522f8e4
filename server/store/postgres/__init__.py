"""The PostgreSQL backend: one class per concern over one engine (`engine.PostgresEngine`), joined in
`PostgresStore`."""

from __future__ import annotations

from .accounts import PostgresAccounts, PostgresSessions
from .blobs import PostgresBlobs
from .bot_keys import PostgresBotKeys
from .coffer import PostgresCoffer
from .directories import PostgresDirectories
from .endpoints import PostgresEndpoints
from .engine import PostgresOptions, parse_url, redacted
from .groups import PostgresGroups
from .idempotency import PostgresIdempotency
from .inboxes import PostgresInboxes
from .server_secrets import PostgresSecrets


class PostgresStore(
    PostgresAccounts,
    PostgresSessions,
    PostgresDirectories,
    PostgresInboxes,
    PostgresSecrets,
    PostgresGroups,
    PostgresIdempotency,
    PostgresBlobs,
    PostgresEndpoints,
    PostgresCoffer,
    PostgresBotKeys,
):
    """`Store` on a PostgreSQL database that several nodes may share. Use `PostgresStore.open`."""


__all__ = ["PostgresOptions", "PostgresStore", "parse_url", "redacted"]
