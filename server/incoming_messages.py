"""Bytes of incoming messages the node holds before they are complete, bounded over the whole node.

Cap'n Proto reads a whole message before anything acts on it, so a client that sends most of a large message and
then stalls makes the node hold those bytes for as long as the connection stays open; twenty such connections
held 360 MB. Each connection's `ConnectionInbound` follows its stream's framing (common/capnp_frames.py) and
counts what it holds: bytes received and not yet delivered to the RPC reader, or the part of the current message
already received, whichever is more. `IncomingMessages` adds these up over all connections; past its limit it
closes the connections that have been holding bytes the longest (a stalled sender, not the client whose message
is arriving now) until the total fits again.

Per connection it also refuses, before reading any of it, a message whose framing announces more than the
node's largest message, and closes a connection past `max_bootstraps_per_connection` Bootstrap messages (kj
answers those below the node's dispatch, so no other limit sees them; a client needs one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from quicnprotochat.common.capnp_frames import BOOTSTRAP, UNKNOWN_KIND, FrameRefused, FrameScanner
from quicnprotochat.server.log_throttle import LogThrottle
from quicnprotochat.server.node_counters import NodeCounters

log = logging.getLogger("quicnprotochat.server.incoming")

# Setting names, also the keys of `NodeCounters.refused`.
IN_PROGRESS_LIMIT = "max_incoming_bytes_in_progress"
MESSAGE_LIMIT = "max_message_bytes"
BOOTSTRAP_LIMIT = "max_bootstraps_per_connection"

Close = Callable[[str], None]
CallRead = Callable[[int, int, int], None]


class IncomingMessages:
    """The node-wide account of incoming bytes in progress."""

    def __init__(self, limit: int, counters: NodeCounters) -> None:
        self.limit = limit
        self.total = 0
        self._counters = counters
        self._closing = LogThrottle(log)  # one line per limit and minute, per node
        self._holders: dict[ConnectionInbound, None] = {}  # connections holding bytes, longest first

    def connection(
        self, *, max_message_bytes: int, max_bootstraps: int, close: Close, call_read: CallRead | None = None
    ) -> ConnectionInbound:
        """The meter of a new connection; `close(reason)` ends that connection (called on a later loop turn);
        `call_read(question, interface, method)` learns of each incoming Call."""
        return ConnectionInbound(self, FrameScanner(max_message_bytes), max_bootstraps, close, call_read)

    @property
    def holders(self) -> int:
        return len(self._holders)

    def _hold(self, meter: ConnectionInbound, held: int) -> None:
        """`meter` now holds `held` bytes; past the limit, close the longest holders until the total fits."""
        self._set(meter, held)
        while self.total > self.limit:
            # The longest holder other than `meter`, whose bytes are arriving now; `meter` only if alone.
            victim = next((other for other in self._holders if other is not meter), meter)
            victim.refuse(IN_PROGRESS_LIMIT, f"incoming messages in progress past {self.limit} bytes on this node")

    def _set(self, meter: ConnectionInbound, held: int) -> None:
        before = meter.held
        if held == before:
            return
        if not before:
            self._holders[meter] = None
        elif not held:
            del self._holders[meter]
        meter.held = held
        self.total += held - before
        self._counters.incoming_bytes_in_progress = self.total

    def _count(self, limit: str, reason: str) -> None:
        self._counters.refuse(limit)
        self._closing.info(limit, "closing a connection: %s (%s)", reason, limit)


class ConnectionInbound:
    """One connection's incoming bytes (a `stream_bridge.InboundMeter`)."""

    def __init__(
        self,
        node: IncomingMessages,
        scanner: FrameScanner,
        max_bootstraps: int,
        close: Close,
        call_read: CallRead | None = None,
    ) -> None:
        self._node = node
        self._call_read = call_read
        self._scanner = scanner
        self._max_bootstraps = max_bootstraps
        self._close = close
        self._buffered = 0
        self.bootstraps = 0
        self.held = 0
        """Bytes this connection holds of incoming messages (as last counted into the node's total)."""
        self.open = True

    def received(self, data: bytes) -> None:
        if not self.open:
            return
        scanner = self._scanner
        try:
            scanner.feed(data)
        except FrameRefused as refused:
            self.refuse(MESSAGE_LIMIT, str(refused))
            return
        if scanner.calls:
            if self._call_read is not None:
                for call in scanner.calls:
                    self._call_read(*call)
            scanner.calls.clear()
        kinds = scanner.kinds
        if kinds:
            # A message laid out so that its kind cannot be read cheaply counts as a Bootstrap: kj reads it anyway.
            self.bootstraps += kinds.count(BOOTSTRAP) + kinds.count(UNKNOWN_KIND)
            kinds.clear()
            if self.bootstraps > self._max_bootstraps:
                self.refuse(BOOTSTRAP_LIMIT, f"more than {self._max_bootstraps} Bootstrap messages")
                return
        self._recount()

    def buffered(self, count: int) -> None:
        self._buffered = count
        if self.open:
            self._recount()

    def closed(self) -> None:
        if self.open:
            self.open = False
            self._node._set(self, 0)

    def _recount(self) -> None:
        # What is still buffered is the newest part of the stream, so it overlaps the message in progress.
        held = max(self._buffered, self._scanner.in_progress)
        if held != self.held:
            self._node._hold(self, held)

    def refuse(self, limit: str, reason: str) -> None:
        """Stop delivering, forget what this connection held and close it (on the next loop turn)."""
        if not self.open:
            return
        self.open = False
        self._node._set(self, 0)
        self._node._count(limit, reason)
        asyncio.get_running_loop().call_soon(self._close, f"{limit}: {reason}")
