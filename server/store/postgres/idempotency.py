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
                " expires_at = excluded.expires_at WHERE k.expires_at <= $5 RETURNING (xmax = 0) AS fresh",
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
            if claimed["fresh"]:  # a new key, not an expired one taken over: the sender holds one more
                await _count_key(conn, key.scope, self._limits.max_idempotency_keys_per_sender)
            return seqs

        # Run alone (no merge data): the merged statement knows nothing of keys.
        return await self._writer.submit(run, inboxes)

    async def _purge_idempotency_keys(self, now: float) -> int:
        async def purge(conn: Any) -> int:
            removed = await conn.fetchval(
                "WITH gone AS (DELETE FROM idempotency_keys WHERE expires_at <= $1 RETURNING scope),"
                " per AS (SELECT scope, count(*) AS n FROM gone GROUP BY scope),"
                " counted AS (UPDATE idempotency_scopes s SET keys = s.keys - per.n FROM per WHERE s.scope = per.scope)"
                " SELECT coalesce(sum(n), 0) FROM per",
                now,
            )
            await conn.execute("DELETE FROM idempotency_scopes WHERE keys <= 0")
            return int(removed)

        return await self._transact(purge)


async def _count_key(conn: Any, scope: bytes, cap: int) -> None:
    """The sender holds one key more; past `cap`, its oldest is forgotten."""
    held = await conn.fetchval(
        "INSERT INTO idempotency_scopes AS s (scope, keys) VALUES ($1, 1)"
        " ON CONFLICT (scope) DO UPDATE SET keys = s.keys + 1 RETURNING keys",
        scope,
    )
    if held > cap:
        await conn.execute(
            "DELETE FROM idempotency_keys WHERE ctid ="
            " (SELECT ctid FROM idempotency_keys WHERE scope = $1 ORDER BY expires_at LIMIT 1)",
            scope,
        )
        await conn.execute("UPDATE idempotency_scopes SET keys = keys - 1 WHERE scope = $1", scope)
