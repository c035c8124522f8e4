"""What `health`, `qpc-server health` and the status method report: the store and the disk, checked for real."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from quicnprotochat.server.disk_space import DiskSpace
from quicnprotochat.server.store import Store, StoreHealth

CACHE_S = 0.5
"""Probes of the store are shared: every health call within this long of the last probe gets its answer."""


@dataclass(frozen=True, slots=True)
class HealthReport:
    store: StoreHealth
    free_disk_bytes: int
    min_free_disk_bytes: int

    @property
    def problems(self) -> list[str]:
        found = []
        if not self.store.reachable:
            found.append(f"store unreachable ({self.store.detail})" if self.store.detail else "store unreachable")
        if not self.store.writer_alive:
            found.append("store writer down")
        if self.free_disk_bytes < self.min_free_disk_bytes:
            found.append(
                f"disk low ({self.free_disk_bytes >> 20} MiB free, floor {self.min_free_disk_bytes >> 20} MiB)"
            )
        return found

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def status(self) -> str:
        """ "ok", or "unhealthy: " and what is wrong; what the `health` method returns."""
        problems = self.problems
        return "ok" if not problems else "unhealthy: " + "; ".join(problems)


class HealthMonitor:
    def __init__(self, store: Store, disk: DiskSpace) -> None:
        self._store = store
        self._disk = disk
        self._last: HealthReport | None = None
        self._last_at = 0.0
        self._probing: asyncio.Future[HealthReport] | None = None

    async def check(self) -> HealthReport:
        if self._last is not None and time.monotonic() - self._last_at < CACHE_S:
            return self._last
        if self._probing is None:
            self._probing = asyncio.ensure_future(self._probe())
        probing = self._probing
        try:
            return await asyncio.shield(probing)
        finally:
            if self._probing is probing and probing.done():
                self._probing = None

    async def _probe(self) -> HealthReport:
        store = await self._store.probe()
        report = HealthReport(store, self._disk.free_bytes(), self._disk.floor_bytes)
        self._last, self._last_at = report, time.monotonic()
        return report
