"""The SQLite group-commit writer runs a batch without savepoints and falls back to them only when an operation
fails: the refused operation must roll back alone, even the part of its work it had already written."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from quicnprotochat.server.store import LimitExceeded, StoreLimits, open_store

from .store_testlib import hold_writer, key

FULL, OTHER = key(1), key(2)


async def test_a_refused_enqueue_in_a_batch_rolls_back_alone(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "store.db", StoreLimits(max_inbox_depth=2))
    try:
        assert [await store.enqueue(FULL, b"", b"m", None) for _ in range(2)] == [1, 2]

        # Everything submitted while the writer sleeps is committed in the one batch after it.
        held = hold_writer(store, 0.3)
        await asyncio.sleep(0.05)
        before = store.metrics().largest_batch
        results = await asyncio.gather(
            store.enqueue(OTHER, b"", b"a", None),
            store.enqueue(FULL, b"", b"refused", None),  # counts its seq, then finds the inbox full
            store.enqueue(OTHER, b"", b"b", None),
            return_exceptions=True,
        )
        await held
        assert store.metrics().largest_batch >= 3 > before

        assert results[0] == 1 and results[2] == 2
        assert isinstance(results[1], LimitExceeded)
        stats = await store.inbox_stats(FULL, b"")
        assert (stats.depth, stats.bytes, stats.last_seq) == (2, 2, 2)
        assert [m.payload for m in await store.peek(OTHER, b"")] == [b"a", b"b"]

        # The refused seq was never handed out: the next message in that inbox gets 3.
        await store.ack(FULL, b"", 2)
        assert await store.enqueue(FULL, b"", b"next", None) == 3
    finally:
        await store.close()


async def test_reads_queued_together_each_see_the_writes_before_them(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "store.db")
    try:
        seqs = await asyncio.gather(*(store.enqueue(key(10 + i), b"", bytes([i]), None) for i in range(40)))
        assert seqs == [1] * 40
        peeks = await asyncio.gather(*(store.peek(key(10 + i), b"") for i in range(40)))
        assert [[m.payload for m in found] for found in peeks] == [[bytes([i])] for i in range(40)]
        with pytest.raises(ValueError):
            await store.peek(key(10), b"", -1)
    finally:
        await store.close()
