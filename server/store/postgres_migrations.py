"""Versioned PostgreSQL schema migrations, the same scheme as SQLite's (`migrations.py`).

One `schema_version` table, migrations applied in order in one transaction, never edited once released, and a
database whose version is newer than the last one listed here is refused (`SchemaTooNew`). Nodes sharing one
database may start together: a transaction-level advisory lock makes them migrate one after the other.
"""

from __future__ import annotations

import time
from typing import Any

from .migrations import Migration, check_sequence, pending

# Arbitrary but fixed: the advisory lock every node takes while migrating ("qpc" "mig" in ASCII).
MIGRATION_LOCK = 0x717063_6D6967

POSTGRES_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial",
        (
            # Constraint names are spelled out: AlreadyExists is derived from them.
            """CREATE TABLE accounts (
                username TEXT NOT NULL CONSTRAINT accounts_username_key PRIMARY KEY,
                password_file BYTEA NOT NULL,
                identity_key BYTEA NOT NULL CONSTRAINT accounts_identity_key_key UNIQUE,
                created_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE sessions (
                token_hash BYTEA PRIMARY KEY,
                identity_key BYTEA NOT NULL,
                device_id BYTEA NOT NULL,
                issued_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL,
                revoked BOOLEAN NOT NULL DEFAULT false
            )""",
            "CREATE INDEX sessions_by_identity ON sessions (identity_key)",
            "CREATE INDEX sessions_by_expiry ON sessions (expires_at)",
            """CREATE TABLE login_states (
                state_id BYTEA PRIMARY KEY,
                username TEXT NOT NULL,
                state BYTEA NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL
            )""",
            # id orders packages oldest first; identity values are never handed out twice.
            """CREATE TABLE key_packages (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                identity_key BYTEA NOT NULL,
                fingerprint BYTEA NOT NULL CONSTRAINT key_packages_fingerprint_key UNIQUE,
                package BYTEA NOT NULL,
                last_resort BOOLEAN NOT NULL,
                not_after DOUBLE PRECISION
            )""",
            "CREATE INDEX key_packages_by_identity ON key_packages (identity_key, last_resort, id)",
            """CREATE TABLE hybrid_keys (
                identity_key BYTEA PRIMARY KEY,
                public_key BYTEA NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE endpoints (
                identity_key BYTEA PRIMARY KEY,
                node_addr BYTEA NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL
            )""",
            # The pair is stored ordered (member_lo <= member_hi) so that UNIQUE covers the unordered pair.
            """CREATE TABLE channels (
                channel_id BYTEA PRIMARY KEY,
                member_lo BYTEA NOT NULL,
                member_hi BYTEA NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                CONSTRAINT channels_pair_key UNIQUE (member_lo, member_hi)
            )""",
            # One row per inbox ever used: last_seq is the never-reused counter, depth and bytes make limit
            # checks cheap. The row is also the inbox's lock: every writer locks it before touching its messages.
            # It is updated on every enqueue without changing an indexed column, so leave room for HOT updates.
            """CREATE TABLE inboxes (
                recipient BYTEA NOT NULL,
                channel_id BYTEA NOT NULL,
                last_seq BIGINT NOT NULL,
                depth BIGINT NOT NULL,
                bytes BIGINT NOT NULL,
                PRIMARY KEY (recipient, channel_id)
            ) WITH (fillfactor = 70)""",
            """CREATE TABLE messages (
                recipient BYTEA NOT NULL,
                channel_id BYTEA NOT NULL,
                seq BIGINT NOT NULL,
                size INTEGER NOT NULL,
                expires_at DOUBLE PRECISION,
                payload BYTEA NOT NULL,
                PRIMARY KEY (recipient, channel_id, seq)
            )""",
            # Payloads are ciphertext: trying to compress them is wasted work.
            "ALTER TABLE messages ALTER COLUMN payload SET STORAGE EXTERNAL",
            "CREATE INDEX messages_by_expiry ON messages (expires_at) WHERE expires_at IS NOT NULL",
        ),
    ),
    Migration(
        2,
        "server secrets shared by every node of the database",
        (
            """CREATE TABLE server_secrets (
                name TEXT PRIMARY KEY,
                value BYTEA NOT NULL,
                created_at DOUBLE PRECISION NOT NULL
            )""",
        ),
    ),
    Migration(
        3,
        "groups: the commit sequencer's epochs, member sets and accepted submissions",
        (
            # members: the member set's identity keys (32 bytes each), sorted and concatenated. The row is also
            # the group's lock: a submission's conditional update holds it until its transaction ends.
            """CREATE TABLE mls_groups (
                group_id BYTEA PRIMARY KEY,
                epoch BIGINT NOT NULL,
                members BYTEA NOT NULL,
                creator BYTEA NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL
            )""",
            "CREATE INDEX mls_groups_by_creator ON mls_groups (creator)",
            # seqs: the deliveries' seqs, 8 bytes each, big-endian, in call order.
            """CREATE TABLE mls_group_log (
                group_id BYTEA NOT NULL,
                digest BYTEA NOT NULL,
                epoch BIGINT NOT NULL,
                is_commit BOOLEAN NOT NULL,
                sender BYTEA NOT NULL,
                seqs BYTEA NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (group_id, digest)
            )""",
            # One commit per (group, epoch), across every node of the database.
            "CREATE UNIQUE INDEX mls_group_log_one_commit ON mls_group_log (group_id, epoch) WHERE is_commit",
            "CREATE INDEX mls_group_log_by_epoch ON mls_group_log (group_id, epoch)",
        ),
    ),
    Migration(
        4,
        "idempotency keys: an enqueue retried with the same key gets its first seqs",
        (
            # scope: the sender's identity key or a connection id; seqs: 8 bytes each, big-endian, in call order.
            """CREATE TABLE idempotency_keys (
                scope BYTEA NOT NULL,
                key BYTEA NOT NULL,
                digest BYTEA NOT NULL,
                seqs BYTEA NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (scope, key)
            )""",
            "CREATE INDEX idempotency_keys_by_expiry ON idempotency_keys (expires_at)",
        ),
    ),
    Migration(
        5,
        "the sender of messages in default inboxes, for the per-sender share",
        (
            "ALTER TABLE messages ADD COLUMN sender BYTEA",
            "CREATE INDEX messages_by_sender ON messages (recipient, channel_id, sender) WHERE sender IS NOT NULL",
        ),
    ),
    Migration(
        6,
        "blobs: encrypted attachments with an expiry, bounded per owner",
        (
            """CREATE TABLE blobs (
                blob_id BYTEA PRIMARY KEY,
                owner BYTEA NOT NULL,
                data BYTEA NOT NULL,
                size BIGINT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL
            )""",
            # The bytes are ciphertext: compressing them only costs CPU.
            "ALTER TABLE blobs ALTER COLUMN data SET STORAGE EXTERNAL",
            "CREATE INDEX blobs_by_owner ON blobs (owner, expires_at)",
            "CREATE INDEX blobs_by_expiry ON blobs (expires_at)",
        ),
    ),
    Migration(
        7,
        "idempotency keys: at most max_idempotency_keys_per_sender per sender, oldest forgotten first",
        (
            """CREATE TABLE idempotency_scopes (
                scope BYTEA PRIMARY KEY,
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
            "ALTER TABLE endpoints ADD COLUMN expires_at DOUBLE PRECISION NOT NULL DEFAULT 0",
            "CREATE INDEX endpoints_by_expiry ON endpoints (expires_at)",
        ),
    ),
    Migration(
        9,
        "coffer shards: each bot's operator-provisioned secrets, sealed under the root key",
        (
            """CREATE TABLE coffer_shards (
                identity_key BYTEA PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                secret_count INTEGER NOT NULL,
                sealed BYTEA NOT NULL,
                loaded_at DOUBLE PRECISION NOT NULL
            )""",
        ),
    ),
    Migration(
        10,
        "bot keys: key login by nonce challenge, approved by the owner",
        (
            """CREATE TABLE bot_keys (
                identity_key BYTEA PRIMARY KEY,
                owner BYTEA NOT NULL,
                name TEXT NOT NULL,
                approved_at DOUBLE PRECISION NOT NULL,
                revoked BOOLEAN NOT NULL,
                next_nonce BIGINT NOT NULL
            )""",
            "CREATE INDEX bot_keys_by_owner ON bot_keys (owner, approved_at)",
            """CREATE TABLE bot_approvals (
                request_id BYTEA PRIMARY KEY,
                identity_key BYTEA NOT NULL,
                owner BYTEA NOT NULL,
                name TEXT NOT NULL,
                state TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL,
                decided_at DOUBLE PRECISION
            )""",
            # One pending request per key: concurrent challenges of a new key (on any node) share it.
            "CREATE UNIQUE INDEX bot_approvals_one_pending ON bot_approvals (identity_key) WHERE state = 'pending'",
            "CREATE INDEX bot_approvals_by_owner ON bot_approvals (owner, state, decided_at)",
            """CREATE TABLE bot_challenges (
                identity_key BYTEA NOT NULL,
                nonce BIGINT NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (identity_key, nonce)
            )""",
            "CREATE INDEX bot_challenges_by_expiry ON bot_challenges (expires_at)",
        ),
    ),
    Migration(
        11,
        "fetch and ack as one statement each: the inbox's lock, the removal and its commit mode in one round trip",
        (
            # An inbox's first messages in seq order, at most `n` of them, while the payload bytes before each
            # stay under `max_bytes` (so at least one): a fetched response must stay readable by the client. SQL
            # and STABLE, so the planner inlines it into the statement that calls it (peek, qpc_fetch).
            """CREATE FUNCTION qpc_first_seqs(r BYTEA, c BYTEA, now DOUBLE PRECISION, n BIGINT, max_bytes BIGINT)
            RETURNS SETOF BIGINT LANGUAGE sql STABLE AS $$
                SELECT seq FROM (
                    SELECT seq, SUM(size) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) - size AS before
                    FROM messages WHERE recipient = r AND channel_id = c AND (expires_at IS NULL OR expires_at > now)
                    ORDER BY seq LIMIT n
                ) AS first WHERE before < max_bytes
            $$""",
            # Removals that may come undone, so committed without waiting for the WAL flush (engine.transaction
            # says why that is safe). Each locks the inbox's counter row first, as every writer does, and stops
            # there if the inbox is empty; PL/pgSQL takes a new snapshot for each statement, so the removal sees
            # every commit made before it got the lock (one statement alone would not: a fetch that waited for
            # another node's fetch would find only the rows that one already took, and answer nothing). A fetch
            # of an inbox found empty is a read (no lock, nothing to commit): as cheap as a look at its depth.
            """CREATE FUNCTION qpc_fetch(r BYTEA, c BYTEA, now DOUBLE PRECISION, n BIGINT, max_bytes BIGINT)
            RETURNS TABLE (fetched_seq BIGINT, fetched_payload BYTEA) LANGUAGE plpgsql VOLATILE AS $$
            DECLARE
                held BIGINT;
            BEGIN
                IF NOT EXISTS (SELECT FROM inboxes WHERE recipient = r AND channel_id = c AND depth > 0) THEN
                    RETURN;
                END IF;
                PERFORM set_config('synchronous_commit', 'off', true);
                SELECT depth INTO held FROM inboxes WHERE recipient = r AND channel_id = c FOR UPDATE;
                IF held = 0 THEN
                    RETURN;
                END IF;
                RETURN QUERY WITH gone AS (
                    DELETE FROM messages
                    WHERE recipient = r AND channel_id = c
                        AND seq IN (SELECT s FROM qpc_first_seqs(r, c, now, n, max_bytes) AS s)
                    RETURNING seq, payload, size
                ), shrink AS (
                    UPDATE inboxes SET depth = depth - (SELECT count(*) FROM gone),
                        bytes = bytes - (SELECT coalesce(sum(size), 0) FROM gone)
                    WHERE recipient = r AND channel_id = c
                )
                SELECT seq, payload FROM gone ORDER BY seq;
            END
            $$""",
            """CREATE FUNCTION qpc_ack(r BYTEA, c BYTEA, up_to BIGINT)
            RETURNS BIGINT LANGUAGE plpgsql VOLATILE AS $$
            DECLARE
                held BIGINT;
                removed BIGINT;
            BEGIN
                PERFORM set_config('synchronous_commit', 'off', true);
                SELECT depth INTO held FROM inboxes WHERE recipient = r AND channel_id = c FOR UPDATE;
                IF coalesce(held, 0) = 0 THEN
                    RETURN 0;
                END IF;
                WITH gone AS (
                    DELETE FROM messages WHERE recipient = r AND channel_id = c AND seq <= up_to RETURNING size
                ), shrink AS (
                    UPDATE inboxes SET depth = depth - (SELECT count(*) FROM gone),
                        bytes = bytes - (SELECT coalesce(sum(size), 0) FROM gone)
                    WHERE recipient = r AND channel_id = c
                )
                SELECT count(*) INTO removed FROM gone;
                RETURN removed;
            END
            $$""",
        ),
    ),
    Migration(
        12,
        "enqueue as one statement: limits, shares and the other nodes' notifications in one round trip",
        (
            # Enqueues of one or many operations (a group-commit batch) in one call: locks every inbox involved (in
            # sorted order: rows are inserted in the SELECT's order), moves each inbox's counter by the k messages
            # it gets, inserts the messages with seqs last_seq - k + 1 .. last_seq, checks each sender's share of a
            # default inbox deep enough for it to matter (a new statement, so a new snapshot: it counts what other
            # nodes committed before our locks were granted, and our own rows), and notifies the other nodes
            # (delivered only once committed). Whatever does not fit raises QP001, which undoes the whole call; the
            # caller then looks closer, operation by operation.
            #   in_r, in_c, in_k, in_b: per inbox (recipient, channel, k, bytes);
            #   m_r, m_c, m_n, m_e, m_p, m_s: per message (recipient, channel, rank n within its inbox in this
            #   call, expires_at, payload index, its sender where the per-sender share applies, else NULL).
            """CREATE FUNCTION qpc_enqueue(
                in_r BYTEA[], in_c BYTEA[], in_k BIGINT[], in_b BIGINT[], max_depth BIGINT, max_bytes BIGINT,
                m_r BYTEA[], m_c BYTEA[], m_n BIGINT[], m_e DOUBLE PRECISION[], m_p INTEGER[], payloads BYTEA[],
                m_s BYTEA[], max_share BIGINT, default_channel BYTEA, now DOUBLE PRECISION,
                notify_channel TEXT, notify_payloads TEXT[]
            ) RETURNS TABLE (o_recipient BYTEA, o_channel BYTEA, o_last_seq BIGINT)
            LANGUAGE plpgsql VOLATILE AS $$
            DECLARE
                a_r BYTEA[];
                a_c BYTEA[];
                a_l BIGINT[];
                a_d BIGINT[];
            BEGIN
                WITH input AS (
                    SELECT r, c, k, b FROM unnest(in_r, in_c, in_k, in_b) AS t(r, c, k, b)
                ), up AS (
                    INSERT INTO inboxes AS i (recipient, channel_id, last_seq, depth, bytes)
                    SELECT r, c, k, k, b FROM input ORDER BY r, c
                    ON CONFLICT (recipient, channel_id) DO UPDATE
                        SET last_seq = i.last_seq + excluded.last_seq,
                            depth = i.depth + excluded.depth,
                            bytes = i.bytes + excluded.bytes
                        WHERE i.depth + excluded.depth <= max_depth AND i.bytes + excluded.bytes <= max_bytes
                    RETURNING i.recipient, i.channel_id, i.last_seq, i.depth
                ), ins AS (
                    INSERT INTO messages (recipient, channel_id, seq, size, expires_at, payload, sender)
                    SELECT m.r, m.c, up.last_seq - input.k + m.n, length(payloads[m.p]), m.e, payloads[m.p], m.s
                    FROM unnest(m_r, m_c, m_n, m_e, m_p, m_s) AS m(r, c, n, e, p, s)
                    JOIN input ON input.r = m.r AND input.c = m.c
                    JOIN up ON up.recipient = m.r AND up.channel_id = m.c
                )
                SELECT array_agg(recipient), array_agg(channel_id), array_agg(last_seq), array_agg(depth)
                INTO a_r, a_c, a_l, a_d FROM up;
                IF coalesce(cardinality(a_r), 0) <> cardinality(in_r) THEN
                    RAISE EXCEPTION 'an inbox is full' USING ERRCODE = 'QP001';
                END IF;
                IF EXISTS (
                    SELECT FROM (SELECT DISTINCT r, s FROM unnest(m_r, m_s) AS t(r, s) WHERE s IS NOT NULL) AS k
                    JOIN unnest(a_r, a_c, a_d) AS u(r, c, d) ON u.r = k.r AND u.c = default_channel
                    WHERE u.d > max_share AND (
                        SELECT count(*) FROM messages
                        WHERE recipient = k.r AND channel_id = default_channel AND sender = k.s
                            AND (expires_at IS NULL OR expires_at > now)
                    ) > max_share
                ) THEN
                    RAISE EXCEPTION 'a sender''s share is full' USING ERRCODE = 'QP001';
                END IF;
                PERFORM pg_notify(notify_channel, p) FROM unnest(notify_payloads) AS p;
                RETURN QUERY SELECT * FROM unnest(a_r, a_c, a_l);
            END
            $$""",
        ),
    ),
)

LATEST_VERSION = POSTGRES_MIGRATIONS[-1].version

check_sequence(POSTGRES_MIGRATIONS)


async def current_version(conn: Any) -> int:
    exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))


async def migrate(conn: Any, migrations: tuple[Migration, ...] = POSTGRES_MIGRATIONS) -> int:
    """Bring the database to the latest version; returns it. `conn` is an asyncpg connection outside a transaction."""
    async with conn.transaction():
        # Held until commit: a second node opening the same new database waits here, then finds it migrated.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
        )
        for migration in pending(migrations, await current_version(conn)):
            for statement in migration.statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_version (version, name, applied_at) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                time.time(),
            )
    return migrations[-1].version
