"""LogThrottle: one line per fault kind and period, a count of what was held back, bounded memory."""

from __future__ import annotations

import logging

import pytest

from quicnprotochat.server.log_throttle import LogThrottle


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_period_then_a_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    throttle = LogThrottle(logging.getLogger("t"), period_s=10, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t"):
        assert throttle.warning("store", "store unreachable: %s", "ConnectionRefused")
        for _ in range(500):
            assert not throttle.warning("store", "store unreachable: %s", "ConnectionRefused")
        assert throttle.suppressed("store") == 500
        clock.now += 10
        assert throttle.warning("store", "store unreachable: %s", "ConnectionRefused")
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "store unreachable: ConnectionRefused",
        "store unreachable: ConnectionRefused (repeated 500 more times in the last 10 s)",
    ]


def test_kinds_are_independent_and_bounded(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    throttle = LogThrottle(logging.getLogger("t"), period_s=10, max_kinds=50, clock=clock)
    with caplog.at_level(logging.INFO, logger="t"):
        for i in range(10_000):
            throttle.info(("malformed", i), "malformed call from %s", i)
    assert len(throttle) == 50
    assert len(caplog.records) == 10_000  # distinct kinds are each logged: the bound is on memory, not lines


def test_bad_settings_refused() -> None:
    with pytest.raises(ValueError):
        LogThrottle(logging.getLogger("t"), period_s=0)
