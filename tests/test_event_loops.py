"""The node's two event loops: uvloop (the default) and the standard library's (`loop = "asyncio"`). QUIC and
TLS-over-TCP both run over our own stream bridges, because pycapnp's own TCP streams crash under uvloop. The rest of
the suite runs on uvloop (tests/conftest.py); the tests here keep the standard loop covered as well."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop

from quicnprotochat.client import KnownHosts, NodeClient, accounts
from quicnprotochat.native import Vault
from quicnprotochat.server.config import ConfigError, load_config
from quicnprotochat.server.event_loops import SWITCH_INTERVAL_S, run_on_loop
from quicnprotochat.server.node import Node, parse_announcement
from tests.conftest import loopback_config, node_address

TRANSPORTS = ["quic", "tcp"]


async def _node_and_clients(tmp_path: Path, transport: str) -> None:
    node = Node(loopback_config(tmp_path / "node"))
    await node.start()
    vaults: list[Vault] = []
    clients: list[NodeClient] = []
    try:
        known = KnownHosts(tmp_path / "known_hosts", notice=lambda _message: None)
        for _ in range(4):
            client = NodeClient(node_address(node, transport), transport=transport, known_hosts=known)  # type: ignore[arg-type]
            clients.append(client)
            await client.connect()
        statuses = await asyncio.gather(*(client.health() for client in clients for _ in range(25)))
        assert statuses == ["ok"] * 100
        # Two accounts, then messages far larger than one read or one TLS record, both ways through the
        # bridges (and the TLS bridge's flow control), in flight together with small calls.
        keys = []
        for index, name in enumerate(("alice", "bob")):
            vault = Vault.open(str(tmp_path / f"vault-{name}.sqlite"), os.urandom(32))
            vaults.append(vault)
            await accounts.register(clients[index], vault, name, f"correct horse {name}")
            await accounts.login(clients[index], vault, name, f"correct horse {name}")
            keys.append(vault.identity_key)
        payloads = [os.urandom(700_000) for _ in range(3)]
        sent, statuses = await asyncio.gather(
            asyncio.gather(*(clients[0].enqueue(keys[1], payload) for payload in payloads)),
            asyncio.gather(*(clients[2].health() for _ in range(20))),
        )
        assert sorted(sent) == [1, 2, 3]
        assert statuses == ["ok"] * 20
        received = await clients[1].fetch(keys[1])
        assert sorted(envelope.data for envelope in received) == sorted(payloads)
    finally:
        for client in clients:
            await client.close()
        await node.stop()
        for vault in vaults:
            vault.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_node_and_clients_on_uvloop(tmp_path: Path, transport: str) -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)  # the suite's default loop
    await _node_and_clients(tmp_path, transport)


@pytest.mark.asyncio(loop_factories=["asyncio"])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_node_and_clients_on_the_standard_loop(tmp_path: Path, transport: str) -> None:
    assert not isinstance(asyncio.get_running_loop(), uvloop.Loop)
    assert isinstance(asyncio.get_running_loop(), asyncio.SelectorEventLoop)
    await _node_and_clients(tmp_path, transport)


def test_synchronous_tests_run_on_uvloop() -> None:
    async def loop_type() -> type[asyncio.AbstractEventLoop]:
        return type(asyncio.get_running_loop())

    assert asyncio.run(loop_type()) is uvloop.Loop


@pytest.mark.parametrize(("flags", "loop"), [([], "uvloop"), (["--loop", "asyncio"], "asyncio")])
def test_qpc_server_run_loops(tmp_path: Path, flags: list[str], loop: str) -> None:
    data_dir = tmp_path / "node"
    command = [sys.executable, "-m", "quicnprotochat.server.cli", "--data-dir", str(data_dir), "run", *flags]
    process = subprocess.Popen(
        [*command, "--quic-listen", "127.0.0.1:0", "--tcp-listen", "127.0.0.1:0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        ports: dict[str, int] = {}
        lines: list[str] = []
        while len(ports) < 2:
            line = process.stderr.readline()
            assert line, "the node ended before listening:\n" + "".join(lines)
            lines.append(line)
            announced = parse_announcement(line)
            if announced is not None and announced[0] != "fingerprint":
                ports[announced[0]] = int(announced[1])
        assert any(f"event loop: {loop}" in line for line in lines), lines
        # Its startup heap (modules, schema, store) is frozen once it listens: full collections do not walk it.
        frozen = [int(m["count"]) for line in lines if (m := re.search(r"(?P<count>\d+) objects of the started", line))]
        assert len(frozen) == 1 and frozen[0] > 10_000, lines

        async def health(transport: str) -> str:
            known = KnownHosts(tmp_path / "known_hosts", notice=lambda _message: None)
            async with NodeClient(f"127.0.0.1:{ports[transport]}", transport=transport, known_hosts=known) as client:  # type: ignore[arg-type]
                statuses = await asyncio.gather(*(client.health() for _ in range(10)))
                return "ok" if statuses == ["ok"] * 10 else repr(statuses)

        for transport in TRANSPORTS:
            assert asyncio.run(health(transport)) == "ok"
        assert process.poll() is None
    finally:
        process.terminate()
        assert process.wait(timeout=20) == 0


def test_loop_setting() -> None:
    assert load_config(environ={}).loop == "uvloop"
    assert load_config(environ={"QPC_SERVER_LOOP": "asyncio"}).loop == "asyncio"
    with pytest.raises(ConfigError, match="loop must be asyncio or uvloop"):
        load_config(environ={"QPC_SERVER_LOOP": "trio"})


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_the_node_runs_with_a_short_switch_interval(loop: str) -> None:
    """The store threads hand results to the loop and take new writes from it through the interpreter lock: the
    node shortens how long they can wait for it behind a busy loop, and gives the process its setting back."""
    seen: list[float] = []

    async def main() -> None:
        seen.append(sys.getswitchinterval())

    before = sys.getswitchinterval()
    assert before != SWITCH_INTERVAL_S
    run_on_loop(loop, main())
    assert seen == [SWITCH_INTERVAL_S]
    assert sys.getswitchinterval() == before


def test_uvloop_setting_without_uvloop_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        raise AssertionError("must not run")

    monkeypatch.setitem(sys.modules, "uvloop", None)  # what `import uvloop` finds when it is not installed
    with pytest.raises(ConfigError, match="pip install uvloop"):
        run_on_loop("uvloop", main())


def test_a_hung_test_on_uvloop_fails_at_its_timeout(tmp_path: Path) -> None:
    # pytest-timeout's exception, raised from SIGALRM inside a uvloop callback, would be logged and swallowed:
    # tests/conftest.py raises one the loop lets through, so a hung test fails and the run goes on.
    (tmp_path / "test_hung.py").write_text(
        "import asyncio\n\n"
        "async def test_hung_on_uvloop():\n    await asyncio.sleep(60)\n\n"
        "def test_hung_in_asyncio_run():\n    asyncio.run(asyncio.sleep(60))\n\n"
        "def test_next():\n    pass\n"
    )
    root = Path(__file__).resolve().parent.parent
    options = ["-q", "-p", "no:cacheprovider", "-c", str(root / "pyproject.toml"), "-p", "tests.conftest"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *options, "-o", "timeout=2", str(tmp_path / "test_hung.py")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "2 failed, 1 passed" in result.stdout, result.stdout + result.stderr
    assert result.stdout.count("the test ran past 2 s") >= 2, result.stdout
