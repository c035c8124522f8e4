"""Key login for bots: a nonce challenge answered with an Ed25519 signature, and the owner's approval of keys the
node has not seen (seed 000). The decisions are `bot_approval_rules`; the records are the `BotKeyStore`.

A challenge for an unknown key parks until the owner answers: every client of the owner that waits on
`botApprovalWait` sees the request, the first answer wins, and the others see it decided (their prompt is
withdrawn). Wake-ups ride the inbox wake-ups under the owner's key (`BOT_APPROVAL_CHANNEL`), so on PostgreSQL an
answer through one node wakes a bot parked on another.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from quicnprotochat.common.errors import Forbidden, InvalidArgument, NotFound, Unauthenticated
from quicnprotochat.common.transcripts import key_login_transcript
from quicnprotochat.common.usernames import normalize_username
from quicnprotochat.native import verify_ed25519
from quicnprotochat.server.services import bot_approval_rules as rules
from quicnprotochat.server.services import validation
from quicnprotochat.server.services.errors import store_errors
from quicnprotochat.server.services.sessions import Caller, SessionService
from quicnprotochat.server.store import AccountStore, BotApproval, BotKey, BotKeyStore, Clock, InboxWakeups
from quicnprotochat.server.store.bot_keys import BOT_APPROVAL_CHANNEL, ApprovalState

SIGNATURE_BYTES = 64
MAX_NONCE = (1 << 63) - 1
"""Nonces count up from 0 per key; both stores keep them as signed 64-bit integers."""


@dataclass(frozen=True)
class BotLoginLimits:
    approval_timeout_s: float
    max_pending_per_owner: int
    max_challenges_per_key: int
    challenge_seconds: float
    """How long an issued nonce may be answered."""
    max_wait_ms: int
    """The cap on an owner's `botApprovalWait`."""
    recent_seconds: float = 300.0
    """How long a decided request stays in the owner's view, so that every client sees how it ended."""


def bot_name(raw: str) -> str:
    try:
        return normalize_username(raw)
    except InvalidArgument as error:
        raise InvalidArgument(f"botName: a bot's name follows the username rule: {error.reason}") from None


