"""Sending application messages: encrypt for the conversation's group, deliver to every other member, keep the
outgoing copy in the history. The notepad stores locally only.

Message ids (the store's dedup key): outgoing, SHA-256 of ``b"out" | MLS ciphertext``; notes, SHA-256 of
``b"note" | random``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

from quicnprotochat.client.state import Conversation, Message

from .context import ChatContext
from .conversations import ConversationRef, Conversations
from .delivery import Delivery
from .errors import DeliveryFailed
from .framing import MlsFrame, TextContent


class Sender:
    def __init__(self, context: ChatContext, conversations: Conversations, delivery: Delivery) -> None:
        self._context = context
        self._conversations = conversations
        self._delivery = delivery

    async def send(self, ref: ConversationRef, text: str) -> Message:
        """Encrypt `text` for the conversation's members and send it; returns the stored outgoing message."""
        context = self._context
        conversation = await self._conversations.get(ref)
        sent_at = time.time()
        if conversation.kind == "notes":
            return await self._store_outgoing(
                conversation, hashlib.sha256(b"note" + os.urandom(16)).digest(), text, sent_at
            )
        group_id = await self._conversations.group_of(conversation, "send")
        content = TextContent(text, sent_at).encode()
        async with context.mls:
            ciphertext = await asyncio.to_thread(context.vault.encrypt, group_id, content)
            members = await asyncio.to_thread(context.vault.members, group_id)
            recipients = [key for key in members if key != context.identity_key]
            channel = conversation.channel_id if conversation.kind == "dm" else None
            partial: DeliveryFailed | None = None
            try:
                await self._delivery.deliver(recipients, MlsFrame(ciphertext).encode(), channel or b"")
            except DeliveryFailed as error:
                partial = error  # some members got it: keep it in the history, then say who did not
            message = await self._store_outgoing(
                conversation, hashlib.sha256(b"out" + ciphertext).digest(), text, sent_at
            )
        if partial is not None:
            raise partial
        return message

    async def _store_outgoing(
        self, conversation: Conversation, message_id: bytes, text: str, sent_at: float
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
        )
        assert message is not None  # ids are fresh (random, or the hash of a new ciphertext): never a duplicate
        return message
