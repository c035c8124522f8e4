"""`qpc-server`: run a node, or print what identifies it."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from quicnprotochat.server import __version__
from quicnprotochat.server.config import ConfigError, NodeConfig, load_config
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
    run.add_argument("--store", help="database: a path, sqlite:///path or postgresql://... (default: in the data dir)")
    run.add_argument(
        "--allow-sealed-sender",
        action="store_true",
        default=None,
        help="accept default-inbox enqueues without binding the sender's identity",
    )

    commands.add_parser("info", help="print the node's fingerprint and where its data lives")
    return parser


def _config(args: argparse.Namespace) -> NodeConfig:
    overrides = {"data_dir": args.data_dir}
    if args.command == "run":
        overrides |= {
            "quic_listen": args.quic_listen,
            "tcp_listen": args.tcp_listen,
            "log_level": args.log_level,
            "store": args.store,
            "allow_sealed_sender": args.allow_sealed_sender,
        }
    return load_config(config_file=args.config, overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _config(args)
        if args.command == "info":
            return _info(config)
        logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        asyncio.run(serve(config))
        return 0
    except (ConfigError, IdentityError) as error:
        print(f"qpc-server: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"qpc-server: {error}", file=sys.stderr)
        return 1


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
