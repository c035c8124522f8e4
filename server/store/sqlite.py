"""SQLite implementation of `Store`: WAL, synchronous=FULL, group commit on one writer thread, reads on another.

The store belongs to the event loop that opened it.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

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
from .migrations import migrate
from .sqlite_writer import GroupCommitWriter, OpContext
from .wakeups import InboxWakeups, InProcessWakeups

T = TypeVar("T")

# SQLite INTEGER is signed 64-bit; a client's UInt64 seqUpTo above this means "everything".
_MAX_SEQ = (1 << 63) - 1
# Stays well under SQLite's bound-parameter limit.
_IN_CHUNK = 500
# A sweep deletes at most this many messages per transaction so that enqueues are not held up behind it.
_SWEEP_CHUNK = 2000
_BUSY_TIMEOUT_MS = 10_000


def _connect(path: Path, *, read_only: bool) -> sqlite3.Connection:
    # isolation_level=None: transactions are ours (BEGIN IMMEDIATE / SAVEPOINT), not the module's guesses.
    # check_same_thread=False: each connection is opened here but then used by exactly one thread.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        if not read_only:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"could not switch the database to WAL mode (got {mode})")
        # FULL syncs the WAL on every commit: an acknowledged write survives power loss, not just a crash.
        conn.execute("PRAGMA synchronous = FULL")
        if read_only:
            conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


def _create_private(path: Path) -> None:
    # The database holds password files: create it owner-only. SQLite gives -wal and -shm the same mode.
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)


class SqliteStore:
    def __init__(
        self,
        path: Path,
        limits: StoreLimits,
        clock: Clock,
        write_conn: sqlite3.Connection,
        read_conn: sqlite3.Connection,
        wakeups: InProcessWakeups,
    ) -> None:
        """Use `SqliteStore.open`."""
        self.path = path
        self._limits = limits
        self._clock = clock
        self._wakeups = wakeups
        self._loop = asyncio.get_running_loop()
        self._writer = GroupCommitWriter(write_conn, self._loop, wakeups.notify)
        self._read_conn = read_conn
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qpc-store-read")
        self._closed = False
        self._shutdown: asyncio.Future[None] | None = None

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        limits: StoreLimits | None = None,
        *,
        clock: Clock,
    ) -> SqliteStore:
        db_path = Path(path)

        def blocking_open() -> tuple[sqlite3.Connection, sqlite3.Connection]:
            try:
                _create_private(db_path)
                write_conn = _connect(db_path, read_only=False)
            except (OSError, sqlite3.Error) as exc:
                raise StoreError(f"cannot open the database at {db_path}: {exc}") from exc
            try:
                migrate(write_conn)
                read_conn = _connect(db_path, read_only=True)
            except sqlite3.Error as exc:
                write_conn.close()
                raise StoreError(f"cannot open the database at {db_path}: {exc}") from exc
            except BaseException:
                write_conn.close()
                raise
            return write_conn, read_conn

        write_conn, read_conn = await asyncio.to_thread(blocking_open)
        return cls(
            db_path,
            limits or StoreLimits(),
            clock,
            write_conn,
            read_conn,
            InProcessWakeups(),
        )

    # ── lifecycle ─────────────────────────────────────────────────────────────────────────────────────────────

    @property
    def limits(self) -> StoreLimits:
        return self._limits

    @property
    def wakeups(self) -> InboxWakeups:
        return self._wakeups

    @property
    def closed(self) -> bool:
        return self._closed

    def metrics(self) -> StoreMetrics:
        return self._writer.metrics()

    async def close(self) -> None:
        if self._shutdown is None:
            self._closed = True
            self._shutdown = asyncio.ensure_future(self._shut_down())
        # Every caller, the first included, returns only once everything is released; shielded so that a
        # cancelled caller cannot leave the database half closed.
        await asyncio.shield(self._shutdown)

    async def _shut_down(self) -> None:
        await self._writer.close()
        await asyncio.to_thread(self._reader.shutdown, True)
        self._read_conn.close()

    async def _write(self, fn: Callable[[sqlite3.Connection, OpContext], T]) -> T:
        self._check_open()
        return await self._writer.submit(fn)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._check_open()
        conn = self._read_conn

        def run() -> T:
            try:
                # One snapshot for reads made of several statements.
                conn.execute("BEGIN")
                try:
                    return fn(conn)
                finally:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError("storage read failed") from exc

        return await self._loop.run_in_executor(self._reader, run)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed()
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError("the store is used from an event loop other than the one that opened it")

    # ── accounts ──────────────────────────────────────────────────────────────────────────────────────────────

    async def create_account(self, username: str, password_file: bytes, identity_key: bytes) -> Account:
        account = Account(username, bytes(identity_key), self._clock(), bytes(password_file))

        def op(conn: sqlite3.Connection, ctx: OpContext) -> Account:
            try:
                conn.execute(
                    "INSERT INTO accounts (username, password_file, identity_key, created_at) VALUES (?, ?, ?, ?)",
                    (
                        account.username,
                        account.password_file,
                        account.identity_key,
                        account.created_at,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise _already_exists(exc, "accounts") from None
            return account

        return await self._write(op)

    async def get_account(self, username: str) -> Account | None:
        return await self._read(lambda conn: _account_where(conn, "username", username))

    async def get_account_by_identity(self, identity_key: bytes) -> Account | None:
        return await self._read(lambda conn: _account_where(conn, "identity_key", bytes(identity_key)))

    async def resolve_username(self, username: str) -> bytes | None:
        row = await self._read(
            lambda conn: conn.execute("SELECT identity_key FROM accounts WHERE username = ?", (username,)).fetchone()
        )
        return None if row is None else bytes(row[0])

    async def resolve_identity(self, identity_key: bytes) -> str | None:
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT username FROM accounts WHERE identity_key = ?",
                (bytes(identity_key),),
            ).fetchone()
        )
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
        key = bytes(token_hash)

        def op(conn: sqlite3.Connection, ctx: OpContext) -> Session:
            try:
                conn.execute(
                    "INSERT INTO sessions (token_hash, identity_key, device_id, issued_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        key,
                        session.identity_key,
                        session.device_id,
                        session.issued_at,
                        session.expires_at,
                    ),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists("token_hash") from None
            return session

        return await self._write(op)

    async def get_session(self, token_hash: bytes) -> Session | None:
        now = self._clock()
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT identity_key, device_id, issued_at, expires_at FROM sessions"
                " WHERE token_hash = ? AND revoked = 0 AND expires_at > ?",
                (bytes(token_hash), now),
            ).fetchone()
        )
        return None if row is None else Session(bytes(row[0]), bytes(row[1]), row[2], row[3])

    async def revoke_session(self, token_hash: bytes) -> bool:
        key = bytes(token_hash)
        return await self._write(
            lambda conn, ctx: (
                conn.execute(
                    "UPDATE sessions SET revoked = 1 WHERE token_hash = ? AND revoked = 0",
                    (key,),
                ).rowcount
                > 0
            )
        )

    async def revoke_sessions(self, identity_key: bytes) -> int:
        key = bytes(identity_key)
        return await self._write(
            lambda conn, ctx: (
                conn.execute(
                    "UPDATE sessions SET revoked = 1 WHERE identity_key = ? AND revoked = 0",
                    (key,),
                ).rowcount
            )
        )

    async def purge_expired_sessions(self) -> int:
        now = self._clock()
        return await self._write(
            lambda conn, ctx: conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,)).rowcount
        )

    # ── OPAQUE login states ───────────────────────────────────────────────────────────────────────────────────

    async def put_login_state(self, state_id: bytes, username: str, state: bytes, expires_at: float) -> None:
        params = (bytes(state_id), username, bytes(state), float(expires_at))

        def op(conn: sqlite3.Connection, ctx: OpContext) -> None:
            try:
                conn.execute(
                    "INSERT INTO login_states (state_id, username, state, expires_at) VALUES (?, ?, ?, ?)",
                    params,
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists("state_id") from None

        await self._write(op)

    async def take_login_state(self, state_id: bytes) -> LoginState | None:
        now = self._clock()
        key = bytes(state_id)

        def op(conn: sqlite3.Connection, ctx: OpContext) -> LoginState | None:
            # Deleted even when expired: an expired state is of no further use.
            row = conn.execute(
                "DELETE FROM login_states WHERE state_id = ? RETURNING username, state, expires_at",
                (key,),
            ).fetchone()
            if row is None or row[2] <= now:
                return None
            return LoginState(str(row[0]), row[2], bytes(row[1]))

        return await self._write(op)

    async def purge_expired_login_states(self) -> int:
        now = self._clock()
        return await self._write(
            lambda conn, ctx: conn.execute("DELETE FROM login_states WHERE expires_at <= ?", (now,)).rowcount
        )

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
        params = (
            bytes(identity_key),
            bytes(fingerprint),
            bytes(package),
            int(last_resort),
            not_after,
        )

        def op(conn: sqlite3.Connection, ctx: OpContext) -> None:
            # Expired packages can never be handed out; dropping them here keeps them from eating the cap.
            conn.execute(
                "DELETE FROM key_packages WHERE identity_key = ? AND not_after IS NOT NULL AND not_after <= ?",
                (params[0], now),
            )
            count = conn.execute("SELECT count(*) FROM key_packages WHERE identity_key = ?", (params[0],)).fetchone()[0]
            if count >= cap:
                raise LimitExceeded("max_key_packages_per_identity", cap, count + 1)
            try:
                conn.execute(
                    "INSERT INTO key_packages (identity_key, fingerprint, package, last_resort, not_after)"
                    " VALUES (?, ?, ?, ?, ?)",
                    params,
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists("fingerprint") from None

        await self._write(op)

    async def take_key_package(self, identity_key: bytes) -> KeyPackage | None:
        now = self._clock()
        key = bytes(identity_key)

        def op(conn: sqlite3.Connection, ctx: OpContext) -> KeyPackage | None:
            # Runs alone on the writer connection, so select-then-delete cannot hand one package out twice.
            row = conn.execute(
                "SELECT id, fingerprint, package, not_after FROM key_packages"
                " WHERE identity_key = ? AND last_resort = 0 AND (not_after IS NULL OR not_after > ?)"
                " ORDER BY id LIMIT 1",
                (key, now),
            ).fetchone()
            if row is not None:
                conn.execute("DELETE FROM key_packages WHERE id = ?", (row[0],))
                return KeyPackage(bytes(row[1]), False, row[3], bytes(row[2]))
            row = conn.execute(
                "SELECT fingerprint, package, not_after FROM key_packages"
                " WHERE identity_key = ? AND last_resort = 1 AND (not_after IS NULL OR not_after > ?)"
                " ORDER BY id DESC LIMIT 1",
                (key, now),
            ).fetchone()
            return None if row is None else KeyPackage(bytes(row[0]), True, row[2], bytes(row[1]))

        return await self._write(op)

    async def count_key_packages(self, identity_key: bytes) -> int:
        now = self._clock()
        return await self._read(
            lambda conn: int(
                conn.execute(
                    "SELECT count(*) FROM key_packages WHERE identity_key = ? AND (not_after IS NULL OR not_after > ?)",
                    (bytes(identity_key), now),
                ).fetchone()[0]
            )
        )

    # ── hybrid keys and endpoints ─────────────────────────────────────────────────────────────────────────────

    async def put_hybrid_key(self, identity_key: bytes, public_key: bytes) -> None:
        params = (bytes(identity_key), bytes(public_key), self._clock())

        def op(conn: sqlite3.Connection, ctx: OpContext) -> None:
            conn.execute(
                "INSERT INTO hybrid_keys (identity_key, public_key, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (identity_key) DO UPDATE"
                " SET public_key = excluded.public_key, updated_at = excluded.updated_at",
                params,
            )

        await self._write(op)

    async def get_hybrid_key(self, identity_key: bytes) -> bytes | None:
        return (await self.get_hybrid_keys([identity_key]))[0]

    async def get_hybrid_keys(self, identity_keys: Sequence[bytes]) -> list[bytes | None]:
        keys = [bytes(k) for k in identity_keys]
        if not keys:
            self._check_open()
            return []

        def read(conn: sqlite3.Connection) -> dict[bytes, bytes]:
            found: dict[bytes, bytes] = {}
            unique = list(dict.fromkeys(keys))
            for start in range(0, len(unique), _IN_CHUNK):
                chunk = unique[start : start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                # Only "?" placeholders are interpolated; the keys themselves are bound.
                query = f"SELECT identity_key, public_key FROM hybrid_keys WHERE identity_key IN ({marks})"  # noqa: S608
                for identity, public in conn.execute(query, chunk):
                    found[bytes(identity)] = bytes(public)
            return found

        found = await self._read(read)
        return [found.get(k) for k in keys]

    async def get_or_create_secret(self, name: str, candidate: bytes) -> bytes:
        params = (name, bytes(candidate), self._clock())

        def op(conn: sqlite3.Connection, ctx: OpContext) -> bytes:
            conn.execute(
                "INSERT INTO server_secrets (name, value, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                params,
            )
            row = conn.execute("SELECT value FROM server_secrets WHERE name = ?", (name,)).fetchone()
            return bytes(row[0])

        return await self._write(op)

    async def put_endpoint(self, identity_key: bytes, node_addr: bytes) -> None:
        params = (bytes(identity_key), bytes(node_addr), self._clock())

        def op(conn: sqlite3.Connection, ctx: OpContext) -> None:
            conn.execute(
                "INSERT INTO endpoints (identity_key, node_addr, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (identity_key) DO UPDATE"
                " SET node_addr = excluded.node_addr, updated_at = excluded.updated_at",
                params,
            )

        await self._write(op)

    async def get_endpoint(self, identity_key: bytes) -> bytes | None:
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT node_addr FROM endpoints WHERE identity_key = ?",
                (bytes(identity_key),),
            ).fetchone()
        )
        return None if row is None else bytes(row[0])

    # ── channels ──────────────────────────────────────────────────────────────────────────────────────────────

    async def get_or_create_channel(self, a: bytes, b: bytes) -> bytes:
        lo, hi = sorted((bytes(a), bytes(b)))

        def lookup(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT channel_id FROM channels WHERE member_lo = ? AND member_hi = ?",
                (lo, hi),
            ).fetchone()
            return None if row is None else bytes(row[0])

        # Most calls are for a channel that exists: answer those from the read side without a commit.
        existing = await self._read(lookup)
        if existing is not None:
            return existing
        now = self._clock()

        def create(conn: sqlite3.Connection, ctx: OpContext) -> bytes:
            # ON CONFLICT DO NOTHING + re-read: whoever inserted first, everyone gets that id.
            conn.execute(
                "INSERT INTO channels (channel_id, member_lo, member_hi, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (member_lo, member_hi) DO NOTHING",
                (uuid.uuid4().bytes, lo, hi, now),
            )
            found = lookup(conn)
            assert found is not None
            return found

        return await self._write(create)

    async def channel_members(self, channel_id: bytes) -> tuple[bytes, bytes] | None:
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT member_lo, member_hi FROM channels WHERE channel_id = ?",
                (bytes(channel_id),),
            ).fetchone()
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
        now = self._clock()
        inboxes = [(bytes(r), bytes(channel)) for r in recipients]
        data = bytes(payload)
        single = len(inboxes) == 1

        def op(conn: sqlite3.Connection, ctx: OpContext) -> list[int]:
            seqs = []
            for index, inbox in enumerate(inboxes):
                try:
                    seqs.append(_enqueue_one(conn, limits, inbox, data, expires_at, now))
                except LimitExceeded as exc:
                    if single:
                        raise
                    raise LimitExceeded(exc.limit_name, exc.limit, exc.actual, index=index) from None
            ctx.touched.extend(inboxes)
            return seqs

        return await self._write(op)

    async def fetch(self, recipient: bytes, channel: bytes, limit: int = 0) -> list[InboxMessage]:
        inbox = (bytes(recipient), bytes(channel))
        count = self._fetch_limit(limit)
        now = self._clock()

        def op(conn: sqlite3.Connection, ctx: OpContext) -> list[InboxMessage]:
            rows = conn.execute(
                _FETCH,
                (*inbox, now, count, self._limits.max_fetch_bytes),
            ).fetchall()
            _shrink(conn, inbox, len(rows), sum(r[2] for r in rows))
            # RETURNING promises no order.
            return sorted((InboxMessage(r[0], bytes(r[1])) for r in rows), key=lambda m: m.seq)

        return await self._write(op)

    async def peek(self, recipient: bytes, channel: bytes, limit: int = 0) -> list[InboxMessage]:
        params = (
            bytes(recipient),
            bytes(channel),
            self._clock(),
            self._fetch_limit(limit),
            self._limits.max_fetch_bytes,
        )
        rows = await self._read(
            lambda conn: conn.execute(
                _PEEK,
                params,
            ).fetchall()
        )
        return [InboxMessage(r[0], bytes(r[1])) for r in rows]

    async def ack(self, recipient: bytes, channel: bytes, seq_up_to: int) -> int:
        self._check_open()
        if seq_up_to < 1:
            return 0
        inbox = (bytes(recipient), bytes(channel))
        up_to = min(seq_up_to, _MAX_SEQ)

        def op(conn: sqlite3.Connection, ctx: OpContext) -> int:
            sizes = conn.execute(
                "DELETE FROM messages WHERE recipient = ? AND channel_id = ? AND seq <= ? RETURNING size",
                (*inbox, up_to),
            ).fetchall()
            _shrink(conn, inbox, len(sizes), sum(s[0] for s in sizes))
            return len(sizes)

        return await self._write(op)

    async def inbox_stats(self, recipient: bytes, channel: bytes) -> InboxStats:
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT depth, bytes, last_seq FROM inboxes WHERE recipient = ? AND channel_id = ?",
                (bytes(recipient), bytes(channel)),
            ).fetchone()
        )
        return InboxStats(0, 0, 0) if row is None else InboxStats(row[0], row[1], row[2])

    async def sweep_expired(self, now: float | None = None) -> int:
        cutoff = self._clock() if now is None else now

        def op(conn: sqlite3.Connection, ctx: OpContext) -> int:
            rows = conn.execute(
                "DELETE FROM messages WHERE id IN ("
                " SELECT id FROM messages WHERE expires_at <= ? LIMIT ?"
                ") RETURNING recipient, channel_id, size",
                (cutoff, _SWEEP_CHUNK),
            ).fetchall()
            removed: dict[Inbox, list[int]] = {}
            for recipient, channel, size in rows:
                entry = removed.setdefault((bytes(recipient), bytes(channel)), [0, 0])
                entry[0] += 1
                entry[1] += size
            for inbox, (count, size) in removed.items():
                _shrink(conn, inbox, count, size)
            return len(rows)

        total = 0
        while True:
            removed = await self._write(op)
            total += removed
            if removed < _SWEEP_CHUNK:
                return total

    def _fetch_limit(self, limit: int) -> int:
        if limit < 0:
            raise ValueError("limit must not be negative")
        cap = self._limits.max_fetch
        return cap if limit == 0 else min(limit, cap)


# ── SQL helpers run on the writer or reader thread ────────────────────────────────────────────────────────────


# The first messages of an inbox in seq order, each with the payload bytes queued before it; callers keep those
# with `before` under the byte budget. Parameters: recipient, channel, now, count.
_FIRST_MESSAGES = (
    "SELECT id, SUM(size) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) - size AS before FROM messages"
    " WHERE recipient = ? AND channel_id = ? AND (expires_at IS NULL OR expires_at > ?) ORDER BY seq LIMIT ?"
)
# Both compose module constants only (no values), hence the S608 exemptions. Extra parameter: the byte budget.
_FETCH = f"DELETE FROM messages WHERE id IN (SELECT id FROM ({_FIRST_MESSAGES}) WHERE before < ?) RETURNING seq, payload, size"  # noqa: S608, E501
_PEEK = (
    f"SELECT seq, payload FROM messages WHERE id IN (SELECT id FROM ({_FIRST_MESSAGES}) WHERE before < ?) ORDER BY seq"  # noqa: S608
)

_ACCOUNT_BY = {
    "username": "SELECT username, identity_key, created_at, password_file FROM accounts WHERE username = ?",
    "identity_key": "SELECT username, identity_key, created_at, password_file FROM accounts WHERE identity_key = ?",
}


def _account_where(conn: sqlite3.Connection, column: str, value: object) -> Account | None:
    row = conn.execute(_ACCOUNT_BY[column], (value,)).fetchone()
    return None if row is None else Account(str(row[0]), bytes(row[1]), row[2], bytes(row[3]))


def _already_exists(exc: sqlite3.IntegrityError, table: str) -> AlreadyExists:
    # SQLite names the violated column ("UNIQUE constraint failed: accounts.identity_key"); values never appear.
    message = str(exc)
    marker = f"{table}."
    if marker in message:
        return AlreadyExists(message.rsplit(marker, 1)[1].split(",")[0].strip())
    return AlreadyExists(table)


def _inbox_usage(conn: sqlite3.Connection, inbox: Inbox) -> tuple[int, int]:
    row = conn.execute("SELECT depth, bytes FROM inboxes WHERE recipient = ? AND channel_id = ?", inbox).fetchone()
    return (0, 0) if row is None else (row[0], row[1])


def _enqueue_one(
    conn: sqlite3.Connection,
    limits: StoreLimits,
    inbox: Inbox,
    payload: bytes,
    expires_at: float | None,
    now: float,
) -> int:
    size = len(payload)
    depth, used = _inbox_usage(conn, inbox)
    if depth + 1 > limits.max_inbox_depth or used + size > limits.max_inbox_bytes:
        # Expired messages are dead weight: make room from them before refusing. If the enqueue is refused
        # anyway, its savepoint rolls this back too.
        rows = conn.execute(
            "DELETE FROM messages WHERE recipient = ? AND channel_id = ? AND expires_at <= ? RETURNING size",
            (*inbox, now),
        ).fetchall()
        if rows:
            _shrink(conn, inbox, len(rows), sum(r[0] for r in rows))
            depth, used = _inbox_usage(conn, inbox)
        if depth + 1 > limits.max_inbox_depth:
            raise LimitExceeded("max_inbox_depth", limits.max_inbox_depth, depth + 1)
        if used + size > limits.max_inbox_bytes:
            raise LimitExceeded("max_inbox_bytes", limits.max_inbox_bytes, used + size)
    seq: int = conn.execute(
        "INSERT INTO inboxes (recipient, channel_id, last_seq, depth, bytes) VALUES (?, ?, 1, 1, ?)"
        " ON CONFLICT (recipient, channel_id) DO UPDATE"
        " SET last_seq = last_seq + 1, depth = depth + 1, bytes = bytes + excluded.bytes"
        " RETURNING last_seq",
        (*inbox, size),
    ).fetchone()[0]
    conn.execute(
        "INSERT INTO messages (recipient, channel_id, seq, size, expires_at, payload) VALUES (?, ?, ?, ?, ?, ?)",
        (*inbox, seq, size, expires_at, payload),
    )
    return seq


def _shrink(conn: sqlite3.Connection, inbox: Inbox, count: int, size: int) -> None:
    if count:
        conn.execute(
            "UPDATE inboxes SET depth = depth - ?, bytes = bytes - ? WHERE recipient = ? AND channel_id = ?",
            (count, size, *inbox),
        )
