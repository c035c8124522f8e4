"""Attaches pycapnp's two-party RPC to any asyncio-style transport.

pycapnp reads through an `asyncio.BufferedProtocol` of its own (what its TCP streams use). We create that
protocol through `AsyncIoStream._connect`, the factory pycapnp's own `create_server` uses, and drive it with
transports we control (`StreamBridge`: `QuicStreamTransport` for QUIC streams, `TlsStreamTransport` for TLS over
TCP), so that one code path serves both transports on either event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import capnp  # type: ignore[import-untyped]


def capnp_protocol_factory(
    on_stream: Callable[[Any, asyncio.BaseProtocol], None],
) -> asyncio.BufferedProtocol:
    """A pycapnp stream protocol; `on_stream(stream, protocol)` runs once the transport is attached."""
    protocol: asyncio.BufferedProtocol | None = None

    def connected(stream: Any) -> None:
        assert protocol is not None
        on_stream(stream, protocol)

    protocol = capnp.AsyncIoStream._connect(connected)
    return protocol


def attach_capnp_stream(transport: asyncio.BaseTransport) -> tuple[Any, asyncio.BufferedProtocol]:
    """Wraps an already-connected transport in a pycapnp AsyncIoStream; returns (stream, protocol)."""
    streams: list[Any] = []
    protocol = capnp_protocol_factory(lambda stream, _protocol: streams.append(stream))
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    return streams[0], protocol


def reader_limit_words(max_message_bytes: int) -> int:
    """Cap'n Proto's traversal limit (in 8-byte words) that bounds how large one incoming message may be."""
    return max(max_message_bytes // 8, 1024)
