"""qpc-bench against two nodes on one PostgreSQL database (the test server's, via --store): every delivery crosses
nodes (senders on node 1, receivers on node 2), and the tool checks it was exactly once. Short runs with a few
bots: they say nothing about speed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from quicnprotochat.bench.cli import main
from tests.bench.test_bench_smoke import CPU_KEYS, assert_exactly_once


def run_bench(data_dir: Path, *args: str) -> dict[str, Any]:
    out = data_dir / "report.json"
    code = main([*args, "--data-dir", str(data_dir), "--no-progress", "--json", str(out)])
    assert code == 0
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def assert_two_nodes(report: dict[str, Any], sending: str, receiving: str) -> None:
    assert report["store"]["kind"] == "postgresql"
    assert [node["name"] for node in report["nodes"]] == ["node1", "node2"]
    assert len({node["fingerprint"] for node in report["nodes"]}) == 2  # each its own identity
    for node in report["nodes"]:
        assert node["settings_raised_for_load"]["rate_per_address"] > 2000
    results = report["results"]
    assert results["nodes_by_role"] == {sending: ["node1"], receiving: ["node2"]}
    assert results["nodes"]["node1"]["roles"] == [sending]
    assert results["nodes"]["node2"]["roles"] == [receiving]
    assert_exactly_once(results)


async def test_two_node_processes_on_one_database(pg_url: str, tmp_path: Path) -> None:
    # The test is async for its database fixture; main() runs its own loop, so it runs in a thread.
    report = await asyncio.to_thread(
        run_bench,
        tmp_path,
        "enqueue",
        "--nodes",
        "2",
        "--store",
        pg_url,
        "--duration",
        "1",
        "--producers",
        "2",
        "--concurrency",
        "8",
    )
    assert_two_nodes(report, "producers", "consumers")
    assert report["node"]["mode"] == "process"
    assert "baselines" not in report  # off by default with several nodes
    for name in ("node1", "node2"):
        figures = report["results"]["nodes"][name]
        assert set(figures) >= CPU_KEYS and figures["rss_bytes"] > 0
    assert "node" not in report["results"]  # the figures are per node

    # longpoll and mixed across the same two nodes (in this process, to keep it short); the bots are reused.
    report = await asyncio.to_thread(
        run_bench,
        tmp_path,
        "longpoll",
        "--in-process",
        "--nodes",
        "2",
        "--store",
        pg_url,
        "--count",
        "30",
        "--clients",
        "6",
    )
    assert_two_nodes(report, "senders", "waiters")
    assert report["results"]["wakeups"] == 30
    report = await asyncio.to_thread(
        run_bench,
        tmp_path,
        "mixed",
        "--in-process",
        "--nodes",
        "2",
        "--store",
        pg_url,
        "--duration",
        "1",
        "--producers",
        "3",
        "--concurrency",
        "6",
    )
    assert_two_nodes(report, "actors", "readers")


@pytest.mark.parametrize(
    "args",
    [
        ["--nodes", "2"],  # several nodes need a shared PostgreSQL
        ["--nodes", "2", "--store", "/tmp/x.sqlite3"],
        ["--target", "127.0.0.1:1", "--target", "127.0.0.1:2", "--server-fingerprint", "ab"],
        ["--target", "127.0.0.1:1", "--server-fingerprint", "ab", "--pg-cluster"],
        ["--target", "127.0.0.1:1", "--server-fingerprint", "ab", "--nodes", "2"],
    ],
)
def test_inconsistent_node_options_are_refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["enqueue", *args]) == 2
    assert "qpc-bench:" in capsys.readouterr().err
