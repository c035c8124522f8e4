"""Helpers shared by the store tests (a module, not conftest, so tests can import the types)."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
import time
from dataclasses import dataclass, field

from quicnprotochat.server.store import Store, StoreLimits, open_store
from quicnprotochat.server.store.groups import GroupDelivery, GroupWrite
from quicnprotochat.server.store.sqlite_writer import OpContext
from quicnprotochat.server.store.wakeups import ClaimableWaiter, InProcessWakeups, _Waiter

T0 = 1_700_000_000.0


def new_group_message(sender: bytes, recipient: bytes, payload: bytes) -> GroupWrite:
    """A proposal creating a group of the two (epoch 0) and delivering `payload` to `recipient`."""
    return GroupWrite(
        group_id=b"g" * 16,
        expected_epoch=None,
        epoch_after=0,
        members_after=frozenset({sender, recipient}),
        sender=sender,
        digest=hashlib.sha256(payload).digest(),
        is_commit=False,
        message_epoch=0,
        deliveries=(GroupDelivery(recipient, b"", payload),),
        expires_at=None,
    )


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Backend:
    name: str
    url: str
    clock: FakeClock
    opened: list[Store] = field(default_factory=list)

    async def open(self, limits: StoreLimits | None = None) -> Store:
        store = await open_store(self.url, limits, clock=self.clock)
        self.opened.append(store)
        return store

    async def close_all(self) -> None:
        for store in self.opened:
            await store.close()


async def parked(store: Store, count: int) -> None:
    """Until `count` fetchWait/peekWait waiters are parked: registered, and waiting after their first look at the
    inbox found nothing."""
    deadline = time.monotonic() + 10
    while (armed := _waiting(store)) != count:
        assert time.monotonic() < deadline, f"{armed} waiters parked, not {count}"
        await asyncio.sleep(0.01)


def _waiting(store: Store) -> int:
    # The node's in-process wake-ups (PostgreSQL's derive from them): a waiter has its future while it waits.
    return sum(1 for waiter in registered_waiters(store) if waiter._future is not None)


def claimed(store: Store) -> int:
    """Parked fetchWaits that an enqueue has claimed and that wait for the writer's answer (SQLite)."""
    return sum(1 for waiter in registered_waiters(store) if isinstance(waiter, ClaimableWaiter) and waiter.claimed)


def registered_waiters(store: Store) -> list[_Waiter]:
    """Every fetchWait/peekWait waiter registered with the store's wake-ups, parked or not."""
    wakeups = store.wakeups
    assert isinstance(wakeups, InProcessWakeups)
    return [waiter for waiters in wakeups._waiters.values() for waiter in waiters]


def hold_writer(store: Store, seconds: float, until: threading.Event | None = None) -> asyncio.Future[None]:
    """The SQLite store's writer thread busy for `seconds`, or until `until` is set if that comes first: whatever
    is submitted meanwhile is committed in the batch after it."""

    def sleep(conn: sqlite3.Connection, ctx: OpContext) -> None:
        if until is None:
            time.sleep(seconds)
        else:
            until.wait(seconds)

    writer = store._writer  # type: ignore[attr-defined]
    held: asyncio.Future[None] = asyncio.ensure_future(writer.submit(sleep))
    return held


def key(n: int) -> bytes:
    """A distinct 32-byte identity key."""
    return n.to_bytes(32, "big")


async def drain_all(store: Store, recipient: bytes, channel: bytes = b"") -> list[tuple[int, bytes]]:
    """Everything queued, without removing it."""
    messages = await store.peek(recipient, channel, store.limits.max_fetch)
    return [(m.seq, m.payload) for m in messages]


# A node that enqueues forever and prints each seq after enqueue returned (argv[1]: the store URL or path);
# the crash-durability tests SIGKILL it and hold the store to every printed seq.
ENQUEUE_FOREVER = """
import asyncio, sys
from quicnprotochat.server.store import open_store

async def main() -> None:
    store = await open_store(sys.argv[1])
    async def worker(w: int) -> None:
        i = 0
        while True:
            seq = await store.enqueue(bytes(32), b"", b"%d:%d" % (w, i), None)
            # Printed only after enqueue returned, i.e. after the commit: the parent holds us to every line.
            sys.stdout.write(f"{seq}\\n")
            sys.stdout.flush()
            i += 1
    await asyncio.gather(*(worker(w) for w in range(8)))

asyncio.run(main())
"""
