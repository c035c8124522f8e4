"""Helpers shared by the store tests (a module, not conftest, so tests can import the types)."""

from __future__ import annotations

from dataclasses import dataclass, field

from quicnprotochat.server.store import Store, StoreLimits, open_store

T0 = 1_700_000_000.0


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
