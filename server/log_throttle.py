"""Log lines for faults that repeat: the first occurrence of a kind is logged at once, later ones only counted.

A store outage or a client sending garbage can fail thousands of calls a second. Logging each one (let alone
with a traceback) floods the log and costs the node more than the fault itself. `LogThrottle` logs a fault kind
once per period, and when the period ends with more occurrences it logs one line with how many were held back.
Kinds are caller-chosen keys (`"store unreachable"`, `"malformed call from 127.0.0.2"`); their number is
bounded so that a stream of distinct keys cannot grow memory.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(slots=True)
class _Kind:
    window_start: float
    suppressed: int = 0


class LogThrottle:
    def __init__(
        self,
        logger: logging.Logger,
        *,
        period_s: float = 60.0,
        max_kinds: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if period_s <= 0 or max_kinds < 1:
            raise ValueError("LogThrottle needs period_s > 0 and max_kinds >= 1")
        self._log = logger
        self._period = period_s
        self._max_kinds = max_kinds
        self._clock = clock
        self._kinds: OrderedDict[Hashable, _Kind] = OrderedDict()

    def log(self, level: int, kind: Hashable, message: str, *args: object) -> bool:
        """Logs `message % args` unless `kind` was logged less than a period ago; returns whether it logged."""
        now = self._clock()
        entry = self._kinds.get(kind)
        if entry is not None and now - entry.window_start < self._period:
            entry.suppressed += 1
            self._kinds.move_to_end(kind)
            return False
        if entry is not None and entry.suppressed:
            self._log.log(
                level,
                "%s (repeated %d more times in the last %.0f s)",
                message % args if args else message,
                entry.suppressed,
                now - entry.window_start,
            )
        else:
            self._log.log(level, message, *args)
        self._kinds[kind] = _Kind(now)
        self._kinds.move_to_end(kind)
        while len(self._kinds) > self._max_kinds:
            self._kinds.popitem(last=False)
        return True

    def warning(self, kind: Hashable, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, kind, message, *args)

    def error(self, kind: Hashable, message: str, *args: object) -> bool:
        return self.log(logging.ERROR, kind, message, *args)

    def info(self, kind: Hashable, message: str, *args: object) -> bool:
        return self.log(logging.INFO, kind, message, *args)

    def suppressed(self, kind: Hashable) -> int:
        """How many occurrences of `kind` were held back in its current period."""
        entry = self._kinds.get(kind)
        return 0 if entry is None else entry.suppressed

    def __len__(self) -> int:
        return len(self._kinds)
