"""How each message travelled: straight between the two clients (direct delivery over iroh) or through the
node's inbox. Shown by the REPL; kept with the message.

Runs on the conversation store's worker thread (see `conversations`).
"""

from __future__ import annotations

from typing import Literal

from . import _sqlcipher as sql

Route = Literal["direct", "node", "mixed"]
"""Incoming: direct or node. Outgoing: direct or node when every copy went that way, mixed otherwise."""

STATEMENTS: tuple[str, ...] = (
    # NULL: notes, messages not sent yet, and everything stored before routes were kept.
    "ALTER TABLE messages ADD COLUMN route TEXT CHECK (route IS NULL OR route IN ('direct', 'node', 'mixed'))",
)
"""The schema migration that adds routes (applied by `conversations`)."""


def record_copy_route(conn: sql.Connection, message_row: int, route: Route) -> None:
    """One more copy of an outgoing message went `route`: the message's route stays, or becomes mixed."""
    conn.execute(
        "UPDATE messages SET route = CASE WHEN route IS NULL OR route = ? THEN ? ELSE 'mixed' END WHERE id = ?",
        (route, route, message_row),
    )
