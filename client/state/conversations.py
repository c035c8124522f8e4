"""`ConversationStore`: the client's conversations, members, messages, read markers and settings.

Storage
-------
One SQLCipher database keyed with a raw 32-byte key (``PRAGMA key = "x'<hex>'"``), or, without a key, a plain
SQLite file (``encrypted`` is then false and the client must say so). The key is checked at open by reading
``sqlite_master``: a wrong key raises `WrongStatePassword` before anything is written. A plain database opened
with a key is encrypted in place first (`encrypt_in_place`). Rollback journal (``journal_mode=DELETE``), so no
``-wal``/``-shm`` files linger; SQLCipher encrypts the journal too; temporary tables and indices stay in memory
(``temp_store=MEMORY``); ``secure_delete`` zeroes deleted content; ``synchronous=FULL``.

Concurrency
-----------
The methods are coroutines. Each store owns one connection and one dedicated worker thread that runs every
statement in order, so the event loop never waits on SQLCipher page decryption or an fsync, and the connection
is never used from two threads at once. Writes are single statements or short explicit transactions.

Order
-----
Messages are ordered by their local row id, that is in the order the client stored them (for MLS, processing
order). ``history(..., before=id)`` pages backwards by that id; ``Message.id`` is also what read markers hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar, cast

from quicnprotochat.common.migrations import Migration, check_sequence, migrate_sqlite

from . import _sqlcipher as sql
from . import outbox, receipts, routes
from .errors import (
    ConversationExists,
    ConversationNotFound,
    CorruptState,
    SchemaTooNew,
    StatePasswordRequired,
    StoreClosed,
    WrongStatePassword,
)
from .files import PRIVATE_FILE_MODE, fsync_dir, scrub_and_unlink, scrub_fd, temp_sibling
from .keys import sqlcipher_key_literal
from .outbox import MessageState
from .receipts import ReceiptKind
from .routes import Route

P = ParamSpec("P")
T = TypeVar("T")

ConversationKind = Literal["dm", "group", "notes"]
CONVERSATION_KINDS: tuple[ConversationKind, ...] = ("dm", "group", "notes")
CHANNEL_ID_LEN = 16
SQLITE_HEADER = b"SQLite format 3\x00"
# Side files SQLite may leave next to a database.
_SIDE_SUFFIXES = ("-journal", "-wal", "-shm")

FileKind = Literal["missing", "plain", "encrypted"]


def database_file_kind(path: Path) -> FileKind:
    """ "missing" (absent or empty), "plain" (an SQLite header) or "encrypted" (anything else: SQLCipher
    files start with a random salt)."""
    try:
        with path.open("rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return "missing"
    if not header:
        return "missing"
    return "plain" if header == SQLITE_HEADER else "encrypted"


@dataclass(frozen=True, slots=True)
class Conversation:
    id: int
    kind: ConversationKind
    name: str
    group_id: bytes | None
    channel_id: bytes | None
    peer_identity_key: bytes | None
    created_at: float
    last_activity: float


@dataclass(frozen=True, slots=True)
class Member:
    conversation_id: int
    identity_key: bytes
    username: str | None


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    """Local row id: the store's order, what read markers and `history(before=...)` use."""
    conversation_id: int
    message_id: bytes
    """Unique id given by the caller (for example a hash of the envelope); a second insert is ignored."""
    sender_identity_key: bytes | None
    sender_username: str | None
    body: str
    sent_at: float | None
    received_at: float
    outgoing: bool
    server_seq: int | None
    """Incoming: the seq in our inbox. Outgoing: the seq the node gave the (first) recipient's copy."""
    state: MessageState | None = None
    """Outgoing messages only: pending (in the outbox), sent (every copy taken by the node) or failed."""
    failure: str | None = None
    """Why the node refused a copy (one reason per refused recipient), for a failed message."""
    ref: bytes | None = None
    """Incoming: the sender's reference of the message (what receipts name)."""
    receipt: ReceiptKind | None = None
    """Outgoing: the furthest receipt a recipient sent back: delivered, then read."""
    route: Route | None = None
    """How it travelled: direct (client to client), node (through the inbox), or mixed (outgoing, some copies
    each way); None for notes and messages not sent yet."""


