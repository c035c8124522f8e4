"""qpc-bench groups smoke tests: a few small MLS groups for a couple of seconds, on one node (SQLite) and on two
nodes of one PostgreSQL database. They check that commits were ordered (accepted and stale ones), that every
member of every group agrees at the end, and that messages arrived exactly once; they say nothing about speed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from quicnprotochat.bench.cli import main
from tests.bench.test_bench_smoke import LATENCY_KEYS


def run_bench(data_dir: Path, *args: str) -> dict[str, Any]:
    out = data_dir / "report.json"
    code = main([*args, "--data-dir", str(data_dir), "--no-progress", "--json", str(out)])
    assert code == 0
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def assert_groups_agree(results: dict[str, Any], groups: int) -> None:
    assert results["agreement"] == {"groups": groups, "agreeing": groups, "problems": []}
    assert results["commits_accepted"] > 0 and results["commits_accepted_per_s"] > 0
    assert sum(results["commits_by_change"].values()) == results["commits_accepted"]
    assert 0 <= results["stale_rate"] < 1
    assert results["errors"] == {}
    assert results["messages_undecryptable"] == 0
    check = results["delivery_check"]
    assert check["acknowledged"] > 0 and check["duplicates"] == 0 and check["failed"] == 0
    # Nothing the node accepted was lost: what was not read reached an inbox whose owner could not read it (removed
    # or rejoined since, or the group moved past the epochs a vault keeps).
    assert check["lost"] == check["delivered_unreadable"]
    assert set(results["delivery_latency_ms"]) == LATENCY_KEYS


def test_groups_on_one_node(tmp_path: Path) -> None:
    report = run_bench(
        tmp_path,
        "groups",
        "--in-process",
        "--duration",
        "2",
        "--groups",
        "2",
        "--members",
        "3",
        "--commit-share",
        "0.4",
        "--think-ms",
        "5",
    )
    assert_groups_agree(report["results"], 2)


async def test_groups_across_two_nodes_of_one_database(pg_url: str, tmp_path: Path) -> None:
    # The test is async for its database fixture; main() runs its own loop, so it runs in a thread.
    report = await asyncio.to_thread(
        run_bench,
        tmp_path,
        "groups",
        "--nodes",
        "2",
        "--in-process",
        "--store",
        pg_url,
        "--duration",
        "2",
        "--groups",
        "2",
        "--members",
        "3",
        "--commit-share",
        "0.4",
    )
    results = report["results"]
    assert results["nodes_by_role"] == {"members": ["node1", "node2"]}
    assert_groups_agree(results, 2)
