"""SQLite: idempotency keys, written in the enqueue's own savepoint."""

from __future__ import annotations

import sqlite3

from ..groups import pack_seqs, unpack_seqs
from ..idempotency import IdempotencyBase, IdempotencyKey, KeyReused
from ..sqlite_writer import OpContext
from .engine import SqliteEngine
from .inboxes import enqueue_one


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
            conn.execute(
                "INSERT OR REPLACE INTO idempotency_keys (scope, key, digest, seqs, expires_at) VALUES (?, ?, ?, ?, ?)",
                (key.scope, key.key, digest, pack_seqs(seqs), key.expires_at),
            )
            ctx.touched.extend(inboxes)
            return seqs

        return await self._write(op)

    async def _purge_idempotency_keys(self, now: float) -> int:
        def op(conn: sqlite3.Connection, ctx: OpContext) -> int:
            return conn.execute("DELETE FROM idempotency_keys WHERE expires_at <= ?", (now,)).rowcount

        return await self._write(op)
