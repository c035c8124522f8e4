"""PostgreSQL: idempotency keys, claimed in the enqueue's own savepoint of the group-commit writer.

The key row is inserted first (ON CONFLICT DO NOTHING waits for a concurrent claim of the same key on any node to
commit or roll back): whoever inserts it enqueues; a repeat finds the committed row and its seqs.
"""

from __future__ import annotations

from typing import Any

from ..groups import pack_seqs, unpack_seqs
from ..idempotency import IdempotencyBase, IdempotencyKey, KeyReused
from .engine import PostgresEngine
from .enqueue import EnqueueOp


class PostgresIdempotency(IdempotencyBase, PostgresEngine):
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
        enqueue = EnqueueOp(self._limits, recipients, channel, payload, expires_at, now, sender)
        inboxes = [(r, channel) for r in enqueue.distinct]

        async def run(conn: Any, attempt: int) -> list[int]:
            claimed = await conn.fetchrow(
                "INSERT INTO idempotency_keys AS k (scope, key, digest, seqs, expires_at) VALUES ($1, $2, $3, '', $4)"
                " ON CONFLICT (scope, key) DO UPDATE SET digest = excluded.digest, seqs = '',"
                " expires_at = excluded.expires_at WHERE k.expires_at <= $5 RETURNING 1",
                key.scope,
                key.key,
                digest,
                key.expires_at,
                now,
            )
            if claimed is None:
                known = await conn.fetchrow(
                    "SELECT digest, seqs FROM idempotency_keys WHERE scope = $1 AND key = $2", key.scope, key.key
                )
                if bytes(known[0]) != digest:
                    raise KeyReused()
                return list(unpack_seqs(bytes(known[1])))
            seqs = await enqueue.run(conn, attempt)
            await conn.execute(
                "UPDATE idempotency_keys SET seqs = $3 WHERE scope = $1 AND key = $2",
                key.scope,
                key.key,
                pack_seqs(seqs),
            )
            return seqs

        # Run alone (no merge data): the merged statement knows nothing of keys.
        return await self._writer.submit(run, inboxes)

    async def _purge_idempotency_keys(self, now: float) -> int:
        return await self._execute1("DELETE FROM idempotency_keys WHERE expires_at <= $1", now)
