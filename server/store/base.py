"""What every concern of the store shares: errors, limits, metrics, the clock and the inbox key.

Nothing here knows about a particular database or concern. Each concern's records and protocol live in its own
module (`accounts`, `directories`, `inboxes`, `server_secrets`); `store.Store` is all of them together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]
"""Returns unix seconds. Injected so that tests can move time without sleeping."""

Inbox = tuple[bytes, bytes]
"""(recipient identity key, channel id); channel id b"" is the recipient's default inbox."""

DEFAULT_CHANNEL = b""


# ── Errors ────────────────────────────────────────────────────────────────────────────────────────────────────
# Messages are shown to operators and may reach clients, so they name fields and numbers, never values: no
# token hashes, password files, payloads or keys.


class StoreError(Exception):
    """Base of every error the store raises on purpose."""


class AlreadyExists(StoreError):
    def __init__(self, field_name: str) -> None:
        super().__init__(f"{field_name} already exists")
        self.field = field_name


class NotFound(StoreError):
    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found")
        self.what = what


class LimitExceeded(StoreError):
    """A configured limit refused the operation; nothing that was already stored was changed."""

    def __init__(self, limit_name: str, limit: int, actual: int, *, index: int | None = None) -> None:
        where = "" if index is None else f"recipient #{index}: "
        super().__init__(f"{where}{limit_name} exceeded ({actual} > {limit})")
        self.limit_name = limit_name
        self.limit = limit
        self.actual = actual
        # Which entry of a batch was refused, so the caller can say which recipient's inbox is full.
        self.index = index


class StoreClosed(StoreError):
    def __init__(self) -> None:
        super().__init__("the store is closed")


class StoreUnavailable(StoreError):
    """The database could not be reached or the operation was cut off before its commit: nothing was stored, and
    the same operation may be retried."""

    def __init__(self, reason: str = "the store is unreachable; not stored, retry") -> None:
        super().__init__(reason)


class OutcomeUnknown(StoreError):
    """The connection broke while the commit was on its way: the operation may or may not have been stored."""

    def __init__(
        self, reason: str = "the store connection broke during the commit; the operation may have been stored"
    ) -> None:
        super().__init__(reason)


class DiskFull(StoreError):
    """The store's disk is (nearly) full: new data is refused; reading and deleting still work."""

    def __init__(self, reason: str = "disk full; not stored") -> None:
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """What a store says about itself for health checks and the status method."""

    reachable: bool
    writer_alive: bool
    detail: str = ""
    """Why not reachable (one line, no secrets)."""
    queue_depth: int = 0
    """Writes waiting for the writer, the batch in hand included."""
    failed_batches: int = 0
    writer_restarts: int = 0


class SchemaTooNew(StoreError):
    """The database was migrated by a newer version of the node; running older code on it could corrupt it."""

    def __init__(self, on_disk: int, known: int) -> None:
        super().__init__(
            f"database schema version {on_disk} is newer than this node supports (up to {known}); "
            "upgrade quicnprotochat or point it at another database"
        )
        self.on_disk = on_disk
        self.known = known


# ── Limits ────────────────────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class StoreLimits:
    max_payload_bytes: int = 1 << 20
    max_inbox_depth: int = 10_000
    max_inbox_bytes: int = 64 << 20
    max_fetch: int = 1000
    # A fetch or peek returns messages in seq order until their payloads would pass this many bytes (always at
    # least one), so that a response stays readable by the client: removed messages must reach it.
    max_fetch_bytes: int = 16 << 20
    max_key_packages_per_identity: int = 100
    # Messages one sender may have queued in another identity's default inbox (unexpired, not yet fetched), so
    # that no single sender can fill it for everyone else.
    max_inbox_share_per_sender: int = 1000
    # Idempotency keys one sender (or sealed-sender connection) may have remembered; beyond it the oldest is forgotten.
    max_idempotency_keys_per_sender: int = 10_000
    # Space (SQLite) held back in a file next to the database for deletions when the disk fills (disk_reserve).
    disk_reserve_bytes: int = 8 << 20

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if getattr(self, name) < 1:
                raise ValueError(f"StoreLimits.{name} must be at least 1")


# ── Metrics ───────────────────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class StoreMetrics:
    """Counters of the write path, for benchmarks and for tests that check group commit really batches."""

    write_ops: int
    commits: int
    largest_batch: int
    batch_sizes: tuple[tuple[int, int], ...] = ()
    """(upper bound, batches of at most that many operations), cumulative, as a Prometheus histogram wants."""
    batch_size_sum: int = 0


BATCH_SIZE_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class BatchSizes:
    """How many operations each committed batch held, counted in BATCH_SIZE_BOUNDS buckets."""

    __slots__ = ("_counts", "_sum")

    def __init__(self) -> None:
        self._counts = [0] * (len(BATCH_SIZE_BOUNDS) + 1)
        self._sum = 0

    def observe(self, size: int) -> None:
        self._sum += size
        for index, bound in enumerate(BATCH_SIZE_BOUNDS):
            if size <= bound:
                self._counts[index] += 1
                return
        self._counts[-1] += 1

    def snapshot(self) -> tuple[tuple[tuple[int, int], ...], int]:
        cumulative, running = [], 0
        for bound, count in zip(BATCH_SIZE_BOUNDS, self._counts, strict=False):
            running += count
            cumulative.append((bound, running))
        return tuple(cumulative), self._sum

    @property
    def count(self) -> int:
        return sum(self._counts)
