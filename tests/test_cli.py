"""`qpc-server` as an operator runs it: a real process, real signals, real files."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from quicnprotochat.client import KnownHosts, NodeClient
from quicnprotochat.client.node_client import Transport
from quicnprotochat.server.node import parse_announcement

TRANSPORTS: tuple[Transport, ...] = ("quic", "tcp")


def _server(data_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "quicnprotochat.server.cli", "--data-dir", str(data_dir), *args]


def start_node_process(
    data_dir: Path, *extra: str, env: dict[str, str] | None = None, wrapper: Sequence[str] = ()
) -> tuple[subprocess.Popen[str], str, dict[str, int], list[str]]:
    """`wrapper`: a command the node runs under (e.g. strace and its options)."""
    process = subprocess.Popen(
        [*wrapper, *_server(data_dir, *extra, "run", "--quic-listen", "127.0.0.1:0", "--tcp-listen", "127.0.0.1:0")],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stderr is not None
    fingerprint, ports, lines = "", dict[str, int](), list[str]()
    deadline = time.monotonic() + 30
    while len(ports) < 2 and time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        announced = parse_announcement(line)
        if announced is not None and announced[0] == "fingerprint":
            fingerprint = announced[1]
        elif announced is not None:
            assert "127.0.0.1:" in line  # the listen addresses we asked for
            ports[announced[0]] = int(announced[1])
    if len(ports) < 2:
        process.kill()
        pytest.fail("the node did not report its listeners:\n" + "".join(lines))
    return process, fingerprint, ports, lines


def stop_node_process(process: subprocess.Popen[str], signum: int = signal.SIGTERM) -> tuple[int, str]:
    process.send_signal(signum)
    try:
        _, rest = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail("the node did not stop on a signal")
    return process.returncode, rest


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_run_serves_and_stops_cleanly(tmp_path: Path, signum: int) -> None:
    process, fingerprint, ports, _ = start_node_process(tmp_path / "node")
    try:
        known = KnownHosts(tmp_path / "known_hosts", notice=lambda _m: None)
        for transport in TRANSPORTS:
            client = NodeClient(
                f"127.0.0.1:{ports[transport]}",
                transport=transport,
                known_hosts=known,
                server_fingerprint=fingerprint,
            )
            assert await client.health() == "ok"
            await client.close()
    finally:
        code, rest = stop_node_process(process, signum)
    assert code == 0
    assert "stopped" in rest
    assert "Traceback" not in rest


def test_info_prints_the_same_fingerprint(tmp_path: Path) -> None:
    process, fingerprint, _, lines = start_node_process(tmp_path / "node")
    stop_node_process(process)
    assert any("created a new node identity" in line for line in lines)
    info = subprocess.run(_server(tmp_path / "node", "info"), capture_output=True, text=True, check=True)
    assert f"fingerprint: {fingerprint}" in info.stdout
    # A second run keeps the identity.
    process, again, _, lines = start_node_process(tmp_path / "node")
    stop_node_process(process)
    assert again == fingerprint
    assert not any("created a new node identity" in line for line in lines)


def test_info_without_identity_says_so(tmp_path: Path) -> None:
    result = subprocess.run(_server(tmp_path / "empty", "info"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "no node identity" in result.stderr


def test_config_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("max_payload_bytes = 12345\n")
    env = dict(os.environ, QPC_SERVER_LOG_LEVEL="debug")
    process, _, _, lines = start_node_process(tmp_path / "node", "--config", str(config), env=env)
    stop_node_process(process)
    # The log level from the environment, the payload cap from the file (the database URL is never logged).
    assert any(" DEBUG " in line and "max_payload_bytes=12345" in line for line in lines), lines
    assert not any("store=" in line for line in lines)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--quic-listen", "nonsense"], "quic_listen must look like host:port"),
        (["run", "--quic-listen", "", "--tcp-listen", ""], "at least one of quic_listen and tcp_listen"),
    ],
)
def test_bad_settings_are_explained(tmp_path: Path, args: list[str], message: str) -> None:
    result = subprocess.run(_server(tmp_path / "node", *args), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_config_key_is_explained(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("max_payload = 5\n")
    result = subprocess.run(
        _server(tmp_path / "node", "--config", str(config), "run"), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "unknown keys max_payload" in result.stderr


def test_port_in_use_is_explained(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            _server(tmp_path / "node", "run", "--quic-listen", "", "--tcp-listen", f"127.0.0.1:{port}"),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert "address already in use" in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_health_probe(tmp_path: Path) -> None:
    process, _, ports, _ = start_node_process(tmp_path / "node")
    try:
        for transport in ("quic", "tcp"):
            probe = subprocess.run(
                _server(
                    tmp_path / "node", "health", "--transport", transport, "--address", f"127.0.0.1:{ports[transport]}"
                ),
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert probe.returncode == 0, probe.stderr
            assert probe.stdout.strip() == "ok"
    finally:
        stop_node_process(process)
    down = subprocess.run(
        _server(tmp_path / "node", "health", "--address", f"127.0.0.1:{ports['tcp']}", "--transport", "tcp"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert down.returncode == 1
    assert "unhealthy" in down.stderr and "Traceback" not in down.stderr
