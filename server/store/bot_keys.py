"""Bot keys: keys that log in by signing a nonce (no password), the owners' approvals of new keys, and the nonces
issued to them.

- A bot key record is `identity key -> (owner's identity key, name, next usable nonce, revoked)`, one per key
  (primary key). It exists only once the owner approved the key; revoked records stay, so a revoked key cannot
  come back.
- An approval request asks the owner about a key the node does not know. At most one is *pending* per key (a
  partial unique index), so concurrent challenges of one unknown key share one request, and its approval writes
  the key's one record in the same transaction. Its states and the first-answer-wins rule are
  `services/bot_approval_rules.py`.
- A challenge is a nonce issued and not yet answered. The next usable nonce is read and incremented in the
  transaction that records the challenge, so no nonce is issued twice; answering deletes the challenge in one
  statement, so no answer is accepted twice.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass
from typing import Any, Protocol

BOT_APPROVAL_CHANNEL = b"bot approvals"
"""The wake-up key (owner identity key, this) signalled when one of the owner's approval requests changes. Real
channel ids are empty or 16 bytes, so it never meets an inbox."""


class ApprovalState(enum.StrEnum):
    """Stored as these strings. pending -> approved | refused | expired, once (bot_approval_rules)."""

    PENDING = "pending"
    APPROVED = "approved"
    REFUSED = "refused"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class BotKey:
    identity_key: bytes
    owner: bytes
    """The owning account's identity key."""
    name: str
    approved_at: float
    revoked: bool


@dataclass(frozen=True, slots=True)
class BotApproval:
    request_id: bytes
    identity_key: bytes
    owner: bytes
    name: str
    state: ApprovalState
    created_at: float
    expires_at: float
    decided_at: float | None


class BotKeyStore(Protocol):
    async def get_bot_key(self, identity_key: bytes) -> BotKey | None: ...

    async def open_bot_approval(
        self, identity_key: bytes, owner: bytes, name: str, expires_at: float, max_pending_per_owner: int
    ) -> BotApproval | None:
        """The pending request for this key, created if there is none (whatever its owner and name: the caller
        compares); None if the key has a record by now. `LimitExceeded("max_pending_bot_approvals_per_owner")`
        when a new one would pass the owner's cap. A pending request past its expiry is first marked expired."""
        ...

    async def get_bot_approval(self, request_id: bytes) -> BotApproval | None: ...

    async def list_bot_approvals(self, owner: bytes, decided_since: float) -> list[BotApproval]:
        """The owner's requests that are pending, or were decided at or after `decided_since`, oldest first."""
        ...

    async def settle_bot_approval(self, request_id: bytes, state: ApprovalState, decided_at: float) -> bool:
        """Moves a pending request to `state` (an approval also writes the key's one record) in one transaction.
        False if it was no longer pending: the first answer wins. Which state is `bot_approval_rules`' call."""
        ...

    async def take_bot_nonce(self, identity_key: bytes, expires_at: float, max_outstanding: int) -> int | None:
        """Issue the key's next usable nonce and record it as a challenge until `expires_at`, in one transaction.
        None if the key has no live (approved, unrevoked) record. `LimitExceeded("max_bot_challenges_per_key")`
        when that many unexpired challenges of the key are unanswered."""
        ...

    async def consume_bot_nonce(self, identity_key: bytes, nonce: int) -> bool:
        """Remove the challenge; True once, and only if it was issued, unexpired and its key is not revoked."""
        ...

    async def list_bot_keys(self, owner: bytes) -> list[BotKey]:
        """The owner's bot keys, revoked ones included, oldest first."""
        ...

    async def revoke_bot_key(self, identity_key: bytes, owner: bytes) -> bool:
        """Marks the owner's key revoked and drops its challenges; False if the owner has no such live key."""
        ...

    async def purge_bot_login_state(self, decided_before: float) -> int:
        """Marks pending requests past their expiry expired, drops expired challenges and requests decided (or
        expired) before `decided_before`; returns how many rows went."""
        ...


REQUEST_ID_BYTES = 16


def new_request_id() -> bytes:
    return secrets.token_bytes(REQUEST_ID_BYTES)


def approval_wakeup(owner: bytes) -> tuple[bytes, bytes]:
    return (bytes(owner), BOT_APPROVAL_CHANNEL)


# Row shapes both backends read and write (SQL stays under server/store/).
SELECT_APPROVALS = (
    "SELECT request_id, identity_key, owner, name, state, created_at, expires_at, decided_at FROM bot_approvals"
)
SELECT_KEYS = "SELECT identity_key, owner, name, approved_at, revoked FROM bot_keys"
INSERT_APPROVAL = (
    "INSERT INTO bot_approvals (request_id, identity_key, owner, name, state, created_at, expires_at, decided_at)"
)
INSERT_KEY = "INSERT INTO bot_keys (identity_key, owner, name, approved_at, revoked, next_nonce)"


def approval_from_row(row: Any) -> BotApproval:
    return BotApproval(
        bytes(row[0]), bytes(row[1]), bytes(row[2]), str(row[3]), ApprovalState(row[4]), row[5], row[6], row[7]
    )


def key_from_row(row: Any) -> BotKey:
    return BotKey(bytes(row[0]), bytes(row[1]), str(row[2]), row[3], bool(row[4]))
