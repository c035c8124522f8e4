"""Server secrets (the OPAQUE server setup, ...): made once, then the same for every node of the database."""

from __future__ import annotations

from typing import Protocol


class SecretStore(Protocol):
    async def get_or_create_secret(self, name: str, candidate: bytes) -> bytes:
        """The secret stored under `name`; `candidate` is stored and returned when there is none yet (when
        several nodes race, all get the one stored first)."""
        ...
