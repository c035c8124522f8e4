"""Inboxes: enqueue (single and batch), fetch, long-poll, peek, ack, and 1:1 channels.

An inbox is (recipient identity key, channel id); the empty channel id is the recipient's default inbox. Only
the recipient reads an inbox; a channel's inboxes are used only by the channel's two members.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

from quicnprotochat.common.errors import Forbidden, InvalidArgument, NotFound, Unauthenticated
from quicnprotochat.server.disk_space import DiskSpace
from quicnprotochat.server.services import validation
from quicnprotochat.server.services.errors import store_errors
from quicnprotochat.server.services.sessions import SESSION_CACHE_SECONDS, Caller
from quicnprotochat.server.store import AccountStore, BotKeyStore, Clock, InboxMessage, InboxStore, fetch_wait
from quicnprotochat.server.store.fetch_wait import AnswerSlots
from quicnprotochat.server.store.idempotency import MAX_KEY_BYTES, IdempotencyKey, IdempotencyStore

MAX_BATCH_RECIPIENTS = 1000


class _BoundedCache:
    """Facts that never change once true (an identity has an account, a channel's members), kept bounded."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[bytes, object] = OrderedDict()

    def get(self, key: bytes) -> object | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: bytes, value: object) -> None:
        self._items[key] = value
        if len(self._items) > self._size:
            self._items.popitem(last=False)


