"""Store micro-benchmark: enqueue throughput and how many commits group commit needed. Prints, asserts nothing.

python bench/store_bench.py [--n 10000] [--payload 256] [--dir /path/on/the/real/disk]
python bench/store_bench.py --store postgresql://user@host/db    # an existing PostgreSQL database
python bench/store_bench.py --pg-cluster [--dir ...]             # a throwaway PostgreSQL (fsync on) in --dir

Each backend also gets a delivery run: producers enqueue (with a sender, as the node does) while one consumer per
inbox reads with peekWait (`fetch_wait(remove=False)`) and acks, and the CPU of the whole process (every thread)
per delivered message is printed: the store's share of the node's CPU per message.

PostgreSQL runs are made with group commit on and off (`?group_commit=off`: one transaction per enqueue on a pool
of `--pool` connections) so the two can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from quicnprotochat.bench.pgcluster import PgCluster, find_bin_dir
from quicnprotochat.server.store import fetch_wait, open_store


async def run(db: Path | str, n: int, in_flight: int, payload: bytes, recipients: int, label: str = "") -> None:
    store = await open_store(db)
    latencies: list[float] = []
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            started = time.perf_counter()
            await store.enqueue((i % recipients).to_bytes(32, "big"), b"", payload, None)
            latencies.append(time.perf_counter() - started)

    before = store.metrics()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(in_flight, n))))
    elapsed = time.perf_counter() - started
    after = store.metrics()
    await store.close()
    commits = after.commits - before.commits
    latencies.sort()
    p50, p99 = statistics.median(latencies) * 1e3, latencies[int(len(latencies) * 0.99)] * 1e3
    print(
        f"{label}in flight {in_flight:>6}: {n:>6} enqueues in {elapsed:6.2f} s = {n / elapsed:8.0f}/s, "
        f"{commits:>5} commits ({n / max(commits, 1):6.1f} per commit), "
        f"latency p50 {p50:6.2f} ms p99 {p99:7.2f} ms"
    )


async def run_delivery(db: Path | str, n: int, in_flight: int, payload: bytes, inboxes: int, label: str = "") -> None:
    store = await open_store(db)
    senders = [bytes([1]) * 32, bytes([2]) * 32]
    recipients = [(100 + i).to_bytes(32, "big") for i in range(inboxes)]
    counter = iter(range(n))
    delivered = 0

    async def producer() -> None:
        for i in counter:
            await store.enqueue(recipients[i % inboxes], b"", payload, None, sender=senders[i % len(senders)])

    async def consumer(recipient: bytes) -> None:
        nonlocal delivered
        while delivered < n:
            messages = await fetch_wait(store, recipient, b"", 0, 0.2, remove=False)
            if messages:
                await store.ack(recipient, b"", messages[-1].seq)
                delivered += len(messages)

    cpu, started = time.process_time(), time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(in_flight)), *(consumer(r) for r in recipients))
    cpu, elapsed = time.process_time() - cpu, time.perf_counter() - started
    await store.close()
    print(
        f"{label}delivery, {in_flight} enqueues in flight, {inboxes} inboxes: {n} messages in {elapsed:6.2f} s = "
        f"{n / elapsed:8.0f}/s, {cpu / n * 1e6:6.1f} us CPU per message (enqueue, peekWait, ack; all threads)"
    )


def with_options(url: str, options: str) -> str:
    return url + ("&" if "?" in url else "?") + options


async def bench_postgres(url: str, args: argparse.Namespace, payload: bytes) -> None:
    print(f"PostgreSQL store at {url.rsplit('@', 1)[-1]}, payload {args.payload} B, pool {args.pool}")
    for group in ("on", "off"):
        variant = with_options(url, f"group_commit={group}&pool_max_size={args.pool}")
        label = f"group commit {group:>3}, "
        await run(variant, min(args.n, 500), 1, payload, args.recipients, label)
        for in_flight in (16, 256, args.n):
            await run(variant, args.n, in_flight, payload, args.recipients, label)
        await run_delivery(variant, args.n, 64, payload, 8, label)


async def bench_sqlite(args: argparse.Namespace, payload: bytes) -> None:
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"SQLite store, WAL, synchronous=FULL, databases under {tmp}, payload {args.payload} B")
        # One in flight is bounded by one fsync per enqueue; keep that run short.
        await run(Path(tmp) / "seq.db", min(args.n, 500), 1, payload, args.recipients)
        for in_flight in (16, 256, args.n):
            await run(Path(tmp) / f"c{in_flight}.db", args.n, in_flight, payload, args.recipients)
        await run_delivery(Path(tmp) / "delivery.db", args.n, 64, payload, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000, help="enqueues per concurrent run")
    parser.add_argument("--payload", type=int, default=256, help="payload bytes")
    parser.add_argument("--recipients", type=int, default=100, help="distinct inboxes written to")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the databases (default: a temp dir)")
    parser.add_argument("--store", default=None, help="a postgresql:// URL to benchmark instead of SQLite")
    parser.add_argument("--pg-cluster", action="store_true", help="benchmark a throwaway PostgreSQL cluster")
    parser.add_argument("--pool", type=int, default=10, help="PostgreSQL pool size")
    args = parser.parse_args()
    payload = b"\xa5" * args.payload
    if args.store:
        asyncio.run(bench_postgres(args.store, args, payload))
    elif args.pg_cluster:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise SystemExit("no PostgreSQL binaries found (Debian: apt-get install postgresql-15)")
        with PgCluster(bin_dir, fsync=True, parent=args.dir) as cluster:
            print(f"throwaway cluster, fsync on, data under {cluster.base}")
            asyncio.run(bench_postgres(cluster.url, args, payload))
    else:
        asyncio.run(bench_sqlite(args, payload))


if __name__ == "__main__":
    main()
