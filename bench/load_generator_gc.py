"""Keeping the load generator's garbage collection out of the latencies it measures.

One bench process holds what a thousand users' processes would: 1,000 connections and their clients, 400,000+
objects. Python's collector walks them: full collections of 200 ms and more, and young ones of 1-15 ms as the
clients' timers and calls come and go. A call in flight while the bench collects is measured that much slower,
though no user's client would have paused. For the measured window the bench therefore freezes its heap as set
up (never walked again) and stops collecting, and starts again after the window. The bench's clients make no
cyclic garbage while they run (its collections in the window found none), so memory is freed as before, by
reference counting. If a long window piles up objects anyway, a young collection runs once they pass a bound.
"""

from __future__ import annotations

import gc
from typing import Any

YOUNG_BOUND = 200_000
"""Young objects (allocations minus frees since the last collection) after which the window collects them after all:
about 20 ms, and a bound on the memory a scenario that does make cyclic garbage can hold until the window ends."""


class QuietCollector:
    """`start` before the measured window, `check` now and then within it, `stop` after it."""

    def __init__(self) -> None:
        self.frozen = 0
        self.collections = 0
        self._stopped_collector = False

    def start(self) -> None:
        gc.collect()
        gc.freeze()
        self.frozen = gc.get_freeze_count()
        self._stopped_collector = gc.isenabled()
        gc.disable()

    def check(self) -> None:
        if self._stopped_collector and gc.get_count()[0] > YOUNG_BOUND:
            gc.collect(0)
            self.collections += 1

    def stop(self) -> None:
        if self._stopped_collector:
            gc.enable()
            self._stopped_collector = False
        if self.frozen:
            gc.unfreeze()  # what the window left behind is collected again

    def figures(self) -> dict[str, Any]:
        return {"frozen_objects": self.frozen, "young_collections_in_window": self.collections}
