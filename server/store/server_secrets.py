"""Server secrets (the OPAQUE server setup, ...): made once, then the same for every node of the database.

With a root key the stored values are sealed records (`server/sealed_secrets.py` seals and opens them); the store
only keeps bytes, and can replace a value in place and scrub what the old value left in the database's files.
"""

from __future__ import annotations

from typing import Protocol


class SecretStore(Protocol):
    async def get_or_create_secret(self, name: str, candidate: bytes) -> bytes:
        """The secret stored under `name`; `candidate` is stored and returned when there is none yet (when
        several nodes race, all get the one stored first)."""
        ...

    async def get_secret(self, name: str) -> bytes | None: ...

    async def secret_names(self) -> list[str]: ...

    async def replace_secret(self, name: str, expected: bytes, value: bytes) -> bool:
        """Stores `value` under `name` if the stored value is still `expected` (another node may have moved it
        first); the old bytes are overwritten where the backend allows."""
        ...

    async def scrub_replaced_secrets(self) -> None:
        """Drops the copies of replaced values that the database's files still hold (SQLite's WAL; PostgreSQL's
        dead row versions)."""
        ...
