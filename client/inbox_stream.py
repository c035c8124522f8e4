"""Messages as they arrive, as async iterators over one inbox.

`drain` uses fetchWait: each envelope is removed by the node as it is handed over (at most once: a crash
after receiving loses it). `receive` uses peekWait and acks an envelope only when the consumer asks for the next
one, that is once it has dealt with this one (at least once: after a crash it comes again, so consumers
deduplicate by seq).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from quicnprotochat.client.node_client import Envelope, NodeClient

DEFAULT_WAIT_MS = 25_000


async def drain(
    client: NodeClient, recipient_key: bytes, channel_id: bytes = b"", *, wait_ms: int = DEFAULT_WAIT_MS
) -> AsyncGenerator[Envelope, None]:
    while True:
        for envelope in await client.fetch_wait(recipient_key, channel_id, timeout_ms=wait_ms):
            yield envelope


async def receive(
    client: NodeClient, recipient_key: bytes, channel_id: bytes = b"", *, wait_ms: int = DEFAULT_WAIT_MS
) -> AsyncGenerator[Envelope, None]:
    acked = 0
    while True:
        batch = [e for e in await client.peek_wait(recipient_key, channel_id, timeout_ms=wait_ms) if e.seq > acked]
        for envelope in batch:
            yield envelope
            # The consumer came back for more: it is done with this envelope.
            await client.ack(recipient_key, envelope.seq, channel_id)
            acked = envelope.seq
