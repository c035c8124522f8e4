"""Token buckets keyed by identity, address or username, refusing calls with a retry-after hint."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from quicnprotochat.common.errors import ResourceExhausted


@dataclass(frozen=True)
class RateLimit:
    rate: float  # tokens added per second
    burst: int  # bucket size: how many calls may come at once

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a rate limit needs rate > 0 and burst >= 1")


class TokenBuckets:
    """One bucket per key; full buckets are forgotten so idle keys cost no memory."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self.limit = limit
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key -> (tokens, updated_at)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable, cost: float = 1.0) -> float | None:
        """Takes `cost` tokens: None when allowed, else the seconds until it would be."""
        now = self._clock()
        tokens, updated = self._buckets.get(key, (float(self.limit.burst), now))
        tokens = min(float(self.limit.burst), tokens + (now - updated) * self.limit.rate)
        if tokens < cost:
            self._buckets[key] = (tokens, now)
            return (cost - tokens) / self.limit.rate
        self._buckets[key] = (tokens - cost, now)
        if len(self._buckets) > self._max_keys:
            self._forget_full(now)
        return None

    def check(self, key: Hashable, what: str) -> None:
        retry_after = self.take(key)
        if retry_after is not None:
            raise ResourceExhausted(f"rate limit for {what} reached", retry_after=retry_after)

    def _forget_full(self, now: float) -> None:
        rate, burst = self.limit.rate, self.limit.burst
        full = [key for key, (tokens, updated) in self._buckets.items() if tokens + (now - updated) * rate >= burst]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) > self._max_keys:
            # Every tracked key is busy: keep the newest half rather than grow without bound.
            for key in list(self._buckets)[: len(self._buckets) // 2]:
                del self._buckets[key]


@dataclass(frozen=True)
class RateLimits:
    per_identity: RateLimit
    per_address: RateLimit
    login_per_username: RateLimit
    login_per_address: RateLimit
    sealed_per_connection: RateLimit


class RateLimiter:
    """Every bucket the node keeps, checked by the RPC layer before it calls a service."""

    def __init__(self, limits: RateLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.identity = TokenBuckets(limits.per_identity, clock)
        self.address = TokenBuckets(limits.per_address, clock)
        self.login_username = TokenBuckets(limits.login_per_username, clock)
        self.login_address = TokenBuckets(limits.login_per_address, clock)
        self.sealed_connection = TokenBuckets(limits.sealed_per_connection, clock)
