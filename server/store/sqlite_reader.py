"""The SQLite store's reader thread: one read connection, reads answered in batches.

A `ThreadPoolExecutor` costs the event loop a lock dance, a work item, a concurrent future and a self-pipe write
per read; with thousands of parked `fetchWait`s polling it showed up in the node's profile. Here the loop only puts
the read on a queue. The thread takes everything queued, runs it in one read transaction (one snapshot taken after
every one of those reads was submitted, so each still sees every write committed before it asked) and hands all
the answers back to the loop in one call.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .base import StoreError
from .store_thread import StoreThread, settle

T = TypeVar("T")

MAX_BATCH = 64
"""Bounds how long the first read of a burst waits for the others' answers."""

ReadFn = Callable[[sqlite3.Connection], T]


@dataclass(slots=True)
class _Read(Generic[T]):
    fn: ReadFn[T]
    future: asyncio.Future[T]


_Outcome = tuple["_Read[Any]", Any, BaseException | None]


class ReadThread(StoreThread):
    """Owns `conn` from construction until `close()` returns; `conn` is closed by then."""

    def __init__(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> None:
        self._conn = conn
        super().__init__(loop, "qpc-store-read")

    async def read(self, fn: ReadFn[T]) -> T:
        future: asyncio.Future[T] = self._loop.create_future()
        self._put(_Read(fn, future))
        return await future

    # ── reader thread ─────────────────────────────────────────────────────────────────────────────────────────

    def _run(self) -> None:
        try:
            stopping = False
            while not stopping:
                batch, stopping = self._take(MAX_BATCH)
                if batch:
                    self._call_on_loop(self._deliver, self._run_batch(batch))
        finally:
            try:
                self._conn.close()
            finally:
                self._call_on_loop(self._set_stopped)

    def _run_batch(self, batch: list[_Read[Any]]) -> list[_Outcome]:
        conn = self._conn
        outcomes: list[_Outcome] = []
        try:
            conn.execute("BEGIN")
        except sqlite3.Error as exc:
            return [(read, None, _read_error(exc)) for read in batch]
        try:
            for read in batch:
                try:
                    outcomes.append((read, read.fn(conn), None))
                except sqlite3.Error as exc:
                    outcomes.append((read, None, _read_error(exc)))
                    # An error may have ended the transaction; the next read needs one of its own.
                    if not conn.in_transaction:
                        conn.execute("BEGIN")
                except Exception as exc:  # noqa: BLE001 - a read's own failure is that caller's, not the batch's
                    outcomes.append((read, None, exc))
        except sqlite3.Error as exc:
            answered = len(outcomes)
            outcomes += [(read, None, _read_error(exc)) for read in batch[answered:]]
        finally:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("COMMIT")
        return outcomes

    # ── back on the event loop ────────────────────────────────────────────────────────────────────────────────

    @staticmethod
    def _deliver(outcomes: list[_Outcome]) -> None:
        for read, result, exc in outcomes:
            settle(read.future, result, exc)


def _read_error(exc: sqlite3.Error) -> StoreError:
    error = StoreError("storage read failed")
    error.__cause__ = exc
    return error
