"""Fixtures shared by the test suite: real nodes on loopback ports, real clients, temporary data dirs."""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import uvloop

from quicnprotochat.client import KnownHosts, NodeClient, accounts
from quicnprotochat.client.accounts import Session
from quicnprotochat.native import Vault
from quicnprotochat.server.config import NodeConfig
from quicnprotochat.server.node import Node
from tests.pgcluster import PgServer, server_for_tests

ClientFactory = Callable[..., Awaitable[NodeClient]]

# The suite runs on uvloop, the node's default loop: async tests through the hook below, and whatever a synchronous
# test runs with asyncio.run() through the policy. A test that needs the standard loop names it:
# `@pytest.mark.asyncio(loop_factories=["asyncio"])` (or both, `["uvloop", "asyncio"]`).
LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop,
    "asyncio": asyncio.SelectorEventLoop,  # not asyncio.new_event_loop: that asks the policy, which gives uvloop
}
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, Any]:
    marker = item.get_closest_marker("asyncio")
    if marker is not None and "loop_factories" in marker.kwargs:
        return LOOP_FACTORIES  # the test picks among them
    return {"uvloop": LOOP_FACTORIES["uvloop"]}


class TestTimedOut(SystemExit):
    """A test ran past its timeout. A SystemExit because event loops let only SystemExit and KeyboardInterrupt out
    of the callback a signal interrupts: uvloop would log and swallow pytest-timeout's own exception, and the test
    would hang past its timeout instead of failing."""

    __test__ = False  # not a test class, despite its name


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    if settings.method != "signal" or threading.current_thread() is not threading.main_thread():
        return None  # pytest-timeout's own timer thread

    def expired(_signum: int, _frame: object) -> None:
        faulthandler.dump_traceback(sys.stderr, all_threads=True)
        raise TestTimedOut(f"Timeout: the test ran past {settings.timeout:g} s")

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # what pytest-timeout's cancel hook calls
    signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True


@pytest.fixture(autouse=True)
def own_client_homes(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets empty XDG config and data homes, and so does every process it starts.

    A client given no known_hosts (a bot opened by its key file, the example echo bot, `qpc` started without
    `client_env`) records each node it meets in the default known_hosts. In the user's real home that file kept
    one line per loopback node ever started, and a node that drew a port recorded there for an earlier node's key
    was refused (FingerprintMismatch): with 250 lines, about one such first contact in 110 failed."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg-data")))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server for the whole session. Without one, PostgreSQL tests skip saying why, unless
    QPC_TEST_REQUIRE_POSTGRES is set (CI sets it: there, a missing server is a failure)."""
    server, why_not = server_for_tests()
    if server is None:
        if os.environ.get("QPC_TEST_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL is required here but unavailable: {why_not}")
        pytest.skip(why_not)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def pg_url(pg_server: PgServer) -> AsyncIterator[str]:
    """A fresh, empty database for one test."""
    url = await pg_server.create_database()
    try:
        yield url
    finally:
        await pg_server.drop_database(url)


def loopback_config(data_dir: Path, **settings: Any) -> NodeConfig:
    return replace(NodeConfig(data_dir=data_dir, quic_listen="127.0.0.1:0", tcp_listen="127.0.0.1:0"), **settings)


@pytest.fixture
def node_config(tmp_path: Path) -> NodeConfig:
    return loopback_config(tmp_path / "node")


@pytest.fixture
async def node(node_config: NodeConfig) -> AsyncIterator[Node]:
    started = Node(node_config)
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


@pytest.fixture
async def two_nodes(pg_url: str, tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    """Two nodes sharing one PostgreSQL database (the scale-out deployment)."""
    nodes = [Node(loopback_config(tmp_path / name, store=pg_url)) for name in ("a", "b")]
    for node in nodes:
        await node.start()
    try:
        yield nodes[0], nodes[1]
    finally:
        for node in nodes:
            await node.stop()


@pytest.fixture
def notices() -> list[str]:
    return []


@pytest.fixture
def known_hosts(tmp_path: Path, notices: list[str]) -> KnownHosts:
    return KnownHosts(tmp_path / "known_hosts", notice=notices.append)


def node_address(node: Node, transport: str) -> str:
    address = node.quic_address if transport == "quic" else node.tcp_address
    assert address is not None
    return f"{address[0]}:{address[1]}"


@pytest.fixture
async def connect(known_hosts: KnownHosts) -> AsyncIterator[ClientFactory]:
    """Opens clients to a node; all are closed when the test ends."""
    opened: list[NodeClient] = []

    async def factory(node: Node, transport: str = "quic", **options: Any) -> NodeClient:
        options.setdefault("known_hosts", known_hosts)
        client = NodeClient(node_address(node, transport), transport=transport, **options)  # type: ignore[arg-type]
        opened.append(client)
        await client.connect()
        return client

    yield factory
    for client in opened:
        await client.close()


class FakeClock:
    """Unix time that tests move by hand (the only thing besides faults we may fake)."""

    def __init__(self, start: float = 1_900_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class User:
    name: str
    password: str
    vault: Vault
    client: NodeClient
    session: Session | None = None

    @property
    def key(self) -> bytes:
        return self.vault.identity_key


UserFactory = Callable[..., Awaitable[User]]


@pytest.fixture
async def make_user(tmp_path: Path, connect: ClientFactory) -> AsyncIterator[UserFactory]:
    """Creates users with their own vault and connection; registered and logged in unless told otherwise."""
    vaults: list[Vault] = []

    async def factory(
        node: Node, name: str, *, register: bool = True, login: bool = True, transport: str = "quic"
    ) -> User:
        vault = Vault.open(str(tmp_path / f"vault-{name}-{len(vaults)}.sqlite"), os.urandom(32))
        vaults.append(vault)
        user = User(name, f"correct horse {name}", vault, await connect(node, transport))
        if register:
            await accounts.register(user.client, vault, name, user.password)
        if register and login:
            user.session = await accounts.login(user.client, vault, name, user.password)
        return user

    yield factory
    for vault in vaults:
        vault.close()


BotFactory = Callable[[], Vault]


@pytest.fixture
def make_bot(tmp_path: Path) -> Iterator[BotFactory]:
    """Vaults holding fresh identity keys, for bots that log in by key (tests/bots/botlib.py)."""
    vaults: list[Vault] = []

    def factory() -> Vault:
        vault = Vault.open(str(tmp_path / f"bot-{len(vaults)}.sqlite"), os.urandom(32))
        vaults.append(vault)
        return vault

    yield factory
    for vault in vaults:
        vault.close()
