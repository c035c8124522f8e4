"""Inboxes and 1:1 channels: the records, the `InboxStore` protocol, and what both backends' implementations share
(argument checks, the limit rules, the channel get-or-create walk).

An inbox is (recipient identity key, channel id); channel id b"" is the recipient's default inbox.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .base import DEFAULT_CHANNEL, Inbox, LimitExceeded, StoreLimits
from .engine import StoreEngine
from .wakeups import InboxWakeups

MAX_SEQ = (1 << 63) - 1
"""Seqs are signed 64-bit in both databases; a client's UInt64 seqUpTo above this means "everything"."""


@dataclass(frozen=True, slots=True)
class InboxMessage:
    seq: int
    payload: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class InboxStats:
    depth: int
    bytes: int
    last_seq: int
    """The last seq ever assigned in this inbox (0 if none); the next enqueue gets last_seq + 1."""


class InboxStore(Protocol):
    """Times are unix seconds from the store's clock; "expired" means `expires_at <= now`. Every write returns only
    after it is durable."""

    @property
    def limits(self) -> StoreLimits: ...

    @property
    def wakeups(self) -> InboxWakeups:
        """Signalled after every commit that added messages to an inbox."""
        ...

    fetch_commits_when_empty: bool
    """Whether a fetch that finds its inbox empty still costs a write transaction (then fetchWait looks at the
    inbox's depth first, so that thousands of idle clients' polls cost no commit each)."""

    answers_parked_fetches: bool
    """Whether the store's enqueues claim parked fetchWaits and answer them from their own commit (see fetch_wait);
    a store that does not only wakes them."""

    # 1:1 channels
    async def get_or_create_channel(self, a: bytes, b: bytes) -> bytes:
        """The 16-byte id of the channel of the unordered pair {a, b}; the same pair always gets the same id."""
        ...

    async def channel_members(self, channel_id: bytes) -> tuple[bytes, bytes] | None:
        """The two members, smaller key first; None for an unknown channel."""
        ...

    # Inboxes
    async def enqueue(
        self,
        recipient: bytes,
        channel: bytes,
        payload: bytes,
        expires_at: float | None,
        *,
        sender: bytes | None = None,
    ) -> int:
        """Append and return the inbox's next seq (1, 2, ...; never reused). Raises LimitExceeded.

        `sender`: who sends (None: unknown, sealed sender). A sender's messages in another identity's default
        inbox count against `max_inbox_share_per_sender`."""
        ...

    async def batch_enqueue(
        self,
        recipients: Sequence[bytes],
        channel: bytes,
        payload: bytes,
        expires_at: float | None,
        *,
        sender: bytes | None = None,
    ) -> list[int]:
        """One seq per recipient in the order given; all or nothing."""
        ...

    async def fetch(self, recipient: bytes, channel: bytes, limit: int = 0) -> list[InboxMessage]:
        """Remove and return up to `limit` unexpired messages in seq order (0 or above the cap: the cap)."""
        ...

    async def peek(self, recipient: bytes, channel: bytes, limit: int = 0) -> list[InboxMessage]:
        """Like fetch, without removing."""
        ...

    async def ack(self, recipient: bytes, channel: bytes, seq_up_to: int) -> int:
        """Remove every message with seq <= seq_up_to; returns how many."""
        ...

    async def inbox_stats(self, recipient: bytes, channel: bytes) -> InboxStats: ...

    async def sweep_expired(self, now: float | None = None) -> int:
        """Delete messages whose TTL has passed (seq counters are untouched); returns how many."""
        ...


def fetch_count(limits: StoreLimits, limit: int) -> int:
    """How many messages a fetch asking for `limit` (not negative) may take: 0 or above the cap is the cap."""
    return limits.max_fetch if limit == 0 else min(limit, limits.max_fetch)


def check_payload(limits: StoreLimits, payload: bytes) -> None:
    """The payload cap every way of enqueueing applies before it reaches the database."""
    if len(payload) > limits.max_payload_bytes:
        raise LimitExceeded("max_payload_bytes", limits.max_payload_bytes, len(payload))


def check_room(limits: StoreLimits, depth: int, used: int, size: int, index: int | None = None) -> None:
    """Refuse one more message of `size` bytes for an inbox holding `depth` messages of `used` bytes.

    `index`: the recipient's place in a batch (None for a single enqueue), so the caller can say whose inbox is full.
    """
    if depth + 1 > limits.max_inbox_depth:
        raise LimitExceeded("max_inbox_depth", limits.max_inbox_depth, depth + 1, index=index)
    if used + size > limits.max_inbox_bytes:
        raise LimitExceeded("max_inbox_bytes", limits.max_inbox_bytes, used + size, index=index)


