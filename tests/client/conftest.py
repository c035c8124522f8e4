"""Helpers for the chat client tests: real nodes on loopback, real vaults and state dirs under tmp_path."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from quicnprotochat.client import KnownHosts
from quicnprotochat.client.chat import ChatClient, ChatConfig, Event, MessageReceived, MessageStateChanged
from quicnprotochat.client.state import Message
from quicnprotochat.server.config import NodeConfig
from quicnprotochat.server.node import Node
from tests.client.terminal import Tmux
from tests.conftest import loopback_config, node_address

E = TypeVar("E")


def files_containing(root: Path, *needles: bytes) -> list[tuple[str, bytes]]:
    found: list[tuple[str, bytes]] = []
    for directory, _dirs, files in os.walk(root):
        for name in files:
            path = Path(directory) / name
            data = path.read_bytes()
            found.extend((str(path.relative_to(root)), needle) for needle in needles if needle in data)
    return found


class EventLog:
    """Every event of one client, with a way to wait for one."""

    def __init__(self, chat: ChatClient) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        chat.add_listener(self._record)

    def _record(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, kind: type[E], predicate: Callable[[E], bool] = lambda _e: True, timeout: float = 15) -> E:
        async def wait() -> E:
            seen = 0
            while True:
                for event in self.events[seen:]:
                    if isinstance(event, kind) and predicate(event):
                        return event
                seen = len(self.events)
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(wait(), timeout)

    async def message(self, body: str, timeout: float = 15) -> MessageReceived:
        return await self.wait_for(MessageReceived, lambda e: e.message.body == body, timeout)

    def bodies(self) -> list[str]:
        return [e.message.body for e in self.events if isinstance(e, MessageReceived)]

    async def settled(self, message: Message, timeout: float = 15) -> Message:
        """`message` (sent by this client without waiting) once the outbox settled it."""
        changed = await self.wait_for(MessageStateChanged, lambda event: event.message.id == message.id, timeout)
        return changed.message


@pytest.fixture
async def tmux(tmp_path: Path) -> AsyncIterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    terminal = Tmux(tmp_path / "tmux.sock")
    yield terminal
    await terminal.close()


class RestartableNode:
    """A node that can be stopped and started again on the same ports and data."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.node: Node | None = None

    async def start(self) -> Node:
        self.node = Node(self.config)
        await self.node.start()
        if self.config.quic_listen.endswith(":0"):  # pin the ports for the next start
            assert self.node.quic_address is not None and self.node.tcp_address is not None
            host = self.node.quic_address[0]
            self.config = replace(
                self.config,
                quic_listen=f"{host}:{self.node.quic_address[1]}",
                tcp_listen=f"{host}:{self.node.tcp_address[1]}",
            )
        return self.node

    async def stop(self) -> None:
        node, self.node = self.node, None
        if node is not None:
            await node.stop()


@pytest.fixture
async def restartable(tmp_path: Path) -> AsyncIterator[RestartableNode]:
    holder = RestartableNode(loopback_config(tmp_path / "node"))
    await holder.start()
    yield holder
    await holder.stop()


ChatFactory = Callable[..., Awaitable[tuple[ChatClient, EventLog]]]


@pytest.fixture
async def open_chat(tmp_path: Path) -> AsyncIterator[ChatFactory]:
    """Opens chat clients (state in tmp_path/state-<name>, password-protected); all are closed at the end."""
    opened: list[ChatClient] = []
    known_hosts = KnownHosts(tmp_path / "known_hosts", notice=lambda _m: None)

    async def factory(
        server: Node | str, name: str, *, start: bool = True, state_password: str | None = "state pw", **options: Any
    ) -> tuple[ChatClient, EventLog]:
        address = server if isinstance(server, str) else node_address(server, "quic")
        options.setdefault("register", True)
        options.setdefault("password", f"password of {name}")
        options.setdefault("wait_ms", 5_000)
        config = ChatConfig(
            server=address,
            username=name,
            state_dir=tmp_path / f"state-{name}",
            state_password=state_password,
            known_hosts=known_hosts,
            **options,
        )
        chat = await ChatClient.open(config)
        opened.append(chat)
        log = EventLog(chat)
        if start:
            await chat.start()
        return chat, log

    yield factory
    await asyncio.gather(*(chat.close() for chat in opened), return_exceptions=True)
