"""Store micro-benchmark: enqueue throughput and how many commits group commit needed. Prints, asserts nothing.

python bench/store_bench.py [--n 10000] [--payload 256] [--dir /path/on/the/real/disk]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from quicnprotochat.server.store import open_store


async def run(db: Path, n: int, in_flight: int, payload: bytes, recipients: int) -> None:
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
        f"in flight {in_flight:>6}: {n:>6} enqueues in {elapsed:6.2f} s = {n / elapsed:8.0f}/s, "
        f"{commits:>5} commits ({n / max(commits, 1):6.1f} per commit), "
        f"latency p50 {p50:6.2f} ms p99 {p99:7.2f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000, help="enqueues per concurrent run")
    parser.add_argument("--payload", type=int, default=256, help="payload bytes")
    parser.add_argument("--recipients", type=int, default=100, help="distinct inboxes written to")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the databases (default: a temp dir)")
    args = parser.parse_args()
    payload = b"\xa5" * args.payload
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"SQLite store, WAL, synchronous=FULL, databases under {tmp}, payload {args.payload} B")
        # One in flight is bounded by one fsync per enqueue; keep that run short.
        await run(Path(tmp) / "seq.db", min(args.n, 500), 1, payload, args.recipients)
        for in_flight in (16, 256, args.n):
            await run(Path(tmp) / f"c{in_flight}.db", args.n, in_flight, payload, args.recipients)


if __name__ == "__main__":
    asyncio.run(main())
