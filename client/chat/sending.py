"""Sending application messages through the outbox: encrypt for the conversation's group, seal a copy for every
other member, store the message as pending together with those copies (one transaction), then let the
`Outbox` send them. The notepad stores locally only.

Message ids (the store's dedup key): outgoing, SHA-256 of ``b"out" | MLS ciphertext``; notes, SHA-256 of
``b"note" | random``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

from quicnprotochat.client.state import Conversation, Message, OutgoingCopy

from .connection import is_unreachable
from .context import ChatContext
from .conversations import ConversationRef, Conversations
from .delivery import seal_for
from .directory import Directory
from .errors import ChatError, MessageTooLarge
from .framing import MlsFrame, TextContent
from .outbox import Outbox


def size_text(size: int) -> str:
    if size >= 1 << 20:
        return f"{size / (1 << 20):.1f} MiB"
    if size >= 1 << 10:
        return f"{size / (1 << 10):.1f} KiB"
    return f"{size} bytes"


class Sender:
    def __init__(
        self, context: ChatContext, conversations: Conversations, directory: Directory, outbox: Outbox
    ) -> None:
        self._context = context
        self._conversations = conversations
        self._directory = directory
        self._outbox = outbox
        self._max_payload: int | None = None

    async def send(self, ref: ConversationRef, text: str) -> Message:
        """Store `text` as a pending message for the conversation's members and try to send it now; returns the
        message in the state it reached (sent, failed with its reason, or pending while the node is away)."""
        if not text.strip():
            raise ChatError("the message is empty: nothing was sent")
        context = self._context
        conversation = await self._conversations.get(ref)
        sent_at = time.time()
        if conversation.kind == "notes":
            return await self._store(conversation, hashlib.sha256(b"note" + os.urandom(16)).digest(), text, sent_at)
        group_id = await self._conversations.group_of(conversation, "send")
        content = TextContent(text, sent_at).encode()
        limit = await self._payload_limit()
        if limit is not None and len(content) > limit:
            raise self._too_large(len(content), limit)
        channel = (conversation.channel_id if conversation.kind == "dm" else None) or b""
        async with context.mls:
            members = await asyncio.to_thread(context.vault.members, group_id)
            recipients = [key for key in members if key != context.identity_key]
            names = [await self._directory.display_name(key) for key in recipients]
            hybrid_keys = [
                await self._directory.hybrid_key(key, name) for key, name in zip(recipients, names, strict=True)
            ]
            ciphertext = await asyncio.to_thread(context.vault.encrypt, group_id, content)
            frame = MlsFrame(ciphertext).encode()
            copies = [
                OutgoingCopy(key, name, channel, seal_for(hybrid, key, frame, channel))
                for key, name, hybrid in zip(recipients, names, hybrid_keys, strict=True)
            ]
            largest = max((len(copy.envelope) for copy in copies), default=0)
            if limit is not None and largest > limit:
                raise self._too_large(largest, limit)
            message = await self._store(
                conversation, hashlib.sha256(b"out" + ciphertext).digest(), text, sent_at, copies=copies
            )
        await self._outbox.flush()
        return await context.store.get_message(message.message_id) or message

    async def _payload_limit(self) -> int | None:
        """The node's largest payload (asked once); None when the node cannot be asked now."""
        if self._max_payload is None:
            try:
                info = await self._context.node.server_info()
            except Exception as error:
                if is_unreachable(error):
                    return None
                raise
            self._max_payload = info.limits.max_payload_bytes
        return self._max_payload

    @staticmethod
    def _too_large(size: int, limit: int) -> MessageTooLarge:
        return MessageTooLarge(
            f"the message is too large: {size_text(size)} once encrypted, and the node takes at most"
            f" {size_text(limit)} per message; nothing was sent"
        )

    async def _store(
        self,
        conversation: Conversation,
        message_id: bytes,
        text: str,
        sent_at: float,
        *,
        copies: list[OutgoingCopy] | None = None,
    ) -> Message:
        context = self._context
        message = await context.store.add_message(
            conversation.id,
            message_id,
            text,
            sender_identity_key=context.identity_key,
            sender_username=context.username,
            sent_at=sent_at,
            outgoing=True,
            state=None if copies is None else ("pending" if copies else "sent"),
            copies=copies or (),
        )
        assert message is not None  # ids are fresh (random, or the hash of a new ciphertext): never a duplicate
        return message
