"""Delivery: seal a frame to each recipient (hybrid envelope) and enqueue it in their inbox.

Every payload is sealed to each recipient separately:
``seal_envelope(peer_hybrid_key, frame, envelope_info(peer_identity_key, channel_id))``; the frame format is in
`quicnprotochat.client.chat.framing`. The node only ever sees the recipient, the channel and ciphertext.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from quicnprotochat.common.errors import Disconnected, RpcError
from quicnprotochat.native import envelope_info, seal_envelope

from .context import ChatContext, reraise
from .directory import Directory
from .errors import DeliveryFailed, NodeUnavailable


def seal_for(hybrid_key: bytes, peer: bytes, frame: bytes, channel: bytes) -> bytes:
    """The envelope carrying `frame` to `peer` on `channel` (empty: the default inbox)."""
    return seal_envelope(hybrid_key, frame, envelope_info(peer, channel or None))


class Delivery:
    def __init__(self, context: ChatContext, directory: Directory) -> None:
        self._context = context
        self._directory = directory

    async def deliver(self, recipients: Sequence[bytes], frame: bytes, channel: bytes) -> None:
        """Seal `frame` to each recipient and enqueue it; DeliveryFailed names those who did not get it."""
        if not recipients:
            return
        names = [await self._directory.display_name(key) for key in recipients]
        results = await asyncio.gather(
            *(self._deliver_to(key, name, frame, channel) for key, name in zip(recipients, names, strict=True)),
            return_exceptions=True,
        )
        failed = [(name, error) for name, error in zip(names, results, strict=True) if isinstance(error, BaseException)]
        if not failed:
            return
        for _name, error in failed:
            if not isinstance(error, Exception):
                raise error
        if len(failed) == len(recipients) and all(isinstance(error, NodeUnavailable) for _n, error in failed):
            raise failed[0][1]
        detail = "; ".join(f"{name}: {error}" for name, error in failed)
        raise DeliveryFailed(f"not delivered to {detail}", [name for name, _error in failed])

    async def _deliver_to(self, peer: bytes, name: str, frame: bytes, channel: bytes) -> None:
        hybrid = await self._directory.hybrid_key(peer, name)
        await self.deliver_one(peer, hybrid, frame, channel)

    async def deliver_one(self, peer: bytes, hybrid: bytes, frame: bytes, channel: bytes) -> None:
        envelope = seal_for(hybrid, peer, frame, channel)
        # The same bytes are sent again after a dropped connection: the recipient stores by the envelope's hash,
        # so a copy that did land before the drop is not shown twice.
        # Only a connection lost during the call is retried (the next call reconnects); a node that cannot be
        # reached at all fails at once rather than after several connect timeouts.
        for attempt in range(3):
            try:
                await self._context.node.enqueue(peer, envelope, channel)
                return
            except Disconnected as error:
                if attempt == 2:
                    await self._context.guard(reraise(error))
                await asyncio.sleep(0.2 * (attempt + 1))
            except (RpcError, OSError, TimeoutError) as error:
                await self._context.guard(reraise(error))
