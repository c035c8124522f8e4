"""A byte stream we own, presented as an asyncio transport to pycapnp's stream protocol.

pycapnp reads through an `asyncio.BufferedProtocol` of its own. Instead of letting a real transport drive that
protocol (asyncio's TCP/TLS transports do, and under uvloop that crashes: uvloop reads right after
`connection_made` although pycapnp paused it), the owner of the byte stream feeds what it receives into a
`StreamBridge`, and the bridge hands it to pycapnp only the way pycapnp 2.2.4 copes with:

- bytes only while pycapnp has a read pending (it resumes reading when it starts a read and pauses when the read
  is done); the rest waits here, bounded, because pycapnp copies data that arrives while it is paused into a
  slow overflow path;
- end of stream as a lost connection, never as `eof_received()`: pycapnp dereferences a null pointer when a read
  starts after EOF was delivered with no read pending.

The owner may also hold delivery back (`set_budget`: while `hold()` is true, received bytes wait here, so kj
reads no further calls) and learns how many bytes pycapnp wrote (`on_write`): that is how a connection's calls
in flight and unsent answers are bounded (server/connection_budget.py).

The node also watches what arrives (`set_inbound`: an `InboundMeter` sees every received byte and how many
wait here undelivered, and may stop delivery while it has the connection closed): that is how bytes of incoming
messages in progress are bounded over the whole node (server/incoming_messages.py).

Subclasses say how bytes go out: `QuicStreamTransport` (one QUIC stream) and `TlsStreamTransport` (a TLS
connection, through `TlsStreamProtocol`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol, cast


class StreamBufferOverflow(ConnectionError):
    """The peer sent more than we buffer for a stream whose reader is not keeping up."""


class InboundMeter(Protocol):
    """What the owner of a stream learns of its incoming bytes (server side: a node-wide budget)."""

    @property
    def open(self) -> bool:
        """False once the meter had the connection closed: nothing more is delivered."""

    def received(self, data: bytes) -> None:
        """`data` arrived, in stream order (before it is buffered or delivered)."""

    def buffered(self, count: int) -> None:
        """`count` received bytes wait in the bridge, not yet delivered."""

    def closed(self) -> None:
        """The stream ended."""


class StreamBridge(asyncio.Transport):
    def __init__(
        self,
        *,
        max_buffered: int,
        on_closed: Callable[[], None] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(extra)
        self._max_buffered = max_buffered
        self._on_closed = on_closed
        self._received = bytearray()
        self._protocol: asyncio.BufferedProtocol | None = None
        self._reading = False
        self._closing = False
        self._lost = False
        self._hold: Callable[[], bool] | None = None
        self._on_write: Callable[[int], None] | None = None
        self._inbound: InboundMeter | None = None
        self._outbound: Callable[[bytes], bytes] | None = None
        self.last_received = time.monotonic()
        """When bytes last arrived (time.monotonic): what an idle timeout measures."""

    # -- what subclasses provide ---------------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        raise NotImplementedError

    def _send_eof(self) -> None:
        raise NotImplementedError

    def _buffered_changed(self, buffered: int) -> None:
        """Called after bytes were added to or taken from the receive buffer (flow control hook)."""

    def unsent_bytes(self) -> int:
        """Bytes written that the transport still holds (not yet sent, or sent and not yet acknowledged)."""
        return 0

    # -- wiring --------------------------------------------------------------------------------------------------

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.BufferedProtocol)
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def set_budget(self, hold: Callable[[], bool], on_write: Callable[[int], None]) -> None:
        """`hold()`: deliver nothing more for now; `on_write(n)`: pycapnp wrote n bytes."""
        self._hold = hold
        self._on_write = on_write

    def set_inbound(self, meter: InboundMeter) -> None:
        self._inbound = meter

    def set_outbound(self, rewrite: Callable[[bytes], bytes]) -> None:
        """`rewrite(data)`: what to send for the bytes pycapnp writes (it may hold some back for a later call)."""
        self._outbound = rewrite

    def release(self) -> None:
        """The hold may be over: deliver what waits."""
        if self._received and not self._lost:
            self._deliver()
            self._after_buffer_change()

    def _after_buffer_change(self) -> None:
        buffered = len(self._received)
        if self._inbound is not None:
            self._inbound.buffered(buffered)
        self._buffered_changed(buffered)

    # -- from the owner of the byte stream -----------------------------------------------------------------------

    def feed(self, data: bytes, end_stream: bool = False) -> None:
        """Bytes received. Raises StreamBufferOverflow when the peer floods us."""
        if self._lost:
            return
        if data:
            self.last_received = time.monotonic()
            inbound = self._inbound
            if inbound is not None:
                inbound.received(data)
                if not inbound.open:
                    return  # being closed: the meter said why
            self._received += data
            if len(self._received) > self._max_buffered:
                raise StreamBufferOverflow(f"more than {self._max_buffered} bytes buffered on a stream")
            self._deliver()
            self._after_buffer_change()
        if end_stream:
            self.connection_lost(None)

    def connection_lost(self, exc: Exception | None) -> None:
        """The stream ended: pycapnp fails its pending reads and writes."""
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._received.clear()
        if self._inbound is not None:
            self._inbound.closed()
        if self._protocol is not None:
            self._protocol.connection_lost(exc)
        if self._on_closed is not None:
            self._on_closed()

    def _deliver(self) -> None:
        protocol = self._protocol
        received = self._received
        hold = self._hold
        inbound = self._inbound
        while (
            self._reading
            and received
            and protocol is not None
            and not (hold is not None and hold())
            and (inbound is None or inbound.open)
        ):
            buffer = memoryview(protocol.get_buffer(len(received)))
            count = min(len(buffer), len(received))
            buffer[:count] = received[:count]
            del received[:count]
            buffer.release()
            protocol.buffer_updated(count)

    # -- asyncio.ReadTransport -----------------------------------------------------------------------------------

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        self._reading = True
        if self._received:
            self._deliver()
            self._after_buffer_change()

    # -- asyncio.WriteTransport ----------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        out = data if isinstance(data, bytes) else bytes(data)
        if self._outbound is not None:
            out = self._outbound(out)
        if out:
            self._send(out)
        if self._on_write is not None:
            self._on_write(len(data))

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return 0

    def write_eof(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._send_eof()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """pycapnp closes its stream: finish ours; the stream's owner decides what that means for the connection."""
        if self._lost:
            return
        self.write_eof()
        self.connection_lost(None)

    def abort(self) -> None:
        self.close()


