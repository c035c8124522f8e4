"""Endpoint records: one signed P2P endpoint record per identity, kept until it expires (the service checks the
record; the store only keeps its bytes and expiry, and never returns one past it)."""

from __future__ import annotations

from typing import Protocol


class EndpointStore(Protocol):
    async def put_endpoint(self, identity_key: bytes, record: bytes, expires_at: float) -> None:
        """Keep `record` as the identity's endpoint until `expires_at`, replacing any earlier one."""
        ...

    async def delete_endpoint(self, identity_key: bytes) -> None: ...

    async def get_endpoint(self, identity_key: bytes) -> bytes | None:
        """The identity's record; None when there is none or it has expired."""
        ...

    async def purge_expired_endpoints(self) -> int:
        """Delete every expired record; returns how many."""
        ...
