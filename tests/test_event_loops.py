"""The node on uvloop (`loop = "uvloop"`): QUIC and TLS-over-TCP both run over our own stream bridges, because
pycapnp's own TCP streams crash under uvloop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import uvloop

from quicnprotochat.client import KnownHosts, NodeClient, accounts
from quicnprotochat.native import Vault
from quicnprotochat.server.cli import run_on_loop
from quicnprotochat.server.config import ConfigError, load_config
from quicnprotochat.server.node import Node, parse_announcement
from tests.conftest import loopback_config, node_address

TRANSPORTS = ["quic", "tcp"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_node_and_clients_on_uvloop(tmp_path: Path, transport: str) -> None:
    async def scenario() -> None:
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
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

    uvloop.run(scenario())


def test_qpc_server_run_on_uvloop(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    command = [sys.executable, "-m", "quicnprotochat.server.cli", "--data-dir", str(data_dir), "run"]
    process = subprocess.Popen(
        [*command, "--loop", "uvloop", "--quic-listen", "127.0.0.1:0", "--tcp-listen", "127.0.0.1:0"],
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
        assert any("event loop: uvloop" in line for line in lines), lines

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
    assert load_config(environ={}).loop == "asyncio"
    assert load_config(environ={"QPC_SERVER_LOOP": "uvloop"}).loop == "uvloop"
    with pytest.raises(ConfigError, match="loop must be asyncio or uvloop"):
        load_config(environ={"QPC_SERVER_LOOP": "trio"})


def test_uvloop_setting_without_uvloop_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        raise AssertionError("must not run")

    monkeypatch.setitem(sys.modules, "uvloop", None)  # what `import uvloop` finds when it is not installed
    with pytest.raises(ConfigError, match="pip install uvloop"):
        run_on_loop("uvloop", main())
