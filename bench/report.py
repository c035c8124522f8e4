"""The end-of-run tables."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _mib(value: Any) -> str:
    return f"{value / 2**20:.1f} MiB" if isinstance(value, int | float) else "-"


def _latency(summary: dict[str, Any] | None) -> str:
    if not summary or not summary.get("count"):
        return "-"
    return (
        f"p50 {summary['p50']:.2f}  p90 {summary['p90']:.2f}  p99 {summary['p99']:.2f}  max {summary['max']:.2f} ms"
        f"  (n={summary['count']})"
    )


def _seen(routes: dict[str, int]) -> str:
    """The routes the p2p bench's receiver saw its messages take, with how many took each."""
    return "the receiver saw " + ", ".join(f"{count} {route}" for route, count in routes.items())


def _cpu(figures: dict[str, Any] | None) -> str:
    if not figures:
        return "-"
    return (
        f"{figures['cpu_user_s']:.2f} s user + {figures['cpu_sys_s']:.2f} s sys = "
        f"{figures['cpu_percent_of_one_core']:.0f}% of one core"
    )


SHORT_NAMES = {"transport_echo": "bare echo", "rpc_echo": "pycapnp echo", "store": "store inserts"}


def print_report(report: dict[str, Any], console: Console) -> None:
    results: dict[str, Any] = report.get("results", {})
    table = Table(title=f"qpc-bench {report['scenario']} ({report['transport']})", show_header=False)
    table.add_column("figure", style="bold")
    table.add_column("value")
    rows: list[tuple[str, Any]] = [
        ("enqueues/s", results.get("enqueues_per_s")),
        ("batches/s", results.get("batches_per_s")),
        ("calls/s", results.get("calls_per_s")),
        ("wake-ups/s", results.get("wakeups_per_s")),
        ("deliveries/s", results.get("deliveries_per_s")),
        ("connections", results.get("connections")),
        ("connections opened/s", results.get("connections_per_s")),
    ]
    for name, value in rows:
        if value is not None:
            table.add_row(name, f"{value:,}" if isinstance(value, int | float) else str(value))
    disconnect = results.get("mass_disconnect")
    if disconnect:
        table.add_row(
            "mass disconnect",
            f"{disconnect['connections']:,} closed at once: the node held none after {disconnect['drain_seconds']} s "
            f"(node CPU {disconnect.get('node_cpu_s', '?')} s"
            + (f"; {disconnect['left_open']} still open" if disconnect["left_open"] > 0 else "")
            + ")",
        )
    for attack, figures in results.get("attacks", {}).items():
        table.add_row(
            f"attack {attack}",
            f"node RSS {figures['node_rss_before_mb']} -> {figures['node_rss_peak_mb']} (peak) -> "
            f"{figures['node_rss_after_mb']} MB; normal client p99 {figures['normal_client_p99_ms']} ms, "
            f"{figures['normal_client_failures']} failed of {figures['normal_client_calls']}",
        )
    if "commits_accepted_per_s" in results:
        table.add_row(
            "commits accepted/s",
            f"{results['commits_accepted_per_s']:,} ({results['commits_accepted']:,} in "
            f"{results['groups']} groups of {results['members_per_group']}: "
            + ", ".join(f"{change} {count}" for change, count in results["commits_by_change"].items())
            + ")",
        )
        table.add_row(
            "stale commits",
            f"{results['commits_stale']:,} (stale rate {results['stale_rate']:.1%}); "
            f"{results['submissions_refused_after_removal']} refused: submitter already removed",
        )
        table.add_row(
            "messages",
            f"{results['messages_sent']:,} sent; {results['messages_dropped_after_removal']} reached a member already "
            f"removed, {results['messages_dropped_before_join']} one that had rejoined since; "
            f"{results['messages_too_old']} too old to decrypt (the group had moved past the epochs a vault keeps); "
            f"{results['messages_undecryptable']} undecryptable",
        )
        agreement = results["agreement"]
        verdict = "agree" if agreement["agreeing"] == agreement["groups"] else "[red]DISAGREE"
        table.add_row(
            "end state",
            f"{verdict}: {agreement['agreeing']}/{agreement['groups']} groups with one epoch, member list and "
            "exporter secret among their members (and the node's member set)"
            + "".join(f"; {problem}" for problem in agreement["problems"]),
        )
    for path, figures in results.get("p2p", {}).items():
        table.add_row(f"{path}: latency", _latency(figures["latency_ms"]))
        table.add_row(
            f"{path}: throughput",
            f"{figures['messages_per_s']:,} messages/s ({figures['messages']} back to back); "
            + _seen(figures["routes_seen_by_receiver"]),
        )
        table.add_row(
            f"{path}: pipelined",
            f"{figures['pipelined_messages_per_s']:,} messages/s ({figures['messages']} messages, "
            f"{figures['sends_at_a_time']} sends at a time); " + _seen(figures["pipelined_routes_seen_by_receiver"]),
        )
        table.add_row(
            f"{path}: not waiting",
            f"{figures['not_waiting_messages_per_s']:,} messages/s ({figures['messages']} sends that do not wait); "
            + _seen(figures["not_waiting_routes_seen_by_receiver"]),
        )
    if "logins_per_s" in results:
        table.add_row("first key login (with approval)", f"{results['first_login_with_approval_ms']} ms")
        table.add_row("key login latency", _latency(results["login_latency_ms"]))
        table.add_row(
            "key logins/s",
            f"{results['logins_per_s']:,} ({results['logins']} logins, {results['in_flight']} in flight)",
        )
    if "delivery_latency_ms" in results:
        what = "wake-up latency (enqueue call -> receipt)" if report["scenario"] == "longpoll" else "delivery latency"
        table.add_row(what, _latency(results["delivery_latency_ms"]))
    if "wakeup_after_enqueue_returned_ms" in results:
        table.add_row("receipt after enqueue returned", _latency(results["wakeup_after_enqueue_returned_ms"]))
    if "call_latency_ms" in results:
        table.add_row("call latency", _latency(results["call_latency_ms"]))
    for method, figures in results.get("by_method", {}).items():
        table.add_row(f"  {method}", f"{figures['calls_per_s']:,}/s  " + _latency(figures["latency_ms"]))
    check = results.get("delivery_check")
    if check:
        unreadable = check.get("delivered_unreadable", 0)
        exact = check["lost"] == unreadable and check["duplicates"] == 0
        verdict = "exactly once" if exact else "[red]NOT exactly once"
        if unreadable:
            verdict += f" ({unreadable} delivered but not readable by their recipient: see messages)"
        table.add_row(
            "delivery check",
            f"{verdict}: {check['acknowledged']:,} acknowledged, {check['received']:,} received, "
            f"{check['lost']} lost, {check['duplicates']} duplicates, {check['failed']} failed calls, "
            f"{check['received_unacknowledged']} received unacknowledged, {check['stale']} stale",
        )
    errors = results.get("errors") or {}
    table.add_row("errors", ", ".join(f"{code}: {count}" for code, count in errors.items()) or "none")
    node = results.get("node")
    if node:
        table.add_row("node CPU", _cpu(node))
        table.add_row("node RSS", f"{_mib(node['rss_bytes'])} at end, {_mib(node['rss_max_during_run_bytes'])} max")
        if node.get("note"):
            table.add_row("", node["note"])
    for name, figures in results.get("nodes", {}).items():
        roles = ", ".join(figures.get("roles", [])) or "nothing"
        table.add_row(f"{name} ({figures['address']})", f"used by: {roles}")
        if "cpu_user_s" in figures:
            table.add_row(f"  {name} CPU", _cpu(figures))
            table.add_row(
                f"  {name} RSS",
                f"{_mib(figures['rss_bytes'])} at end, {_mib(figures['rss_max_during_run_bytes'])} max",
            )
        if figures.get("note"):
            table.add_row("", figures["note"])
    database = results.get("database")
    if database:
        table.add_row("PostgreSQL CPU", _cpu(database) + " (postmaster and backends)")
    if "node_rss_per_connection_bytes" in results:
        table.add_row(
            "node RSS per connection",
            f"{results['node_rss_per_connection_bytes'] / 1024:.1f} KiB "
            f"({_mib(results['node_rss_before_bytes'])} -> {_mib(results['node_rss_open_bytes'])}; "
            f"5,000 connections -> {_mib(results['node_rss_projected_5000_bytes'])})",
        )
    client = results.get("client")
    if client:
        table.add_row("load generator CPU", _cpu(client))
    store = results.get("store")
    if store:
        table.add_row(
            "store writes",
            f"{store['write_ops']:,} writes in {store['commits']:,} commits ({store['writes_per_commit']} per commit)",
        )
    busy = results.get("machine")
    if busy:
        table.add_row(
            "machine during run",
            f"{busy['busy_percent_of_all_cores']:.0f}% of all cores busy; other processes used "
            f"{busy['others_cores']:.2f} cores",
        )
    store_info = report.get("store", {})
    if store_info.get("kind") == "postgresql":
        where = store_info.get("url", "?")
        if "throwaway_cluster" in store_info:
            settings = store_info["throwaway_cluster"].get("settings", {})
            where += f" (throwaway cluster, fsync {settings.get('fsync', '?')})"
        table.add_row("store", "PostgreSQL " + where)
    elif store_info.get("kind") == "sqlite":
        table.add_row("store", "SQLite, " + store_info.get("where", store_info.get("url", "")))
    node_info = report.get("node", {})
    raised = ", ".join(
        f"{key}={value:g}" for key, value in node_info.get("settings_raised_for_load", {}).items() if "rate" in key
    )
    if raised:
        table.add_row("node rate limits", f"raised for load testing: {raised}")
    elif node_info.get("mode") in ("process", "in-process"):
        table.add_row("node limits", "the node's defaults")
    machine = report.get("machine", {})
    table.add_row(
        "machine",
        f"{machine.get('cpus')} CPUs, load {machine.get('load_average')} -> {machine.get('load_average_at_end')}, "
        f"Python {machine.get('python')}, "
        + (f"{len(report['nodes'])} nodes " if report.get("nodes") else "node ")
        + f"{node_info.get('mode')}, loop {report.get('loop')}",
    )
    console.print(table)

    baselines = report.get("baselines")
    if baselines:
        ceiling = Table(title="ceilings measured in the same run (same payload, connections, calls in flight)")
        for column in ("ceiling", "calls/s", "latency", "server CPU", "errors", "enqueues/s ÷ ceiling"):
            ceiling.add_column(column)
        ratios = report.get("ratios", {})
        for name, figures in baselines.items():
            server = figures.get("server")
            ceiling.add_row(
                SHORT_NAMES.get(name, name),
                f"{figures['calls_per_s']:,}",
                _latency(figures.get("latency_ms")),
                f"{server['cpu_percent_of_one_core']:.0f}%" if server else "-",
                ", ".join(f"{code}: {count}" for code, count in figures.get("errors", {}).items()) or "none",
                f"{ratios.get(f'enqueues_per_s / {name}', 0):.2f}x",
            )
        console.print(ceiling)
