"""PostgreSQL implementation of `Store`, for several nodes sharing one database.

Enqueues go through the group-commit writer (`postgres_writer`); other writes run as their own transactions on a
connection pool (asyncpg); reads use the pool without a transaction. Wake-ups cross nodes by LISTEN/NOTIFY
(`postgres_wakeups`). Concurrency is settled by the database, never by this process alone, since other nodes
write too: counter rows updated with RETURNING, ON CONFLICT for get-or-create, SKIP LOCKED for single-use rows,
an advisory lock for the per-identity KeyPackage cap.

URL options (removed before the URL reaches asyncpg): `pool_min_size` (default 2), `pool_max_size` (default 10),
`group_commit` (default on; off runs each enqueue in its own transaction, for comparison).

The store belongs to the event loop that opened it.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

from .base import (
    Account,
    AlreadyExists,
    Clock,
    Inbox,
    InboxMessage,
    InboxStats,
    KeyPackage,
    LimitExceeded,
    LoginState,
    Session,
    StoreClosed,
    StoreError,
    StoreLimits,
    StoreMetrics,
)
from .postgres_migrations import migrate
from .postgres_wakeups import CHANNEL, PostgresWakeups
from .postgres_writer import Again, GroupCommitWriter
from .wakeups import InboxWakeups

T = TypeVar("T")

# BIGINT is signed 64-bit; a client's UInt64 seqUpTo above this means "everything".
_MAX_SEQ = (1 << 63) - 1
# Inboxes whose expired messages one sweep transaction deletes.
_SWEEP_INBOXES = 500
_RETRIES = 5
# The advisory-lock class of the per-identity KeyPackage cap (two-key form, so it cannot meet MIGRATION_LOCK).
_KEY_PACKAGE_LOCK_CLASS = 0x71706B

_UNIQUE_FIELDS = {
    "accounts_username_key": "username",
    "accounts_identity_key_key": "identity_key",
    "key_packages_fingerprint_key": "fingerprint",
    "sessions_pkey": "token_hash",
    "login_states_pkey": "state_id",
}

_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class PostgresOptions:
    pool_min_size: int = 2
    pool_max_size: int = 10
    group_commit: bool = True


_TRUE = {"1", "true", "on", "yes"}
_FALSE = {"0", "false", "off", "no"}


def parse_url(url: str) -> tuple[str, PostgresOptions]:
    """Split our options off a postgresql:// URL; the rest (host, sslmode, ...) is asyncpg's."""
    parts = urlsplit(url)
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in PostgresOptions.__dataclass_fields__:
            ours[name] = value
        else:
            theirs.append((name, value))
    defaults = PostgresOptions()
    try:
        min_size = int(ours.get("pool_min_size", defaults.pool_min_size))
        max_size = int(ours.get("pool_max_size", defaults.pool_max_size))
    except ValueError:
        raise ValueError("pool_min_size and pool_max_size must be integers") from None
    group = ours.get("group_commit", "on").lower()
    if group not in _TRUE | _FALSE:
        raise ValueError("group_commit must be on or off")
    if not 0 <= min_size <= max_size or max_size < 1:
        raise ValueError("need 0 <= pool_min_size <= pool_max_size and pool_max_size >= 1")
    dsn = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(theirs), parts.fragment))
    return dsn, PostgresOptions(min_size, max_size, group in _TRUE)


