"""SQLite: idempotency keys, written in the enqueue's own savepoint."""

from __future__ import annotations

import sqlite3
from collections import Counter

from ..groups import pack_seqs, unpack_seqs
from ..idempotency import IdempotencyBase, IdempotencyKey, KeyReused
from ..sqlite_writer import OpContext
from .engine import SqliteEngine
from .inboxes import answer_parked, enqueue_one


class SqliteIdempotency(IdempotencyBase, SqliteEngine):
    async def _enqueue_once(
        self,
        key: IdempotencyKey,
        digest: bytes,
        recipients: list[bytes],
        channel: bytes,
        payload: bytes,
        expires_at: float | None,
        now: float,
        sender: bytes | None,
    ) -> list[int]:
        limits = self._limits
        inboxes = [(r, channel) for r in recipients]
        single = len(inboxes) == 1

        def op(conn: sqlite3.Connection, ctx: OpContext) -> list[int]:
            known = conn.execute(
                "SELECT digest, seqs FROM idempotency_keys WHERE scope = ? AND key = ? AND expires_at > ?",
                (key.scope, key.key, now),
            ).fetchone()
            if known is not None:
                if bytes(known[0]) != digest:
                    raise KeyReused()
                return list(unpack_seqs(bytes(known[1])))
            seqs = [
                enqueue_one(conn, limits, inbox, payload, expires_at, now, None if single else index, sender)
                for index, inbox in enumerate(inboxes)
            ]
            _remember(conn, key, digest, seqs, limits.max_idempotency_keys_per_sender)
            ctx.touched.extend(inboxes)
            return seqs

        return await self._write(op, removals=lambda: answer_parked(self._local_wakeups, limits, inboxes, now))

    async def _purge_idempotency_keys(self, now: float) -> int:
        def op(conn: sqlite3.Connection, ctx: OpContext) -> int:
            gone = Counter(
                bytes(row[0])
                for row in conn.execute("DELETE FROM idempotency_keys WHERE expires_at <= ? RETURNING scope", (now,))
            )
            conn.executemany(
                "UPDATE idempotency_scopes SET keys = keys - ? WHERE scope = ?", [(n, s) for s, n in gone.items()]
            )
            conn.execute("DELETE FROM idempotency_scopes WHERE keys <= 0")
            return sum(gone.values())

        return await self._write(op, frees_space=True)


def _remember(conn: sqlite3.Connection, key: IdempotencyKey, digest: bytes, seqs: list[int], cap: int) -> None:
    """Stores the key (in place of an expired one of the same name) and keeps its sender within `cap` keys."""
    replaced = conn.execute("DELETE FROM idempotency_keys WHERE scope = ? AND key = ?", (key.scope, key.key)).rowcount
    conn.execute(
        "INSERT INTO idempotency_keys (scope, key, digest, seqs, expires_at) VALUES (?, ?, ?, ?, ?)",
        (key.scope, key.key, digest, pack_seqs(seqs), key.expires_at),
    )
    if replaced:
        return
    held = conn.execute(
        "INSERT INTO idempotency_scopes (scope, keys) VALUES (?, 1)"
        " ON CONFLICT (scope) DO UPDATE SET keys = keys + 1 RETURNING keys",
        (key.scope,),
    ).fetchone()[0]
    if held > cap:
        conn.execute(
            "DELETE FROM idempotency_keys WHERE rowid ="
            " (SELECT rowid FROM idempotency_keys WHERE scope = ? ORDER BY expires_at LIMIT 1)",
            (key.scope,),
        )
        conn.execute("UPDATE idempotency_scopes SET keys = keys - 1 WHERE scope = ?", (key.scope,))
