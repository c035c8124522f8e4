"""qpc-bench smoke tests: every scenario for about a second with a few bots, against a node on loopback.

They check that the report holds the figures and that every acknowledged message was received exactly once; they
say nothing about speed.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import pytest

from quicnprotochat.bench.cli import main
from quicnprotochat.bench.load_generator_gc import YOUNG_BOUND, QuietCollector
from quicnprotochat.bench.metrics import P999_SAMPLES, DeliveryTracker, Latencies, stamp_payload

LATENCY_KEYS = {"count", "p50", "p90", "p99", "max", "mean"}
CPU_KEYS = {"cpu_user_s", "cpu_sys_s", "cpu_percent_of_one_core", "rss_bytes", "rss_peak_bytes"}


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One node data dir and accounts file for the module: bots registered by one test are reused by the next."""
    return tmp_path_factory.mktemp("bench")


def run_bench(bench_dir: Path, *args: str) -> dict[str, Any]:
    out = bench_dir / "report.json"
    code = main([*args, "--data-dir", str(bench_dir), "--no-progress", "--json", str(out)])
    assert code == 0
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def assert_exactly_once(results: dict[str, Any]) -> None:
    check = results["delivery_check"]
    assert check["acknowledged"] > 0
    assert check["received"] == check["acknowledged"]
    assert check["lost"] == 0
    assert check["duplicates"] == 0
    assert check["failed"] == 0
    assert results["errors"] == {}
    assert set(results["delivery_latency_ms"]) == LATENCY_KEYS
    assert results["deliveries"] > 0 and results["deliveries_per_s"] > 0


def test_enqueue_in_a_node_process_with_baselines(bench_dir: Path) -> None:
    report = run_bench(
        bench_dir, "enqueue", "--duration", "1", "--producers", "2", "--concurrency", "8", "--baseline-duration", "0.5"
    )
    results = report["results"]
    assert report["node"]["mode"] == "process"
    assert report["node"]["settings_raised_for_load"]["rate_per_address"] > 2000
    assert results["enqueues"] > 0 and results["enqueues_per_s"] > 0
    assert LATENCY_KEYS <= set(results["call_latency_ms"]) <= LATENCY_KEYS | {"p99.9"}
    assert_exactly_once(results)
    # While it measures a node process, the load generator's heap as set up is frozen and it does not collect...
    assert results["load_generator_gc"]["frozen_objects"] > 10_000
    assert results["load_generator_gc"]["young_collections_in_window"] == 0
    assert gc.get_freeze_count() == 0 and gc.isenabled()  # ...and collects again afterwards
    assert set(results["node"]) >= CPU_KEYS and results["node"]["rss_bytes"] > 0
    assert set(results["client"]) >= CPU_KEYS
    assert set(report["baselines"]) == {"transport_echo", "rpc_echo", "store"}
    for figures in report["baselines"].values():
        assert figures["calls"] > 0 and figures["errors"] == {}
    assert set(report["ratios"]) == {f"enqueues_per_s / {name}" for name in report["baselines"]}
    assert report["machine"]["cpus"] >= 1 and report["machine"]["python"]


def test_enqueue_over_tcp_with_fetch_wait(bench_dir: Path) -> None:
    report = run_bench(
        bench_dir,
        "enqueue",
        "--in-process",
        "--transport",
        "tcp",
        "--consumer",
        "fetchwait",
        "--count",
        "200",
        "--producers",
        "2",
        "--concurrency",
        "8",
    )
    assert report["results"]["enqueues"] == 200
    assert_exactly_once(report["results"])


def test_fanout(bench_dir: Path) -> None:
    report = run_bench(
        bench_dir, "fanout", "--in-process", "--duration", "1", "--recipients", "3", "--concurrency", "4"
    )
    results = report["results"]
    assert results["batches"] > 0 and results["recipients_per_batch"] == 3
    assert results["deliveries"] == 3 * results["batches"]
    assert_exactly_once(results)


def test_longpoll(bench_dir: Path) -> None:
    report = run_bench(bench_dir, "longpoll", "--in-process", "--duration", "1", "--clients", "6")
    results = report["results"]
    assert results["parked_waiters"] == 6
    assert results["wakeups"] > 0 and results["wakeups"] == results["deliveries"]
    assert set(results["wakeup_after_enqueue_returned_ms"]) == LATENCY_KEYS
    assert_exactly_once(results)
    assert "load_generator_gc" not in results  # the node shares the process: its collector is left alone


def test_idle(bench_dir: Path) -> None:
    report = run_bench(bench_dir, "idle", "--duration", "1", "--connections", "20")
    results = report["results"]
    assert results["connections"] == 20
    assert results["alive_after_hold"] == "20/20"
    assert results["node_rss_open_bytes"] > 0 and "node_rss_per_connection_bytes" in results
    assert set(results["node"]) >= CPU_KEYS


def test_mixed(bench_dir: Path) -> None:
    report = run_bench(bench_dir, "mixed", "--in-process", "--duration", "1", "--producers", "3", "--concurrency", "6")
    results = report["results"]
    for method, figures in results["by_method"].items():
        assert figures["calls"] > 0, method
    assert_exactly_once(results)