# ── schema ──────────────────────────────────────────────────────────────────────────────────────────────


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "initial",
        (
            """CREATE TABLE conversations (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                kind TEXT NOT NULL CHECK (kind IN ('dm', 'group', 'notes')),
                name TEXT NOT NULL UNIQUE,
                group_id BLOB UNIQUE,
                channel_id BLOB UNIQUE CHECK (channel_id IS NULL OR length(channel_id) = 16),
                peer_identity_key BLOB,
                created_at REAL NOT NULL,
                last_activity REAL NOT NULL
            )""",
            # One DM per peer and one notes-to-self conversation.
            "CREATE UNIQUE INDEX conversations_dm_peer ON conversations (peer_identity_key) WHERE kind = 'dm'",
            "CREATE UNIQUE INDEX conversations_one_notes ON conversations (kind) WHERE kind = 'notes'",
            "CREATE INDEX conversations_by_activity ON conversations (last_activity)",
            """CREATE TABLE members (
                conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
                identity_key BLOB NOT NULL,
                username TEXT,
                PRIMARY KEY (conversation_id, identity_key)
            ) WITHOUT ROWID""",
            """CREATE TABLE messages (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
                message_id BLOB NOT NULL UNIQUE,
                sender_identity_key BLOB,
                sender_username TEXT,
                body TEXT NOT NULL,
                sent_at REAL,
                received_at REAL NOT NULL,
                outgoing INTEGER NOT NULL CHECK (outgoing IN (0, 1)),
                server_seq INTEGER
            )""",
            "CREATE INDEX messages_by_conversation ON messages (conversation_id, id)",
            """CREATE TABLE read_markers (
                conversation_id INTEGER PRIMARY KEY REFERENCES conversations (id) ON DELETE CASCADE,
                last_read_id INTEGER NOT NULL
            )""",
            "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        ),
    ),
    Migration(2, "outbox", outbox.STATEMENTS),
    Migration(3, "receipts", receipts.STATEMENTS),
    Migration(4, "routes", routes.STATEMENTS),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
check_sequence(MIGRATIONS)


def _migrate(conn: sql.Connection, path: Path) -> None:
    def too_new(on_disk: int, known: int) -> Exception:
        return SchemaTooNew(f"{path} has schema version {on_disk}; this client knows up to {known}")

    migrate_sqlite(conn, MIGRATIONS, too_new)


# ── opening, keying, encrypting in place ───────────────────────────────────────────────────────────────


