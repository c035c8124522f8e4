"""Blobs: encrypted attachments, kept until their TTL passes. The node cannot read them (the key travels inside
MLS messages); it keys them by the SHA-256 of their bytes and bounds what each identity may keep."""

from __future__ import annotations

from typing import Protocol

EXPIRED_CHUNK = 100
"""Expired blobs removed per upload (whoever uploads clears a little of what has expired)."""


class BlobStore(Protocol):
    async def put_blob(
        self, blob_id: bytes, owner: bytes, data: bytes, expires_at: float, max_owner_bytes: int
    ) -> None:
        """Keep `data` under `blob_id` until `expires_at`. `LimitExceeded` ("max_blob_bytes_per_identity") when
        the owner's unexpired blobs would pass `max_owner_bytes`. The same id again only extends its expiry."""
        ...

    async def get_blob(self, blob_id: bytes) -> bytes | None:
        """The blob's bytes; None when there is none (never stored, or expired)."""
        ...