class InboxService:
    def __init__(
        self,
        store: InboxStore,
        accounts: AccountStore,
        *,
        message_ttl_seconds: float,
        max_fetch: int,
        max_wait_ms: int,
        max_payload_bytes: int,
        allow_sealed_sender: bool,
        clock: Clock,
        disk: DiskSpace | None = None,
        idempotent: IdempotencyStore | None = None,
        idempotency_window_s: float = 3600.0,
        bot_keys: BotKeyStore | None = None,
    ) -> None:
        self._store = store
        self._accounts = accounts
        self._bot_keys = bot_keys
        self._disk = disk
        self._idempotent = idempotent
        self._idempotency_window = idempotency_window_s
        self._ttl = message_ttl_seconds
        self._max_fetch = max_fetch
        self._max_wait_ms = max_wait_ms
        self._max_payload = max_payload_bytes
        self._allow_sealed_sender = allow_sealed_sender
        self._clock = clock
        self._known_identities = _BoundedCache(100_000)
        self._channels = _BoundedCache(100_000)

    # -- checks ------------------------------------------------------------------------------------------------

    async def _require_account(self, identity_key: bytes, name: str) -> None:
        known = self._known_identities.get(identity_key)
        if known is True or (isinstance(known, float) and time.monotonic() < known):
            return
        if await self._accounts.resolve_identity(identity_key) is not None:
            self._known_identities.put(identity_key, True)  # accounts are never removed
        elif await self._is_bot(identity_key):
            # A bot can be revoked: trusted for a short while only, as sessions are.
            self._known_identities.put(identity_key, time.monotonic() + SESSION_CACHE_SECONDS)
        else:
            raise NotFound(f"{name} belongs to no account on this node")

    async def _is_bot(self, identity_key: bytes) -> bool:
        """An approved, unrevoked bot key: bots receive messages like accounts."""
        if self._bot_keys is None:
            return False
        record = await self._bot_keys.get_bot_key(identity_key)
        return record is not None and not record.revoked

    async def _channel_members(self, channel: bytes) -> tuple[bytes, bytes]:
        cached = self._channels.get(channel)
        if isinstance(cached, tuple):
            return cached
        members = await self._store.channel_members(channel)
        if members is None:
            raise NotFound("no such channel")
        self._channels.put(channel, members)
        return members

    async def _check_channel_peer(self, caller: Caller, channel: bytes, recipient: bytes) -> None:
        members = await self._channel_members(channel)
        if caller.identity_key not in members:
            raise Forbidden("only the channel's two members may use it")
        other = members[1] if members[0] == caller.identity_key else members[0]
        if recipient != other:
            raise InvalidArgument("recipientKey must be the channel's other member")

    async def _own_inbox(self, caller: Caller, recipient: bytes, channel: bytes, version: int) -> tuple[bytes, bytes]:
        validation.wire_version(version)
        channel = validation.channel_id(channel)
        recipient = validation.own_identity_key(caller, recipient, "read an inbox", "recipientKey")
        if channel:
            members = await self._channel_members(channel)
            if recipient not in members:
                raise Forbidden("only the channel's two members may use it")
        return recipient, channel

    def _payload(self, payload: bytes) -> bytes:
        if not payload:
            raise InvalidArgument("payload is empty")
        if len(payload) > self._max_payload:
            raise InvalidArgument(f"payload is {len(payload)} bytes; this node accepts at most {self._max_payload}")
        return payload

    def _limit(self, limit: int) -> int:
        return self._max_fetch if limit == 0 else min(limit, self._max_fetch)

    def _idempotency_key(self, key: bytes, caller: Caller | None, connection_id: bytes) -> IdempotencyKey | None:
        if not key:
            return None
        if len(key) > MAX_KEY_BYTES:
            raise InvalidArgument(f"idempotencyKey is {len(key)} bytes; at most {MAX_KEY_BYTES}")
        scope = caller.identity_key if caller is not None else b"connection:" + connection_id
        return IdempotencyKey(scope, bytes(key), self._clock() + self._idempotency_window)

    def check_room(self) -> None:
        """Refuses new messages when the disk under the store is nearly full (also for the group sequencer)."""
        if self._disk is not None:
            self._disk.check_room()

    def _expiry(self) -> float:
        return self._clock() + self._ttl

    # -- sending -----------------------------------------------------------------------------------------------

    async def enqueue(
        self,
        caller: Caller | None,
        recipient: bytes,
        payload: bytes,
        channel: bytes,
        version: int,
        idempotency_key: bytes = b"",
        connection_id: bytes = b"",
    ) -> int:
        """`caller` None is sealed-sender delivery: allowed to a default inbox only, when the node allows it (its
        idempotency keys are scoped to `connection_id`)."""
        validation.wire_version(version)
        recipient = validation.identity_key(recipient, "recipientKey")
        channel = validation.channel_id(channel)
        payload = self._payload(payload)
        if caller is None:
            if not self._allow_sealed_sender or channel:
                raise Unauthenticated("this method needs auth with an access token")
        elif channel:
            await self._check_channel_peer(caller, channel, recipient)
        await self._require_account(recipient, "recipientKey")
        self.check_room()
        sender = None if caller is None else caller.identity_key
        key = self._idempotency_key(idempotency_key, caller, connection_id)
        with store_errors():
            if key is not None and self._idempotent is not None:
                return (
                    await self._idempotent.enqueue_once(
                        key, [recipient], channel, payload, self._expiry(), sender=sender
                    )
                )[0]
            return await self._store.enqueue(recipient, channel, payload, self._expiry(), sender=sender)

    async def batch_enqueue(
        self,
        caller: Caller,
        recipients: Sequence[bytes],
        payload: bytes,
        channel: bytes,
        version: int,
        idempotency_key: bytes = b"",
    ) -> list[int]:
        validation.wire_version(version)
        channel = validation.channel_id(channel)
        payload = self._payload(payload)
        if not recipients or len(recipients) > MAX_BATCH_RECIPIENTS:
            raise InvalidArgument(f"recipientKeys must hold 1 to {MAX_BATCH_RECIPIENTS} keys")
        if len(set(recipients)) != len(recipients):
            raise InvalidArgument("recipientKeys holds a key twice")
        for index, recipient in enumerate(recipients):
            validation.identity_key(recipient, f"recipientKeys[{index}]")
            if channel:
                await self._check_channel_peer(caller, channel, recipient)
            await self._require_account(recipient, f"recipientKeys[{index}]")
        self.check_room()
        key = self._idempotency_key(idempotency_key, caller, b"")
        with store_errors():
            if key is not None and self._idempotent is not None:
                return await self._idempotent.enqueue_once(
                    key, list(recipients), channel, payload, self._expiry(), sender=caller.identity_key
                )
            return await self._store.batch_enqueue(
                list(recipients), channel, payload, self._expiry(), sender=caller.identity_key
            )

    async def check_delivery(self, caller: Caller, recipient: bytes, channel: bytes, name: str) -> None:
        """What `enqueue` checks of one recipient and channel, for callers that enqueue through another path
        (the group sequencer). `name` names the entry in errors."""
        validation.identity_key(recipient, f"{name}.recipientKey")
        if validation.channel_id(channel):
            await self._check_channel_peer(caller, channel, recipient)
        await self._require_account(recipient, f"{name}.recipientKey")

    # -- receiving ---------------------------------------------------------------------------------------------

    async def fetch(
        self, caller: Caller, recipient: bytes, channel: bytes, version: int, limit: int
    ) -> list[InboxMessage]:
        recipient, channel = await self._own_inbox(caller, recipient, channel, version)
        with store_errors():
            return await self._store.fetch(recipient, channel, self._limit(limit))

    async def fetch_wait(
        self,
        caller: Caller,
        recipient: bytes,
        channel: bytes,
        version: int,
        timeout_ms: int,
        limit: int,
        *,
        remove: bool = True,
        answer_slots: AnswerSlots | None = None,
    ) -> list[InboxMessage]:
        recipient, channel = await self._own_inbox(caller, recipient, channel, version)
        timeout = min(timeout_ms, self._max_wait_ms) / 1000.0
        with store_errors():
            return await fetch_wait(
                self._store, recipient, channel, self._limit(limit), timeout, remove=remove, answer_slots=answer_slots
            )

    async def peek(
        self, caller: Caller, recipient: bytes, channel: bytes, version: int, limit: int
    ) -> list[InboxMessage]:
        recipient, channel = await self._own_inbox(caller, recipient, channel, version)
        with store_errors():
            return await self._store.peek(recipient, channel, self._limit(limit))

    async def ack(self, caller: Caller, recipient: bytes, channel: bytes, version: int, seq_up_to: int) -> None:
        recipient, channel = await self._own_inbox(caller, recipient, channel, version)
        with store_errors():
            await self._store.ack(recipient, channel, seq_up_to)

    # -- channels ----------------------------------------------------------------------------------------------

    async def create_channel(self, caller: Caller, peer: bytes) -> bytes:
        peer = validation.identity_key(peer, "peerKey")
        if peer == caller.identity_key:
            raise InvalidArgument("a channel needs two different members")
        await self._require_account(peer, "peerKey")
        with store_errors():
            return await self._store.get_or_create_channel(caller.identity_key, peer)
