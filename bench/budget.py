"""How much load a scenario or a baseline may still start (`Budget`), and spreading tasks over connections.

Shared by the scenarios and the baselines (which measure the same loads against bare echo servers).
"""

from __future__ import annotations

import time


class Budget:
    """How many operations may still start: until the duration has passed or the count is used up."""

    def __init__(self, duration: float | None, count: int | None) -> None:
        self.duration = duration
        self.count = count
        self.taken = 0
        self.started = 0.0
        self.stopped = False

    def start(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def take(self) -> bool:
        if self.stopped:
            return False
        if self.count is not None and self.taken >= self.count:
            return False
        if self.duration is not None and self.elapsed() >= self.duration:
            return False
        self.taken += 1
        return True

    def fraction(self) -> float:
        parts = [0.0]
        if self.count:
            parts.append(self.taken / self.count)
        if self.duration:
            parts.append(self.elapsed() / self.duration)
        return min(1.0, max(parts))


def split(total: int, parts: int) -> list[int]:
    """`total` tasks over `parts` connections, as evenly as possible."""
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]
