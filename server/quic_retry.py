"""QUIC stateless retry with rotating token keys (RFC 9000 section 8.1).

With retry on, the node answers an Initial without a token with a Retry carrying an address-validation token,
and keeps nothing: only an Initial that brings a valid token back, from the address it was made for, creates a
connection. A spoofed-source flood therefore costs the node one small reply per packet and no state.

aioquic's own token handler seals tokens under one key for the life of the server. Here the key rotates every
`period` seconds, and the previous key still opens tokens for one more period, so a token is good for one to two
periods and a leaked key is worth little for long. The handler keeps aioquic's interface (`create_token`,
`validate_token`), so aioquic's server drives it unchanged.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aioquic._buffer import Buffer, BufferReadError  # aioquic.buffer re-exports them without __all__
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.retry import QuicRetryTokenHandler, encode_address
from aioquic.tls import pull_opaque, push_opaque
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from quicnprotochat.server.quic_admission import InitialAdmission
from quicnprotochat.server.quic_resets import ResettingQuicServer, StatelessResets

NONCE_BYTES = 12
_PERIOD = struct.Struct("!Q")  # the key's period number, clear and authenticated: which key to try


@dataclass
class RetryStats:
    retries_sent: int = 0
    tokens_accepted: int = 0
    tokens_refused: int = 0


class RotatingRetryTokens(QuicRetryTokenHandler):
    def __init__(self, period: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        # No super().__init__(): aioquic's one fixed key is what this class replaces.
        if period <= 0:
            raise ValueError("the retry key period must be positive")
        self._period = period
        self._clock = clock
        self._keys: dict[int, AESGCM] = {}
        self.stats = RetryStats()

    def _current(self) -> int:
        """The current period's number, after dropping every key older than the previous period."""
        number = int(self._clock() // self._period)
        for old in [n for n in self._keys if n < number - 1]:
            del self._keys[old]
        if number not in self._keys:
            self._keys[number] = AESGCM(AESGCM.generate_key(bit_length=128))
        return number

    def create_token(
        self,
        *,
        address: NetworkAddress,
        original_destination_connection_id: bytes,
        retry_source_connection_id: bytes,
        now: float,
    ) -> bytes:
        number = self._current()
        buf = Buffer(capacity=512)
        push_opaque(buf, 1, encode_address(address))
        push_opaque(buf, 1, original_destination_connection_id)
        push_opaque(buf, 1, retry_source_connection_id)
        header = _PERIOD.pack(number)
        nonce = os.urandom(NONCE_BYTES)
        self.stats.retries_sent += 1
        return header + nonce + self._keys[number].encrypt(nonce, buf.data, header)

    def validate_token(
        self,
        *,
        address: NetworkAddress,
        destination_cid: bytes,
        token: bytes,
        now: float,
    ) -> bytes:
        try:
            original_destination_connection_id = self._open(address, destination_cid, token)
        except ValueError:
            self.stats.tokens_refused += 1
            raise
        self.stats.tokens_accepted += 1
        return original_destination_connection_id

    def proves_address(self, address: NetworkAddress, destination_cid: bytes, token: bytes) -> bool:
        """Whether `token` is valid for `address` and `destination_cid` (not counted in `stats`: aioquic checks
        the same token again when it creates the connection)."""
        try:
            self._open(address, destination_cid, token)
        except ValueError:
            return False
        return True

    def _open(self, address: NetworkAddress, destination_cid: bytes, token: bytes) -> bytes:
        current = self._current()
        if len(token) < _PERIOD.size + NONCE_BYTES:
            raise ValueError("token too short")
        header, nonce = token[: _PERIOD.size], token[_PERIOD.size : _PERIOD.size + NONCE_BYTES]
        (number,) = _PERIOD.unpack(header)
        key = self._keys.get(number) if number in (current, current - 1) else None
        if key is None:
            raise ValueError("token from an expired key period")
        try:
            plaintext = key.decrypt(nonce, token[_PERIOD.size + NONCE_BYTES :], header)
            buf = Buffer(data=plaintext)
            encoded_address = pull_opaque(buf, 1)
            original_destination_connection_id = pull_opaque(buf, 1)
            retry_source_connection_id = pull_opaque(buf, 1)
        except (InvalidTag, BufferReadError):
            raise ValueError("token does not authenticate") from None
        if encoded_address != encode_address(address):
            raise ValueError("token made for another address")
        # The client must send to the Retry's source connection id (RFC 9000 section 17.2.5.2).
        if destination_cid != retry_source_connection_id:
            raise ValueError("token made for another connection id")
        return original_destination_connection_id


class RetryingQuicServer(ResettingQuicServer):
    """aioquic's server (with stateless resets) with retry on, its token handler replaced by rotating keys."""

    def __init__(self, *, tokens: RotatingRetryTokens, **options: Any) -> None:
        super().__init__(retry=True, **options)
        self._retry = tokens


def serve_quic(
    configuration: QuicConfiguration,
    create_protocol: Callable[..., Any],
    retry: RotatingRetryTokens | None,
    resets: StatelessResets,
    admission: InitialAdmission | None = None,
) -> ResettingQuicServer:
    """The datagram protocol of a QUIC listener: with `retry`, every new connection goes through a Retry; with
    `admission`, Initials past the per-address connection rate are refused before aioquic sees them."""
    options: dict[str, Any] = {"configuration": configuration, "create_protocol": create_protocol}
    if retry is None:
        return ResettingQuicServer(resets=resets, admission=admission, **options)
    return RetryingQuicServer(tokens=retry, resets=resets, admission=admission, **options)