def redacted(url: str) -> str:
    """host:port/database, for messages: never the user's password."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"postgresql://{host}{port}{parts.path}"


def _rowcount(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 3" or "INSERT 0 1".
    return int(status.rsplit(" ", 1)[-1])


def _already_exists(exc: asyncpg.UniqueViolationError, default: str) -> AlreadyExists:
    return AlreadyExists(_UNIQUE_FIELDS.get(getattr(exc, "constraint_name", None) or "", default))


class PostgresStore:
    def __init__(
        self,
        url: str,
        limits: StoreLimits,
        clock: Clock,
        pool: Any,
        wakeups: PostgresWakeups,
        options: PostgresOptions,
    ) -> None:
        """Use `PostgresStore.open`."""
        self.location = redacted(url)
        self._limits = limits
        self._clock = clock
        self._pool = pool
        self._wakeups = wakeups
        self._options = options
        self._loop = asyncio.get_running_loop()
        self._writer = GroupCommitWriter(pool, CHANNEL, wakeups.payloads, wakeups.notify, enqueue_many)
        self._closed = False
        self._shutdown: asyncio.Future[None] | None = None
        self._in_flight = 0
        self._drained = asyncio.Event()
        self._drained.set()

    @classmethod
    async def open(
        cls,
        url: str,
        limits: StoreLimits | None = None,
        *,
        clock: Clock,
    ) -> PostgresStore:
        dsn, options = parse_url(url)
        where = redacted(dsn)
        settings = {"application_name": "quicnprotochat"}
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=options.pool_min_size,
                max_size=options.pool_max_size,
                server_settings=settings,
            )
        except (*_DB_ERRORS, ValueError) as exc:
            raise StoreError(f"cannot open the database at {where}: {type(exc).__name__}: {exc}") from exc
        wakeups = PostgresWakeups(
            lambda: asyncpg.connect(dsn, server_settings={**settings, "application_name": "quicnprotochat-listen"}),
            secrets.token_hex(8),
        )
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
            await wakeups.start()
        except StoreError:
            await wakeups.close()
            await pool.close()
            raise
        except _DB_ERRORS as exc:
            await wakeups.close()
            await pool.close()
            raise StoreError(f"cannot open the database at {where}: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            await wakeups.close()
            pool.terminate()
            raise
        return cls(dsn, limits or StoreLimits(), clock, pool, wakeups, options)

    # ── lifecycle ─────────────────────────────────────────────────────────────────────────────────────────────

    @property
    def limits(self) -> StoreLimits:
        return self._limits

    @property
    def wakeups(self) -> InboxWakeups:
        return self._wakeups

    @property
    def pg_wakeups(self) -> PostgresWakeups:
        """The same object as `wakeups`, with the listener's controls (tests, health reporting)."""
        return self._wakeups

    @property
    def options(self) -> PostgresOptions:
        return self._options

    @property
    def closed(self) -> bool:
        return self._closed

    def metrics(self) -> StoreMetrics:
        return self._writer.metrics()

    async def close(self) -> None:
        if self._shutdown is None:
            self._closed = True
            self._shutdown = asyncio.ensure_future(self._shut_down())
        await asyncio.shield(self._shutdown)

    async def _shut_down(self) -> None:
        await self._writer.close()
        await self._drained.wait()
        await self._wakeups.close()
        await self._pool.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed()
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError("the store is used from an event loop other than the one that opened it")

    def _enter(self) -> None:
        self._check_open()
        self._in_flight += 1
        self._drained.clear()

    def _leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._drained.set()

    async def _transact(self, fn: Callable[[Any], Awaitable[T]], *, attempts: int = _RETRIES) -> T:
        """Run `fn` in its own transaction on a pooled connection; retried on deadlock or serialization failure.

        `fn` may raise `Again` to be rerun from scratch with a fresh transaction (used by the ungrouped enqueue).
        """
        self._enter()
        try:
            attempt = 0
            while True:
                try:
                    async with self._pool.acquire() as conn, conn.transaction():
                        result = await fn(conn)
                except Again:
                    continue
                except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
                    attempt += 1
                    if attempt >= attempts:
                        raise StoreError("storage write failed (lock contention)") from exc
                    continue
                except StoreError:
                    raise
                except _DB_ERRORS as exc:
                    raise StoreError("storage write failed") from exc
                self._writer.count_commit(1)
                return result
        finally:
            self._leave()

    async def _with_conn(self, fn: Callable[[Any], Awaitable[T]], what: str = "read") -> T:
        """A read (or a single autocommit statement) on a pooled connection."""
        self._enter()
        try:
            async with self._pool.acquire() as conn:
                return await fn(conn)
        except StoreError:
            raise
        except _DB_ERRORS as exc:
            raise StoreError(f"storage {what} failed") from exc
        finally:
            self._leave()

    async def _fetchrow(self, query: str, *args: object) -> Any:
        return await self._with_conn(lambda conn: conn.fetchrow(query, *args))

    async def _fetch(self, query: str, *args: object) -> list[Any]:
        rows: list[Any] = await self._with_conn(lambda conn: conn.fetch(query, *args))
        return rows

    async def _write1(self, query: str, *args: object) -> Any:
        """One autocommit write statement returning its first row (or None)."""
        row = await self._with_conn(lambda conn: conn.fetchrow(query, *args), "write")
        self._writer.count_commit(1)
        return row

    async def _execute1(self, query: str, *args: object) -> int:
        """One autocommit write statement; returns the affected row count."""
        status: str = await self._with_conn(lambda conn: conn.execute(query, *args), "write")
        self._writer.count_commit(1)
        return _rowcount(status)

    # ── accounts ──────────────────────────────────────────────────────────────────────────────────────────────

    async def create_account(self, username: str, password_file: bytes, identity_key: bytes) -> Account:
        account = Account(username, bytes(identity_key), self._clock(), bytes(password_file))
        try:
            await self._execute1(
                "INSERT INTO accounts (username, password_file, identity_key, created_at) VALUES ($1, $2, $3, $4)",
                account.username,
                account.password_file,
                account.identity_key,
                account.created_at,
            )
        except StoreError as exc:
            if isinstance(exc.__cause__, asyncpg.UniqueViolationError):
                raise _already_exists(exc.__cause__, "accounts") from None
            raise
        return account

    async def get_account(self, username: str) -> Account | None:
        return _account(await self._fetchrow(_ACCOUNT_BY_NAME, username))

    async def get_account_by_identity(self, identity_key: bytes) -> Account | None:
        return _account(await self._fetchrow(_ACCOUNT_BY_IDENTITY, bytes(identity_key)))

    async def resolve_username(self, username: str) -> bytes | None:
        row = await self._fetchrow("SELECT identity_key FROM accounts WHERE username = $1", username)
        return None if row is None else bytes(row[0])

    async def resolve_identity(self, identity_key: bytes) -> str | None:
        row = await self._fetchrow("SELECT username FROM accounts WHERE identity_key = $1", bytes(identity_key))
        return None if row is None else str(row[0])

    # ── sessions ──────────────────────────────────────────────────────────────────────────────────────────────

    async def create_session(
        self,
        token_hash: bytes,
        identity_key: bytes,
        device_id: bytes,
        expires_at: float,
    ) -> Session:
        session = Session(bytes(identity_key), bytes(device_id), self._clock(), float(expires_at))
        try:
            await self._execute1(
                "INSERT INTO sessions (token_hash, identity_key, device_id, issued_at, expires_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                bytes(token_hash),
                session.identity_key,
                session.device_id,
                session.issued_at,
                session.expires_at,
            )
        except StoreError as exc:
            if isinstance(exc.__cause__, asyncpg.UniqueViolationError):
                raise AlreadyExists("token_hash") from None
            raise
        return session

    async def get_session(self, token_hash: bytes) -> Session | None:
        row = await self._fetchrow(
            "SELECT identity_key, device_id, issued_at, expires_at FROM sessions"
            " WHERE token_hash = $1 AND NOT revoked AND expires_at > $2",
            bytes(token_hash),
            self._clock(),
        )
        return None if row is None else Session(bytes(row[0]), bytes(row[1]), row[2], row[3])

    async def revoke_session(self, token_hash: bytes) -> bool:
        query = "UPDATE sessions SET revoked = true WHERE token_hash = $1 AND NOT revoked"
        return await self._execute1(query, bytes(token_hash)) > 0

    async def revoke_sessions(self, identity_key: bytes) -> int:
        query = "UPDATE sessions SET revoked = true WHERE identity_key = $1 AND NOT revoked"
        return await self._execute1(query, bytes(identity_key))

    async def purge_expired_sessions(self) -> int:
        return await self._execute1("DELETE FROM sessions WHERE expires_at <= $1", self._clock())

    # ── OPAQUE login states ───────────────────────────────────────────────────────────────────────────────────

    async def put_login_state(self, state_id: bytes, username: str, state: bytes, expires_at: float) -> None:
        try:
            await self._execute1(
                "INSERT INTO login_states (state_id, username, state, expires_at) VALUES ($1, $2, $3, $4)",
                bytes(state_id),
                username,
                bytes(state),
                float(expires_at),
            )
        except StoreError as exc:
            if isinstance(exc.__cause__, asyncpg.UniqueViolationError):
                raise AlreadyExists("state_id") from None
            raise

    async def take_login_state(self, state_id: bytes) -> LoginState | None:
        now = self._clock()
        # One statement: of concurrent takes (on any node) exactly one gets the row. Deleted even when expired.
        row = await self._write1(
            "DELETE FROM login_states WHERE state_id = $1 RETURNING username, state, expires_at",
            bytes(state_id),
        )
        if row is None or row[2] <= now:
            return None
        return LoginState(str(row[0]), row[2], bytes(row[1]))

    async def purge_expired_login_states(self) -> int:
        return await self._execute1("DELETE FROM login_states WHERE expires_at <= $1", self._clock())

    # ── key packages ──────────────────────────────────────────────────────────────────────────────────────────

    async def add_key_package(
        self,
        identity_key: bytes,
        package: bytes,
        fingerprint: bytes,
        *,
        last_resort: bool = False,
        not_after: float | None = None,
    ) -> None:
        now = self._clock()
        cap = self._limits.max_key_packages_per_identity
        identity = bytes(identity_key)
        lock = int.from_bytes(hashlib.sha256(identity).digest()[:4], "big", signed=True)

        async def op(conn: Any) -> None:
            # Count-then-insert is only race-free if concurrent adds for one identity (from any node) queue up.
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", _KEY_PACKAGE_LOCK_CLASS, lock)
            # Expired packages can never be handed out; dropping them here keeps them from eating the cap.
            await conn.execute(
                "DELETE FROM key_packages WHERE identity_key = $1 AND not_after IS NOT NULL AND not_after <= $2",
                identity,
                now,
            )
            count = int(await conn.fetchval("SELECT count(*) FROM key_packages WHERE identity_key = $1", identity))
            if count >= cap:
                raise LimitExceeded("max_key_packages_per_identity", cap, count + 1)
            try:
                await conn.execute(
                    "INSERT INTO key_packages (identity_key, fingerprint, package, last_resort, not_after)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    identity,
                    bytes(fingerprint),
                    bytes(package),
                    bool(last_resort),
                    not_after,
                )
            except asyncpg.UniqueViolationError:
                raise AlreadyExists("fingerprint") from None

        await self._transact(op)

    async def take_key_package(self, identity_key: bytes) -> KeyPackage | None:
        now = self._clock()
        identity = bytes(identity_key)
        # One statement: a row locked by a concurrent taker (on any node) is skipped, never handed out twice.
        row = await self._write1(
            "DELETE FROM key_packages WHERE id = ("
            " SELECT id FROM key_packages WHERE identity_key = $1 AND NOT last_resort"
            " AND (not_after IS NULL OR not_after > $2) ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
            ") RETURNING fingerprint, package, not_after",
            identity,
            now,
        )
        if row is not None:
            return KeyPackage(bytes(row[0]), False, row[2], bytes(row[1]))
        row = await self._fetchrow(
            "SELECT fingerprint, package, not_after FROM key_packages"
            " WHERE identity_key = $1 AND last_resort AND (not_after IS NULL OR not_after > $2)"
            " ORDER BY id DESC LIMIT 1",
            identity,
            now,
        )
        return None if row is None else KeyPackage(bytes(row[0]), True, row[2], bytes(row[1]))

    async def count_key_packages(self, identity_key: bytes) -> int:
        row = await self._fetchrow(
            "SELECT count(*) FROM key_packages WHERE identity_key = $1 AND (not_after IS NULL OR not_after > $2)",
            bytes(identity_key),
            self._clock(),
        )
        return int(row[0])

    # ── hybrid keys and endpoints ─────────────────────────────────────────────────────────────────────────────

    async def put_hybrid_key(self, identity_key: bytes, public_key: bytes) -> None:
        await self._execute1(
            "INSERT INTO hybrid_keys (identity_key, public_key, updated_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (identity_key) DO UPDATE"
            " SET public_key = excluded.public_key, updated_at = excluded.updated_at",
            bytes(identity_key),
            bytes(public_key),
            self._clock(),
        )

    async def get_hybrid_key(self, identity_key: bytes) -> bytes | None:
        return (await self.get_hybrid_keys([identity_key]))[0]

    async def get_hybrid_keys(self, identity_keys: Sequence[bytes]) -> list[bytes | None]:
        keys = [bytes(k) for k in identity_keys]
        if not keys:
            self._check_open()
            return []
        rows = await self._fetch(
            "SELECT identity_key, public_key FROM hybrid_keys WHERE identity_key = ANY($1::bytea[])",
            list(dict.fromkeys(keys)),
        )
        found = {bytes(r[0]): bytes(r[1]) for r in rows}
        return [found.get(k) for k in keys]

    async def get_or_create_secret(self, name: str, candidate: bytes) -> bytes:
        await self._execute1(
            "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            name,
            bytes(candidate),
            self._clock(),
        )
        row = await self._fetchrow("SELECT value FROM server_secrets WHERE name = $1", name)
        return bytes(row[0])

    async def put_endpoint(self, identity_key: bytes, node_addr: bytes) -> None:
        await self._execute1(
            "INSERT INTO endpoints (identity_key, node_addr, updated_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (identity_key) DO UPDATE"
            " SET node_addr = excluded.node_addr, updated_at = excluded.updated_at",
            bytes(identity_key),
            bytes(node_addr),
            self._clock(),
        )

    async def get_endpoint(self, identity_key: bytes) -> bytes | None:
        row = await self._fetchrow("SELECT node_addr FROM endpoints WHERE identity_key = $1", bytes(identity_key))
        return None if row is None else bytes(row[0])

    # ── channels ──────────────────────────────────────────────────────────────────────────────────────────────

    async def get_or_create_channel(self, a: bytes, b: bytes) -> bytes:
        lo, hi = sorted((bytes(a), bytes(b)))
        lookup = "SELECT channel_id FROM channels WHERE member_lo = $1 AND member_hi = $2"
        # Most calls are for a channel that exists: answer those with a read.
        row = await self._fetchrow(lookup, lo, hi)
        if row is not None:
            return bytes(row[0])
        # ON CONFLICT DO NOTHING waits for a concurrent inserter (on any node) and then yields nothing; the
        # re-read, a new statement, sees that committed row. Whoever inserted first, everyone gets that id.
        row = await self._write1(
            "INSERT INTO channels (channel_id, member_lo, member_hi, created_at) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (member_lo, member_hi) DO NOTHING RETURNING channel_id",
            uuid.uuid4().bytes,
            lo,
            hi,
            self._clock(),
        )
        if row is None:
            row = await self._fetchrow(lookup, lo, hi)
            if row is None:  # pragma: no cover - the conflicting row is committed and channels are never deleted
                raise StoreError("channel vanished while being created")
        return bytes(row[0])

    async def channel_members(self, channel_id: bytes) -> tuple[bytes, bytes] | None:
        row = await self._fetchrow(
            "SELECT member_lo, member_hi FROM channels WHERE channel_id = $1",
            bytes(channel_id),
        )
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    # ── inboxes ───────────────────────────────────────────────────────────────────────────────────────────────

    async def enqueue(self, recipient: bytes, channel: bytes, payload: bytes, expires_at: float | None) -> int:
        return (await self.batch_enqueue([recipient], channel, payload, expires_at))[0]

    async def batch_enqueue(
        self,
        recipients: Sequence[bytes],
        channel: bytes,
        payload: bytes,
        expires_at: float | None,
    ) -> list[int]:
        self._check_open()
        limits = self._limits
        if len(payload) > limits.max_payload_bytes:
            raise LimitExceeded("max_payload_bytes", limits.max_payload_bytes, len(payload))
        if not recipients:
            return []
        op = _EnqueueOp(
            limits, [bytes(r) for r in recipients], bytes(channel), bytes(payload), expires_at, self._clock()
        )
        inboxes = [(r, op.channel) for r in op.distinct]
        if self._options.group_commit:
            return await self._writer.submit(op.run, inboxes, op)
        return await self._enqueue_alone(op, inboxes)

    async def _enqueue_alone(self, op: _EnqueueOp, inboxes: list[Inbox]) -> list[int]:
        attempt = 0

        async def run(conn: Any) -> list[int]:
            nonlocal attempt
            try:
                seqs = await op.run(conn, attempt)
            except Again:
                attempt += 1
                raise
            await conn.execute(
                "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
                CHANNEL,
                self._wakeups.payloads(inboxes),
            )
            return seqs

        seqs = await self._transact(run)
        self._wakeups.notify(inboxes)
        return seqs

    async def fetch(self, recipient: bytes, channel: bytes, limit: int = 0) -> list[InboxMessage]:
        r, c = bytes(recipient), bytes(channel)
        count = self._fetch_limit(limit)
        now = self._clock()

        async def op(conn: Any) -> list[InboxMessage]:
            if not await _lock_inbox(conn, r, c):
                return []
            rows = await conn.fetch(_FETCH, r, c, now, count, self._limits.max_fetch_bytes)
            return [InboxMessage(row[0], bytes(row[1])) for row in rows]

        return await self._transact(op)

    async def peek(self, recipient: bytes, channel: bytes, limit: int = 0) -> list[InboxMessage]:
        rows = await self._fetch(
            _PEEK,
            bytes(recipient),
            bytes(channel),
            self._clock(),
            self._fetch_limit(limit),
            self._limits.max_fetch_bytes,
        )
        return [InboxMessage(row[0], bytes(row[1])) for row in rows]

    async def ack(self, recipient: bytes, channel: bytes, seq_up_to: int) -> int:
        self._check_open()
        if seq_up_to < 1:
            return 0
        r, c = bytes(recipient), bytes(channel)
        up_to = min(seq_up_to, _MAX_SEQ)

        async def op(conn: Any) -> int:
            if not await _lock_inbox(conn, r, c):
                return 0
            removed = await conn.fetchval(
                _ACK,
                r,
                c,
                up_to,
            )
            return int(removed)

        return await self._transact(op)

    async def inbox_stats(self, recipient: bytes, channel: bytes) -> InboxStats:
        row = await self._fetchrow(
            "SELECT depth, bytes, last_seq FROM inboxes WHERE recipient = $1 AND channel_id = $2",
            bytes(recipient),
            bytes(channel),
        )
        return InboxStats(0, 0, 0) if row is None else InboxStats(row[0], row[1], row[2])

    async def sweep_expired(self, now: float | None = None) -> int:
        cutoff = self._clock() if now is None else now

        async def op(conn: Any) -> int:
            found = await conn.fetch(
                "SELECT DISTINCT recipient, channel_id FROM messages WHERE expires_at <= $1 LIMIT $2",
                cutoff,
                _SWEEP_INBOXES,
            )
            if not found:
                return -1
            rs = [bytes(row[0]) for row in found]
            cs = [bytes(row[1]) for row in found]
            # Counter rows first, in one order, like every other writer; then their messages.
            await conn.execute(
                "SELECT 1 FROM inboxes i JOIN unnest($1::bytea[], $2::bytea[]) AS t(r, c)"
                " ON i.recipient = t.r AND i.channel_id = t.c"
                " ORDER BY i.recipient, i.channel_id FOR UPDATE OF i",
                rs,
                cs,
            )
            removed = await conn.fetchval(
                "WITH gone AS ("
                " DELETE FROM messages m USING unnest($1::bytea[], $2::bytea[]) AS t(r, c)"
                " WHERE m.recipient = t.r AND m.channel_id = t.c AND m.expires_at <= $3"
                " RETURNING m.recipient, m.channel_id, m.size"
                "), agg AS ("
                " SELECT recipient, channel_id, count(*) AS n, sum(size) AS s FROM gone GROUP BY 1, 2"
                "), shrink AS ("
                " UPDATE inboxes i SET depth = i.depth - agg.n, bytes = i.bytes - agg.s FROM agg"
                " WHERE i.recipient = agg.recipient AND i.channel_id = agg.channel_id"
                ") SELECT coalesce(sum(n), 0) FROM agg",
                rs,
                cs,
                cutoff,
            )
            return int(removed)

        total = 0
        while (removed := await self._transact(op)) >= 0:
            total += removed
        return total

    def _fetch_limit(self, limit: int) -> int:
        if limit < 0:
            raise ValueError("limit must not be negative")
        cap = self._limits.max_fetch
        return cap if limit == 0 else min(limit, cap)


