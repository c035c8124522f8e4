"""Receipts in the local state: which incoming message answers to which reference (to send receipts for it),
and how far each outgoing message got with its recipients (delivered, read).

Runs on the conversation store's worker thread (see `conversations`).
"""

from __future__ import annotations

from typing import Literal

from . import _sqlcipher as sql

ReceiptKind = Literal["delivered", "read"]
_RANK = {"delivered": 1, "read": 2}

STATEMENTS: tuple[str, ...] = (
    # Incoming: the sender's reference of the message (SHA-256 of b"out" | MLS ciphertext), for receipts.
    "ALTER TABLE messages ADD COLUMN ref BLOB",
    # Outgoing: the furthest receipt any recipient sent (NULL: none yet).
    "ALTER TABLE messages ADD COLUMN receipt TEXT CHECK (receipt IS NULL OR receipt IN ('delivered', 'read'))",
    "CREATE INDEX messages_by_ref ON messages (ref) WHERE ref IS NOT NULL",
)
"""The schema migration that adds receipts (applied by `conversations`)."""


def apply(conn: sql.Connection, conversation_id: int, refs: list[bytes], kind: ReceiptKind) -> list[int]:
    """Record `kind` for this conversation's outgoing messages among `refs` (it never goes back from read to
    delivered); returns the row ids that changed."""
    changed: list[int] = []
    for ref in refs:
        row = conn.execute(
            "SELECT id, receipt FROM messages WHERE conversation_id = ? AND message_id = ? AND outgoing = 1",
            (conversation_id, ref),
        ).fetchone()
        if row is None or _RANK.get(str(row[1]), 0) >= _RANK[kind]:
            continue
        conn.execute("UPDATE messages SET receipt = ? WHERE id = ?", (kind, int(row[0])))
        changed.append(int(row[0]))
    return changed


def incoming_refs(
    conn: sql.Connection, conversation_id: int, after_id: int, up_to_id: int
) -> list[tuple[bytes, bytes]]:
    """(sender identity key, reference) of the incoming messages with after_id < id <= up_to_id."""
    rows = conn.execute(
        "SELECT sender_identity_key, ref FROM messages WHERE conversation_id = ? AND id > ? AND id <= ?"
        " AND outgoing = 0 AND ref IS NOT NULL AND sender_identity_key IS NOT NULL ORDER BY id",
        (conversation_id, after_id, up_to_id),
    ).fetchall()
    return [(bytes(row[0]), bytes(row[1])) for row in rows]
