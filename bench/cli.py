"""`qpc-bench`: the load generator. Starts (or targets) a node, registers bot accounts, runs a scenario, measures
the node's CPU and RSS, and compares with ceilings taken in the same run. See docs/BENCHMARKS.md.

    qpc-bench enqueue --duration 20 --concurrency 64 --payload-size 256
    qpc-bench fanout --recipients 100
    qpc-bench longpoll --clients 1000
    qpc-bench idle --connections 5000 --duration 10
    qpc-bench mixed --producers 16
    qpc-bench groups --groups 4 --members 4 --commit-share 0.2
    qpc-bench p2p --count 200 --concurrency 32 # two chat clients: direct (iroh) against through the node
    qpc-bench keylogin --count 500             # bots logging in by key: first login with approval, latency, rate
    qpc-bench enqueue --target 127.0.0.1:7700 --server-fingerprint HEX [--node-pid PID]

Several nodes on one PostgreSQL database (the scale-out deployment):

    qpc-bench enqueue --nodes 2 --pg-cluster           # a throwaway PostgreSQL (fsync on) in the data dir
    qpc-bench longpoll --nodes 2 --store postgresql://user@host/db
    qpc-bench mixed --target 127.0.0.1:7701 --server-fingerprint HEX1 --target 127.0.0.1:7702 --server-fingerprint HEX2

The sending side (producers, senders, actors) and all setup go to node 1, the receiving side (consumers,
recipients, waiters, readers) to node 2 (nodes 2..N in turn), so every delivery crosses nodes: enqueue, fanout,
longpoll and mixed. idle uses node 1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console

from quicnprotochat.bench import baselines
from quicnprotochat.bench.bots import AccountsFile, Bot, Connector, check_tokens, register_bots
from quicnprotochat.bench.groups import run_groups
from quicnprotochat.bench.key_login import run_key_login
from quicnprotochat.bench.live import Live
from quicnprotochat.bench.metrics import MIN_PAYLOAD_BYTES
from quicnprotochat.bench.node_runner import (
    BENCH_NODE_SETTINGS,
    NodeUnderTest,
    StoreUnderTest,
    start_node_in_process,
    start_node_process,
    start_pg_cluster,
    target_node,
)
from quicnprotochat.bench.p2p import run_p2p
from quicnprotochat.bench.pgcluster import redact
from quicnprotochat.bench.report import print_report
from quicnprotochat.bench.scenarios import CONSUMERS, RUNNERS, SCENARIOS, Context, Measured, Spec
from quicnprotochat.client import KnownHosts


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qpc-bench",
        description="Load generator for a quicnprotochat node (127.0.0.1 only unless --target).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("scenario", nargs="?", default="enqueue", choices=SCENARIOS)
    run = p.add_argument_group("how long")
    run.add_argument("--duration", type=float, default=None, help="seconds of load (default 10 unless --count)")
    run.add_argument("--count", type=int, default=None, help="operations in all (enqueue calls, batches, wake-ups)")
    load = p.add_argument_group("load")
    load.add_argument("--payload-size", type=int, default=256, help=f"bytes per payload (>= {MIN_PAYLOAD_BYTES})")
    load.add_argument(
        "--concurrency", type=int, default=64, help="calls in flight in all; p2p: sends under way (default 64)"
    )
    load.add_argument(
        "--producers", type=int, default=None, help="sending bots/connections (enqueue 4, fanout 1, mixed 16)"
    )
    load.add_argument("--recipients", type=int, default=100, help="fanout: recipients per batchEnqueue")
    load.add_argument("--clients", type=int, default=1000, help="longpoll: clients parked in fetchWait")
    load.add_argument("--connections", type=int, default=1000, help="idle: connections held open")
    load.add_argument("--groups", type=int, default=4, help="groups: MLS groups")
    load.add_argument("--members", type=int, default=4, help="groups: members per group")
    load.add_argument(
        "--commit-share", type=float, default=0.2, help="groups: share of a member's actions that are commits"
    )
    load.add_argument("--think-ms", type=float, default=10.0, help="groups: a member's mean pause between actions")
    load.add_argument(
        "--consumer",
        choices=CONSUMERS,
        default="peekack",
        help="how consumers read inboxes: peekWait + ack (at least once, default) or fetchWait (at most once)",
    )
    load.add_argument("--wait-ms", type=int, default=25_000, help="fetchWait/peekWait timeout")
    load.add_argument("--drain-timeout", type=float, default=10.0, help="seconds to wait for the last deliveries")
    load.add_argument("--transport", choices=["quic", "tcp"], default="quic")
    node = p.add_argument_group("the node")
    where = node.add_mutually_exclusive_group()
    where.add_argument(
        "--node-process",
        dest="node_mode",
        action="store_const",
        const="process",
        help="run the node as a `qpc-server run` subprocess (default): its CPU and RSS are measured apart",
    )
    where.add_argument(
        "--in-process", dest="node_mode", action="store_const", const="in-process", help="run the node in this process"
    )
    where.add_argument(
        "--target",
        metavar="HOST:PORT",
        action="append",
        help="load a running node instead (configure its limits); repeat for the nodes of a cluster, node 1 first",
    )
    node.add_argument(
        "--server-fingerprint",
        action="append",
        help="with --target: the node's key fingerprint (hex); one per --target, in the same order",
    )
    node.add_argument(
        "--node-pid",
        type=int,
        action="append",
        help="with --target on this machine: its pid, to read CPU and RSS; one per --target, in the same order",
    )
    node.add_argument(
        "--nodes",
        type=int,
        default=None,
        help="node processes to start on one database (default 1; more need --store postgresql://... or "
        "--pg-cluster); producers use node 1, consumers node 2 (2..N in turn); idle uses node 1 only",
    )
    store = node.add_mutually_exclusive_group()
    store.add_argument(
        "--store", metavar="URL", help="the nodes' store (default: SQLite in the node's data dir); postgresql://..."
    )
    store.add_argument(
        "--pg-cluster",
        action="store_true",
        help="start a throwaway PostgreSQL cluster (fsync on) in the data dir for the nodes; stopped at the end",
    )
    node.add_argument("--data-dir", type=Path, help="node data and accounts, kept for reuse (default: a temp dir)")
    node.add_argument("--accounts-file", type=Path, help="bot accounts to reuse and extend (default DATA_DIR/...)")
    base = p.add_argument_group("baselines")
    base.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure echo and store ceilings in the same run (default: on for enqueue)",
    )
    base.add_argument("--baseline-duration", type=float, default=None, help="seconds per baseline (default 5)")
    out = p.add_argument_group("output")
    out.add_argument("--json", type=Path, help="write the figures to this file")
    out.add_argument(
        "--profile-node",
        type=Path,
        metavar="PATH",
        help="py-spy the node over the measured window (.svg flamegraph, .json speedscope, .txt collapsed stacks)",
    )
    out.add_argument("--no-progress", action="store_true", help="no live progress bar")
    out.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio", help="event loop of the bench")
    return p


def spec_from(args: argparse.Namespace) -> Spec:
    duration = args.duration if args.duration is not None else (None if args.count is not None else 10.0)
    return Spec(
        scenario=args.scenario,
        duration=duration,
        count=args.count,
        payload_size=args.payload_size,
        concurrency=args.concurrency,
        producers=args.producers,
        recipients=args.recipients,
        clients=args.clients,
        connections=args.connections,
        consumer=args.consumer,
        wait_ms=args.wait_ms,
        drain_timeout=args.drain_timeout,
        groups=args.groups,
        members=args.members,
        commit_share=args.commit_share,
        think_ms=args.think_ms,
    )


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def machine() -> dict[str, Any]:
    load1, load5, load15 = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "load_average": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: _version(name) for name in ("quicnprotochat", "aioquic", "pycapnp", "cryptography")},
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


async def prepare_bots(
    accounts_key: str, connector: Connector, spec: Spec, accounts: AccountsFile | None, live: Live
) -> tuple[list[Bot], dict[str, Any]]:
    bots, extras = accounts.load(accounts_key) if accounts else ([], {})
    reused = len(bots)
    if reused:
        with live.status(f"checking {reused} saved tokens"):
            renewed = await check_tokens(connector, bots[: spec.bots_needed()])
        if renewed:
            live.note(f"{renewed} saved bot tokens had expired: logged in again")
    missing = spec.bots_needed() - len(bots)
    if missing > 0:
        started = time.monotonic()
        with live.counter(f"registering {missing} bots (OPAQUE, Argon2id)", missing) as advance:
            bots += await register_bots(connector, missing, on_done=advance)
        live.note(
            f"registered {missing} bot accounts in {time.monotonic() - started:.1f} s"
            + (f" (reused {reused})" if reused else "")
        )
    elif reused:
        live.note(f"reusing {reused} bot accounts from {accounts.path if accounts else '?'}")
    if accounts is not None:
        accounts.save(accounts_key, bots, extras)
    return bots, extras


def check_nodes(args: argparse.Namespace) -> None:
    """Refuses inconsistent node options (before anything starts)."""
    if args.target:
        fingerprints, pids = args.server_fingerprint or [], args.node_pid or []
        if len(fingerprints) != len(args.target):
            raise ValueError("give one --server-fingerprint per --target, in the same order")
        if pids and len(pids) != len(args.target):
            raise ValueError("give one --node-pid per --target, in the same order, or none")
        if args.nodes is not None and args.nodes != len(args.target):
            raise ValueError(f"--nodes {args.nodes} but {len(args.target)} --target given")
        if args.store or args.pg_cluster:
            raise ValueError("--store and --pg-cluster are for nodes started here, not for --target")
        return
    if args.server_fingerprint or args.node_pid:
        raise ValueError("--server-fingerprint and --node-pid go with --target")
    if args.nodes is not None and args.nodes < 1:
        raise ValueError("--nodes must be at least 1")
    postgres = args.pg_cluster or (args.store or "").startswith(("postgresql:", "postgres:"))
    if (args.nodes or 1) > 1 and not postgres:
        raise ValueError("several nodes share one PostgreSQL database: give --store postgresql://... or --pg-cluster")


def node_count(args: argparse.Namespace) -> int:
    return len(args.target) if args.target else (args.nodes or 1)


async def start_nodes(args: argparse.Namespace, data_dir: Path, store: StoreUnderTest) -> list[NodeUnderTest]:
    count = node_count(args)
    names = [f"node{index + 1}" for index in range(count)]
    if args.target:
        pids = args.node_pid or [None] * count
        return [
            target_node(address, args.transport, fingerprint, pid, name)
            for address, fingerprint, pid, name in zip(args.target, args.server_fingerprint, pids, names, strict=True)
        ]
    # The hostile scenario measures the node's defences: its limits stay at their defaults.
    settings = {"log_level": "warning"} if args.scenario == "hostile" else BENCH_NODE_SETTINGS
    nodes: list[NodeUnderTest] = []
    try:
        # One after the other: the first applies the schema migrations.
        for index, name in enumerate(names):
            node_dir = data_dir / ("node" if index == 0 else name)
            if args.node_mode == "in-process":
                nodes.append(await start_node_in_process(node_dir, settings, store=store.url, name=name))
            else:
                nodes.append(await start_node_process(node_dir, settings, store=store.url, name=name))
    except BaseException:
        await stop_nodes(nodes)
        raise
    return nodes


async def stop_nodes(nodes: list[NodeUnderTest]) -> None:
    await asyncio.gather(*(node.stop() for node in nodes), return_exceptions=True)


async def start_store(args: argparse.Namespace, data_dir: Path, live: Live) -> StoreUnderTest:
    if args.pg_cluster:
        with live.status("starting a throwaway PostgreSQL cluster (initdb)"):
            store = await start_pg_cluster(data_dir)
        live.note(f"throwaway PostgreSQL (fsync on) in {store.cluster.base if store.cluster else '?'}")
        return store
    return StoreUnderTest(args.store or None)


async def run_baselines(
    args: argparse.Namespace, spec: Spec, data_dir: Path, connections: int, live: Live
) -> dict[str, Any]:
    duration = args.baseline_duration if args.baseline_duration is not None else min(spec.duration or 5.0, 5.0)
    load = baselines.Load(
        connections, spec.concurrency, spec.payload_size, duration if spec.count is None else None, spec.count
    )
    in_process = args.node_mode == "in-process"
    results: dict[str, Any] = {}
    echo = await (baselines.start_echo_in_process if in_process else baselines.start_echo_process)(data_dir / "echo")
    try:
        pid = echo.pid
        bare_name = "bare aioquic echo" if spec_transport(args) == "quic" else "bare TLS/TCP echo"
        with live.status(f"baseline: {bare_name}"):
            results["transport_echo"] = await baselines.bare_echo(echo.servers, args.transport, load, pid)
        results["transport_echo"]["what"] = bare_name
        with live.status("baseline: pycapnp RPC echo over the node's bridge"):
            results["rpc_echo"] = await baselines.capnp_echo(echo.servers, args.transport, load, pid)
        results["rpc_echo"]["what"] = f"pycapnp Echo.echo over {args.transport} (our bridge)"
    finally:
        await echo.close()
    with live.status("baseline: raw store inserts"):
        results["store"] = await baselines.store_inserts(data_dir, load, spec.producer_count)
    results["store"]["what"] = "open_store (SQLite WAL, synchronous=FULL, group commit) + concurrent enqueue"
    for figures in results.values():
        figures["connections"] = connections
        figures["concurrency"] = spec.concurrency
        figures["seconds"] = duration if spec.count is None else None
    return results


def spec_transport(args: argparse.Namespace) -> str:
    return str(args.transport)


def ratios(results: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float]:
    enqueues = results.get("enqueues_per_s") or 0.0
    out: dict[str, float] = {}
    for name in ("transport_echo", "rpc_echo", "store"):
        ceiling = baseline.get(name, {}).get("calls_per_s") or 0.0
        if ceiling:
            out[f"enqueues_per_s / {name}"] = round(enqueues / ceiling, 3)
    return out


async def run(args: argparse.Namespace, console: Console | None = None) -> dict[str, Any]:
    spec = spec_from(args)
    console = console or Console(stderr=True)
    Measured.profile_path = args.profile_node
    check_nodes(args)
    if args.baselines is None:
        args.baselines = spec.scenario == "enqueue" and node_count(args) == 1
    keep = args.data_dir is not None
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="qpc-bench-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    if not keep and args.pg_cluster and os.geteuid() == 0:
        data_dir.chmod(0o711)  # PostgreSQL runs as `postgres` and must reach its directory in here
    # A throwaway cluster's accounts die with it: nothing to reuse.
    wanted = (keep or bool(args.target)) and not args.pg_cluster
    accounts_path = args.accounts_file or (data_dir / "bench-accounts.json" if wanted else None)
    accounts = AccountsFile(accounts_path) if accounts_path else None
    report: dict[str, Any] = {
        "scenario": spec.scenario,
        "command": "qpc-bench " + " ".join(sys.argv[1:]) if args.argv is None else "qpc-bench " + " ".join(args.argv),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "spec": {key: value for key, value in vars(spec).items()},
        "transport": args.transport,
        "loop": args.loop,
    }
    nodes: list[NodeUnderTest] = []
    store = StoreUnderTest()
    live = Live(console, not args.no_progress)
    try:
        with live:
            store = await start_store(args, data_dir, live)
            report["store"] = store.describe() if not args.target else {"kind": "whatever the targets use"}
            nodes = await start_nodes(args, data_dir, store)
            node = nodes[0]
            report["node"] = node.describe()
            if len(nodes) > 1:
                report["nodes"] = [each.describe() for each in nodes]
            if any("rate" in key for key in node.settings):
                live.note(
                    ("node" if len(nodes) == 1 else f"{len(nodes)} nodes")
                    + " started with rate limits raised for load testing: "
                    + ", ".join(f"{key}={value}" for key, value in node.settings.items() if "rate" in key)
                )
            elif args.target:
                live.note(
                    f"targeting {len(nodes)} running node(s): their rate limits must be raised "
                    "(QPC_SERVER_RATE_PER_* etc.)"
                )
            else:
                live.note("node started with its default limits")
            known_hosts = KnownHosts(data_dir / "known_hosts", notice=lambda _message: None)
            connectors = [
                Connector(each.address(args.transport), args.transport, each.fingerprint, known_hosts) for each in nodes
            ]
            # Saved accounts belong to a database: the node's own SQLite file, or the one the URL names.
            accounts_key = node.fingerprint + (f" {redact(store.url)}" if store.url else "")
            bots, extras = await prepare_bots(accounts_key, connectors[0], spec, accounts, live)

            def save_extras() -> None:
                if accounts is not None:
                    accounts.save(accounts_key, bots, extras)

            ctx = Context(
                spec,
                nodes,
                connectors,
                bots,
                extras,
                live,
                data_dir,
                save_extras=save_extras,
                database_pid=store.server_pid,
            )
            special = {"groups": run_groups, "p2p": run_p2p, "keylogin": run_key_login}
            runner = special.get(spec.scenario) or RUNNERS[spec.scenario]
            report["results"] = await runner(ctx)
            if len(nodes) > 1:
                report["results"]["nodes_by_role"] = ctx.roles_report()
            report["results"]["errors"] = ctx.errors.report()
            if ctx.errors.first:
                report["results"]["first_error_by_code"] = ctx.errors.first
            if args.baselines:
                connections = spec.producer_count
                report["baselines"] = await run_baselines(args, spec, data_dir, connections, live)
                report["ratios"] = ratios(report["results"], report["baselines"])
    finally:
        await stop_nodes(nodes)
        await store.stop()
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    report["machine"]["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    return report


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = argv
    try:
        spec_from(args)
        check_nodes(args)
    except ValueError as error:
        print(f"qpc-bench: {error}", file=sys.stderr)
        return 2
    if args.loop == "uvloop":
        try:
            import uvloop  # type: ignore[import-not-found,unused-ignore]  # optional
        except ImportError:
            print("qpc-bench: --loop uvloop needs `pip install uvloop`", file=sys.stderr)
            return 2
        runner: Any = uvloop.run
    else:
        runner = asyncio.run
    report = runner(run(args))
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    print_report(report, console)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
