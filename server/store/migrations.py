"""Versioned SQLite schema migrations, applied in order when a store opens.

The versioning rules (`Migration`, `check_sequence`, `pending`) are shared with the PostgreSQL backend
(`postgres_migrations`), which keeps its own list of statements under the same kind of `schema_version` table.

Each migration is a list of statements plus a row in `schema_version`, applied in one transaction. Never edit
a released migration: append a new one. A database whose version is newer than the last one listed here is
refused (`SchemaTooNew`) rather than touched.
"""

from __future__ import annotations

import sqlite3

from quicnprotochat.common.migrations import Migration, check_sequence, migrate_sqlite
from quicnprotochat.common.migrations import pending as common_pending

from .base import SchemaTooNew

__all__ = ["SQLITE_MIGRATIONS", "Migration", "check_sequence", "migrate", "pending"]


SQLITE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial",
        (
            """CREATE TABLE accounts (
                username TEXT PRIMARY KEY,
                password_file BLOB NOT NULL,
                identity_key BLOB NOT NULL UNIQUE,
                created_at REAL NOT NULL
            )""",
            """CREATE TABLE sessions (
                token_hash BLOB PRIMARY KEY,
                identity_key BLOB NOT NULL,
                device_id BLOB NOT NULL,
                issued_at REAL NOT NULL,
                expires_at REAL NOT NULL,
                revoked INTEGER NOT NULL DEFAULT 0
            )""",
            "CREATE INDEX sessions_by_identity ON sessions (identity_key)",
            "CREATE INDEX sessions_by_expiry ON sessions (expires_at)",
            """CREATE TABLE login_states (
                state_id BLOB PRIMARY KEY,
                username TEXT NOT NULL,
                state BLOB NOT NULL,
                expires_at REAL NOT NULL
            )""",
            # id orders packages oldest first; AUTOINCREMENT keeps ids of taken packages from coming back.
            """CREATE TABLE key_packages (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                identity_key BLOB NOT NULL,
                fingerprint BLOB NOT NULL UNIQUE,
                package BLOB NOT NULL,
                last_resort INTEGER NOT NULL,
                not_after REAL
            )""",
            "CREATE INDEX key_packages_by_identity ON key_packages (identity_key, last_resort, id)",
            """CREATE TABLE hybrid_keys (
                identity_key BLOB PRIMARY KEY,
                public_key BLOB NOT NULL,
                updated_at REAL NOT NULL
            )""",
            """CREATE TABLE endpoints (
                identity_key BLOB PRIMARY KEY,
                node_addr BLOB NOT NULL,
                updated_at REAL NOT NULL
            )""",
            # The pair is stored ordered (member_lo <= member_hi) so that UNIQUE covers the unordered pair.
            """CREATE TABLE channels (
                channel_id BLOB PRIMARY KEY,
                member_lo BLOB NOT NULL,
                member_hi BLOB NOT NULL,
                created_at REAL NOT NULL,
                UNIQUE (member_lo, member_hi)
            )""",
            # One row per inbox ever used: last_seq is the never-reused counter; depth and bytes are kept
            # here so that limit checks do not have to count or sum the queue on every enqueue.
            """CREATE TABLE inboxes (
                recipient BLOB NOT NULL,
                channel_id BLOB NOT NULL,
                last_seq INTEGER NOT NULL,
                depth INTEGER NOT NULL,
                bytes INTEGER NOT NULL,
                PRIMARY KEY (recipient, channel_id)
            ) WITHOUT ROWID""",
            """CREATE TABLE messages (
                id INTEGER PRIMARY KEY,
                recipient BLOB NOT NULL,
                channel_id BLOB NOT NULL,
                seq INTEGER NOT NULL,
                size INTEGER NOT NULL,
                expires_at REAL,
                payload BLOB NOT NULL,
                UNIQUE (recipient, channel_id, seq)
            )""",
            "CREATE INDEX messages_by_expiry ON messages (expires_at) WHERE expires_at IS NOT NULL",
        ),
    ),
    Migration(
        2,
        "server secrets shared by every node of the database",
        (
            """CREATE TABLE server_secrets (
                name TEXT PRIMARY KEY,
                value BLOB NOT NULL,
                created_at REAL NOT NULL
            )""",
        ),
    ),
    Migration(
        3,
        "groups: the commit sequencer's epochs, member sets and accepted submissions",
        (
            # members: the member set's identity keys (32 bytes each), sorted and concatenated.
            """CREATE TABLE mls_groups (
                group_id BLOB PRIMARY KEY,
                epoch INTEGER NOT NULL,
                members BLOB NOT NULL,
                creator BLOB NOT NULL,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL
            )""",
            "CREATE INDEX mls_groups_by_creator ON mls_groups (creator)",
            # seqs: the deliveries' seqs, 8 bytes each, big-endian, in call order.
            """CREATE TABLE mls_group_log (
                group_id BLOB NOT NULL,
                digest BLOB NOT NULL,
                epoch INTEGER NOT NULL,
                is_commit INTEGER NOT NULL,
                sender BLOB NOT NULL,
                seqs BLOB NOT NULL,
                created_at REAL NOT NULL,
                PRIMARY KEY (group_id, digest)
            )""",
            # One commit per (group, epoch), whatever the code above it does.
            "CREATE UNIQUE INDEX mls_group_log_one_commit ON mls_group_log (group_id, epoch) WHERE is_commit = 1",
            "CREATE INDEX mls_group_log_by_epoch ON mls_group_log (group_id, epoch)",
        ),
    ),
    Migration(
        4,
        "idempotency keys: an enqueue retried with the same key gets its first seqs",
        (
            # scope: the sender's identity key or a connection id; seqs: 8 bytes each, big-endian, in call order.
            """CREATE TABLE idempotency_keys (
                scope BLOB NOT NULL,
                key BLOB NOT NULL,
                digest BLOB NOT NULL,
                seqs BLOB NOT NULL,
                expires_at REAL NOT NULL,
                PRIMARY KEY (scope, key)
            )""",
            "CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at)",
        ),
    ),
    Migration(
        5,
        "the sender of messages in default inboxes, for the per-sender share",
        (
            "ALTER TABLE messages ADD COLUMN sender BLOB",
            "CREATE INDEX messages_by_sender ON messages (recipient, channel_id, sender) WHERE sender IS NOT NULL",
        ),
    ),
    Migration(
        6,
        "blobs: encrypted attachments with an expiry, bounded per owner",
        (
            """CREATE TABLE blobs (
                blob_id BLOB PRIMARY KEY,
                owner BLOB NOT NULL,
                data BLOB NOT NULL,
                size INTEGER NOT NULL,
                created_at REAL NOT NULL,
                expires_at REAL NOT NULL
            )""",
            "CREATE INDEX blobs_by_owner ON blobs (owner, expires_at)",
            "CREATE INDEX blobs_by_expiry ON blobs (expires_at)",
        ),
    ),
    Migration(
        7,
        "idempotency keys: at most max_idempotency_keys_per_sender per sender, oldest forgotten first",
        (
            """CREATE TABLE idempotency_scopes (
                scope BLOB PRIMARY KEY,
                keys INTEGER NOT NULL
            )""",
            "CREATE INDEX idempotency_keys_by_scope_age ON idempotency_keys (scope, expires_at)",
            "INSERT INTO idempotency_scopes (scope, keys) SELECT scope, count(*) FROM idempotency_keys GROUP BY scope",
        ),
    ),
    Migration(
        8,
        "endpoint records: signed, kept until their expiry",
        (
            # Rows from before were unsigned and never expire: nobody could check them, so none is kept.
            "DELETE FROM endpoints",
            "ALTER TABLE endpoints ADD COLUMN expires_at REAL NOT NULL DEFAULT 0",
            "CREATE INDEX endpoints_by_expiry ON endpoints (expires_at)",
        ),
    ),
    Migration(
        9,
        "coffer shards: each bot's operator-provisioned secrets, sealed under the root key",
        (
            """CREATE TABLE coffer_shards (
                identity_key BLOB PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                secret_count INTEGER NOT NULL,
                sealed BLOB NOT NULL,
                loaded_at REAL NOT NULL
            )""",
        ),
    ),
    Migration(
        10,
        "bot keys: key login by nonce challenge, approved by the owner",
        (
            """CREATE TABLE bot_keys (
                identity_key BLOB PRIMARY KEY,
                owner BLOB NOT NULL,
                name TEXT NOT NULL,
                approved_at REAL NOT NULL,
                revoked INTEGER NOT NULL,
                next_nonce INTEGER NOT NULL
            )""",
            "CREATE INDEX bot_keys_by_owner ON bot_keys (owner, approved_at)",
            """CREATE TABLE bot_approvals (
                request_id BLOB PRIMARY KEY,
                identity_key BLOB NOT NULL,
                owner BLOB NOT NULL,
                name TEXT NOT NULL,
                state TEXT NOT NULL,
                created_at REAL NOT NULL,
                expires_at REAL NOT NULL,
                decided_at REAL
            )""",
            # One pending request per key: concurrent challenges of a new key share it.
            "CREATE UNIQUE INDEX bot_approvals_one_pending ON bot_approvals (identity_key) WHERE state = 'pending'",
            "CREATE INDEX bot_approvals_by_owner ON bot_approvals (owner, state, decided_at)",
            """CREATE TABLE bot_challenges (
                identity_key BLOB NOT NULL,
                nonce INTEGER NOT NULL,
                expires_at REAL NOT NULL,
                PRIMARY KEY (identity_key, nonce)
            )""",
            "CREATE INDEX bot_challenges_by_expiry ON bot_challenges (expires_at)",
        ),
    ),
    Migration(
        11,
        "the per-sender share counted from its index alone: messages_by_sender holds expires_at",
        (
            "DROP INDEX messages_by_sender",
            "CREATE INDEX messages_by_sender ON messages (recipient, channel_id, sender, expires_at)"
            " WHERE sender IS NOT NULL",
        ),
    ),
)

LATEST_VERSION = SQLITE_MIGRATIONS[-1].version


def pending(migrations: tuple[Migration, ...], on_disk: int) -> tuple[Migration, ...]:
    """The migrations still to apply to a database at version `on_disk`; SchemaTooNew if it is ahead of us."""
    return common_pending(migrations, on_disk, SchemaTooNew)


check_sequence(SQLITE_MIGRATIONS)


def migrate(conn: sqlite3.Connection, migrations: tuple[Migration, ...] = SQLITE_MIGRATIONS) -> int:
    """Bring the database to the latest version; returns it. `conn` must be in autocommit mode."""
    return migrate_sqlite(conn, migrations, SchemaTooNew)
