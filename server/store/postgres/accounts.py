"""PostgreSQL: accounts, OPAQUE login states and sessions."""

from __future__ import annotations

from typing import Any

import asyncpg  # type: ignore[import-untyped]

from ..accounts import Account, AccountsBase, LoginState, Session, SessionsBase
from ..base import AlreadyExists, StoreError
from .engine import PostgresEngine, already_exists


class PostgresAccounts(AccountsBase, PostgresEngine):
    async def _insert_account(self, account: Account) -> None:
        try:
            await self._execute1(
                "INSERT INTO accounts (username, password_file, identity_key, created_at) VALUES ($1, $2, $3, $4)",
                account.username,
                account.password_file,
                account.identity_key,
                account.created_at,
            )
        except StoreError as exc:
            if isinstance(exc.__cause__, asyncpg.UniqueViolationError):
                raise already_exists(exc.__cause__, "accounts") from None
            raise

    async def get_account(self, username: str) -> Account | None:
        return _account(await self._fetchrow(_ACCOUNT_BY_NAME, username))

    async def get_account_by_identity(self, identity_key: bytes) -> Account | None:
        return _account(await self._fetchrow(_ACCOUNT_BY_IDENTITY, bytes(identity_key)))

    async def resolve_username(self, username: str) -> bytes | None:
        row = await self._fetchrow("SELECT identity_key FROM accounts WHERE username = $1", username)
        return None if row is None else bytes(row[0])

    async def resolve_identity(self, identity_key: bytes) -> str | None:
        row = await self._fetchrow("SELECT username FROM accounts WHERE identity_key = $1", bytes(identity_key))
        return None if row is None else str(row[0])

    # ── OPAQUE login states ───────────────────────────────────────────────────────────────────────────────────

    async def put_login_state(self, state_id: bytes, username: str, state: bytes, expires_at: float) -> None:
        try:
            await self._execute1(
                "INSERT INTO login_states (state_id, username, state, expires_at) VALUES ($1, $2, $3, $4)",
                bytes(state_id),
                username,
                bytes(state),
                float(expires_at),
            )
        except StoreError as exc:
            if isinstance(exc.__cause__, asyncpg.UniqueViolationError):
                raise AlreadyExists("state_id") from None
            raise

    async def take_login_state(self, state_id: bytes) -> LoginState | None:
        now = self._clock()
        # One statement: of concurrent takes (on any node) exactly one gets the row. Deleted even when expired.
        row = await self._write1(
            "DELETE FROM login_states WHERE state_id = $1 RETURNING username, state, expires_at",
            bytes(state_id),
        )
        if row is None or row[2] <= now:
            return None
        return LoginState(str(row[0]), row[2], bytes(row[1]))

    async def purge_expired_login_states(self) -> int:
        return await self._execute1("DELETE FROM login_states WHERE expires_at <= $1", self._clock())


class PostgresSessions(SessionsBase, PostgresEngine):
    async def _insert_session(self, token_hash: bytes, session: Session) -> None:
        try:
            await self._execute1(
                "INSERT INTO sessions (token_hash, identity_key, device_id, issued_at, expires_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                token_hash,
                session.identity_key,
                session.device_id,
                session.issued_at,
                session.expires_at,
            )
        except StoreError as exc:
            if isinstance(exc.__cause__, asyncpg.UniqueViolationError):
                raise AlreadyExists("token_hash") from None
            raise

    async def get_session(self, token_hash: bytes) -> Session | None:
        row = await self._fetchrow(
            "SELECT identity_key, device_id, issued_at, expires_at FROM sessions"
            " WHERE token_hash = $1 AND NOT revoked AND expires_at > $2",
            bytes(token_hash),
            self._clock(),
        )
        return None if row is None else Session(bytes(row[0]), bytes(row[1]), row[2], row[3])

    async def revoke_session(self, token_hash: bytes) -> bool:
        query = "UPDATE sessions SET revoked = true WHERE token_hash = $1 AND NOT revoked"
        return await self._execute1(query, bytes(token_hash)) > 0

    async def revoke_sessions(self, identity_key: bytes) -> int:
        query = "UPDATE sessions SET revoked = true WHERE identity_key = $1 AND NOT revoked"
        return await self._execute1(query, bytes(identity_key))

    async def purge_expired_sessions(self) -> int:
        return await self._execute1("DELETE FROM sessions WHERE expires_at <= $1", self._clock())


_ACCOUNT_BY_NAME = "SELECT username, identity_key, created_at, password_file FROM accounts WHERE username = $1"
_ACCOUNT_BY_IDENTITY = "SELECT username, identity_key, created_at, password_file FROM accounts WHERE identity_key = $1"


def _account(row: Any) -> Account | None:
    return None if row is None else Account(str(row[0]), bytes(row[1]), row[2], bytes(row[3]))