def _create_private_file(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    os.close(fd)


def _apply_key(conn: sql.Connection, key: bytes | bytearray, path: Path) -> None:
    """Key the connection and prove the key by reading page 1; raise `WrongStatePassword` otherwise."""
    conn.execute("PRAGMA cipher_log_level = NONE")
    conn.execute(f'PRAGMA key = "{sqlcipher_key_literal(key)}"')
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sql.DatabaseError:
        raise WrongStatePassword(
            f"{path}: the state password does not decrypt this database (wrong password, or the file was modified)"
        ) from None


def _configure(conn: sql.Connection) -> None:
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute("PRAGMA secure_delete = ON")
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA busy_timeout = 5000")


def _open_connection(path: Path, key: bytes | bytearray | None) -> sql.Connection:
    kind = database_file_kind(path)
    if key is None and kind == "encrypted":
        raise StatePasswordRequired(f"{path} is encrypted: a state password is needed to open it")
    if key is not None and kind == "plain":
        encrypt_in_place(path, key)
    if kind == "missing" and not path.exists():
        _create_private_file(path)
    conn = sql.connect(path)
    try:
        if key is not None:
            _apply_key(conn, key, path)
        else:
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sql.DatabaseError as error:
                raise CorruptState(f"{path} is not a conversation database: {error}") from None
        _configure(conn)
        _migrate(conn, path)
    except BaseException:
        conn.close()
        raise
    return conn


def _remove_side_files(path: Path) -> None:
    for suffix in _SIDE_SUFFIXES:
        scrub_and_unlink(path.with_name(path.name + suffix))


def encrypt_in_place(path: Path, key: bytes | bytearray, *, old_key: bytes | bytearray | None = None) -> None:
    """Replace the database at `path` by a copy encrypted with `key`, atomically, keeping no copy behind.

    With `old_key` None the file must be a plain SQLite database; otherwise it is an SQLCipher database under
    `old_key` (this re-keys it). ``sqlcipher_export`` writes the copy into a fresh hidden file next to it
    (mode 0600), which is checked, fsynced and renamed over the original. The original's inode is then
    overwritten with zeros through a descriptor opened before the rename, and any ``-journal``/``-wal``/
    ``-shm`` files are scrubbed and removed. Scrubbing is best effort (SSDs, copy-on-write filesystems).
    The caller must make sure nobody else has the database open.
    """
    target = temp_sibling(path, "encrypting")
    _create_private_file(target)
    try:
        source = sql.connect(path)
        try:
            if old_key is not None:
                _apply_key(source, old_key, path)
            source.execute("PRAGMA temp_store = MEMORY")  # no temporary file may hold clear pages
            # Reading page 1 also rolls back a hot journal left by a crash.
            source.execute("SELECT count(*) FROM sqlite_master").fetchone()
            source.execute("ATTACH DATABASE ? AS encrypted KEY ?", (str(target), sqlcipher_key_literal(key)))
            try:
                source.execute("SELECT sqlcipher_export('encrypted')").fetchone()
            finally:
                source.execute("DETACH DATABASE encrypted")
        finally:
            source.close()
        check = sql.connect(target)
        try:
            _apply_key(check, key, target)
            row = check.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise CorruptState(f"{path}: the encrypted copy failed its integrity check")
        finally:
            check.close()
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        old = os.open(path, os.O_WRONLY)
        try:
            os.replace(target, path)
            fsync_dir(path.parent)
            scrub_fd(old)
        finally:
            os.close(old)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        raise
    _remove_side_files(target)
    _remove_side_files(path)


# ── row conversion ─────────────────────────────────────────────────────────────────────────────────────

_CONVERSATION_COLUMNS = "id, kind, name, group_id, channel_id, peer_identity_key, created_at, last_activity"
_MESSAGE_COLUMNS = (
    "id, conversation_id, message_id, sender_identity_key, sender_username, body, sent_at, received_at,"
    " outgoing, server_seq, state, failure, ref, receipt, route"
)
# Queries are assembled from these constants only; every value is a bound parameter. The column lists are
# the tables' column order, which `RETURNING *` also gives (later migrations only append columns).
_SELECT_CONVERSATIONS = f"SELECT {_CONVERSATION_COLUMNS} FROM conversations"  # noqa: S608
_SELECT_MESSAGES = f"SELECT {_MESSAGE_COLUMNS} FROM messages"  # noqa: S608
_INSERT_CONVERSATION = (
    "INSERT INTO conversations (kind, name, group_id, channel_id, peer_identity_key, created_at, last_activity)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *"
)
_INSERT_MESSAGE = (
    "INSERT INTO messages (conversation_id, message_id, sender_identity_key, sender_username, body, sent_at,"
    " received_at, outgoing, server_seq, state, ref, route) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (message_id) DO NOTHING RETURNING *"
)


def _opt_bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _conversation(row: sql.Row) -> Conversation:
    return Conversation(
        id=int(row[0]),
        kind=cast(ConversationKind, str(row[1])),
        name=str(row[2]),
        group_id=_opt_bytes(row[3]),
        channel_id=_opt_bytes(row[4]),
        peer_identity_key=_opt_bytes(row[5]),
        created_at=float(row[6]),
        last_activity=float(row[7]),
    )


def _message(row: sql.Row) -> Message:
    return Message(
        id=int(row[0]),
        conversation_id=int(row[1]),
        message_id=bytes(row[2]),
        sender_identity_key=_opt_bytes(row[3]),
        sender_username=_opt_str(row[4]),
        body=str(row[5]),
        sent_at=None if row[6] is None else float(row[6]),
        received_at=float(row[7]),
        outgoing=bool(row[8]),
        server_seq=None if row[9] is None else int(row[9]),
        state=None if row[10] is None else cast(MessageState, str(row[10])),
        failure=_opt_str(row[11]),
        ref=_opt_bytes(row[12]),
        receipt=None if row[13] is None else cast(ReceiptKind, str(row[13])),
        route=None if row[14] is None else cast(Route, str(row[14])),
    )


def _last_seq_key(recipient_key: bytes, channel_id: bytes) -> str:
    return f"last_seq:{recipient_key.hex()}:{channel_id.hex()}"


# ── the store ──────────────────────────────────────────────────────────────────────────────────────────


class _Database:
    """The synchronous implementation; only ever called on the store's worker thread."""

    def __init__(self, conn: sql.Connection, path: Path, clock: Callable[[], float]) -> None:
        self.conn = conn
        self.path = path
        self.clock = clock

    def _one(self, query: str, params: Sequence[object] = ()) -> sql.Row | None:
        return self.conn.execute(query, params).fetchone()

    def _require(self, conversation_id: int) -> None:
        if self._one("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)) is None:
            raise ConversationNotFound(f"no conversation with id {conversation_id}")

    # conversations

    def create_conversation(
        self,
        kind: ConversationKind,
        name: str,
        group_id: bytes | None,
        channel_id: bytes | None,
        peer_identity_key: bytes | None,
    ) -> Conversation:
        if kind not in CONVERSATION_KINDS:
            raise ValueError(f"conversation kind must be one of {CONVERSATION_KINDS}, not {kind!r}")
        if not name:
            raise ValueError("a conversation needs a name")
        if channel_id is not None and len(channel_id) != CHANNEL_ID_LEN:
            raise ValueError(f"a channel id is {CHANNEL_ID_LEN} bytes")
        if kind == "dm" and peer_identity_key is None:
            raise ValueError("a DM needs the peer's identity key")
        now = self.clock()
        try:
            row = self._one(
                _INSERT_CONVERSATION,
                (kind, name, group_id, channel_id, peer_identity_key, now, now),
            )
        except sql.IntegrityError:
            raise ConversationExists(
                f"a conversation with the name {name!r} (or its group id, channel id or DM peer) already exists"
            ) from None
        assert row is not None
        return _conversation(row)

    def get_conversation(self, conversation_id: int) -> Conversation | None:
        row = self._one(_SELECT_CONVERSATIONS + " WHERE id = ?", (conversation_id,))
        return None if row is None else _conversation(row)

    def find_by(self, column: Literal["name", "group_id", "channel_id"], value: object) -> Conversation | None:
        row = self._one(_SELECT_CONVERSATIONS + f" WHERE {column} = ?", (value,))
        return None if row is None else _conversation(row)

    def find_dm(self, peer_identity_key: bytes) -> Conversation | None:
        row = self._one(
            _SELECT_CONVERSATIONS + " WHERE kind = 'dm' AND peer_identity_key = ?",
            (peer_identity_key,),
        )
        return None if row is None else _conversation(row)

    def notes(self) -> Conversation | None:
        row = self._one(_SELECT_CONVERSATIONS + " WHERE kind = 'notes'")
        return None if row is None else _conversation(row)

    def list_conversations(self) -> list[Conversation]:
        rows = self.conn.execute(_SELECT_CONVERSATIONS + " ORDER BY last_activity DESC, id DESC").fetchall()
        return [_conversation(row) for row in rows]

    def rename_conversation(self, conversation_id: int, name: str) -> None:
        if not name:
            raise ValueError("a conversation needs a name")
        try:
            cursor = self.conn.execute("UPDATE conversations SET name = ? WHERE id = ?", (name, conversation_id))
        except sql.IntegrityError:
            raise ConversationExists(f"a conversation named {name!r} already exists") from None
        if cursor.rowcount == 0:
            raise ConversationNotFound(f"no conversation with id {conversation_id}")

    def set_group_id(self, conversation_id: int, group_id: bytes | None) -> None:
        try:
            cursor = self.conn.execute(
                "UPDATE conversations SET group_id = ? WHERE id = ?", (group_id, conversation_id)
            )
        except sql.IntegrityError:
            raise ConversationExists("another conversation has that group id") from None
        if cursor.rowcount == 0:
            raise ConversationNotFound(f"no conversation with id {conversation_id}")

    def delete_conversation(self, conversation_id: int) -> bool:
        # Members, messages and the read marker go with it (ON DELETE CASCADE; secure_delete zeroes them).
        return self.conn.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,)).rowcount > 0

    # members

    def add_member(self, conversation_id: int, identity_key: bytes, username: str | None) -> None:
        self._require(conversation_id)
        self.conn.execute(
            "INSERT INTO members (conversation_id, identity_key, username) VALUES (?, ?, ?)"
            " ON CONFLICT (conversation_id, identity_key) DO UPDATE SET"
            " username = coalesce(excluded.username, members.username)",
            (conversation_id, identity_key, username),
        )

    def remove_member(self, conversation_id: int, identity_key: bytes) -> bool:
        cursor = self.conn.execute(
            "DELETE FROM members WHERE conversation_id = ? AND identity_key = ?", (conversation_id, identity_key)
        )
        return cursor.rowcount > 0

    def list_members(self, conversation_id: int) -> list[Member]:
        rows = self.conn.execute(
            "SELECT conversation_id, identity_key, username FROM members WHERE conversation_id = ?"
            " ORDER BY username IS NULL, username, identity_key",
            (conversation_id,),
        ).fetchall()
        return [Member(int(row[0]), bytes(row[1]), _opt_str(row[2])) for row in rows]

    # messages

    def add_message(
        self,
        conversation_id: int,
        message_id: bytes,
        body: str,
        sender_identity_key: bytes | None,
        sender_username: str | None,
        sent_at: float | None,
        received_at: float | None,
        outgoing: bool,
        server_seq: int | None,
        state: MessageState | None = None,
        copies: Sequence[outbox.OutgoingCopy] = (),
        ref: bytes | None = None,
        route: Route | None = None,
    ) -> Message | None:
        if not message_id:
            raise ValueError("a message needs a non-empty message id")
        received = self.clock() if received_at is None else received_at
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self._require(conversation_id)
            row = self._one(
                _INSERT_MESSAGE,
                (
                    conversation_id,
                    message_id,
                    sender_identity_key,
                    sender_username,
                    body,
                    sent_at,
                    received,
                    int(outgoing),
                    server_seq,
                    state,
                    ref,
                    route,
                ),
            )
            if row is not None and copies:
                outbox.add_copies(self.conn, int(row[0]), list(copies))
            if row is not None:
                self.conn.execute(
                    "UPDATE conversations SET last_activity = max(last_activity, ?) WHERE id = ?",
                    (received, conversation_id),
                )
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return None if row is None else _message(row)

    def get_message(self, message_id: bytes) -> Message | None:
        row = self._one(_SELECT_MESSAGES + " WHERE message_id = ?", (message_id,))
        return None if row is None else _message(row)

    def pending_copies(self) -> list[outbox.PendingCopy]:
        return outbox.pending_copies(self.conn)

    def apply_receipt(self, conversation_id: int, refs: list[bytes], kind: ReceiptKind) -> list[Message]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            changed = receipts.apply(self.conn, conversation_id, refs, kind)
            rows = [self._one(_SELECT_MESSAGES + " WHERE id = ?", (row_id,)) for row_id in changed]
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return [_message(row) for row in rows if row is not None]

    def incoming_refs(self, conversation_id: int, after_id: int, up_to_id: int) -> list[tuple[bytes, bytes]]:
        return receipts.incoming_refs(self.conn, conversation_id, after_id, up_to_id)

    def settle_copy(self, copy_id: int, seq: int | None, refusal: str | None, route: Route | None) -> Message | None:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            message_row = outbox.settle_copy(self.conn, copy_id, seq=seq, refusal=refusal, route=route)
            row = None if message_row is None else self._one(_SELECT_MESSAGES + " WHERE id = ?", (message_row,))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return None if row is None else _message(row)

    def history(self, conversation_id: int, limit: int, before: int | None) -> list[Message]:
        if limit <= 0:
            return []
        rows = self.conn.execute(
            _SELECT_MESSAGES + " WHERE conversation_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
            (conversation_id, (1 << 63) - 1 if before is None else before, limit),
        ).fetchall()
        return [_message(row) for row in reversed(rows)]

    # read markers

    def _mark_read(self, conversation_id: int, up_to: int) -> None:
        self.conn.execute(
            "INSERT INTO read_markers (conversation_id, last_read_id) VALUES (?, ?) ON CONFLICT (conversation_id)"
            " DO UPDATE SET last_read_id = max(last_read_id, excluded.last_read_id)",
            (conversation_id, up_to),
        )

    def mark_read(self, conversation_id: int, up_to: int | None) -> int:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self._require(conversation_id)
            if up_to is None:
                row = self._one("SELECT max(id) FROM messages WHERE conversation_id = ?", (conversation_id,))
                up_to = 0 if row is None or row[0] is None else int(row[0])
            self._mark_read(conversation_id, up_to)
            marker = self._one("SELECT last_read_id FROM read_markers WHERE conversation_id = ?", (conversation_id,))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        assert marker is not None
        return int(marker[0])

    def last_read(self, conversation_id: int) -> int:
        row = self._one("SELECT last_read_id FROM read_markers WHERE conversation_id = ?", (conversation_id,))
        return 0 if row is None else int(row[0])

    def unread_counts(self) -> dict[int, int]:
        rows = self.conn.execute(
            "SELECT c.id, count(m.id) FROM conversations c"
            " LEFT JOIN read_markers r ON r.conversation_id = c.id"
            " LEFT JOIN messages m ON m.conversation_id = c.id AND m.outgoing = 0"
            " AND m.id > coalesce(r.last_read_id, 0)"
            " GROUP BY c.id"
        ).fetchall()
        return {int(row[0]): int(row[1]) for row in rows}

    # settings

    def get_setting(self, key: str) -> str | None:
        row = self._one("SELECT value FROM settings WHERE key = ?", (key,))
        return None if row is None else str(row[0])

    def set_setting(self, key: str, value: str | None) -> None:
        if value is None:
            self.conn.execute("DELETE FROM settings WHERE key = ?", (key,))
        else:
            self.conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def settings(self) -> dict[str, str]:
        rows = self.conn.execute("SELECT key, value FROM settings ORDER BY key").fetchall()
        return {str(row[0]): str(row[1]) for row in rows}

    def set_last_seq(self, recipient_key: bytes, channel_id: bytes, seq: int) -> None:
        # Never moves backwards: a late, out-of-order call cannot make the client reprocess envelopes.
        self.conn.execute(
            "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            " WHERE CAST(excluded.value AS INTEGER) > CAST(settings.value AS INTEGER)",
            (_last_seq_key(recipient_key, channel_id), str(seq)),
        )

    def get_last_seq(self, recipient_key: bytes, channel_id: bytes) -> int:
        value = self.get_setting(_last_seq_key(recipient_key, channel_id))
        return 0 if value is None else int(value)


