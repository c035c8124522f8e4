"""Every core: does a second worker (`qpc-server run --workers N`) raise what one node serves on this machine?

The load comes from the front end spike's Rust load generator (`front_end_spike node-load`, about 8 us of CPU a
call where the bench's Python client costs about what the node does), so that the load generator leaves most of
a core to the workers. The accounts it uses are registered and logged in here with the bench's own helpers
(`bench/bots.py`) and handed over in a file of tokens and identity keys.

    python -m quicnprotochat.bench.cores measure --pairs 3 --duration 10 [--json PATH]
    python -m quicnprotochat.bench.cores accounts --target HOST:PORT --fingerprint HEX --count 16 --out FILE

`measure` starts a throwaway PostgreSQL cluster, then for each pair runs `--workers 1` and `--workers 2` (in
alternating order) on a fresh database each, drives each with the same load, and reads from /proc over the timed
window the CPU of the node's processes (summed, and each worker's), of PostgreSQL (postmaster and backends), of
the load generator and of the whole machine. `accounts` only writes the file, for a node started by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from quicnprotochat.bench.bots import Bot, Connector, register_bots
from quicnprotochat.bench.metrics import ProcessWatch, machine_cpu
from quicnprotochat.bench.node_runner import (
    BENCH_NODE_SETTINGS,
    NodeUnderTest,
    start_node_process,
    start_pg_cluster,
)
from quicnprotochat.bench.pgcluster import create_database, with_database
from quicnprotochat.bench.subprocesses import terminate
from quicnprotochat.client import KnownHosts
from quicnprotochat.server.workers import SERVING_LINE

LOAD_GENERATOR = Path(__file__).resolve().parent / "front_end_spike" / "target" / "release" / "front_end_spike"
CONSUMERS = ("peekack", "fetchwait", "none")


@dataclass(frozen=True)
class Load:
    connections: int = 16  # producer connections (and as many accounts, each draining its own inbox)
    concurrency: int = 64
    payload_size: int = 256
    duration: float = 10.0
    consumer: str = "peekack"
    # Connections spread evenly over the workers (the load generator reopens those past a worker's share): the
    # kernel's hash spreads a few flows unevenly, and the busiest worker would set the pace.
    spread_evenly: bool = True


def load_options(connections: int, concurrency: int, payload_size: int, duration: float | None) -> list[str]:
    """The options the spike's `load` (against its own server) and `node-load` (against the node) share; no
    duration: the load generator's default."""
    options = ["--connections", str(connections), "--concurrency", str(concurrency)]
    options += ["--payload-size", str(payload_size)]
    return options + (["--duration", str(duration)] if duration is not None else [])


def write_accounts(path: Path, fingerprint: str, bots: Sequence[Bot]) -> None:
    """The file `front_end_spike node-load --accounts` reads (mode 0600: it holds session tokens)."""
    lines = [f"fingerprint {fingerprint}"]
    for bot in bots:
        if bot.token is None:
            raise ValueError(f"{bot.username} is not logged in")
        lines.append(f"bot {bot.token.hex()} {bot.key.hex()}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")


async def register_accounts(address: str, fingerprint: str, count: int, work_dir: Path) -> list[Bot]:
    known_hosts = KnownHosts(work_dir / "known_hosts", notice=lambda _message: None)
    return await register_bots(Connector(address, "quic", fingerprint, known_hosts), count)


async def worker_pids(node: NodeUnderTest, workers: int, timeout: float = 60.0) -> list[int]:
    """The processes serving: the node itself, or the workers the supervisor names once all of them listen."""
    assert node.pid is not None
    if workers == 1:
        return [node.pid]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if match := SERVING_LINE.search(node.stderr_tail()):
            return [int(pid) for pid in match["pids"].split(", ")]
        await asyncio.sleep(0.05)  # polls the tail the node runner keeps
    raise RuntimeError("the workers did not all start:\n" + node.stderr_tail())


