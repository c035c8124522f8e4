"""Signed endpoint records: where a client's iroh endpoint can be reached, vouched for by its identity key.

A client that opts in to direct delivery publishes one with `publishEndpoint` (as `nodeAddr`); a peer that
resolves it checks the signature and then dials the iroh endpoint, whose TLS handshake proves the iroh key. So
the record binds identity key -> iroh key, and the iroh handshake binds iroh key -> the peer on the wire.

This module has no I/O: the codec and the rules both sides apply (the node before storing, a peer before
dialing). Signing and verifying are passed in (the vault signs; `native.verify_ed25519` verifies).

Bytes (all integers big-endian)::

    version u8 (1) | identity key (32) | iroh endpoint id (32) | expires_at u64 (unix seconds)
    | relay URL: u16 length + UTF-8 (0: none) | address count u8 | each: u8 length + ASCII "ip:port"
    | Ed25519 signature (64) over `transcripts.endpoint_record_transcript(...)`
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from .transcripts import endpoint_record_transcript

VERSION = 1
KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_ADDRESSES = 16
MAX_ADDRESS_CHARS = 47  # "[" + the longest IPv6 text (39, no zone) + "]:" + 5 digits
MAX_RELAY_URL_BYTES = 512
MAX_LIFETIME_S = 24 * 3600
"""The furthest ahead a record may expire: a record seen once cannot be replayed for long after its owner
stopped publishing it."""

Signer = Callable[[bytes], bytes]
Verifier = Callable[[bytes, bytes, bytes], bool]
"""(public key, message, signature) -> valid."""


class RecordError(ValueError):
    """A record that is malformed, expired, too long-lived, or not signed by the key it names."""


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    identity_key: bytes
    endpoint_id: bytes
    """The iroh endpoint's Ed25519 public key: only the holder of its secret key completes a connection."""
    addresses: tuple[str, ...]
    """Direct addresses, "ip:port" ("[v6]:port"), in the iroh endpoint's order."""
    relay_url: str | None
    expires_at: int
    signature: bytes

    def transcript(self) -> bytes:
        return endpoint_record_transcript(
            self.identity_key, self.endpoint_id, self.addresses, self.relay_url, self.expires_at
        )


def sign_record(
    sign: Signer,
    identity_key: bytes,
    endpoint_id: bytes,
    addresses: Sequence[str],
    relay_url: str | None,
    expires_at: int,
) -> EndpointRecord:
    """A record for these fields, signed with `sign` (the identity key's); RecordError if a field is invalid."""
    unsigned = EndpointRecord(
        bytes(identity_key),
        bytes(endpoint_id),
        tuple(canonical_address(address) for address in addresses[:MAX_ADDRESSES]),
        relay_url or None,
        int(expires_at),
        b"",
    )
    _check_fields(unsigned)
    signed = EndpointRecord(
        unsigned.identity_key,
        unsigned.endpoint_id,
        unsigned.addresses,
        unsigned.relay_url,
        unsigned.expires_at,
        sign(unsigned.transcript()),
    )
    if len(signed.signature) != SIGNATURE_BYTES:
        raise RecordError("the signer did not give a 64-byte Ed25519 signature")
    return signed


def encode(record: EndpointRecord) -> bytes:
    _check_fields(record)
    relay = (record.relay_url or "").encode("utf-8")
    parts = [
        struct.pack(">B", VERSION),
        record.identity_key,
        record.endpoint_id,
        struct.pack(">Q", record.expires_at),
        struct.pack(">H", len(relay)),
        relay,
        struct.pack(">B", len(record.addresses)),
    ]
    for address in record.addresses:
        raw = address.encode("ascii")
        parts += [struct.pack(">B", len(raw)), raw]
    parts.append(record.signature)
    return b"".join(parts)


