"""Idempotent enqueues: a client that lost the answer to an enqueue (a dropped connection, `unknown_outcome:`)
sends it again with the same idempotency key, and the node answers with the seqs the first call got instead of
storing it twice.

The key is remembered per scope (the sender's identity key, or the connection for sealed sender) together with a
digest of what was asked (recipients, channel, payload), for a configurable window. It is written in the same
transaction as the messages, so a key is remembered exactly when its messages are stored.
"""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .base import StoreError
from .engine import StoreEngine
from .inboxes import check_payload

MAX_KEY_BYTES = 64


class KeyReused(StoreError):
    """The key was first used for another message: answering with that message's seqs would be a lie."""

    def __init__(self) -> None:
        super().__init__("idempotencyKey was already used for a different message")


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    scope: bytes = field(repr=False)
    """Whose key it is: the sender's identity key, or a connection's id for sealed-sender delivery."""
    key: bytes = field(repr=False)
    expires_at: float
    """When the node may forget it (a retry after that is stored again)."""


def request_digest(recipients: Sequence[bytes], channel: bytes, payload: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in (*recipients, channel, payload):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


class IdempotencyStore(Protocol):
    async def enqueue_once(
        self,
        key: IdempotencyKey,
        recipients: Sequence[bytes],
        channel: bytes,
        payload: bytes,
        expires_at: float | None,
        *,
        sender: bytes | None = None,
    ) -> list[int]:
        """`batch_enqueue`, at most once per key within its window: a repeat of the same request gets the seqs the
        first one got, and stores nothing. Raises KeyReused for a repeat with another request, LimitExceeded as
        batch_enqueue does."""
        ...

    async def purge_expired_idempotency_keys(self) -> int: ...


class IdempotencyBase(StoreEngine):
    async def enqueue_once(
        self,
        key: IdempotencyKey,
        recipients: Sequence[bytes],
        channel: bytes,
        payload: bytes,
        expires_at: float | None,
        *,
        sender: bytes | None = None,
    ) -> list[int]:
        self._check_open()
        if not 1 <= len(key.key) <= MAX_KEY_BYTES:
            raise ValueError(f"an idempotency key is 1 to {MAX_KEY_BYTES} bytes")
        check_payload(self._limits, payload)
        if not recipients:
            return []
        targets = [bytes(r) for r in recipients]
        digest = request_digest(targets, bytes(channel), bytes(payload))
        return await self._enqueue_once(
            key, digest, targets, bytes(channel), bytes(payload), expires_at, self._clock(), sender
        )

    async def purge_expired_idempotency_keys(self) -> int:
        return await self._purge_idempotency_keys(self._clock())

    # ── the backend's hooks ──────────────────────────────────────────────────────────────────────────────────

    @abstractmethod
    async def _enqueue_once(
        self,
        key: IdempotencyKey,
        digest: bytes,
        recipients: list[bytes],
        channel: bytes,
        payload: bytes,
        expires_at: float | None,
        now: float,
        sender: bytes | None,
    ) -> list[int]:
        """In one transaction: the remembered seqs if `key` is known and unexpired (KeyReused if its digest
        differs), else enqueue and remember the key with the new seqs."""

    @abstractmethod
    async def _purge_idempotency_keys(self, now: float) -> int: ...