def scheduled_seconds(pid: int) -> tuple[float, float]:
    """(running, waiting for a CPU while runnable) seconds of a process's live threads so far (/proc schedstat):
    the second says how much more CPU the process would have used on a machine with a core free for it."""
    running = waiting = 0
    for task in os.scandir(f"/proc/{pid}/task"):
        try:
            with open(f"{task.path}/schedstat") as handle:
                fields = handle.read().split()
        except OSError:
            continue  # the thread ended meanwhile
        running += int(fields[0])
        waiting += int(fields[1])
    return running / 1e9, waiting / 1e9


class DatabaseWaits:
    """What the node's PostgreSQL backends wait on (pg_stat_activity every `every` seconds, on a connection of its
    own): per wait event, backends waiting per sample. Row locks (`Lock/transactionid`) are contention between
    transactions; NOTIFY's commit lock shows as `Lock/object`."""

    _QUERY = (
        "SELECT wait_event_type || '/' || wait_event FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND state = 'active' AND wait_event_type IS NOT NULL"
    )

    def __init__(self, connection: Any, every: float = 0.05) -> None:
        self._connection = connection
        self._every = every
        self._counts: Counter[str] = Counter()
        self._samples = 0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str) -> DatabaseWaits:
        import asyncpg  # type: ignore[import-untyped]

        return cls(await asyncpg.connect(url))

    async def _sample(self) -> None:
        while True:
            self._counts.update(row[0] for row in await self._connection.fetch(self._QUERY))
            self._samples += 1
            await asyncio.sleep(self._every)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sample())

    def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
        per_sample = {event: round(count / max(self._samples, 1), 3) for event, count in self._counts.most_common()}
        return {"samples": self._samples, "backends_waiting_per_sample": per_sample}

    async def close(self) -> None:
        try:
            if self._task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        finally:
            await self._connection.close()


class Window:
    """CPU from /proc between the load generator's "producing" and "produced" events; the load generator's own
    comes with the events."""

    def __init__(
        self, node_pid: int, workers: Sequence[int], database_pid: int | None, waits: DatabaseWaits | None = None
    ) -> None:
        self.waits = waits
        self.node = ProcessWatch(node_pid, tree=True)  # the supervisor and its workers (or the one node)
        self.workers = [ProcessWatch(pid) for pid in workers]
        self.database = ProcessWatch(database_pid, tree=True) if database_pid is not None else None
        self.this = ProcessWatch(None)
        self._machine: tuple[float, float] = (0.0, 0.0)
        self._started = 0.0
        self._worker_pids = list(workers)
        self._scheduled: dict[int, tuple[float, float]] = {}
        self._load: dict[str, float] = {}

    def _all(self) -> list[ProcessWatch]:
        return [self.node, *self.workers, *([self.database] if self.database else []), self.this]

    def start(self, event: dict[str, float]) -> None:
        for watch in self._all():
            watch.start()
        self._scheduled = {pid: scheduled_seconds(pid) for pid in self._worker_pids}
        self._load = event
        if self.waits is not None:
            self.waits.start()
        self._machine = machine_cpu()
        self._started = time.monotonic()

    def stop(self, event: dict[str, float]) -> dict[str, Any]:
        busy, total = machine_cpu()
        wall = time.monotonic() - self._started

        def per_s(seconds: float) -> float:
            return round(seconds / wall, 3) if wall > 0 else 0.0

        def used(watch: ProcessWatch) -> float:
            figures = watch.stop()
            return per_s(figures["cpu_user_s"] + figures["cpu_sys_s"])

        node = used(self.node)
        workers = [used(watch) for watch in self.workers]
        database = used(self.database) if self.database else None
        this = used(self.this)
        load = per_s(event["running_s"] - self._load["running_s"])
        machine = per_s(busy - self._machine[0])
        waiting = [per_s(scheduled_seconds(pid)[1] - self._scheduled[pid][1]) for pid in self._worker_pids]
        waits = self.waits.stop() if self.waits is not None else None
        return {
            "postgresql_waits": waits,
            "seconds": round(wall, 3),
            "machine_cores": per_s(total - self._machine[1]),
            "cores_used": {
                "node": node,
                "workers": workers,
                "postgresql": database,
                "load_generator": load,
                "this_driver": this,
                "machine": machine,
                "others": round(machine - node - (database or 0.0) - load - this, 3),
            },
            # Time runnable but waiting for a CPU, per second of the window. A worker that waits is starved by
            # the machine, not limited by its own work.
            "cores_waited_for": {
                "workers": waiting,
                "load_generator": per_s(event["waiting_s"] - self._load["waiting_s"]),
            },
        }


