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
