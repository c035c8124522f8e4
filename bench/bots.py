"""Bot accounts for load tests: registered concurrently, saved to a file so repeated runs skip OPAQUE.

Registering costs two Argon2id runs on the client (register, then log in): about 0.2-0.5 s each. A bot is an
Ed25519 key (`cryptography`, no vault file), a username and password, and its last session token. The accounts
file (mode 0600: it holds passwords and tokens of throwaway bench accounts) records the node's fingerprint; it is
reused only against the node that has those accounts.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from quicnprotochat.client import KnownHosts, NodeClient
from quicnprotochat.client.accounts import login_token, register
from quicnprotochat.client.node_client import Transport
from quicnprotochat.common.errors import Unauthenticated

FILE_VERSION = 1


class Ed25519Signer:
    def __init__(self, seed: bytes) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.identity_key = self._key.public_key().public_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


@dataclass
class Bot:
    username: str
    password: str
    seed: bytes
    token: bytes | None = None

    def __post_init__(self) -> None:
        self.signer = Ed25519Signer(self.seed)

    @property
    def key(self) -> bytes:
        return self.signer.identity_key

    @classmethod
    def new(cls, prefix: str, index: int) -> Bot:
        return cls(f"{prefix}{index}", secrets.token_hex(16), os.urandom(32))

    def to_json(self) -> dict[str, str]:
        return {
            "username": self.username,
            "password": self.password,
            "seed": self.seed.hex(),
            "token": self.token.hex() if self.token else "",
        }

    @classmethod
    def from_json(cls, item: dict[str, str]) -> Bot:
        token = bytes.fromhex(item.get("token", ""))
        return cls(item["username"], item["password"], bytes.fromhex(item["seed"]), token or None)


@dataclass
class Connector:
    """Opens NodeClients to the node under test, pinned to its fingerprint."""

    address: str
    transport: Transport
    fingerprint: str
    known_hosts: KnownHosts

    def client(self, bot: Bot | None = None) -> NodeClient:
        client = NodeClient(
            self.address,
            transport=self.transport,
            known_hosts=self.known_hosts,
            server_fingerprint=self.fingerprint,
            access_token=bot.token if bot else None,
            connect_timeout=30.0,
        )
        if bot is not None:

            async def relogin() -> None:
                bot.token = await login_token(client, bot.signer, bot.username, bot.password)
                client.access_token = bot.token

            client.relogin = relogin
        return client

    async def open(self, bot: Bot | None = None) -> NodeClient:
        client = self.client(bot)
        try:
            await client.connect()
        except BaseException:
            await client.close()
            raise
        return client


class AccountsFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, fingerprint: str) -> tuple[list[Bot], dict[str, Any]]:
        """The saved bots and extras for this node; nothing if the file is absent or belongs to another node."""
        if not self.path.exists():
            return [], {}
        document = json.loads(self.path.read_text())
        if document.get("version") != FILE_VERSION or document.get("node_fingerprint") != fingerprint:
            return [], {}
        return [Bot.from_json(item) for item in document.get("bots", [])], dict(document.get("extras", {}))

    def save(self, fingerprint: str, bots: Sequence[Bot], extras: dict[str, Any]) -> None:
        document = {
            "version": FILE_VERSION,
            "node_fingerprint": fingerprint,
            "bots": [bot.to_json() for bot in bots],
            "extras": extras,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=1)
        os.replace(temporary, self.path)


async def register_bots(
    connector: Connector,
    count: int,
    *,
    parallel: int = 8,
    connections: int = 4,
    on_done: Callable[[], None] = lambda: None,
) -> list[Bot]:
    """Registers and logs in `count` new bots, `parallel` at a time over a few shared connections."""
    prefix = "b" + secrets.token_hex(4) + "-"
    bots = [Bot.new(prefix, index) for index in range(count)]
    clients = [await connector.open() for _ in range(max(1, min(connections, count)))]
    gate = asyncio.Semaphore(parallel)

    async def one(index: int, bot: Bot) -> None:
        client = clients[index % len(clients)]
        async with gate:
            await register(client, bot.signer, bot.username, bot.password)
            bot.token = await login_token(client, bot.signer, bot.username, bot.password)
        on_done()

    try:
        await asyncio.gather(*(one(index, bot) for index, bot in enumerate(bots)))
    finally:
        for client in clients:
            await client.close()
    return bots


async def check_tokens(connector: Connector, bots: Sequence[Bot]) -> int:
    """Logs in again the bots whose token the node refuses; returns how many needed it."""
    client = await connector.open()
    renewed = 0
    try:
        # One at a time on one client: the access token belongs to the client.
        for bot in bots:
            client.access_token = bot.token
            if bot.token is not None:
                try:
                    await client.resolve_identity(bot.key)
                    continue
                except Unauthenticated:
                    pass
            bot.token = await login_token(client, bot.signer, bot.username, bot.password)
            renewed += 1
    finally:
        await client.close()
    return renewed
