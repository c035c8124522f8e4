"""Accounts and sessions: the records, the `AccountStore` and `SessionStore` protocols, and what both backends'
implementations share.

An account is `username -> (OPAQUE password file, identity key)`, unique on both. OPAQUE login states (between
loginStart and loginFinish) belong to accounts. Sessions are keyed by the SHA-256 of the token, computed by the
caller: the token itself is never stored.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Protocol

from .engine import StoreEngine

# Secret-bearing fields are left out of repr so that a logged record cannot leak them.


@dataclass(frozen=True, slots=True)
class Account:
    username: str
    identity_key: bytes
    created_at: float
    password_file: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Session:
    """A live session token (the token itself is never stored, only its SHA-256)."""

    identity_key: bytes
    device_id: bytes
    issued_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class LoginState:
    username: str
    expires_at: float
    state: bytes = field(repr=False)


class AccountStore(Protocol):
    """Accounts and the OPAQUE login states of logins in progress. Every write returns once durable."""

    async def create_account(self, username: str, password_file: bytes, identity_key: bytes) -> Account:
        """Raises AlreadyExists("username") or AlreadyExists("identity_key")."""
        ...

    async def get_account(self, username: str) -> Account | None: ...

    async def get_account_by_identity(self, identity_key: bytes) -> Account | None: ...

    async def resolve_username(self, username: str) -> bytes | None:
        """Username -> identity key."""
        ...

    async def resolve_identity(self, identity_key: bytes) -> str | None:
        """Identity key -> username."""
        ...

    async def put_login_state(self, state_id: bytes, username: str, state: bytes, expires_at: float) -> None: ...

    async def take_login_state(self, state_id: bytes) -> LoginState | None:
        """Remove and return the state if present and unexpired; a second take returns None."""
        ...

    async def purge_expired_login_states(self) -> int: ...


class SessionStore(Protocol):
    """Session tokens, keyed by the SHA-256 of the token."""

    async def create_session(
        self,
        token_hash: bytes,
        identity_key: bytes,
        device_id: bytes,
        expires_at: float,
    ) -> Session:
        """Raises AlreadyExists("token_hash")."""
        ...

    async def get_session(self, token_hash: bytes) -> Session | None:
        """None when unknown, expired or revoked."""
        ...

    async def revoke_session(self, token_hash: bytes) -> bool: ...

    async def revoke_sessions(self, identity_key: bytes) -> int: ...

    async def purge_expired_sessions(self) -> int: ...


class AccountsBase(StoreEngine):
    """The backend-independent half of `AccountStore`: records are made here, rows by the backend."""

    async def create_account(self, username: str, password_file: bytes, identity_key: bytes) -> Account:
        account = Account(username, bytes(identity_key), self._clock(), bytes(password_file))
        await self._insert_account(account)
        return account

    @abstractmethod
    async def _insert_account(self, account: Account) -> None:
        """Raises AlreadyExists naming the unique column that refused it."""


class SessionsBase(StoreEngine):
    """The backend-independent half of `SessionStore`."""

    async def create_session(
        self,
        token_hash: bytes,
        identity_key: bytes,
        device_id: bytes,
        expires_at: float,
    ) -> Session:
        session = Session(bytes(identity_key), bytes(device_id), self._clock(), float(expires_at))
        await self._insert_session(bytes(token_hash), session)
        return session

    @abstractmethod
    async def _insert_session(self, token_hash: bytes, session: Session) -> None:
        """Raises AlreadyExists("token_hash")."""
