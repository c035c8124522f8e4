"""One QUIC stream presented as an asyncio transport, so pycapnp's stream protocol can run over it.

The stream owner (a `QuicConnectionProtocol`) feeds received bytes in with `feed()` and flushes what we queue
with `send_stream_data`. pycapnp pauses reading whenever it has no read pending: we hand bytes over only while
it reads, and keep the rest here (bounded), because its protocol copies data that arrives while paused into a
slow overflow path. End of stream is reported as a lost connection, never as `eof_received()`: pycapnp 2.2.4
dereferences a null pointer when a read starts after EOF was delivered with no read pending.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aioquic.quic.connection import QuicConnection


class StreamBufferOverflow(ConnectionError):
    """The peer sent more than we buffer for a stream whose reader is not keeping up."""


class QuicStreamTransport(asyncio.Transport):
    def __init__(
        self,
        quic: QuicConnection,
        stream_id: int,
        schedule_transmit: Callable[[], None],
        *,
        max_buffered: int,
        on_closed: Callable[[], None] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(extra)
        self._quic = quic
        self._stream_id = stream_id
        self._schedule_transmit = schedule_transmit
        self._max_buffered = max_buffered
        self._on_closed = on_closed
        self._received = bytearray()
        self._protocol: asyncio.BufferedProtocol | None = None
        self._reading = False
        self._closing = False
        self._lost = False

    @property
    def stream_id(self) -> int:
        return self._stream_id

    # -- wiring ------------------------------------------------------------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.BufferedProtocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    # -- from the QUIC side ------------------------------------------------------------------------------------

    def feed(self, data: bytes, end_stream: bool) -> None:
        """Bytes received on the stream. Raises StreamBufferOverflow when the peer floods us."""
        if self._lost:
            return
        self._received += data
        if len(self._received) > self._max_buffered:
            raise StreamBufferOverflow(f"more than {self._max_buffered} bytes buffered on stream {self._stream_id}")
        self._deliver()
        if end_stream:
            self.connection_lost(None)

    def connection_lost(self, exc: Exception | None) -> None:
        """The stream or the whole QUIC connection ended: pycapnp fails its pending reads and writes."""
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._received.clear()
        if self._protocol is not None:
            self._protocol.connection_lost(exc)
        if self._on_closed is not None:
            self._on_closed()

    def _deliver(self) -> None:
        protocol = self._protocol
        while self._reading and self._received and protocol is not None:
            buffer = memoryview(protocol.get_buffer(len(self._received)))
            count = min(len(buffer), len(self._received))
            buffer[:count] = self._received[:count]
            del self._received[:count]
            buffer.release()
            protocol.buffer_updated(count)

    # -- asyncio.ReadTransport ---------------------------------------------------------------------------------

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        self._reading = True
        self._deliver()

    # -- asyncio.WriteTransport --------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        self._quic.send_stream_data(self._stream_id, bytes(data))
        self._schedule_transmit()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._quic.send_stream_data(self._stream_id, b"", end_stream=True)
        self._schedule_transmit()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """pycapnp closes its stream: finish ours; the connection owner decides what that means for QUIC."""
        if self._lost:
            return
        self.write_eof()
        self.connection_lost(None)

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return 0
