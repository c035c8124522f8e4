"""`Outbox`: sends the outgoing copies the store holds (see `quicnprotochat.client.state.outbox`), oldest first
for each recipient, so that every recipient gets a sender's messages in the order they were written (with direct
delivery on, a copy that went straight to its peer may overtake an earlier one that went through the node).
Through the node, one at a time; directly, a recipient's pending copies are pipelined on its connection
(`DirectDelivery.deliver_in_order`), and the first one it did not store, with every later one, goes through the
node in order.

A copy the node takes is settled with its seq; one it refuses (inbox full, payload too large, unknown recipient)
with the node's reason; either way it leaves the outbox, and the message's final state is reported with
`MessageStateChanged`. When the node cannot be reached, the flush stops there and the rest stays pending,
across a restart too; `ConnectionWatch` flushes again when the node is back. A copy whose enqueue was cut off
is sent again as the same bytes with the same idempotency key: the node answers it with the first seq (within
its `idempotency_window_s`), and a recipient who got it anyway keeps messages by envelope hash.
"""

from __future__ import annotations

import asyncio
import hashlib

from quicnprotochat.client.state import Message, PendingCopy
from quicnprotochat.common.errors import RpcError

from .connection import ConnectionWatch, is_unreachable
from .context import ChatContext
from .direct import DirectDelivery
from .errors import ChatError
from .events import ErrorEvent, MessageStateChanged


class Outbox:
    def __init__(self, context: ChatContext, watch: ConnectionWatch, direct: DirectDelivery | None = None) -> None:
        self._context = context
        self._watch = watch
        self._direct = direct
        self._lock = asyncio.Lock()
        self._flush_waiting = False
        watch.on_restored(self.flush_soon)

    def flush_soon(self) -> None:
        """Flush in the background (the node is back, the client started with messages pending, or a send did
        not wait). One background flush waits at most: it takes whatever is pending when its turn comes."""
        if self._flush_waiting:
            return
        self._flush_waiting = True
        self._context.bus.spawn(self._flush_reporting())

    async def _flush_reporting(self) -> None:
        try:
            await self.flush()
        except ChatError as error:
            self._context.emit(ErrorEvent(f"sending: {error}", error))

    async def flush(self) -> bool:
        """Send every pending copy, in order for each recipient; True when the outbox is empty, False when the node
        could not be reached (what is left stays pending)."""
        if not self._watch.up:
            self._flush_waiting = False
            return False  # the watch flushes again when the node answers; trying now would only wait
        async with self._lock:
            # What is stored from here on needs another flush: this one may have taken its list already.
            self._flush_waiting = False
            by_recipient: dict[bytes, list[PendingCopy]] = {}
            for copy in await self._context.store.pending_copies():
                by_recipient.setdefault(copy.recipient_key, []).append(copy)
            for copies in by_recipient.values():
                if not await self._send_to(copies):
                    return False
        return True

    async def _send_to(self, copies: list[PendingCopy]) -> bool:
        """One recipient's pending copies, oldest first; False when the node could not be reached."""
        context = self._context
        direct = self._direct
        sent = 0
        # Direct first when it is on: a copy counts as sent only once the peer stored it. The others go to the
        # node as the same bytes with the same idempotency key; a peer that stored one but whose answer was lost
        # keeps it once (messages are stored by envelope hash).
        if direct is not None:

            async def stored(index: int) -> None:
                await self._settled(await context.store.settle_copy(copies[index].id, route="direct"))

            requests = [(copy.channel_id, copy.envelope) for copy in copies]
            sent = await direct.deliver_in_order(copies[0].recipient_key, requests, stored)
        for copy in copies[sent:]:
            if not await self._enqueue(copy):
                return False
        return True

    async def _enqueue(self, copy: PendingCopy) -> bool:
        context = self._context
        try:
            seq = await context.node.enqueue(
                copy.recipient_key, copy.envelope, copy.channel_id, idempotency_key=idempotency_key(copy)
            )
        except asyncio.CancelledError:
            raise
        except RpcError as error:
            if is_unreachable(error):
                self._watch.lost(error)
                return False
            await self._settled(await context.store.settle_copy(copy.id, refusal=refusal(copy, error)))
            return True
        except (OSError, TimeoutError) as error:
            self._watch.lost(error)
            return False
        await self._settled(await context.store.settle_copy(copy.id, seq=seq, route="node"))
        return True

    async def _settled(self, message: Message | None) -> None:
        if message is None:
            return  # other recipients' copies are still pending
        conversation = await self._context.store.get_conversation(message.conversation_id)
        if conversation is not None:
            self._context.emit(MessageStateChanged(conversation, message))


def idempotency_key(copy: PendingCopy) -> bytes:
    """The enqueue's idempotency key: derived from the sealed bytes, so it is the same after a restart, and the
    node answers a repeat within its window with the first seq instead of storing the copy twice."""
    return hashlib.sha256(b"quicnprotochat outbox v1" + copy.envelope).digest()[:16]


def refusal(copy: PendingCopy, error: RpcError) -> str:
    """The reason kept on a failed message: who did not get it and what the node said (no wire code)."""
    return f"{copy.recipient_name}: {error.reason}"
