"""The rules of key login, without I/O: what a challenge for a key may lead to, the approval request's states,
and what an owner's clients are shown.

An approval request goes pending -> approved | refused | expired, once. The first answer wins (the store applies
a decision only to a request still pending); a request nobody answers before its expiry is expired, which the
bot is told as a refusal. Refused and expired are final for that request: a later challenge asks again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from quicnprotochat.common.errors import Forbidden, Unauthenticated
from quicnprotochat.server.store.bot_keys import ApprovalState, BotApproval, BotKey


def check_record(record: BotKey | None, owner: bytes, owner_name: str) -> None:
    """Refuses a challenge that the key's record rules out; a missing record means: ask the owner."""
    if record is None:
        return
    if record.owner != owner:
        raise Unauthenticated(f"this key is not a bot of {owner_name}")
    if record.revoked:
        raise Forbidden("this bot key was revoked by its owner: make a new key and have it approved")


def check_joined(request: BotApproval, owner: bytes) -> None:
    """A pending request made by another challenge of the same key must be for the same owner."""
    if request.owner != owner:
        raise Forbidden("this key is already waiting for another account's approval")


def effective_state(request: BotApproval, now: float) -> ApprovalState:
    """The state as of `now`: a pending request past its expiry is expired, whether or not that is stored yet."""
    if request.state is ApprovalState.PENDING and now >= request.expires_at:
        return ApprovalState.EXPIRED
    return request.state


@dataclass(frozen=True, slots=True)
class Settle:
    """Move the request to `state`, recorded as decided at `decided_at` (if it is still pending then)."""

    state: ApprovalState
    decided_at: float


def answer(request: BotApproval, approve: bool, now: float) -> Settle | None:
    """What an owner's answer does: None once the request is decided (the first answer won); an answer that
    comes after the expiry expires it instead."""
    if request.state is not ApprovalState.PENDING:
        return None
    if now >= request.expires_at:
        return Settle(ApprovalState.EXPIRED, request.expires_at)
    return Settle(ApprovalState.APPROVED if approve else ApprovalState.REFUSED, now)


def expiry(request: BotApproval, now: float) -> Settle | None:
    """What the passing of time does: expire a pending request once its time is up."""
    if request.state is ApprovalState.PENDING and now >= request.expires_at:
        return Settle(ApprovalState.EXPIRED, request.expires_at)
    return None


def raise_unless_approved(request: BotApproval, owner_name: str, timeout_s: float) -> None:
    """The bot's error for a decided request that did not approve its key."""
    if request.state is ApprovalState.REFUSED:
        raise Forbidden(f"{owner_name} refused this bot key")
    if request.state is ApprovalState.EXPIRED:
        raise Forbidden(f"{owner_name} did not approve this bot key within {timeout_s:g} s; the request is refused")


def owner_view(requests: Sequence[BotApproval], now: float) -> list[tuple[BotApproval, ApprovalState]]:
    return [(request, effective_state(request, now)) for request in requests]


def view_digest(view: Sequence[tuple[BotApproval, ApprovalState]]) -> bytes:
    """Names what an owner's client has seen: a wait returns as soon as the view's digest differs from it."""
    digest = hashlib.sha256()
    for request, state in view:
        digest.update(request.request_id + state.value.encode() + b"\x00")
    return digest.digest()[:16]


def next_expiry(view: Sequence[tuple[BotApproval, ApprovalState]]) -> float | None:
    """When the view will change by itself (the earliest pending request expires), if ever."""
    pending = [request.expires_at for request, state in view if state is ApprovalState.PENDING]
    return min(pending) if pending else None
