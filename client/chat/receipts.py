"""`Receipts`: delivery and read receipts between members, as MLS application messages of their own kind (see
`framing`), sent only to the message's sender.

A receipt names messages by their sender's reference (`message_ref`: what the sender's store keys its outgoing
copy by). "delivered" goes back as soon as an incoming message is stored; "read" when the conversation is marked
read (the REPL marks what it shows, `qpc recv` what it prints). Receipts are best effort: one that cannot be
sent now is not retried (the message itself is what matters). `ChatConfig.receipts = False` sends none.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import defaultdict
from collections.abc import Coroutine
from typing import Any

from quicnprotochat.client.state import Conversation
from quicnprotochat.native import NativeError

from .context import ChatContext
from .conversations import ConversationRef, Conversations
from .delivery import Delivery
from .errors import ChatError
from .events import Event, MessageReceived
from .framing import MlsFrame, ReceiptContent, ReceiptKind

log = logging.getLogger(__name__)


def message_ref(mls_message: bytes) -> bytes:
    """The reference of an application message: SHA-256 of ``b"out" | MLS ciphertext`` (the sender's id of it)."""
    return hashlib.sha256(b"out" + mls_message).digest()


class Receipts:
    def __init__(self, context: ChatContext, conversations: Conversations, delivery: Delivery) -> None:
        self._context = context
        self._conversations = conversations
        self._delivery = delivery
        self._sending: set[asyncio.Task[None]] = set()
        context.bus.add_listener(self._on_event)

    @property
    def enabled(self) -> bool:
        return self._context.config.receipts

    def _on_event(self, event: Event) -> None:
        if not self.enabled or not isinstance(event, MessageReceived):
            return
        sender, ref = event.message.sender_identity_key, event.message.ref
        if sender is not None and ref is not None:
            self._spawn(self._send(event.conversation, sender, "delivered", [ref]))

    async def mark_read(self, ref: ConversationRef, up_to: int | None = None) -> None:
        """Move the read marker (to `up_to`, default the newest message) and send read receipts for what it
        passed."""
        store = self._context.store
        conversation = await self._conversations.get(ref)
        before = await store.last_read(conversation.id)
        after = await store.mark_read(conversation.id, up_to)
        if not self.enabled or after <= before:
            return
        by_sender: dict[bytes, list[bytes]] = defaultdict(list)
        for sender, message in await store.incoming_refs(conversation.id, before, after):
            by_sender[sender].append(message)
        for sender, refs in by_sender.items():
            self._spawn(self._send(conversation, sender, "read", refs))

    def _spawn(self, sending: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(sending)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def drain(self, timeout: float) -> None:
        """Let the receipts being sent go out (a `qpc recv` closes right after printing), then cancel the rest."""
        if not self._sending:
            return
        _done, late = await asyncio.wait(set(self._sending), timeout=timeout)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    async def _send(self, conversation: Conversation, peer: bytes, kind: ReceiptKind, refs: list[bytes]) -> None:
        context = self._context
        if conversation.group_id is None or peer == context.identity_key:
            return
        channel = (conversation.channel_id if conversation.kind == "dm" else None) or b""
        try:
            async with context.mls:
                content = ReceiptContent(kind, tuple(refs)).encode()
                ciphertext = await asyncio.to_thread(context.vault.encrypt, conversation.group_id, content)
                await self._delivery.deliver([peer], MlsFrame(ciphertext).encode(), channel)
        except (ChatError, NativeError) as error:
            log.debug("a %s receipt was not sent: %s", kind, error)
