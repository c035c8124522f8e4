"""`qpc-server`: run a node, or print what identifies it."""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import capnp  # type: ignore[import-untyped]

from quicnprotochat.common import kj_loop
from quicnprotochat.common.connect import open_quic, open_tcp
from quicnprotochat.server import __version__
from quicnprotochat.server.config import LOOPS, ConfigError, NodeConfig, load_config, parse_listen
from quicnprotochat.server.identity import IdentityError, load_identity
from quicnprotochat.server.node import serve


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qpc-server", description="The quicnprotochat node.")
    parser.add_argument("--version", action="version", version=f"qpc-server {__version__}")
    parser.add_argument("--config", type=Path, help="TOML file with settings (QPC_SERVER_* variables override it)")
    parser.add_argument("--data-dir", type=Path, help="where the node keeps its identity and data")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the node until SIGINT/SIGTERM")
    run.add_argument("--quic-listen", help="host:port for QUIC (udp); empty to disable (default 127.0.0.1:7700)")
    run.add_argument("--tcp-listen", help="host:port for TLS over TCP; empty to disable (default 127.0.0.1:7700)")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.add_argument("--loop", choices=list(LOOPS), help="event loop: asyncio (default) or uvloop")
    run.add_argument("--store", help="database: a path, sqlite:///path or postgresql://... (default: in the data dir)")
    run.add_argument(
        "--metrics-listen", help="loopback host:port for Prometheus /metrics (default: none, e.g. 127.0.0.1:9464)"
    )
    run.add_argument(
        "--allow-sealed-sender",
        action="store_true",
        default=None,
        help="accept default-inbox enqueues without binding the sender's identity",
    )

    commands.add_parser("info", help="print the node's fingerprint and where its data lives")

    health = commands.add_parser(
        "health",
        help="call `health` on a running node of this data dir: exit 0 when it answers ok (its store reachable, "
        "its writer alive, disk above the floor); for container and load-balancer probes",
    )
    health.add_argument("--address", help="host:port to call (default: this node's QUIC listen address)")
    health.add_argument("--transport", choices=["quic", "tcp"], default="quic")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    return parser


def _config(args: argparse.Namespace) -> NodeConfig:
    overrides = {"data_dir": args.data_dir}
    if args.command == "run":
        overrides |= {
            "quic_listen": args.quic_listen,
            "tcp_listen": args.tcp_listen,
            "log_level": args.log_level,
            "loop": args.loop,
            "store": args.store,
            "allow_sealed_sender": args.allow_sealed_sender,
            "metrics_listen": args.metrics_listen,
        }
    return load_config(config_file=args.config, overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _config(args)
        if args.command == "info":
            return _info(config)
        if args.command == "health":
            return asyncio.run(_health(config, args))
        logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        run_on_loop(config.loop, serve(config))
        return 0
    except (ConfigError, IdentityError) as error:
        print(f"qpc-server: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"qpc-server: {error}", file=sys.stderr)
        return 1


def run_on_loop(loop: str, main: Coroutine[Any, Any, None]) -> None:
    """Runs the node's main coroutine on the configured event loop."""
    if loop == "uvloop":
        try:
            import uvloop  # optional: only a node configured for it needs it
        except ImportError:
            main.close()
            raise ConfigError("loop = uvloop needs the uvloop package (pip install uvloop)") from None
        uvloop.run(main)
    else:
        asyncio.run(main)


async def _health(config: NodeConfig, args: argparse.Namespace) -> int:
    identity = load_identity(config.data_dir)
    if identity is None:
        print(f"qpc-server: no node identity in {config.data_dir}", file=sys.stderr)
        return 1
    address = args.address or (config.quic_listen if args.transport == "quic" else config.tcp_listen)
    host, port = parse_listen(address)
    if host in ("0.0.0.0", "::"):  # noqa: S104 -- a wildcard listen address is reached on loopback
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"  # noqa: S104
    opener = open_quic if args.transport == "quic" else open_tcp

    def verify(fingerprint: str) -> None:
        # Strict pinning to our own key: whatever answers there must be this node.
        if not hmac.compare_digest(fingerprint, identity.fingerprint):
            raise ConnectionError(f"{host}:{port} answers with another key than this node's")

    await kj_loop.acquire()
    try:
        async with asyncio.timeout(args.timeout):
            connection = await opener(host, port, verify, connect_timeout=args.timeout)
            try:
                status = str((await connection.service.health()).status)
            finally:
                await connection.close()
    except (OSError, TimeoutError, ConnectionError, capnp.KjException) as error:
        reason = getattr(error, "description", None) or str(error) or type(error).__name__
        print(f"unhealthy: {reason}", file=sys.stderr)
        return 1
    finally:
        await kj_loop.release()
    print(status)
    return 0 if status == "ok" else 1


def _info(config: NodeConfig) -> int:
    identity = load_identity(config.data_dir)
    if identity is None:
        print(f"qpc-server: no node identity in {config.data_dir} yet (`qpc-server run` creates one)", file=sys.stderr)
        return 1
    print(f"fingerprint: {identity.fingerprint}")
    print(f"data dir:    {config.data_dir}")
    print(f"certificate: {identity.cert_path}")
    print(f"version:     {__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
