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
from pathlib import Path

from quicnprotochat.client.node_client import ServerLimits
from quicnprotochat.client.state import Conversation, Message, OutgoingCopy
from quicnprotochat.native import StateError

from .attachments import Attachments, describe_file
from .connection import is_unreachable
from .context import ChatContext
from .conversations import ConversationRef, Conversations
from .delivery import seal_for
from .directory import Directory
from .errors import ChatError, MessageTooLarge
from .framing import MlsFrame, TextContent
from .outbox import Outbox
from .units import size_text


class Sender:
    def __init__(
        self,
        context: ChatContext,
        conversations: Conversations,
        directory: Directory,
        outbox: Outbox,
        attachments: Attachments,
    ) -> None:
        self._context = context
        self._conversations = conversations
        self._directory = directory
        self._outbox = outbox
        self._attachments = attachments
        self._limits: ServerLimits | None = None

    async def send(self, ref: ConversationRef, text: str, *, wait: bool = True) -> Message:
        """Store `text` as a pending message for the conversation's members and try to send it now; returns the
        message in the state it reached (sent, failed with its reason, or pending while the node is away).
        `wait` False: returns once it is stored (pending) and lets the outbox send it in the background."""
        if not text.strip():
            raise ChatError("the message is empty: nothing was sent")
        conversation = await self._conversations.get(ref)
        sent_at = time.time()
        if conversation.kind == "notes":
            return await self._store(conversation, hashlib.sha256(b"note" + os.urandom(16)).digest(), text, sent_at)
        return await self._send(conversation, TextContent(text, sent_at).encode(), text, sent_at, wait=wait)

    async def send_file(self, ref: ConversationRef, path: Path) -> Message:
        """Encrypt the file, store it on the node (now: the node must answer), then send its key and hash like a
        message (through the outbox)."""
        conversation = await self._conversations.get(ref)
        await self._conversations.group_of(conversation, "send files")
        sent_at = time.time()
        info = await self._server_limits()
        file = await self._attachments.upload(path, None if info is None else info.max_blob_bytes, sent_at)
        return await self._send(conversation, file.encode(), describe_file(file), sent_at)

    async def _send(
        self, conversation: Conversation, content: bytes, body: str, sent_at: float, *, wait: bool = True
    ) -> Message:
        context = self._context
        group_id = await self._conversations.group_of(conversation, "send")
        info = await self._server_limits()
        limit = None if info is None else info.max_payload_bytes
        if limit is not None and len(content) > limit:
            raise self._too_large(len(content), limit)
        channel = (conversation.channel_id if conversation.kind == "dm" else None) or b""
        async with context.mls:
            members = await asyncio.to_thread(context.vault.members, group_id)
            recipients = [key for key in members if key != context.identity_key]
            for key in recipients:
                await self._directory.check_recipient(key)  # nothing goes to a changed key until it is accepted
            names = [await self._directory.display_name(key) for key in recipients]
            hybrid_keys = [
                await self._directory.hybrid_key(key, name) for key, name in zip(recipients, names, strict=True)
            ]
            try:
                ciphertext = await asyncio.to_thread(context.vault.encrypt, group_id, content)
            except StateError:
                raise ChatError(
                    f"{conversation.name} is waiting for the node to confirm a change of its members: nothing was"
                    " sent; try again once it is confirmed"
                ) from None
            frame = MlsFrame(ciphertext).encode()
            copies = [
                OutgoingCopy(key, name, channel, seal_for(hybrid, key, frame, channel))
                for key, name, hybrid in zip(recipients, names, hybrid_keys, strict=True)
            ]
            largest = max((len(copy.envelope) for copy in copies), default=0)
            if limit is not None and largest > limit:
                raise self._too_large(largest, limit)
            message = await self._store(
                conversation, hashlib.sha256(b"out" + ciphertext).digest(), body, sent_at, copies=copies
            )
        if not wait:
            self._outbox.flush_soon()
            return message
        await self._outbox.flush()
        return await context.store.get_message(message.message_id) or message

    async def _server_limits(self) -> ServerLimits | None:
        """The node's limits (asked once); None when the node cannot be asked now."""
        if self._limits is None:
            try:
                info = await self._context.node.server_info()
            except Exception as error:
                if is_unreachable(error):
                    return None
                raise
            self._limits = info.limits
        return self._limits

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
