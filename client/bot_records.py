"""What the node says about bot keys: approval requests (the owner's side of key login) and approved keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ApprovalState = Literal["pending", "approved", "refused", "expired"]
APPROVAL_STATES: tuple[str, ...] = ("pending", "approved", "refused", "expired")


@dataclass(frozen=True)
class BotApprovalRequest:
    """A bot key asking to act as one of your bots, or such a request recently decided."""

    request_id: bytes
    identity_key: bytes
    name: str
    state: ApprovalState
    expires_at: float


@dataclass(frozen=True)
class BotApprovals:
    """One answer of `bot_approval_wait`: pass `digest` to the next call to wait for a change."""

    digest: bytes
    requests: list[BotApprovalRequest]


@dataclass(frozen=True)
class BotKeyRecord:
    identity_key: bytes
    name: str
    approved_at: float
    revoked: bool
