"""Inbox wake-ups across nodes sharing one PostgreSQL database, by LISTEN/NOTIFY.

A committing node calls `pg_notify(CHANNEL, payload)` inside its write transaction (PostgreSQL delivers it only if
that transaction commits) and wakes its own waiters directly. Every node keeps one dedicated connection, outside
the pool, that LISTENs on CHANNEL and wakes the local waiters of the inboxes named by other nodes' notifications.

If that connection drops, notifications sent meanwhile are lost to us; so it is reconnected with backoff and, once
LISTEN is in place again, every local waiter is woken: each re-checks its inbox, which finds whatever arrived
during the gap. Nothing polls inboxes. A light liveness query on the listening connection notices a connection
that died silently (no FIN from the server), which would otherwise hide lost notifications forever.

Payload: `<node id hex>;<recipient hex>.<channel hex>,...`, split to stay under PostgreSQL's 8000-byte limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from quicnprotochat.server.log_throttle import LogThrottle

from .base import Inbox
from .wakeups import InProcessWakeups

log = logging.getLogger(__name__)

CHANNEL = "qpc_inbox"
MAX_PAYLOAD = 7900
"""PostgreSQL refuses payloads of 8000 bytes or more."""

Connect = Callable[[], Awaitable[Any]]


def encode_payloads(node_id: str, inboxes: Iterable[Inbox]) -> list[str]:
    """Compact notification payloads naming these inboxes, each under MAX_PAYLOAD bytes."""
    head = node_id + ";"
    payloads: list[str] = []
    current: list[str] = []
    size = len(head)
    for recipient, channel in sorted(set(inboxes)):
        item = f"{recipient.hex()}.{channel.hex()}"
        if current and size + 1 + len(item) > MAX_PAYLOAD:
            payloads.append(head + ",".join(current))
            current, size = [], len(head)
        current.append(item)
        size += len(item) + 1
    if current:
        payloads.append(head + ",".join(current))
    return payloads


def decode_payload(payload: str) -> tuple[str, list[Inbox]]:
    """(node id, inboxes); ValueError for a payload that is not ours."""
    node_id, _, items = payload.partition(";")
    if not node_id or not items:
        raise ValueError("not an inbox notification")
    inboxes: list[Inbox] = []
    for item in items.split(","):
        recipient, dot, channel = item.partition(".")
        if not dot:
            raise ValueError("not an inbox notification")
        inboxes.append((bytes.fromhex(recipient), bytes.fromhex(channel)))
    return node_id, inboxes


class PostgresWakeups(InProcessWakeups):
    """Local waiters (as `InProcessWakeups`) fed also by other nodes' notifications."""

    def __init__(
        self,
        connect: Connect,
        node_id: str,
        *,
        backoff_initial: float = 0.05,
        backoff_max: float = 1.0,
        liveness_interval: float = 15.0,
    ) -> None:
        super().__init__()
        self._connect = connect
        self.node_id = node_id
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._faults = LogThrottle(log, period_s=30.0)
        self._liveness_interval = liveness_interval
        self._conn: Any = None
        self._closing = False
        self._reconnecting: asyncio.Task[None] | None = None
        self._liveness: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self.reconnects = 0
        """How many times the listening connection was re-established (tests and operators watch this)."""

    # ── lifecycle ─────────────────────────────────────────────────────────────────────────────────────────────

    async def start(self) -> None:
        """Connect and LISTEN; raises if the database cannot be reached (the store then fails to open)."""
        await self._listen()
        self._liveness = asyncio.create_task(self._check_liveness(), name="qpc-pg-listener-liveness")

    async def close(self) -> None:
        self._closing = True
        for task in (self._reconnecting, self._liveness):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        conn, self._conn = self._conn, None
        self._connected.clear()
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)

    @property
    def listening(self) -> bool:
        return self._connected.is_set()

    @property
    def listener_pid(self) -> int | None:
        """The server process id of the listening connection (tests terminate it)."""
        conn = self._conn
        return None if conn is None or conn.is_closed() else int(conn.get_server_pid())

    async def wait_listening(self) -> None:
        await self._connected.wait()

    def wake_all(self) -> None:
        """Wake every local waiter; each re-checks its inbox, so a spurious wake-up costs one read."""
        self.notify(list(self._waiters))

    def payloads(self, inboxes: Iterable[Inbox]) -> list[str]:
        return encode_payloads(self.node_id, inboxes)

    # ── the listening connection ──────────────────────────────────────────────────────────────────────────────

    async def _listen(self) -> None:
        conn = await self._connect()
        try:
            conn.add_termination_listener(self._on_terminated)
            await conn.add_listener(CHANNEL, self._on_notification)
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.close(timeout=5)
            raise
        self._conn = conn
        self._connected.set()

    def _on_notification(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            node_id, inboxes = decode_payload(payload)
        except ValueError:
            log.warning("ignoring a malformed notification on %s", CHANNEL)
            return
        if node_id != self.node_id:  # our own commits woke our waiters already
            self.notify(inboxes)

    def _on_terminated(self, conn: Any) -> None:
        if conn is not self._conn or self._closing:
            return
        self._connected.clear()
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.create_task(self._reconnect(), name="qpc-pg-listener-reconnect")

    async def _reconnect(self) -> None:
        delay = self._backoff_initial
        while not self._closing:
            old = self._conn
            if old is not None and not old.is_closed():
                old.terminate()
            try:
                await self._listen()
            except Exception as exc:  # noqa: BLE001 - whatever failed (network, server, auth): try again later
                self._faults.warning(
                    "reconnect", "inbox listener: reconnect failed (%s); retrying with backoff", type(exc).__name__
                )
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not crypto
                delay = min(delay * 2, self._backoff_max)
                continue
            self.reconnects += 1
            log.info("inbox listener reconnected; waking every local waiter to re-check")
            # LISTEN is in place again: whatever was committed during the gap is found by this re-check, and
            # anything committed from now on is notified.
            self.wake_all()
            return

    async def _check_liveness(self) -> None:
        while True:
            await asyncio.sleep(self._liveness_interval)
            conn = self._conn
            if conn is None or conn.is_closed() or not self._connected.is_set():
                continue
            try:
                await conn.fetchval("SELECT 1", timeout=self._liveness_interval)
            except Exception:  # noqa: BLE001 - whatever went wrong, this connection can no longer be trusted
                log.warning("inbox listener connection is not answering; reconnecting")
                conn.terminate()
                self._on_terminated(conn)