def test_tracker_reports_losses_duplicates_and_strays() -> None:
    tracker = DeliveryTracker()
    first, second, third = (tracker.new_message() for _ in range(3))
    for message in (first, second, third):
        tracker.issued()
        tracker.acked(message, [0])
    early = tracker.new_message()
    tracker.issued()
    tracker.received(stamp_payload(tracker.run_id, early, 64), 0)  # arrives before its enqueue returns
    tracker.acked(early, [0])
    tracker.received(stamp_payload(tracker.run_id, first, 64), 0)
    tracker.received(stamp_payload(tracker.run_id, first, 64), 0)
    tracker.received(stamp_payload(tracker.run_id, second, 64), 0)
    tracker.received(stamp_payload(b"old!", 7, 64), 0)
    tracker.received(b"not a bench payload", 0)
    report = tracker.report()
    assert report["acknowledged"] == 4 and report["received"] == 3
    assert report["lost"] == 1 and tracker.pending == 1  # third
    assert report["duplicates"] == 1
    assert report["stale"] == 1 and report["foreign"] == 1


def test_hostile_attacks_with_a_normal_client(tmp_path: Path) -> None:
    report = run_bench(tmp_path, "hostile", "--duration", "0.5", "--transport", "tcp")
    results = report["results"]
    assert report["node"]["settings_raised_for_load"] == {"log_level": "warning"}  # the defences at their defaults
    assert set(results["attacks"]) == {
        "peek_unread",
        "idle_tls",
        "tcp_without_tls",
        "login_lockout",
        "malformed",
        "bootstrap_flood",
        "half_frames",
        "quic_handshake_flood",
    }
    for figures in results["attacks"].values():
        assert figures["node_rss_peak_mb"] >= figures["node_rss_before_mb"] > 0
        assert figures["normal_client_failures"] == 0 and figures["normal_client_calls"] > 0
    assert results["attacks"]["malformed"]["bad_utf8_login_starts"].keys() == {"invalid_argument"}
    flood = results["attacks"]["bootstrap_flood"]
    assert flood["closed_by_node"] == flood["connections"] >= 1  # past max_bootstraps_per_connection
    handshakes = results["attacks"]["quic_handshake_flood"]
    assert 1 <= handshakes["handshakes_started_by_node"] <= 100 + 10 * 0.5 + 1  # the default burst, then 10 a second
    assert results["normal_user_logs_in_after"] is True


def test_p2p_direct_against_the_node(tmp_path: Path) -> None:
    report = run_bench(tmp_path, "p2p", "--in-process", "--count", "5", "--concurrency", "4")
    results = report["results"]
    for path in ("direct", "node"):
        figures = results["p2p"][path]
        assert figures["routes_seen_by_receiver"] == {path: 5}, figures  # every latency sample went that way
        assert figures["pipelined_routes_seen_by_receiver"] == {path: 5}, figures
        assert figures["not_waiting_routes_seen_by_receiver"] == {path: 5}, figures
        assert figures["not_waiting_messages_per_s"] > 0
        assert set(figures["latency_ms"]) == LATENCY_KEYS and figures["messages_per_s"] > 0
        assert figures["pipelined_messages_per_s"] > 0 and figures["sends_at_a_time"] == 4
    assert set(results["direct_vs_node"]) == {
        "p50_latency_ratio",
        "throughput_ratio",
        "pipelined_throughput_ratio",
        "not_waiting_throughput_ratio",
    }
    assert results["errors"] == {}


def test_key_login(tmp_path: Path) -> None:
    report = run_bench(tmp_path, "keylogin", "--in-process", "--count", "20", "--concurrency", "8")
    results = report["results"]
    assert results["first_login_with_approval_ms"] > 0
    assert set(results["login_latency_ms"]) == LATENCY_KEYS and results["login_latency_ms"]["count"] == 20
    assert results["logins"] == 20 and results["in_flight"] == 8 and results["logins_per_s"] > 0
    assert results["errors"] == {}


def test_latencies_give_a_999th_percentile_only_with_enough_samples() -> None:
    few, enough = Latencies(), Latencies()
    for index in range(P999_SAMPLES - 1):
        few.add_ms(float(index))
    for index in range(10 * P999_SAMPLES):
        enough.add_ms(float(index))
    assert set(few.summary()) == LATENCY_KEYS
    summary = enough.summary()
    assert set(summary) == LATENCY_KEYS | {"p99.9"}
    assert (summary["p99"], summary["p99.9"], summary["max"]) == (19_799.0, 19_979.0, 19_999.0)


def test_the_quiet_collector_bounds_what_a_window_piles_up() -> None:
    quiet = QuietCollector()
    quiet.start()
    try:
        assert not gc.isenabled() and gc.get_freeze_count() > 0
        kept = [[index] for index in range(YOUNG_BOUND + 1000)]
        quiet.check()
        assert quiet.collections == 1 and gc.get_count()[0] < YOUNG_BOUND
        quiet.check()
        assert quiet.collections == 1
        del kept
    finally:
        quiet.stop()
    assert gc.isenabled() and gc.get_freeze_count() == 0