def has_room(limits: StoreLimits, depth: int, used: int, size: int) -> bool:
    return depth + 1 <= limits.max_inbox_depth and used + size <= limits.max_inbox_bytes


def shared_inbox(inbox: Inbox, sender: bytes | None) -> bool:
    """Whether `sender`'s message to `inbox` counts against its share: another identity's default inbox."""
    return sender is not None and inbox[1] == DEFAULT_CHANNEL and sender != inbox[0]


def share_may_be_full(limits: StoreLimits, depth: int) -> bool:
    """Whether an inbox holding `depth` messages (a sender's new ones included) can hold more than one sender's
    share: the sender's queued messages are some of the inbox's, so a shallower inbox cannot, and the sender's
    messages (counted one by one) need not be counted."""
    return depth > limits.max_inbox_share_per_sender


def check_share(limits: StoreLimits, held: int, index: int | None = None) -> None:
    """Refuse one more message from a sender that already has `held` queued in the inbox."""
    if held + 1 > limits.max_inbox_share_per_sender:
        raise LimitExceeded("max_inbox_share_per_sender", limits.max_inbox_share_per_sender, held + 1, index=index)


class InboxesBase(StoreEngine):
    """The backend-independent half of `InboxStore`: argument checks and caps here, rows in the backend's hooks."""

    fetch_commits_when_empty = True
    answers_parked_fetches = False

    async def enqueue(
        self,
        recipient: bytes,
        channel: bytes,
        payload: bytes,
        expires_at: float | None,
        *,
        sender: bytes | None = None,
    ) -> int:
        return (await self.batch_enqueue([recipient], channel, payload, expires_at, sender=sender))[0]

    async def batch_enqueue(
        self,
        recipients: Sequence[bytes],
        channel: bytes,
        payload: bytes,
        expires_at: float | None,
        *,
        sender: bytes | None = None,
    ) -> list[int]:
        self._check_open()
        check_payload(self._limits, payload)
        if not recipients:
            return []
        return await self._enqueue(
            [bytes(r) for r in recipients],
            bytes(channel),
            bytes(payload),
            expires_at,
            self._clock(),
            None if sender is None else bytes(sender),
        )

    async def fetch(self, recipient: bytes, channel: bytes, limit: int = 0) -> list[InboxMessage]:
        count = self._fetch_limit(limit)
        return await self._fetch((bytes(recipient), bytes(channel)), count, self._clock())

    async def peek(self, recipient: bytes, channel: bytes, limit: int = 0) -> list[InboxMessage]:
        count = self._fetch_limit(limit)
        return await self._peek((bytes(recipient), bytes(channel)), count, self._clock())

    async def ack(self, recipient: bytes, channel: bytes, seq_up_to: int) -> int:
        self._check_open()
        if seq_up_to < 1:
            return 0
        return await self._ack((bytes(recipient), bytes(channel)), min(seq_up_to, MAX_SEQ))

    async def get_or_create_channel(self, a: bytes, b: bytes) -> bytes:
        lo, hi = sorted((bytes(a), bytes(b)))
        # Most calls are for a channel that exists: answer those with a read, without a commit.
        existing = await self._find_channel(lo, hi)
        if existing is not None:
            return existing
        return await self._create_channel(lo, hi, self._clock())

    def _fetch_limit(self, limit: int) -> int:
        if limit < 0:
            raise ValueError("limit must not be negative")
        return fetch_count(self._limits, limit)

    # ── the backend's hooks ──────────────────────────────────────────────────────────────────────────────────

    @abstractmethod
    async def _enqueue(
        self,
        recipients: list[bytes],
        channel: bytes,
        payload: bytes,
        expires_at: float | None,
        now: float,
        sender: bytes | None,
    ) -> list[int]:
        """`recipients` is not empty and the payload within its limit; LimitExceeded carries the batch index
        when there is more than one recipient. `sender` is stored with each message (for `shared_inbox`)."""

    @abstractmethod
    async def _fetch(self, inbox: Inbox, count: int, now: float) -> list[InboxMessage]:
        """Remove and return the first `count` unexpired messages in seq order, within `max_fetch_bytes`."""

    @abstractmethod
    async def _peek(self, inbox: Inbox, count: int, now: float) -> list[InboxMessage]: ...

    @abstractmethod
    async def _ack(self, inbox: Inbox, up_to: int) -> int: ...

    @abstractmethod
    async def _find_channel(self, lo: bytes, hi: bytes) -> bytes | None: ...

    @abstractmethod
    async def _create_channel(self, lo: bytes, hi: bytes, now: float) -> bytes:
        """Create the channel unless someone else did first; either way return the id that was stored."""