class TlsStreamTransport(StreamBridge):
    """A TLS (or any asyncio stream) connection's bytes, for pycapnp; driven by `TlsStreamProtocol`."""

    def __init__(self, transport: asyncio.Transport, *, max_buffered: int, pause_above: int) -> None:
        super().__init__(max_buffered=max_buffered)
        self._transport = transport
        self._pause_above = pause_above
        self._source_paused = False
        self.on_drained: Callable[[], None] | None = None
        """Called when the TLS write buffer drained below its low-water mark."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def _send(self, data: bytes) -> None:
        # Answers to calls that were read before the peer went away: asyncio would log each write to a closed
        # socket ("socket.send() raised exception."), one line per answer.
        if not self._transport.is_closing():
            self._transport.write(data)

    def unsent_bytes(self) -> int:
        return self._transport.get_write_buffer_size()

    def abort(self) -> None:
        """Drop the connection at once (a refused or idle one): nothing buffered is sent."""
        self.connection_lost(None)
        self._transport.abort()

    def _send_eof(self) -> None:
        # TLS has no half-close in asyncio: ending our side ends the connection (after the buffered writes).
        self._transport.close()

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def _buffered_changed(self, buffered: int) -> None:
        # Backpressure on reads: stop reading the socket while pycapnp lags behind, read again once it caught up.
        if buffered > self._pause_above:
            if not self._source_paused and not self._transport.is_closing():
                self._source_paused = True
                self._transport.pause_reading()
        elif self._source_paused and buffered == 0:
            self._source_paused = False
            if not self._transport.is_closing():
                self._transport.resume_reading()

    def pause_writing(self) -> None:
        if self._protocol is not None and not self._lost:
            self._protocol.pause_writing()

    def resume_writing(self) -> None:
        if self._protocol is not None and not self._lost:
            self._protocol.resume_writing()
        if self.on_drained is not None:
            self.on_drained()


class TlsStreamProtocol(asyncio.Protocol):
    """The protocol of a TLS connection whose bytes feed pycapnp through a `TlsStreamTransport`.

    `on_connected(bridge)` runs in `connection_made`; attach pycapnp there (or later: bytes wait in the bridge).
    """

    def __init__(
        self,
        on_connected: Callable[[TlsStreamTransport], None] | None = None,
        *,
        max_buffered: int,
        pause_above: int = 256 * 1024,
        write_buffer_high: int | None = None,
    ) -> None:
        self._on_connected = on_connected
        self._max_buffered = max_buffered
        self._pause_above = min(pause_above, max_buffered)
        self._write_buffer_high = write_buffer_high
        self.bridge: TlsStreamTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance-checked: uvloop's transports do not derive from asyncio.Transport.
        stream = cast(asyncio.Transport, transport)
        if self._write_buffer_high is not None:
            # Answers wait in the transport's buffer, where the connection's budget counts them, rather than in
            # kj's queue behind a paused pycapnp writer, where nobody does.
            stream.set_write_buffer_limits(high=self._write_buffer_high, low=self._write_buffer_high // 4)
        self.bridge = TlsStreamTransport(stream, max_buffered=self._max_buffered, pause_above=self._pause_above)
        if self._on_connected is not None:
            self._on_connected(self.bridge)

    def data_received(self, data: bytes) -> None:
        assert self.bridge is not None
        try:
            self.bridge.feed(data)
        except StreamBufferOverflow as error:
            self.bridge.connection_lost(error)
            self.bridge._transport.abort()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self.bridge is not None:
            self.bridge.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.bridge is not None:
            self.bridge.pause_writing()

    def resume_writing(self) -> None:
        if self.bridge is not None:
            self.bridge.resume_writing()
