"""Blobs (attachments): a logged-in client stores an encrypted file and gets its id (SHA-256 of the bytes); any
logged-in client that knows the id may fetch it until it expires. The node never sees a key. Size per blob, bytes
per identity and the lifetime are node settings."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from quicnprotochat.common.errors import InvalidArgument, NotFound, ResourceExhausted
from quicnprotochat.server.services.errors import store_errors
from quicnprotochat.server.services.sessions import Caller
from quicnprotochat.server.store import BlobStore, Clock

BLOB_ID_LEN = 32


@dataclass(frozen=True)
class BlobLimits:
    max_blob_bytes: int
    max_bytes_per_identity: int
    ttl_seconds: int


class BlobService:
    def __init__(self, store: BlobStore, limits: BlobLimits, clock: Clock) -> None:
        self._store = store
        self._limits = limits
        self._clock = clock

    async def put(self, caller: Caller, data: bytes) -> bytes:
        limits = self._limits
        if len(data) > limits.max_blob_bytes:
            raise ResourceExhausted(
                f"the blob is {len(data)} bytes; this node keeps blobs of at most {limits.max_blob_bytes} bytes"
            )
        blob_id = hashlib.sha256(data).digest()
        expires_at = self._clock() + limits.ttl_seconds
        with store_errors():
            await self._store.put_blob(blob_id, caller.identity_key, data, expires_at, limits.max_bytes_per_identity)
        return blob_id

    async def get(self, blob_id: bytes) -> bytes:
        if len(blob_id) != BLOB_ID_LEN:
            raise InvalidArgument(f"a blob id is {BLOB_ID_LEN} bytes (SHA-256), got {len(blob_id)}")
        with store_errors():
            data = await self._store.get_blob(blob_id)
        if data is None:
            raise NotFound("no such blob here (it expired, or was never stored)")
        return data
