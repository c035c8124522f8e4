"""Which QUIC Initials may create a connection: the per-address connection rate (server/connection_rate.py),
checked before aioquic creates any state or does any of the handshake's cryptography.

aioquic's server creates a connection for an Initial of at least 1,200 bytes whose destination connection id it
does not know (after a Retry round trip, with retry on). Exactly those Initials take a token from their source
address's bucket. A refused one is answered with a CONNECTION_CLOSE carrying CONNECTION_REFUSED and a reason
that says when to retry, in a server Initial (keys derived from the client's own destination id, as RFC 9001 5.2
has it; smaller than the Initial, so no amplification): the client fails with the reason (after its draining
period: 0.6 s on loopback) rather than at its connect timeout. Those answers have a node-wide budget; past it a
refused Initial is dropped without an answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container

from aioquic._buffer import Buffer  # aioquic.buffer re-exports it without __all__
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicErrorCode, QuicFrameType, QuicPacketType, pull_quic_header
from aioquic.quic.packet_builder import QuicPacketBuilder

from quicnprotochat.server.connection_rate import SETTING, ConnectionRate
from quicnprotochat.server.peer import peer_from_address
from quicnprotochat.server.services.rate_limits import RateLimit, TokenBuckets

# CONNECTION_CLOSE answers to refused Initials, per second in all: each costs an Initial key derivation.
ANSWER_LIMIT = RateLimit(rate=200.0, burst=400)
REASON = f"new connections from this address are over the node's rate ({SETTING}); retry after"
_LONG_HEADER = 0x80
# An Initial's frame: its type, error code, frame type and reason length (varints of up to 8 bytes), the reason.
_CLOSE_FRAME_HEAD_BYTES = 1 + 3 * 8

ProvesAddress = Callable[[NetworkAddress, bytes, bytes], bool]
"""(source address, destination connection id, token): whether the token is a valid Retry token for them."""

SILENT = b""
"""`refusal`'s answer for an Initial refused without a reply."""


class InitialAdmission:
    def __init__(
        self,
        rate: ConnectionRate,
        configuration: QuicConfiguration,
        proves_address: ProvesAddress | None = None,
        *,
        answers: RateLimit = ANSWER_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`proves_address`: with retry on, the token check; only Initials that pass it are counted."""
        self._rate = rate
        self._cid_length = configuration.connection_id_length
        self._versions = frozenset(configuration.supported_versions)
        self._proves_address = proves_address
        self._answers = TokenBuckets(answers, clock, max_keys=1)

    def refusal(self, data: bytes, addr: NetworkAddress, known: Container[bytes]) -> bytes | None:
        """None to let `data` through to aioquic; else what to send back (`SILENT`: nothing)."""
        if len(data) < SMALLEST_MAX_DATAGRAM_SIZE or not data[0] & _LONG_HEADER:
            return None
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=self._cid_length)
        except ValueError:
            return None
        if (
            header.packet_type != QuicPacketType.INITIAL
            or header.version not in self._versions
            or header.destination_cid in known
        ):
            return None
        if self._proves_address is not None and not (
            # Without a token it gets a Retry, which costs no state; a bad token is aioquic's to refuse.
            header.token and self._proves_address(addr, header.destination_cid, header.token)
        ):
            return None
        retry_after = self._rate.refusal(peer_from_address("quic", addr))
        if retry_after is None:
            return None
        if self._answers.take("all") is not None:
            return SILENT
        assert header.version is not None  # an Initial always has one
        reason = f"{REASON} {retry_after:.1f} s"
        return refused_initial(header.version, header.destination_cid, header.source_cid, reason)


def refused_initial(version: int, client_destination_cid: bytes, client_source_cid: bytes, reason: str) -> bytes:
    """A server Initial closing the connection the client's Initial would open, with CONNECTION_REFUSED."""
    crypto = CryptoPair()
    crypto.setup_initial(cid=client_destination_cid, is_client=False, version=version)
    builder = QuicPacketBuilder(
        host_cid=client_destination_cid,
        peer_cid=client_source_cid,
        version=version,
        is_client=False,
        max_datagram_size=SMALLEST_MAX_DATAGRAM_SIZE,
    )
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    text = reason.encode()
    frame = builder.start_frame(QuicFrameType.TRANSPORT_CLOSE, capacity=_CLOSE_FRAME_HEAD_BYTES + len(text))
    frame.push_uint_var(QuicErrorCode.CONNECTION_REFUSED)
    frame.push_uint_var(QuicFrameType.PADDING)  # no frame caused it
    frame.push_uint_var(len(text))
    frame.push_bytes(text)
    datagrams, _packets = builder.flush()
    return datagrams[0]
