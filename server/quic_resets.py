"""The node's side of QUIC stateless resets (common/stateless_reset.py): answering packets of connections it does
not know, and giving each connection id it issues the token that makes such an answer believable."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Container
from typing import Any

from aioquic.quic.connection import NetworkAddress, QuicConnection
from cryptography.hazmat.primitives import serialization

from quicnprotochat.common.stateless_reset import RESET_BYTES, is_short_header, reset_key, reset_packet, reset_token
from quicnprotochat.server.identity import NodeIdentity
from quicnprotochat.server.quic_admission import InitialAdmission
from quicnprotochat.server.quic_connection_ids import IndexedQuicServer
from quicnprotochat.server.services.rate_limits import RateLimit, TokenBuckets

# Resets sent per second at most, in all: they are smaller than what triggers them, so this only bounds the work.
RESET_LIMIT = RateLimit(rate=200.0, burst=400)


class StatelessResets:
    def __init__(self, key: bytes, limit: RateLimit = RESET_LIMIT, clock: Callable[[], float] = time.monotonic):
        self._key = key
        self._budget = TokenBuckets(limit, clock, max_keys=1)
        self.sent = 0

    @classmethod
    def of(cls, identity: NodeIdentity) -> StatelessResets:
        """Keyed by the node's identity: every worker of the node, and the node after a restart, agree."""
        secret = identity.private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cls(reset_key(secret))

    def token(self, connection_id: bytes) -> bytes:
        return reset_token(self._key, connection_id)

    def issue_tokens(self, quic: QuicConnection) -> None:
        """Gives the connection ids of `quic` not sent to the peer yet our tokens instead of aioquic's random ones
        (aioquic announces them with the ids: in the transport parameters and NEW_CONNECTION_ID frames)."""
        for issued in quic._host_cids:
            if not issued.was_sent or issued.sequence_number == 0:
                issued.stateless_reset_token = self.token(issued.cid)

    def answer(self, data: bytes, known: Container[bytes], connection_id_length: int) -> bytes | None:
        """The reset answering `data`, a packet of a connection id not in `known`; None to let it through."""
        if not is_short_header(data) or len(data) <= connection_id_length:
            return None
        connection_id = data[1 : 1 + connection_id_length]
        if connection_id in known or self._budget.take("all") is not None:
            return None
        packet = reset_packet(len(data), self.token(connection_id), os.urandom(RESET_BYTES))
        if packet is not None:
            self.sent += 1
        return packet


class ResettingQuicServer(IndexedQuicServer):
    """aioquic's server (connection ids indexed by connection), answering 1-RTT packets of connections it does
    not know with a stateless reset, and, with `admission`, refusing Initials past the per-address connection rate
    before aioquic sees them."""

    def __init__(self, *, resets: StatelessResets, admission: InitialAdmission | None = None, **options: Any) -> None:
        super().__init__(**options)
        self._resets = resets
        self._admission = admission

    def datagram_received(self, data: bytes | str, addr: NetworkAddress) -> None:
        assert isinstance(data, bytes)
        answer = self._resets.answer(data, self._protocols, self._configuration.connection_id_length)
        if answer is None and self._admission is not None:
            answer = self._admission.refusal(data, addr, self._protocols)
        if answer is not None:
            if answer and self._transport is not None:
                self._transport.sendto(answer, addr)
            return
        super().datagram_received(data, addr)
