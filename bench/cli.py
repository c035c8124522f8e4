"""`qpc-bench`: the load generator. Starts (or targets) a node, registers bot accounts, runs a scenario, measures
the node's CPU and RSS, and compares with ceilings taken in the same run. See docs/BENCHMARKS.md.

    qpc-bench enqueue --duration 20 --concurrency 64 --payload-size 256
    qpc-bench fanout --recipients 100
    qpc-bench longpoll --clients 1000
    qpc-bench idle --connections 5000 --duration 10
    qpc-bench mixed --producers 16
    qpc-bench enqueue --target 127.0.0.1:7700 --server-fingerprint HEX [--node-pid PID]
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
from quicnprotochat.bench.live import Live
from quicnprotochat.bench.metrics import MIN_PAYLOAD_BYTES
from quicnprotochat.bench.node_runner import (
    BENCH_NODE_SETTINGS,
    NodeUnderTest,
    start_node_in_process,
    start_node_process,
    target_node,
)
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
    load.add_argument("--concurrency", type=int, default=64, help="calls in flight in all (default 64)")
    load.add_argument(
        "--producers", type=int, default=None, help="sending bots/connections (enqueue 4, fanout 1, mixed 16)"
    )
    load.add_argument("--recipients", type=int, default=100, help="fanout: recipients per batchEnqueue")
    load.add_argument("--clients", type=int, default=1000, help="longpoll: clients parked in fetchWait")
    load.add_argument("--connections", type=int, default=1000, help="idle: connections held open")
    load.add_argument("--consumer", choices=CONSUMERS, default="fetchwait", help="how consumers read inboxes")
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
    where.add_argument("--target", metavar="HOST:PORT", help="load a running node instead (configure its limits)")
    node.add_argument("--server-fingerprint", help="with --target: the node's key fingerprint (hex)")
    node.add_argument("--node-pid", type=int, help="with --target on this machine: its pid, to read CPU and RSS")
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
    node: NodeUnderTest, connector: Connector, spec: Spec, accounts: AccountsFile | None, live: Live
) -> tuple[list[Bot], dict[str, Any]]:
    bots, extras = accounts.load(node.fingerprint) if accounts else ([], {})
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
        accounts.save(node.fingerprint, bots, extras)
    return bots, extras


async def start_node(args: argparse.Namespace, data_dir: Path) -> NodeUnderTest:
    if args.target:
        if not args.server_fingerprint:
            raise SystemExit("qpc-bench: --target needs --server-fingerprint")
        return target_node(args.target, args.transport, args.server_fingerprint, args.node_pid)
    if args.node_mode == "in-process":
        return await start_node_in_process(data_dir / "node", BENCH_NODE_SETTINGS)
    return await start_node_process(data_dir / "node", BENCH_NODE_SETTINGS)


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
    if args.loop == "uvloop" and args.transport == "tcp":
        raise SystemExit("qpc-bench: pycapnp over TCP crashes under uvloop (docs/BENCHMARKS.md); use asyncio")
    if args.baselines is None:
        args.baselines = spec.scenario == "enqueue"
    keep = args.data_dir is not None
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="qpc-bench-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    accounts_path = args.accounts_file or (data_dir / "bench-accounts.json" if keep or args.target else None)
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
    node: NodeUnderTest | None = None
    live = Live(console, not args.no_progress)
    try:
        with live:
            node = await start_node(args, data_dir)
            report["node"] = node.describe()
            if node.settings:
                live.note(
                    "node started with rate limits raised for load testing: "
                    + ", ".join(f"{key}={value}" for key, value in node.settings.items() if "rate" in key)
                )
            else:
                live.note("targeting a running node: its rate limits must be raised (QPC_SERVER_RATE_PER_* etc.)")
            known_hosts = KnownHosts(data_dir / "known_hosts", notice=lambda _message: None)
            connector = Connector(node.address(args.transport), args.transport, node.fingerprint, known_hosts)
            bots, extras = await prepare_bots(node, connector, spec, accounts, live)

            def save_extras() -> None:
                if accounts is not None:
                    accounts.save(node.fingerprint if node else "", bots, extras)

            ctx = Context(spec, node, connector, bots, extras, live, data_dir, save_extras=save_extras)
            report["results"] = await RUNNERS[spec.scenario](ctx)
            report["results"]["errors"] = ctx.errors.report()
            if ctx.errors.first:
                report["results"]["first_error_by_code"] = ctx.errors.first
            if args.baselines:
                connections = spec.producer_count
                report["baselines"] = await run_baselines(args, spec, data_dir, connections, live)
                report["ratios"] = ratios(report["results"], report["baselines"])
    finally:
        if node is not None:
            await node.stop()
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    report["machine"]["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    return report


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = argv
    try:
        spec_from(args)
    except ValueError as error:
        print(f"qpc-bench: {error}", file=sys.stderr)
        return 2
    if args.loop == "uvloop":
        try:
            import uvloop  # type: ignore[import-not-found]
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
