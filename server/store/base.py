"""The storage interface of the node: records, limits, errors and the `Store` protocol.

Nothing here knows about a particular database. Backends (SQLite today, PostgreSQL later) implement `Store`;
the RPC services only ever talk to this interface.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .wakeups import InboxWakeups

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

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if getattr(self, name) < 1:
                raise ValueError(f"StoreLimits.{name} must be at least 1")


# ── Records ───────────────────────────────────────────────────────────────────────────────────────────────────
# Secret-bearing fields are left out of repr so that a logged record cannot leak them.


@dataclass(frozen=True, slots=True)
class Account:
    username: str
    identity_key: bytes
    created_at: float
    password_file: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Session:
    """A live session token (the token itself is never stored, only its SHA-256)."""

    identity_key: bytes
    device_id: bytes
    issued_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class LoginState:
    username: str
    expires_at: float
    state: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class KeyPackage:
    fingerprint: bytes
    last_resort: bool
    not_after: float | None
    package: bytes = field(repr=False)


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


@dataclass(frozen=True, slots=True)
class StoreMetrics:
    """Counters of the write path, for benchmarks and for tests that check group commit really batches."""

    write_ops: int
    commits: int
    largest_batch: int


# ── The interface ─────────────────────────────────────────────────────────────────────────────────────────────


@runtime_checkable
class Store(Protocol):
    """Async storage of one node.

    Times are unix seconds; "expired" means `expires_at <= now` with `now` from the store's clock. Every write
    returns only after it is durable. Operations after `close()` raise `StoreClosed`.
    """

    @property
    def limits(self) -> StoreLimits: ...

    @property
    def wakeups(self) -> InboxWakeups:
        """Signalled after every commit that added messages to an inbox."""
        ...

    @property
    def closed(self) -> bool: ...

    def metrics(self) -> StoreMetrics: ...

    async def close(self) -> None:
        """Finish every operation already submitted, then release the database. Idempotent."""
        ...

    # Accounts
    async def create_account(self, username: str, password_file: bytes, identity_key: bytes) -> Account:
        """Raises AlreadyExists("username") or AlreadyExists("identity_key")."""
        ...

    async def get_account(self, username: str) -> Account | None: ...

    async def get_account_by_identity(self, identity_key: bytes) -> Account | None: ...

    async def resolve_username(self, username: str) -> bytes | None:
        """Username -> identity key."""
        ...

    async def resolve_identity(self, identity_key: bytes) -> str | None:
        """Identity key -> username."""
        ...

    # Session tokens (keyed by the SHA-256 of the token, computed by the caller)
    async def create_session(
        self,
        token_hash: bytes,
        identity_key: bytes,
        device_id: bytes,
        expires_at: float,
    ) -> Session: ...

    async def get_session(self, token_hash: bytes) -> Session | None:
        """None when unknown, expired or revoked."""
        ...

    async def revoke_session(self, token_hash: bytes) -> bool: ...

    async def revoke_sessions(self, identity_key: bytes) -> int: ...

    async def purge_expired_sessions(self) -> int: ...

    # OPAQUE login states between loginStart and loginFinish
    async def put_login_state(self, state_id: bytes, username: str, state: bytes, expires_at: float) -> None: ...

    async def take_login_state(self, state_id: bytes) -> LoginState | None:
        """Remove and return the state if present and unexpired; a second take returns None."""
        ...

    async def purge_expired_login_states(self) -> int: ...

    # KeyPackages
    async def add_key_package(
        self,
        identity_key: bytes,
        package: bytes,
        fingerprint: bytes,
        *,
        last_resort: bool = False,
        not_after: float | None = None,
    ) -> None:
        """Raises AlreadyExists("fingerprint") or LimitExceeded("max_key_packages_per_identity")."""
        ...

    async def take_key_package(self, identity_key: bytes) -> KeyPackage | None:
        """Remove and return the oldest unexpired ordinary package; else return (and keep) a last-resort one."""
        ...

    async def count_key_packages(self, identity_key: bytes) -> int:
        """Unexpired packages, last-resort ones included."""
        ...

    # Hybrid (X-Wing) public keys, one per identity
    async def put_hybrid_key(self, identity_key: bytes, public_key: bytes) -> None: ...

    async def get_hybrid_key(self, identity_key: bytes) -> bytes | None: ...

    async def get_hybrid_keys(self, identity_keys: Sequence[bytes]) -> list[bytes | None]:
        """In the order asked; None where nothing is published."""
        ...

    # Server secrets: made once, then the same for every node of the database
    async def get_or_create_secret(self, name: str, candidate: bytes) -> bytes:
        """The secret stored under `name`; `candidate` is stored and returned when there is none yet (when
        several nodes race, all get the one stored first)."""
        ...

    # Peer-to-peer endpoints, one per identity
    async def put_endpoint(self, identity_key: bytes, node_addr: bytes) -> None: ...

    async def get_endpoint(self, identity_key: bytes) -> bytes | None: ...

    # 1:1 channels
    async def get_or_create_channel(self, a: bytes, b: bytes) -> bytes:
        """The 16-byte id of the channel of the unordered pair {a, b}; the same pair always gets the same id."""
        ...

    async def channel_members(self, channel_id: bytes) -> tuple[bytes, bytes] | None:
        """The two members, smaller key first; None for an unknown channel."""
        ...

    # Inboxes
    async def enqueue(self, recipient: bytes, channel: bytes, payload: bytes, expires_at: float | None) -> int:
        """Append and return the inbox's next seq (1, 2, ...; never reused). Raises LimitExceeded."""
        ...

    async def batch_enqueue(
        self,
        recipients: Sequence[bytes],
        channel: bytes,
        payload: bytes,
        expires_at: float | None,
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