class BotLoginService:
    def __init__(
        self,
        store: BotKeyStore,
        accounts: AccountStore,
        sessions: SessionService,
        wakeups: InboxWakeups,
        node_fingerprint: str,
        limits: BotLoginLimits,
        clock: Clock,
    ) -> None:
        self._store = store
        self._accounts = accounts
        self._sessions = sessions
        self._wakeups = wakeups
        self._fingerprint = node_fingerprint
        self._limits = limits
        self._clock = clock

    # -- the bot's side ----------------------------------------------------------------------------------------

    async def challenge(self, raw_key: bytes, raw_owner: str, raw_name: str) -> int:
        """The next nonce for this key; for a key the node has not seen, once its owner approves it."""
        key = validation.identity_key(raw_key)
        owner_name = normalize_username(raw_owner)
        name = bot_name(raw_name)
        owner = await self._accounts.resolve_username(owner_name)
        if owner is None:
            raise NotFound(f"no account named {owner_name}")
        if await self._accounts.resolve_identity(key) is not None:
            raise Forbidden("this key is an account's identity key: accounts log in with their password")
        with store_errors():
            while True:
                record = await self._store.get_bot_key(key)
                rules.check_record(record, owner, owner_name)
                if record is not None:
                    nonce = await self._store.take_bot_nonce(
                        key, self._clock() + self._limits.challenge_seconds, self._limits.max_challenges_per_key
                    )
                    if nonce is not None:
                        return nonce
                    continue  # revoked meanwhile: the record check says so
                request = await self._approval(key, owner, name)
                if request is not None:
                    rules.raise_unless_approved(request, owner_name, self._limits.approval_timeout_s)

    async def _approval(self, key: bytes, owner: bytes, name: str) -> BotApproval | None:
        """Waits for the owner's decision on this key (joining a request already pending); None if the key has a
        record by the time the request would be made."""
        limits = self._limits
        # Registered before the request is read, so that an answer landing in between is not missed.
        async with self._wakeups.waiter(owner, BOT_APPROVAL_CHANNEL) as waiter:
            request = await self._store.open_bot_approval(
                key, owner, name, self._clock() + limits.approval_timeout_s, limits.max_pending_per_owner
            )
            if request is None:
                return None
            rules.check_joined(request, owner)
            while request.state is ApprovalState.PENDING:
                now = self._clock()
                settle = rules.expiry(request, now)
                if settle is not None:
                    await self._store.settle_bot_approval(request.request_id, settle.state, settle.decided_at)
                else:
                    await waiter.wait(request.expires_at - now)
                current = await self._store.get_bot_approval(request.request_id)
                if current is None:  # swept: it was decided long ago
                    raise Forbidden("the approval request for this key is gone; try again")
                request = current
            return request

    async def respond(self, raw_key: bytes, nonce: int, signature: bytes) -> bytes:
        """A session token for a correct signature over an issued, unused nonce; the nonce is used up."""
        key = validation.identity_key(raw_key)
        if not 0 <= nonce <= MAX_NONCE:
            raise Unauthenticated("no such challenge for this key")
        transcript = key_login_transcript(self._fingerprint, key, nonce)
        # The signature first: a stranger cannot use up a bot's challenges with guessed nonces.
        if len(signature) != SIGNATURE_BYTES or not verify_ed25519(key, transcript, signature):
            raise Unauthenticated("signature does not verify for this key, nonce and node")
        with store_errors():
            if not await self._store.consume_bot_nonce(key, nonce):
                raise Unauthenticated(
                    "no such challenge for this key: never issued, already answered, expired, or the key was revoked"
                )
        return await self._sessions.issue(key, b"")

    # -- the owner's side --------------------------------------------------------------------------------------

    async def wait_approvals(
        self, caller: Caller, since_digest: bytes, timeout_ms: int
    ) -> tuple[bytes, list[tuple[BotApproval, ApprovalState]]]:
        """The owner's pending and recently decided requests, once they differ from what `since_digest` names or
        the wait times out (capped like fetchWait)."""
        owner = caller.identity_key
        deadline = time.monotonic() + min(max(timeout_ms, 0), self._limits.max_wait_ms) / 1000
        async with self._wakeups.waiter(owner, BOT_APPROVAL_CHANNEL) as waiter:
            while True:
                now = self._clock()
                with store_errors():
                    requests = await self._store.list_bot_approvals(owner, now - self._limits.recent_seconds)
                view = rules.owner_view(requests, now)
                digest = rules.view_digest(view)
                remaining = deadline - time.monotonic()
                if not hmac.compare_digest(digest, since_digest) or remaining <= 0:
                    return digest, view
                expires = rules.next_expiry(view)
                await waiter.wait(remaining if expires is None else min(remaining, max(expires - now, 0.0) + 0.01))

    async def answer(self, caller: Caller, request_id: bytes, approve: bool) -> ApprovalState:
        """The request's state after this answer: the answer's, or the one that came first."""
        with store_errors():
            request = await self._store.get_bot_approval(bytes(request_id))
            if request is None or request.owner != caller.identity_key:
                raise NotFound("no such approval request of yours")
            settle = rules.answer(request, approve, self._clock())
            if settle is not None:
                await self._store.settle_bot_approval(request.request_id, settle.state, settle.decided_at)
            settled = await self._store.get_bot_approval(request.request_id)
        if settled is None:
            raise NotFound("no such approval request of yours")
        return rules.effective_state(settled, self._clock())

    async def list_bots(self, caller: Caller) -> list[BotKey]:
        with store_errors():
            return await self._store.list_bot_keys(caller.identity_key)

    async def revoke(self, caller: Caller, raw_key: bytes) -> None:
        """Revokes one of the caller's bot keys and ends its sessions at once."""
        key = validation.identity_key(raw_key)
        with store_errors():
            if not await self._store.revoke_bot_key(key, caller.identity_key):
                raise NotFound("you have no bot with this key (or it is already revoked)")
        await self._sessions.revoke_identity(key)

    async def sweep(self) -> None:
        """Expires unanswered requests, drops expired challenges and requests no owner's view shows any more."""
        await self._store.purge_bot_login_state(self._clock() - self._limits.recent_seconds)
