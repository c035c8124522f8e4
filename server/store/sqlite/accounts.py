"""SQLite: accounts, OPAQUE login states and sessions."""

from __future__ import annotations

import sqlite3

from ..accounts import Account, AccountsBase, LoginState, Session, SessionsBase
from ..base import AlreadyExists
from ..sqlite_writer import OpContext
from .engine import SqliteEngine


class SqliteAccounts(AccountsBase, SqliteEngine):
    async def _insert_account(self, account: Account) -> None:
        def op(conn: sqlite3.Connection, ctx: OpContext) -> None:
            try:
                conn.execute(
                    "INSERT INTO accounts (username, password_file, identity_key, created_at) VALUES (?, ?, ?, ?)",
                    (
                        account.username,
                        account.password_file,
                        account.identity_key,
                        account.created_at,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise _already_exists(exc, "accounts") from None

        await self._write(op)

    async def get_account(self, username: str) -> Account | None:
        return await self._read(lambda conn: _account_where(conn, "username", username))

    async def get_account_by_identity(self, identity_key: bytes) -> Account | None:
        return await self._read(lambda conn: _account_where(conn, "identity_key", bytes(identity_key)))

    async def resolve_username(self, username: str) -> bytes | None:
        row = await self._read(
            lambda conn: conn.execute("SELECT identity_key FROM accounts WHERE username = ?", (username,)).fetchone()
        )
        return None if row is None else bytes(row[0])

    async def resolve_identity(self, identity_key: bytes) -> str | None:
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT username FROM accounts WHERE identity_key = ?",
                (bytes(identity_key),),
            ).fetchone()
        )
        return None if row is None else str(row[0])

    # ── OPAQUE login states ───────────────────────────────────────────────────────────────────────────────────

    async def put_login_state(self, state_id: bytes, username: str, state: bytes, expires_at: float) -> None:
        params = (bytes(state_id), username, bytes(state), float(expires_at))

        def op(conn: sqlite3.Connection, ctx: OpContext) -> None:
            try:
                conn.execute(
                    "INSERT INTO login_states (state_id, username, state, expires_at) VALUES (?, ?, ?, ?)",
                    params,
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists("state_id") from None

        await self._write(op)

    async def take_login_state(self, state_id: bytes) -> LoginState | None:
        now = self._clock()
        key = bytes(state_id)

        def op(conn: sqlite3.Connection, ctx: OpContext) -> LoginState | None:
            # Deleted even when expired: an expired state is of no further use.
            row = conn.execute(
                "DELETE FROM login_states WHERE state_id = ? RETURNING username, state, expires_at",
                (key,),
            ).fetchone()
            if row is None or row[2] <= now:
                return None
            return LoginState(str(row[0]), row[2], bytes(row[1]))

        return await self._write(op)

    async def purge_expired_login_states(self) -> int:
        now = self._clock()
        return await self._write(
            lambda conn, ctx: conn.execute("DELETE FROM login_states WHERE expires_at <= ?", (now,)).rowcount
        )


class SqliteSessions(SessionsBase, SqliteEngine):
    async def _insert_session(self, token_hash: bytes, session: Session) -> None:
        def op(conn: sqlite3.Connection, ctx: OpContext) -> None:
            try:
                conn.execute(
                    "INSERT INTO sessions (token_hash, identity_key, device_id, issued_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        token_hash,
                        session.identity_key,
                        session.device_id,
                        session.issued_at,
                        session.expires_at,
                    ),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists("token_hash") from None

        await self._write(op)

    async def get_session(self, token_hash: bytes) -> Session | None:
        now = self._clock()
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT identity_key, device_id, issued_at, expires_at FROM sessions"
                " WHERE token_hash = ? AND revoked = 0 AND expires_at > ?",
                (bytes(token_hash), now),
            ).fetchone()
        )
        return None if row is None else Session(bytes(row[0]), bytes(row[1]), row[2], row[3])

    async def revoke_session(self, token_hash: bytes) -> bool:
        key = bytes(token_hash)
        return await self._write(
            lambda conn, ctx: (
                conn.execute(
                    "UPDATE sessions SET revoked = 1 WHERE token_hash = ? AND revoked = 0",
                    (key,),
                ).rowcount
                > 0
            )
        )

    async def revoke_sessions(self, identity_key: bytes) -> int:
        key = bytes(identity_key)
        return await self._write(
            lambda conn, ctx: (
                conn.execute(
                    "UPDATE sessions SET revoked = 1 WHERE identity_key = ? AND revoked = 0",
                    (key,),
                ).rowcount
            )
        )

    async def purge_expired_sessions(self) -> int:
        now = self._clock()
        return await self._write(
            lambda conn, ctx: conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,)).rowcount
        )


_ACCOUNT_BY = {
    "username": "SELECT username, identity_key, created_at, password_file FROM accounts WHERE username = ?",
    "identity_key": "SELECT username, identity_key, created_at, password_file FROM accounts WHERE identity_key = ?",
}


def _account_where(conn: sqlite3.Connection, column: str, value: object) -> Account | None:
    row = conn.execute(_ACCOUNT_BY[column], (value,)).fetchone()
    return None if row is None else Account(str(row[0]), bytes(row[1]), row[2], bytes(row[3]))


def _already_exists(exc: sqlite3.IntegrityError, table: str) -> AlreadyExists:
    # SQLite names the violated column ("UNIQUE constraint failed: accounts.identity_key"); values never appear.
    message = str(exc)
    marker = f"{table}."
    if marker in message:
        return AlreadyExists(message.rsplit(marker, 1)[1].split(",")[0].strip())
    return AlreadyExists(table)
