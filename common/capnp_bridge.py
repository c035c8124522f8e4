"""Attaches pycapnp's two-party RPC to any asyncio-style transport.

pycapnp reads through an `asyncio.BufferedProtocol` of its own (what its TCP streams use). We create that
protocol through `AsyncIoStream._connect`, the factory pycapnp's own `create_server` uses, and drive it with
transports we control (`StreamBridge`: `QuicStreamTransport` for QUIC streams, `TlsStreamTransport` for TLS over
TCP), so that one code path serves both transports on either event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import capnp  # type: ignore[import-untyped]


def attach_capnp_stream(transport: asyncio.BaseTransport) -> tuple[Any, asyncio.BufferedProtocol]:
    """Wraps an already-connected transport in a pycapnp AsyncIoStream; returns (stream, protocol)."""
    streams: list[Any] = []
    # The factory pycapnp's own `create_server` uses; its callback receives the AsyncIoStream.
    protocol: asyncio.BufferedProtocol = capnp.AsyncIoStream._connect(streams.append)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    return streams[0], protocol


def reader_limit_words(max_message_bytes: int) -> int:
    """Cap'n Proto's traversal limit (in 8-byte words) that bounds how large one incoming message may be."""
    return max(max_message_bytes // 8, 1024)