async def run_load(
    binary: Path,
    node: NodeUnderTest,
    accounts: Path,
    load: Load,
    window: Window | None = None,
    workers: int = 1,
) -> dict[str, Any]:
    """Runs `front_end_spike node-load`; `window` (if given) is started and stopped at its events."""
    process = await asyncio.create_subprocess_exec(
        str(binary),
        "node-load",
        "--host",
        node.host,
        "--port",
        str(node.quic_port),
        "--accounts",
        str(accounts),
        *load_options(load.connections, load.concurrency, load.payload_size, load.duration),
        "--consumer",
        load.consumer,
        *(["--workers", str(workers)] if load.spread_evenly and workers > 1 else []),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    figures: dict[str, Any] = {}
    try:
        async with asyncio.timeout(load.duration + 120):
            while line := await process.stdout.readline():
                document = json.loads(line)
                event = document.get("event")
                if event == "producing" and window is not None:
                    window.start(document)
                elif event == "produced" and window is not None:
                    figures["cpu"] = window.stop(document)
                elif event is None:
                    figures.update(document)
            error = (await process.stderr.read()).decode(errors="replace").strip()
            if await process.wait() != 0:
                raise RuntimeError(f"the load generator failed ({process.returncode}): {error}")
    finally:
        await terminate(process, 5)
    return figures


def _per_enqueue_us(figures: dict[str, Any], cores: float | None) -> float | None:
    if cores is None or not figures.get("enqueues"):
        return None
    return round(cores * float(figures["cpu"]["seconds"]) / int(figures["enqueues"]) * 1e6, 1)


async def one_run(
    binary: Path, store: str, database_pid: int | None, workers: int, load: Load, data_dir: Path
) -> dict[str, Any]:
    """One node (`workers` processes) on the PostgreSQL database `store`, its accounts, the load."""
    node = await start_node_process(data_dir, BENCH_NODE_SETTINGS, store=store, workers=workers)
    try:
        assert node.pid is not None
        pids = await worker_pids(node, workers)
        bots = await register_accounts(node.address("quic"), node.fingerprint, load.connections, data_dir)
        accounts = data_dir / "accounts"
        write_accounts(accounts, node.fingerprint, bots)
        waits = await DatabaseWaits.open(store)
        try:
            window = Window(node.pid, pids, database_pid, waits)
            figures = await run_load(binary, node, accounts, load, window, workers)
        finally:
            await waits.close()
    finally:
        await node.stop()
    used = figures.get("cpu", {}).get("cores_used", {})
    figures["workers"] = workers
    figures["worker_pids"] = pids
    figures["node_cpu_per_enqueue_us"] = _per_enqueue_us(figures, used.get("node"))
    figures["postgresql_cpu_per_enqueue_us"] = _per_enqueue_us(figures, used.get("postgresql"))
    figures["load_generator_cpu_per_enqueue_us"] = _per_enqueue_us(figures, used.get("load_generator"))
    figures["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    return figures


def load_of(args: argparse.Namespace) -> Load:
    return Load(
        args.connections, args.concurrency, args.payload_size, args.duration, args.consumer, not args.kernel_spread
    )


async def measure(args: argparse.Namespace, load: Load) -> list[dict[str, Any]]:
    binary = Path(args.load_generator)
    counts = [int(count) for count in args.workers.split(",")]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="qpc-cores-") as tmp:
        work_dir = Path(tmp)
        os.chmod(work_dir, 0o755)  # the cluster's server user (postgres) must enter it
        store = await start_pg_cluster(work_dir)
        try:
            assert store.cluster is not None and store.url is not None
            admin_url = with_database(store.url, "postgres")
            for pair in range(args.pairs):
                # Alternate the order, so that a neighbour's load drifting over a pair favours neither.
                order = counts if pair % 2 == 0 else list(reversed(counts))
                for workers in order:
                    database = await create_database(admin_url, f"qpc_cores_{len(runs)}")
                    data_dir = work_dir / f"node{len(runs)}"
                    figures = await one_run(binary, database, store.server_pid, workers, load, data_dir)
                    figures["pair"] = pair
                    runs.append(figures)
                    print(row(figures), flush=True)
        finally:
            await store.stop()
    return runs


HEADER = (
    "| pair | workers | enqueues/s | deliveries/s | call p50 / p99 ms | cores: node (per worker) | PostgreSQL "
    "| load generator | others | workers waiting for a CPU | PostgreSQL backends waiting on a row lock "
    "| node CPU per enqueue | connections per worker | errors |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def row(figures: dict[str, Any]) -> str:
    used = figures.get("cpu", {}).get("cores_used", {})
    spread = "/".join(str(count) for count in figures.get("producers_by_process", {}).values())
    per_worker = ", ".join(f"{share:.2f}" for share in used.get("workers", []))
    cpu_waits = figures.get("cpu", {}).get("cores_waited_for", {}).get("workers", [])
    waited = ", ".join(f"{share:.2f}" for share in cpu_waits)
    errors = sum(item["count"] for item in figures.get("errors", {}).values())
    waits = figures.get("cpu", {}).get("postgresql_waits") or {}
    row_locks = waits.get("backends_waiting_per_sample", {}).get("Lock/transactionid", 0.0)
    return (
        f"| {figures.get('pair')} | {figures['workers']} | {figures.get('enqueues_per_s', 0):,.0f} "
        f"| {figures.get('deliveries_per_s', 0):,.0f} "
        f"| {figures['call_ms']['p50']:.1f} / {figures['call_ms']['p99']:.1f} "
        f"| {used.get('node', 0):.2f} ({per_worker}) | {used.get('postgresql') or 0:.2f} "
        f"| {used.get('load_generator', 0):.2f} | {used.get('others', 0):.2f} | {waited} | {row_locks:.2f} "
        f"| {figures.get('node_cpu_per_enqueue_us')} us | {spread} | {errors} |"
    )


async def accounts(args: argparse.Namespace) -> None:
    out = Path(args.out)
    bots = await register_accounts(args.target, args.fingerprint, args.count, out.parent)
    write_accounts(out, args.fingerprint, bots)
    print(f"{len(bots)} accounts for {args.target} in {out}")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m quicnprotochat.bench.cores", description=__doc__.split("\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    run = commands.add_parser("measure", help="--workers 1 against 2, interleaved, on a throwaway PostgreSQL")
    run.add_argument("--workers", default="1,2", help="worker counts to compare, in the first pair's order")
    run.add_argument("--pairs", type=int, default=3)
    run.add_argument("--duration", type=float, default=10.0)
    run.add_argument("--connections", type=int, default=Load.connections)
    run.add_argument("--concurrency", type=int, default=Load.concurrency)
    run.add_argument("--payload-size", type=int, default=Load.payload_size)
    run.add_argument("--consumer", choices=CONSUMERS, default=Load.consumer)
    run.add_argument(
        "--kernel-spread", action="store_true", help="leave the connections where the kernel's hash puts them"
    )
    run.add_argument("--load-generator", default=str(LOAD_GENERATOR))
    run.add_argument("--json", help="write every run's figures here")
    setup = commands.add_parser("accounts", help="register and log in accounts on a running node for node-load")
    setup.add_argument("--target", required=True, help="the node's QUIC address, host:port")
    setup.add_argument("--fingerprint", required=True, help="the node's key fingerprint (pinned)")
    setup.add_argument("--count", type=int, default=Load.connections)
    setup.add_argument("--out", required=True, help="the accounts file to write (mode 0600)")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "accounts":
        asyncio.run(accounts(args))
        return 0
    if not Path(args.load_generator).is_file():
        raise SystemExit(f"no load generator at {args.load_generator}: cd bench/front_end_spike && ./build.sh")
    print(HEADER, flush=True)
    load = load_of(args)
    runs = asyncio.run(measure(args, load))
    if args.json:
        Path(args.json).write_text(json.dumps({"load": asdict(load), "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
