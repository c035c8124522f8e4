"""The blob store (attachments) on every backend: kept until their expiry, bounded per owner, the same id again
only extends the expiry."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from quicnprotochat.server.store import LimitExceeded, Store

from .store_testlib import FakeClock

OWNER = b"o" * 32
OTHER = b"p" * 32


def blob(data: bytes) -> tuple[bytes, bytes]:
    return hashlib.sha256(data).digest(), data


async def test_blobs_expire_and_are_bounded_per_owner(store: Store, clock: FakeClock) -> None:
    first_id, first = blob(b"a" * 600)
    await store.put_blob(first_id, OWNER, first, clock() + 100, max_owner_bytes=1000)
    assert await store.get_blob(first_id) == first
    assert await store.get_blob(b"\x00" * 32) is None

    # The owner's quota counts what is still kept; another owner has a quota of their own.
    second_id, second = blob(b"b" * 500)
    with pytest.raises(LimitExceeded, match="max_blob_bytes_per_identity"):
        await store.put_blob(second_id, OWNER, second, clock() + 100, max_owner_bytes=1000)
    assert await store.get_blob(second_id) is None
    await store.put_blob(second_id, OTHER, second, clock() + 100, max_owner_bytes=1000)
    # The same bytes again (same id) do not count twice; they keep the later expiry.
    await store.put_blob(first_id, OWNER, first, clock() + 300, max_owner_bytes=1000)

    clock.advance(150)
    assert await store.get_blob(first_id) == first
    assert await store.get_blob(second_id) is None  # expired
    clock.advance(200)
    assert await store.get_blob(first_id) is None
    # Expired blobs no longer count against the owner.
    await store.put_blob(second_id, OWNER, second, clock() + 100, max_owner_bytes=1000)
    assert await store.get_blob(second_id) == second


async def test_concurrent_uploads_respect_the_quota(store: Store, clock: FakeClock) -> None:
    blobs = [blob(bytes([n]) * 400) for n in range(6)]
    results = await asyncio.gather(
        *(store.put_blob(blob_id, OWNER, data, clock() + 100, max_owner_bytes=1000) for blob_id, data in blobs),
        return_exceptions=True,
    )
    assert sum(1 for result in results if result is None) == 2
    assert all(isinstance(result, LimitExceeded) for result in results if result is not None)