class ConversationStore:
    """The conversation database of one client. Open with `await ConversationStore.open(path, key)`.

    Every method is a coroutine that runs on the store's own worker thread (see the module docstring).
    """

    def __init__(self, database: _Database, executor: ThreadPoolExecutor, encrypted: bool) -> None:
        self._db: _Database | None = database
        self._executor = executor
        self._path = database.path
        self._encrypted = encrypted

    @classmethod
    async def open(
        cls, path: Path, key: bytes | bytearray | None = None, *, clock: Callable[[], float] = time.time
    ) -> ConversationStore:
        """Open or create the database at `path`.

        `key` is the raw 32-byte database key (`StateKeys.database`), or None for a plain SQLite database.
        Raises `WrongStatePassword` (wrong key; nothing written), `StatePasswordRequired` (encrypted file, no
        key), `SchemaTooNew`, `CorruptState`. A plain database opened with a key is encrypted in place.
        """
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convdb")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, _open_connection, path, key)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(_Database(conn, path, clock), executor, key is not None)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def encrypted(self) -> bool:
        """False: the database is a plain SQLite file; the client must warn that state is stored in clear."""
        return self._encrypted

    @property
    def closed(self) -> bool:
        return self._db is None

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is None:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, db.conn.close)
        finally:
            self._executor.shutdown(wait=False)

    async def __aenter__(self) -> ConversationStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _run(self, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._db is None:
            raise StoreClosed("the conversation store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(method, *args, **kwargs))

    def _database(self) -> _Database:
        if self._db is None:
            raise StoreClosed("the conversation store is closed")
        return self._db

    # conversations

    async def create_conversation(
        self,
        kind: ConversationKind,
        name: str,
        *,
        group_id: bytes | None = None,
        channel_id: bytes | None = None,
        peer_identity_key: bytes | None = None,
    ) -> Conversation:
        """Raises `ConversationExists` if the name, group id, channel id or (for a DM) the peer is taken."""
        db = self._database()
        return await self._run(db.create_conversation, kind, name, group_id, channel_id, peer_identity_key)

    async def get_conversation(self, conversation_id: int) -> Conversation | None:
        return await self._run(self._database().get_conversation, conversation_id)

    async def find_by_name(self, name: str) -> Conversation | None:
        return await self._run(self._database().find_by, "name", name)

    async def find_by_group_id(self, group_id: bytes) -> Conversation | None:
        return await self._run(self._database().find_by, "group_id", group_id)

    async def find_by_channel(self, channel_id: bytes) -> Conversation | None:
        return await self._run(self._database().find_by, "channel_id", channel_id)

    async def find_dm(self, peer_identity_key: bytes) -> Conversation | None:
        return await self._run(self._database().find_dm, peer_identity_key)

    async def notes(self) -> Conversation | None:
        """The notes-to-self conversation, if created."""
        return await self._run(self._database().notes)

    async def list_conversations(self) -> list[Conversation]:
        """Most recent activity first."""
        return await self._run(self._database().list_conversations)

    async def rename_conversation(self, conversation_id: int, name: str) -> None:
        await self._run(self._database().rename_conversation, conversation_id, name)

    async def set_group_id(self, conversation_id: int, group_id: bytes | None) -> None:
        await self._run(self._database().set_group_id, conversation_id, group_id)

    async def delete_conversation(self, conversation_id: int) -> bool:
        """Delete it with its members, messages and read marker; False if there was none."""
        return await self._run(self._database().delete_conversation, conversation_id)

    # members

    async def add_member(self, conversation_id: int, identity_key: bytes, username: str | None = None) -> None:
        """Add or update (a None username keeps the known one)."""
        await self._run(self._database().add_member, conversation_id, identity_key, username)

    async def remove_member(self, conversation_id: int, identity_key: bytes) -> bool:
        return await self._run(self._database().remove_member, conversation_id, identity_key)

    async def list_members(self, conversation_id: int) -> list[Member]:
        return await self._run(self._database().list_members, conversation_id)

    # messages

    async def add_message(
        self,
        conversation_id: int,
        message_id: bytes,
        body: str,
        *,
        sender_identity_key: bytes | None = None,
        sender_username: str | None = None,
        sent_at: float | None = None,
        received_at: float | None = None,
        outgoing: bool = False,
        server_seq: int | None = None,
        state: MessageState | None = None,
        copies: Sequence[outbox.OutgoingCopy] = (),
        ref: bytes | None = None,
        route: Route | None = None,
    ) -> Message | None:
        """Store a message; None if `message_id` is already stored (a redelivery), which changes nothing.

        An outgoing message to be sent has `state` "pending" and its sealed `copies`, stored with it atomically
        (see `outbox`).

        An outgoing message does not move the read marker (`qpc send` leaves what came before it unread for
        `qpc recv`; the REPL marks read what it shows). `received_at` defaults to now.
        """
        db = self._database()
        return await self._run(
            db.add_message,
            conversation_id,
            message_id,
            body,
            sender_identity_key,
            sender_username,
            sent_at,
            received_at,
            outgoing,
            server_seq,
            state,
            copies,
            ref,
            route,
        )

    async def get_message(self, message_id: bytes) -> Message | None:
        return await self._run(self._database().get_message, message_id)

    async def apply_receipt(self, conversation_id: int, refs: list[bytes], kind: ReceiptKind) -> list[Message]:
        """Record a receipt for outgoing messages of the conversation; returns those whose receipt moved on."""
        return await self._run(self._database().apply_receipt, conversation_id, refs, kind)

    async def incoming_refs(self, conversation_id: int, after_id: int, up_to_id: int) -> list[tuple[bytes, bytes]]:
        """(sender, reference) of the incoming messages after_id < id <= up_to_id, oldest first (read receipts)."""
        return await self._run(self._database().incoming_refs, conversation_id, after_id, up_to_id)

    async def pending_copies(self) -> list[outbox.PendingCopy]:
        """The outbox: copies of outgoing messages the node has not taken yet, oldest first."""
        return await self._run(self._database().pending_copies)

    async def settle_copy(
        self,
        copy_id: int,
        *,
        seq: int | None = None,
        refusal: str | None = None,
        route: Route | None = None,
    ) -> Message | None:
        """A copy was taken by the node (`seq`, route "node"), by the recipient itself (route "direct") or refused
        (`refusal`); returns its message if its state is now final (sent or failed)."""
        return await self._run(self._database().settle_copy, copy_id, seq, refusal, route)

    async def history(self, conversation_id: int, limit: int = 50, before: int | None = None) -> list[Message]:
        """The last `limit` messages with `id < before` (all if None), oldest first."""
        return await self._run(self._database().history, conversation_id, limit, before)

    # read markers

    async def mark_read(self, conversation_id: int, up_to: int | None = None) -> int:
        """Move the read marker to `up_to` (default: the newest message); it never moves back. Returns it."""
        return await self._run(self._database().mark_read, conversation_id, up_to)

    async def last_read(self, conversation_id: int) -> int:
        """The id of the last read message (0: none)."""
        return await self._run(self._database().last_read, conversation_id)

    async def unread_counts(self) -> dict[int, int]:
        """Conversation id -> incoming messages after its read marker (every conversation is listed)."""
        return await self._run(self._database().unread_counts)

    async def unread_count(self, conversation_id: int) -> int:
        return (await self.unread_counts()).get(conversation_id, 0)

    # settings

    async def get_setting(self, key: str) -> str | None:
        return await self._run(self._database().get_setting, key)

    async def set_setting(self, key: str, value: str | None) -> None:
        """Set, or delete with None."""
        await self._run(self._database().set_setting, key, value)

    async def settings(self) -> dict[str, str]:
        return await self._run(self._database().settings)

    async def get_last_seq(self, recipient_key: bytes, channel_id: bytes = b"") -> int:
        """The last processed server seq of an inbox (0: none)."""
        return await self._run(self._database().get_last_seq, recipient_key, channel_id)

    async def set_last_seq(self, recipient_key: bytes, channel_id: bytes, seq: int) -> None:
        """Record a processed seq; it only ever increases."""
        await self._run(self._database().set_last_seq, recipient_key, channel_id, seq)


__all__ = [
    "CONVERSATION_KINDS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Conversation",
    "ConversationKind",
    "ConversationStore",
    "Member",
    "Message",
    "Migration",
    "database_file_kind",
    "encrypt_in_place",
]
