"""`qpc-server`: run a node, print what identifies it, create its root key, or move it to a new one; load the
secrets its bots read (the coffer)."""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import sys
import time
from pathlib import Path

import capnp  # type: ignore[import-untyped]

from quicnprotochat.common import kj_loop
from quicnprotochat.common.connect import open_quic, open_tcp
from quicnprotochat.native import RootKey
from quicnprotochat.server import __version__
from quicnprotochat.server.at_rest import new_root_key, node_root_key, rekey, root_key_source
from quicnprotochat.server.coffer_admin import counts, list_coffer, load_coffer, read_definition
from quicnprotochat.server.coffer_file import CofferFileError
from quicnprotochat.server.config import LOOPS, ConfigError, NodeConfig, load_config, parse_listen
from quicnprotochat.server.event_loops import run_on_loop
from quicnprotochat.server.identity import (
    IdentityError,
    ensure_data_dir,
    identity_root_key_id,
    load_or_create_identity,
    read_certificate,
    wipe,
)
from quicnprotochat.server.node import serve
from quicnprotochat.server.node_state import store_limits
from quicnprotochat.server.root_key import (
    NEW_PASSPHRASE_ENV,
    PASSPHRASE_ENV,
    RootKeyError,
    create_passphrase_salt,
    derive,
    load_root_key,
    new_passphrase,
    read_salt,
)
from quicnprotochat.server.sealed_secrets import SealedDataError
from quicnprotochat.server.store import StoreError, open_store
from quicnprotochat.server.workers import supervise


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
    run.add_argument("--loop", choices=list(LOOPS), help="event loop: uvloop (default) or asyncio")
    run.add_argument("--store", help="database: a path, sqlite:///path or postgresql://... (default: in the data dir)")
    run.add_argument(
        "--workers", type=int, help="node processes serving the same ports, one per core (PostgreSQL store; default 1)"
    )
    run.add_argument(
        "--metrics-listen", help="loopback host:port for Prometheus /metrics (default: none, e.g. 127.0.0.1:9464)"
    )
    run.add_argument(
        "--allow-sealed-sender",
        action="store_true",
        default=None,
        help="accept default-inbox enqueues without binding the sender's identity",
    )

    _root_key_options(run)
    run.add_argument(
        "--quic-retry",
        action="store_true",
        default=None,
        help="answer new QUIC connections with a Retry (address validation against spoofed-source floods)",
    )

    init = commands.add_parser("init", help="create a root key (a key file, or a passphrase's salt) and the identity")
    _root_key_options(init)
    rekey = commands.add_parser("rekey", help="move every sealed record to a new root key (the node stopped)")
    _root_key_options(rekey)
    rekey.add_argument("--store", help="the node's database (default: as configured)")
    new = rekey.add_mutually_exclusive_group(required=True)
    new.add_argument("--new-root-key-file", type=Path, help="the new key file (`qpc-server init` on a scratch dir)")
    new.add_argument(
        "--new-root-passphrase",
        action="store_true",
        help=f"derive the new key from a passphrase ({NEW_PASSPHRASE_ENV}, or asked twice)",
    )

    commands.add_parser("info", help="print the node's fingerprint and where its data lives")

    coffer = commands.add_parser("coffer", help="the secrets the node keeps for bots (one sealed shard per bot key)")
    coffer_commands = coffer.add_subparsers(dest="coffer_command", required=True)
    load = coffer_commands.add_parser(
        "load", help="check a TOML definition file, then replace every bot's shard with it at once"
    )
    load.add_argument("file", type=Path, help="[clients] maps names to bot keys; a table per name holds its secrets")
    load.add_argument("--store", help="the node's database (default: as configured)")
    _root_key_options(load)
    check = coffer_commands.add_parser("check", help="check a definition file only (no node, no key needed)")
    check.add_argument("file", type=Path)
    listing = coffer_commands.add_parser("list", help="the bots with a shard: names and keys, never a value")
    listing.add_argument("--store", help="the node's database (default: as configured)")

    health = commands.add_parser(
        "health",
        help="call `health` on a running node of this data dir: exit 0 when it answers ok (its store reachable, "
        "its writer alive, disk above the floor); for container and load-balancer probes",
    )
    health.add_argument("--address", help="host:port to call (default: this node's QUIC listen address)")
    health.add_argument("--transport", choices=["quic", "tcp"], default="quic")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    return parser


def _root_key_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root-key-file", help="the root key: a file of 32 random bytes")
    parser.add_argument(
        "--root-passphrase",
        action="store_true",
        default=None,
        help=f"derive the root key from a passphrase ({PASSPHRASE_ENV}, or asked on the terminal)",
    )