# ── SQL ───────────────────────────────────────────────────────────────────────────────────────────────────────

_ACCOUNT_BY_NAME = "SELECT username, identity_key, created_at, password_file FROM accounts WHERE username = $1"
_ACCOUNT_BY_IDENTITY = "SELECT username, identity_key, created_at, password_file FROM accounts WHERE identity_key = $1"

# Each deletes messages of the inbox $1/$2 and shrinks its counters by what it deleted, in one statement; the
# caller holds the counter row's lock already.
# The first seqs of inbox $1/$2 in order, at most $4 of them, while the payload bytes before each stay under $5
# (so at least one): a response must stay readable by the client, since fetched messages are gone.
_FIRST_SEQS = """
SELECT seq FROM (
    SELECT seq, SUM(size) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) - size AS before FROM messages
    WHERE recipient = $1 AND channel_id = $2 AND (expires_at IS NULL OR expires_at > $3) ORDER BY seq LIMIT $4
) AS first WHERE before < $5
"""

# Both compose module constants only (no values), hence the S608 exemptions.
_PEEK = f"SELECT seq, payload FROM messages WHERE recipient = $1 AND channel_id = $2 AND seq IN ({_FIRST_SEQS}) ORDER BY seq"  # noqa: S608, E501

_FETCH = f"""
WITH gone AS (
    DELETE FROM messages WHERE recipient = $1 AND channel_id = $2 AND seq IN ({_FIRST_SEQS})
    RETURNING seq, payload, size
), shrink AS (
    UPDATE inboxes SET depth = depth - (SELECT count(*) FROM gone),
        bytes = bytes - (SELECT coalesce(sum(size), 0) FROM gone)
    WHERE recipient = $1 AND channel_id = $2
)
SELECT seq, payload FROM gone ORDER BY seq
"""  # noqa: S608