def decode(data: bytes) -> EndpointRecord:
    """Parse a record (no signature or expiry check: see `check`); RecordError if it is malformed."""
    reader = _Reader(bytes(data))
    version = reader.u8()
    if version != VERSION:
        raise RecordError(f"unknown endpoint record version {version}")
    identity_key = reader.take(KEY_BYTES)
    endpoint_id = reader.take(KEY_BYTES)
    (expires_at,) = struct.unpack(">Q", reader.take(8))
    relay_raw = reader.take(struct.unpack(">H", reader.take(2))[0])
    try:
        relay_url = relay_raw.decode("utf-8") or None
    except UnicodeDecodeError:
        raise RecordError("the relay URL is not UTF-8") from None
    addresses = []
    for _ in range(reader.u8()):
        raw = reader.take(reader.u8())
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise RecordError("an address is not ASCII") from None
        if canonical_address(text) != text:
            raise RecordError(f"address {text!r} is not in canonical form")
        addresses.append(text)
    signature = reader.take(SIGNATURE_BYTES)
    if not reader.done():
        raise RecordError("trailing bytes after the signature")
    record = EndpointRecord(identity_key, endpoint_id, tuple(addresses), relay_url, expires_at, signature)
    _check_fields(record)
    return record


def check(record: EndpointRecord, *, identity_key: bytes, now: float, verify: Verifier) -> None:
    """The rules a record must pass to be stored or dialed: it names `identity_key`, is signed by it, has not
    expired and does not expire more than MAX_LIFETIME_S ahead. Raises RecordError saying which one failed."""
    if record.identity_key != identity_key:
        raise RecordError("the record names another identity key")
    if record.expires_at <= now:
        raise RecordError("the record has expired")
    if record.expires_at > now + MAX_LIFETIME_S:
        raise RecordError(f"the record expires more than {MAX_LIFETIME_S} s ahead")
    if not verify(record.identity_key, record.transcript(), record.signature):
        raise RecordError("the record is not signed by its identity key")


def decode_checked(data: bytes, *, identity_key: bytes, now: float, verify: Verifier) -> EndpointRecord:
    record = decode(data)
    check(record, identity_key=identity_key, now=now, verify=verify)
    return record


def canonical_address(text: str) -> str:
    """ "ip:port" with the IP in its compressed form ("[v6]:port"); RecordError if it is not one."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or len(port_text) > 5:
        raise RecordError(f"address {text[:64]!r} is not ip:port")
    port = int(port_text)
    if not 0 < port < 65536:
        raise RecordError(f"address {text[:64]!r} has no valid port")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise RecordError(f"address {text[:64]!r} does not hold an IP address") from None
    if (ip.version == 6) != bracketed:
        raise RecordError(f"address {text[:64]!r}: IPv6 goes in brackets, IPv4 does not")
    return f"[{ip.compressed}]:{port}" if ip.version == 6 else f"{ip.compressed}:{port}"


def _check_fields(record: EndpointRecord) -> None:
    if len(record.identity_key) != KEY_BYTES or len(record.endpoint_id) != KEY_BYTES:
        raise RecordError("identity key and endpoint id must be 32 bytes each")
    if not 0 < record.expires_at < 1 << 63:
        raise RecordError("the expiry is out of range")
    if len(record.addresses) > MAX_ADDRESSES:
        raise RecordError(f"at most {MAX_ADDRESSES} addresses")
    if any(len(address) > MAX_ADDRESS_CHARS for address in record.addresses):
        raise RecordError("an address is too long")
    if not record.addresses and record.relay_url is None:
        raise RecordError("the record gives no address and no relay: nobody could reach it")
    if record.relay_url is not None:
        relay = record.relay_url.encode("utf-8")
        if len(relay) > MAX_RELAY_URL_BYTES:
            raise RecordError(f"the relay URL is longer than {MAX_RELAY_URL_BYTES} bytes")
        parts = urlsplit(record.relay_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RecordError("the relay URL must be an http(s) URL with a host")
    if record.signature and len(record.signature) != SIGNATURE_BYTES:
        raise RecordError("the signature must be 64 bytes")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    def take(self, count: int) -> bytes:
        end = self._at + count
        if end > len(self._data):
            raise RecordError("the record is truncated")
        chunk = self._data[self._at : end]
        self._at = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def done(self) -> bool:
        return self._at == len(self._data)