def _config(args: argparse.Namespace) -> NodeConfig:
    overrides = {"data_dir": args.data_dir}
    if args.command in ("run", "init", "rekey") or getattr(args, "coffer_command", None) == "load":
        overrides |= {"root_key_file": args.root_key_file, "root_key_passphrase": args.root_passphrase}
    if args.command == "rekey" or getattr(args, "coffer_command", None) in ("load", "list"):
        overrides |= {"store": args.store}
    if args.command == "run":
        overrides |= {
            "quic_listen": args.quic_listen,
            "tcp_listen": args.tcp_listen,
            "log_level": args.log_level,
            "loop": args.loop,
            "store": args.store,
            "allow_sealed_sender": args.allow_sealed_sender,
            "quic_retry": args.quic_retry,
            "metrics_listen": args.metrics_listen,
            "workers": args.workers,
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
        if args.command == "init":
            return _init(config)
        if args.command == "rekey":
            return asyncio.run(_rekey(config, args))
        if args.command == "coffer":
            return asyncio.run(_coffer(config, args))
        logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if config.workers > 1:
            return supervise(config)
        run_on_loop(config.loop, serve(config))
        return 0
    except (ConfigError, IdentityError, RootKeyError, SealedDataError, CofferFileError) as error:
        print(f"qpc-server: {error}", file=sys.stderr)
        return 2
    except (OSError, StoreError) as error:  # StoreError: a database it cannot open (unreachable, refused)
        print(f"qpc-server: {error}", file=sys.stderr)
        return 1


async def _health(config: NodeConfig, args: argparse.Namespace) -> int:
    certificate = read_certificate(config.data_dir)
    if certificate is None:
        print(f"qpc-server: no node identity in {config.data_dir}", file=sys.stderr)
        return 1
    address = args.address or (config.quic_listen if args.transport == "quic" else config.tcp_listen)
    host, port = parse_listen(address)
    if host in ("0.0.0.0", "::"):  # noqa: S104 -- a wildcard listen address is reached on loopback
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"  # noqa: S104
    opener = open_quic if args.transport == "quic" else open_tcp

    def verify(fingerprint: str) -> None:
        # Strict pinning to our own key: whatever answers there must be this node.
        if not hmac.compare_digest(fingerprint, certificate[1]):
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
    certificate = read_certificate(config.data_dir)
    if certificate is None:
        print(f"qpc-server: no node identity in {config.data_dir} yet (`qpc-server run` creates one)", file=sys.stderr)
        return 1
    key_id = identity_root_key_id(config.data_dir)
    print(f"fingerprint: {certificate[1]}")
    print(f"data dir:    {config.data_dir}")
    print(f"certificate: {certificate[0]}")
    print(f"node key:    {'sealed under root key ' + key_id.hex() if key_id else 'in clear (no root key)'}")
    print(f"version:     {__version__}")
    return 0


def _init(config: NodeConfig) -> int:
    """Creates the root key (a new key file, or the salt of a passphrase) and the node's sealed identity."""
    source = root_key_source(config)
    if source is None:
        raise ConfigError("init needs --root-key-file PATH (kept off the data dir's disk) or --root-passphrase")
    ensure_data_dir(config.data_dir)
    if source.key_file is not None:
        if source.key_file.exists():
            raise ConfigError(f"{source.key_file} already exists; init never overwrites a root key")
        RootKey.generate().write_key_file(str(source.key_file))
        print(f"root key:    {source.key_file} (32 random bytes, mode 0600; keep a copy offline)")
        root = load_root_key(source)
    else:
        assert source.salt_file is not None
        if source.salt_file.exists():
            raise ConfigError(f"{source.salt_file} already exists; init never replaces a passphrase's salt")
        passphrase = new_passphrase(PASSPHRASE_ENV)  # asked twice on a terminal, before anything is written
        try:
            create_passphrase_salt(source.salt_file)
            root = derive(passphrase, *read_salt(source.salt_file))
        finally:
            wipe(passphrase)
        print(f"passphrase salt: {source.salt_file} (nodes sharing a database need a copy)")
    identity, _created = load_or_create_identity(config.data_dir, root)
    print(f"fingerprint: {identity.fingerprint}")
    return 0


async def _rekey(config: NodeConfig, args: argparse.Namespace) -> int:
    old = node_root_key(config)
    if old is None:
        raise ConfigError("rekey needs the current root key (--root-key-file or --root-passphrase)")
    new = new_root_key(config, args.new_root_key_file)
    store = await open_store(config.store_location, store_limits(config), clock=time.time)
    try:
        moved = await rekey(config, old, new, store)
    finally:
        await store.close()
    print(f"rekeyed: {moved} records moved to root key {new.key_id.hex()}; start the node with the new key")
    return 0


async def _coffer(config: NodeConfig, args: argparse.Namespace) -> int:
    try:
        if args.coffer_command == "check":
            checked = counts(read_definition(args.file))
            print(f"{args.file}: {checked.clients} bots, {checked.secrets} secrets; nothing loaded")
            return 0
        return await _coffer_on_node(config, args)
    except CofferFileError as error:
        raise CofferFileError(None, f"{args.file}: {error}") from None


async def _coffer_on_node(config: NodeConfig, args: argparse.Namespace) -> int:
    if read_certificate(config.data_dir) is None:  # a mistyped --data-dir must not get a database of its own
        raise IdentityError(f"no node in {config.data_dir} (`qpc-server init` or `run` makes one; see --data-dir)")
    root = node_root_key(config) if args.coffer_command == "load" else None
    store = await open_store(config.store_location, store_limits(config), clock=time.time)
    try:
        if args.coffer_command == "list":
            for line in await list_coffer(store):
                print(line)
            return 0
        loaded = await load_coffer(config, root, store, args.file)
    finally:
        await store.close()
    print(f"coffer loaded: {loaded.clients} bots, {loaded.secrets} secrets (every earlier shard replaced)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