_ACK = """
WITH gone AS (
    DELETE FROM messages WHERE recipient = $1 AND channel_id = $2 AND seq <= $3 RETURNING size
), shrink AS (
    UPDATE inboxes SET depth = depth - (SELECT count(*) FROM gone),
        bytes = bytes - (SELECT coalesce(sum(size), 0) FROM gone)
    WHERE recipient = $1 AND channel_id = $2
)
SELECT count(*) FROM gone
"""

_DROP_EXPIRED = """
WITH gone AS (
    DELETE FROM messages WHERE recipient = $1 AND channel_id = $2 AND expires_at <= $3 RETURNING size
), shrink AS (
    UPDATE inboxes SET depth = depth - (SELECT count(*) FROM gone),
        bytes = bytes - (SELECT coalesce(sum(size), 0) FROM gone)
    WHERE recipient = $1 AND channel_id = $2
)
SELECT count(*), coalesce(sum(size), 0) FROM gone
"""

# Enqueues of one or many operations in one statement: locks every inbox involved (in sorted order: rows are
# inserted in the SELECT's order), moves each inbox's counter by the k messages it gets if its limits allow, and
# inserts the messages with seqs last_seq - k + 1 .. last_seq. An inbox whose limits do not allow it is locked
# but left unchanged and missing from the result; the caller then rolls back and looks closer.
#   $1..$4: per inbox (recipient, channel, k, bytes);  $5, $6: depth and bytes limits;
#   $7..$11: per message (recipient, channel, rank n within its inbox in this statement, expires_at, payload index);
#   $12: the distinct payloads.
_ENQUEUE = """
WITH input AS (
    SELECT r, c, k, b FROM unnest($1::bytea[], $2::bytea[], $3::bigint[], $4::bigint[]) AS t(r, c, k, b)
), up AS (
    INSERT INTO inboxes AS i (recipient, channel_id, last_seq, depth, bytes)
    SELECT r, c, k, k, b FROM input ORDER BY r, c
    ON CONFLICT (recipient, channel_id) DO UPDATE
        SET last_seq = i.last_seq + excluded.last_seq,
            depth = i.depth + excluded.depth,
            bytes = i.bytes + excluded.bytes
        WHERE i.depth + excluded.depth <= $5 AND i.bytes + excluded.bytes <= $6
    RETURNING i.recipient, i.channel_id, i.last_seq
), ins AS (
    INSERT INTO messages (recipient, channel_id, seq, size, expires_at, payload)
    SELECT m.r, m.c, up.last_seq - input.k + m.n, length(($12::bytea[])[m.p]), m.e, ($12::bytea[])[m.p]
    FROM unnest($7::bytea[], $8::bytea[], $9::bigint[], $10::float8[], $11::int[]) AS m(r, c, n, e, p)
    JOIN input ON input.r = m.r AND input.c = m.c
    JOIN up ON up.recipient = m.r AND up.channel_id = m.c
)
SELECT recipient, channel_id, last_seq FROM up
"""


