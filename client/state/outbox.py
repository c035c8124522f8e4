"""The outbox's tables: outgoing messages wait here, sealed, until the node has taken each copy.

An outgoing message is stored in `messages` with ``state = 'pending'`` together with one `outbox` row per
recipient holding the exact envelope bytes sealed for them. Sending the same bytes again after a lost
connection cannot show the message twice: receivers keep messages by the hash of the envelope. A row leaves the
outbox when the node accepts its envelope (its seq is kept on the message) or refuses it (the reason is kept);
when the last row of a message is gone, the message becomes ``sent``, or ``failed`` if any copy was refused.

Everything here runs on the conversation store's worker thread, inside its transactions (see `conversations`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from . import _sqlcipher as sql
from .routes import Route, record_copy_route

MessageState = Literal["pending", "sent", "failed"]
MESSAGE_STATES: tuple[MessageState, ...] = ("pending", "sent", "failed")

STATEMENTS: tuple[str, ...] = (
    # NULL for incoming messages and notes: they are not sent.
    "ALTER TABLE messages ADD COLUMN state TEXT CHECK (state IS NULL OR state IN ('pending', 'sent', 'failed'))",
    "ALTER TABLE messages ADD COLUMN failure TEXT",
    """CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        message_row INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
        recipient_key BLOB NOT NULL,
        recipient_name TEXT NOT NULL,
        channel_id BLOB NOT NULL,
        envelope BLOB NOT NULL
    )""",
    "CREATE INDEX outbox_by_message ON outbox (message_row)",
)
"""The schema migration that adds the outbox (applied by `conversations`)."""


@dataclass(frozen=True, slots=True)
class OutgoingCopy:
    """One recipient's copy of an outgoing message, before it is sealed and stored."""

    recipient_key: bytes
    recipient_name: str
    channel_id: bytes
    envelope: bytes


@dataclass(frozen=True, slots=True)
class PendingCopy:
    id: int
    message_row: int
    recipient_key: bytes
    recipient_name: str
    channel_id: bytes
    envelope: bytes


def add_copies(conn: sql.Connection, message_row: int, copies: list[OutgoingCopy]) -> None:
    for copy in copies:
        conn.execute(
            "INSERT INTO outbox (message_row, recipient_key, recipient_name, channel_id, envelope)"
            " VALUES (?, ?, ?, ?, ?)",
            (message_row, copy.recipient_key, copy.recipient_name, copy.channel_id, copy.envelope),
        )


def pending_copies(conn: sql.Connection) -> list[PendingCopy]:
    """Every copy not yet taken by the node, oldest first (the order they must be sent in)."""
    rows = conn.execute(
        "SELECT id, message_row, recipient_key, recipient_name, channel_id, envelope FROM outbox ORDER BY id"
    ).fetchall()
    return [PendingCopy(int(r[0]), int(r[1]), bytes(r[2]), str(r[3]), bytes(r[4]), bytes(r[5])) for r in rows]


def settle_copy(
    conn: sql.Connection, copy_id: int, *, seq: int | None, refusal: str | None, route: Route | None = None
) -> int | None:
    """Remove a copy the node took (`seq`), the recipient took directly, or the node refused (`refusal`);
    returns the message's row id when this was its last copy (its state is then final), else None. Runs inside
    the caller's transaction."""
    row = conn.execute("DELETE FROM outbox WHERE id = ? RETURNING message_row", (copy_id,)).fetchone()
    if row is None:
        return None
    message_row = int(row[0])
    if route is not None:
        record_copy_route(conn, message_row, route)
    if seq is not None:
        conn.execute("UPDATE messages SET server_seq = coalesce(server_seq, ?) WHERE id = ?", (seq, message_row))
    if refusal is not None:
        conn.execute(
            "UPDATE messages SET failure = CASE WHEN failure IS NULL THEN ? ELSE failure || '; ' || ? END WHERE id = ?",
            (refusal, refusal, message_row),
        )
    if conn.execute("SELECT 1 FROM outbox WHERE message_row = ? LIMIT 1", (message_row,)).fetchone() is not None:
        return None
    conn.execute(
        "UPDATE messages SET state = CASE WHEN failure IS NULL THEN 'sent' ELSE 'failed' END WHERE id = ?",
        (message_row,),
    )
    return message_row
