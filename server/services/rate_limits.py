"""Token buckets keyed by identity, address or username, refusing calls with a retry-after hint.

Login and registration limits are shaped so that they cannot be turned against the user they protect (see the
README, "Login and registration limits"): usernames are normalized and checked before any bucket is touched,
starting a login costs only the caller's address, and the per-username bucket counts failed login *finishes*
from one source address, so a stranger elsewhere cannot lock an account out.
"""

from __future__ import annotations

import itertools
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

    def __init__(
        self,
        limit: RateLimit,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
        *,
        name: str = "",
        on_refuse: Callable[[str], None] | None = None,
    ) -> None:
        self.limit = limit
        self.name = name
        self._clock = clock
        self._max_keys = max_keys
        self._on_refuse = on_refuse
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key -> (tokens, updated_at)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable, cost: float = 1.0) -> float | None:
        """Takes `cost` tokens: None when allowed, else the seconds until it would be."""
        now = self._clock()
        # Popped and put back: the dict runs from the least to the most recently used key.
        tokens, updated = self._buckets.pop(key, (float(self.limit.burst), now))
        tokens = min(float(self.limit.burst), tokens + (now - updated) * self.limit.rate)
        if tokens < cost:
            self._buckets[key] = (tokens, now)
            return (cost - tokens) / self.limit.rate
        self._buckets[key] = (tokens - cost, now)
        if len(self._buckets) > self._max_keys:
            self._forget_full(now)
        return None

    def wait_needed(self, key: Hashable) -> float | None:
        """Like `take` of one token, without taking it."""
        now = self._clock()
        tokens, updated = self._buckets.get(key, (float(self.limit.burst), now))
        tokens = min(float(self.limit.burst), tokens + (now - updated) * self.limit.rate)
        return None if tokens >= 1.0 else (1.0 - tokens) / self.limit.rate

    def check(self, key: Hashable, what: str) -> None:
        self._refuse_if(self.take(key), what)

    def check_available(self, key: Hashable, what: str) -> None:
        """Refuse if a token would be refused now; take nothing (the caller takes one only on failure)."""
        self._refuse_if(self.wait_needed(key), what)

    def _refuse_if(self, retry_after: float | None, what: str) -> None:
        if retry_after is not None:
            if self._on_refuse is not None:
                self._on_refuse(self.name)
            raise ResourceExhausted(f"rate limit for {what} reached", retry_after=retry_after)

    def _forget_full(self, now: float) -> None:
        rate, burst = self.limit.rate, self.limit.burst
        full = [key for key, (tokens, updated) in self._buckets.items() if tokens + (now - updated) * rate >= burst]
        for key in full:
            del self._buckets[key]
        # Too many keys are busy: forget the least recently used down to three quarters of the bound rather than
        # grow without it. Each sweep walks every key, so it must leave room for a quarter of them before the next.
        excess = len(self._buckets) - max(1, self._max_keys * 3 // 4)  # the key just taken stays
        if excess > 0:
            for key in list(itertools.islice(self._buckets, excess)):
                del self._buckets[key]


@dataclass(frozen=True)
class RateLimits:
    per_identity: RateLimit
    per_address: RateLimit
    login_failures_per_username: RateLimit
    """Failed login finishes per (normalized username, source address)."""
    login_per_address: RateLimit
    sealed_per_connection: RateLimit
    register_per_address: RateLimit
    register_total: RateLimit
    key_package_per_pair: RateLimit
    resolve_per_identity: RateLimit
    resolve_per_address: RateLimit
    resolve_endpoint_per_identity: RateLimit
    resolve_endpoint_per_address: RateLimit


class RateLimiter:
    """Every bucket the node keeps, checked by the RPC layer before it calls a service. `on_refuse(name)` counts
    refusals by the setting's name (NodeCounters.refuse)."""

    def __init__(
        self,
        limits: RateLimits,
        clock: Callable[[], float] = time.monotonic,
        on_refuse: Callable[[str], None] | None = None,
    ) -> None:
        def buckets(limit: RateLimit, name: str) -> TokenBuckets:
            return TokenBuckets(limit, clock, name=name, on_refuse=on_refuse)

        self.identity = buckets(limits.per_identity, "rate_per_identity")
        self.address = buckets(limits.per_address, "rate_per_address")
        self.login_failures = buckets(limits.login_failures_per_username, "login_rate_per_username")
        self.login_address = buckets(limits.login_per_address, "login_rate_per_address")
        # Key login (bots) takes the same limits as OPAQUE login: failed answers per (key, source address).
        self.key_login_failures = buckets(limits.login_failures_per_username, "login_rate_per_username")
        self.sealed_connection = buckets(limits.sealed_per_connection, "sealed_rate_per_connection")
        self.register_address = buckets(limits.register_per_address, "register_rate_per_address")
        self.register_total = buckets(limits.register_total, "register_rate_total")
        self.key_package_pair = buckets(limits.key_package_per_pair, "key_package_rate_per_pair")
        self.resolve_identity = buckets(limits.resolve_per_identity, "resolve_rate_per_identity")
        self.resolve_address = buckets(limits.resolve_per_address, "resolve_rate_per_address")
        self.resolve_endpoint_identity = buckets(
            limits.resolve_endpoint_per_identity, "resolve_endpoint_rate_per_identity"
        )
        self.resolve_endpoint_address = buckets(
            limits.resolve_endpoint_per_address, "resolve_endpoint_rate_per_address"
        )