async def enqueue_many(conn: Any, ops: Sequence[_EnqueueOp]) -> list[list[int]] | None:
    """Apply every operation in one statement and return their seqs; None if a limit is in the way of any of
    them (or would be even for an empty inbox): the caller must then roll back what the statement did.

    All the operations come from one store, so they share its limits.
    """
    if not ops:
        return []
    limits = ops[0].limits
    usage: dict[Inbox, list[int]] = {}  # inbox -> [k, bytes]
    messages: list[tuple[bytes, bytes, int, float | None, int]] = []
    payloads: list[bytes] = []
    for op in ops:
        payloads.append(op.payload)
        size = len(op.payload)
        for r in op.recipients:
            entry = usage.setdefault((r, op.channel), [0, 0])
            entry[0] += 1
            entry[1] += size
            messages.append((r, op.channel, entry[0], op.expires_at, len(payloads)))
    # A new inbox row is inserted without the limit check: refuse here what cannot fit even an empty inbox.
    if any(k > limits.max_inbox_depth or b > limits.max_inbox_bytes for k, b in usage.values()):
        return None
    inboxes = list(usage)
    rows = await conn.fetch(
        _ENQUEUE,
        [r for r, _ in inboxes],
        [c for _, c in inboxes],
        [usage[i][0] for i in inboxes],
        [usage[i][1] for i in inboxes],
        limits.max_inbox_depth,
        limits.max_inbox_bytes,
        [m[0] for m in messages],
        [m[1] for m in messages],
        [m[2] for m in messages],
        [m[3] for m in messages],
        [m[4] for m in messages],
        payloads,
    )
    if len(rows) != len(inboxes):
        return None
    next_seq = {(bytes(row[0]), bytes(row[1])): int(row[2]) for row in rows}
    for inbox, (k, _) in usage.items():
        next_seq[inbox] -= k - 1
    results: list[list[int]] = []
    for op in ops:
        seqs = []
        for r in op.recipients:
            seqs.append(next_seq[(r, op.channel)])
            next_seq[(r, op.channel)] += 1
        results.append(seqs)
    return results


