"""ACKs that ride on answers: fewer packets per RPC over QUIC, on both ends.

aioquic acknowledges an ack-eliciting packet on a timer 1 ms after it arrived, and writes an ACK frame only into
a packet sent once that timer is due. An RPC answered a few milliseconds later (a durable enqueue) therefore costs
a packet carrying nothing but that ACK, and the peer must decrypt and process it: both ends spend most of their
CPU per call in aioquic's Python, per packet. Here the ACK waits for whatever we send next, up to
`ACK_DELAY_S` (within the 25 ms `max_ack_delay` aioquic advertises, so the peer's loss detection already allows
for it), and goes at once, as RFC 9000 (13.2.2) asks, once two datagrams are waiting for it, so that a peer
sending a lot (an upload) is never held back by its congestion window.

This reads and writes two attributes aioquic keeps private (`QuicConnection._ack_delay` and the 1-RTT packet
space's `ack_at`); without them (another aioquic) it does nothing and aioquic's own timing applies.
"""

from __future__ import annotations

from typing import Any

from aioquic import tls
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.connection import QuicConnection

ACK_DELAY_S = 0.02
"""How long an ACK may wait for an answer to ride on."""

ACK_NOW_AFTER = 2
"""Datagrams received since the last ACK after which the ACK goes out at once."""


class AckBundling:
    """One per connection: `received()` for each datagram handed to aioquic, `sending()` before its transmit and
    `sent()` after it."""

    __slots__ = ("_quic", "_space", "_waiting")

    def __init__(self, quic: QuicConnection) -> None:
        self._quic = quic
        self._space: Any = None
        self._waiting = 0
        if hasattr(quic, "_ack_delay"):
            quic._ack_delay = ACK_DELAY_S

    def received(self) -> None:
        self._waiting += 1

    def sending(self, now: float, answering: bool) -> None:
        """`answering`: stream data is queued, so this transmit sends a packet anyway: the ACK rides on it."""
        if not (answering or self._waiting >= ACK_NOW_AFTER):
            return
        space = self._one_rtt()
        if space is not None and space.ack_at is not None and space.ack_at > now:
            space.ack_at = now

    def sent(self) -> None:
        space = self._one_rtt()
        if space is None or space.ack_at is None:
            self._waiting = 0

    def _one_rtt(self) -> Any:
        if self._space is None:
            spaces = getattr(self._quic, "_spaces", None)
            if spaces is None or tls.Epoch.ONE_RTT not in spaces or not hasattr(spaces[tls.Epoch.ONE_RTT], "ack_at"):
                return None
            self._space = spaces[tls.Epoch.ONE_RTT]
        return self._space


class BundledAcksProtocol(QuicConnectionProtocol):
    """A connection whose ACKs ride on its answers. Whoever queues stream data schedules the transmit with
    `answer_queued` instead of `_transmit_soon`."""

    def __init__(self, quic: QuicConnection, stream_handler: Any = None) -> None:
        super().__init__(quic, stream_handler)
        self._acks = AckBundling(quic)
        self._answering = False

    def answer_queued(self) -> None:
        self._answering = True
        self._transmit_soon()

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        self._acks.received()
        super().datagram_received(data, addr)

    def transmit(self) -> None:
        self._acks.sending(self._loop.time(), self._answering)
        self._answering = False
        super().transmit()
        self._acks.sent()