class _EnqueueOp:
    """One enqueue or batch enqueue, run by the group-commit writer (or alone) inside a savepoint."""

    __slots__ = ("channel", "counts", "distinct", "expires_at", "limits", "now", "payload", "recipients")

    def __init__(
        self,
        limits: StoreLimits,
        recipients: list[bytes],
        channel: bytes,
        payload: bytes,
        expires_at: float | None,
        now: float,
    ) -> None:
        self.limits = limits
        self.recipients = recipients
        self.channel = channel
        self.payload = payload
        self.expires_at = expires_at
        self.now = now
        counts: dict[bytes, int] = {}
        for r in recipients:
            counts[r] = counts.get(r, 0) + 1
        self.counts = counts
        self.distinct = sorted(counts)

    async def run(self, conn: Any, attempt: int) -> list[int]:
        if attempt == 0:
            seqs = await self._apply(conn)
            if seqs is not None:
                return seqs
            raise Again()
        # Something did not fit: the exact, SQLite-equivalent walk, recipient by recipient, making room from
        # expired messages before refusing. Refusing raises, and the savepoint undoes the clean-up too.
        await self._check_limits(conn)
        seqs = await self._apply(conn)
        if seqs is None:  # pragma: no cover - the rows are locked and were just checked
            raise StoreError("inbox limits changed while locked")
        return seqs

    async def _apply(self, conn: Any) -> list[int] | None:
        applied = await enqueue_many(conn, [self])
        return None if applied is None else applied[0]

    async def _check_limits(self, conn: Any) -> None:
        limits = self.limits
        size = len(self.payload)
        rows = await conn.fetch(
            "SELECT recipient, depth, bytes FROM inboxes WHERE channel_id = $2 AND recipient = ANY($1::bytea[])"
            " ORDER BY recipient FOR UPDATE",
            self.distinct,
            self.channel,
        )
        usage = {bytes(row[0]): (int(row[1]), int(row[2])) for row in rows}
        cleaned: set[bytes] = set()
        single = len(self.recipients) == 1
        for index, r in enumerate(self.recipients):
            depth, used = usage.get(r, (0, 0))
            if (depth + 1 > limits.max_inbox_depth or used + size > limits.max_inbox_bytes) and r not in cleaned:
                cleaned.add(r)
                row = await conn.fetchrow(
                    _DROP_EXPIRED,
                    r,
                    self.channel,
                    self.now,
                )
                depth, used = depth - int(row[0]), used - int(row[1])
            where = None if single else index
            if depth + 1 > limits.max_inbox_depth:
                raise LimitExceeded("max_inbox_depth", limits.max_inbox_depth, depth + 1, index=where)
            if used + size > limits.max_inbox_bytes:
                raise LimitExceeded("max_inbox_bytes", limits.max_inbox_bytes, used + size, index=where)
            usage[r] = (depth + 1, used + size)


async def _lock_inbox(conn: Any, recipient: bytes, channel: bytes) -> bool:
    """Lock the inbox's counter row (before any of its messages); False if the inbox is empty or unknown."""
    depth = await conn.fetchval(
        "SELECT depth FROM inboxes WHERE recipient = $1 AND channel_id = $2 FOR UPDATE",
        recipient,
        channel,
    )
    return bool(depth)


def _account(row: Any) -> Account | None:
    return None if row is None else Account(str(row[0]), bytes(row[1]), row[2], bytes(row[3]))
