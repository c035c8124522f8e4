"""bench/cores.py: the accounts file it hands the Rust load generator, and (where the front end spike is built:
CI does not build it) one short run against `qpc-server run --workers 2` on PostgreSQL. Says nothing about speed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from quicnprotochat.bench.bots import Bot
from quicnprotochat.bench.cores import LOAD_GENERATOR, Load, one_run, write_accounts
from tests.pgcluster import PgServer


def test_the_accounts_file_holds_the_pin_and_each_bots_token_and_key(tmp_path: Path) -> None:
    bots = [Bot.new("t", index) for index in range(3)]
    for index, bot in enumerate(bots):
        bot.token = bytes([index]) * 32
    path = tmp_path / "accounts"
    write_accounts(path, "ab" * 32, bots)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # session tokens
    assert path.read_text().splitlines() == [
        "fingerprint " + "ab" * 32,
        *(f"bot {bytes([index]).hex() * 32} {bot.key.hex()}" for index, bot in enumerate(bots)),
    ]


def test_an_account_without_a_session_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="t0 is not logged in"):
        write_accounts(tmp_path / "accounts", "ab" * 32, [Bot.new("t", 0)])


@pytest.mark.skipif(not LOAD_GENERATOR.is_file(), reason="the front end spike is not built (bench/front_end_spike)")
async def test_the_rust_load_spreads_evenly_over_both_workers_and_every_enqueue_is_delivered(
    pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    load = Load(connections=8, concurrency=16, duration=1.0)
    database_pid = pg_server.cluster.server_pid() if pg_server.cluster else None
    figures = await one_run(LOAD_GENERATOR, pg_url, database_pid, 2, load, tmp_path / "node")
    assert figures["errors"] == {} and figures["consumer_errors"] == {}
    assert figures["enqueues"] > 0
    assert figures["deliveries"] == figures["enqueues"]  # drained: every acknowledged enqueue came back out
    # Spread evenly over the two workers (the load generator reopens connections past a worker's share).
    assert {int(pid): count for pid, count in figures["producers_by_process"].items()} == dict.fromkeys(
        figures["worker_pids"], 4
    )
    assert sorted(figures["consumers_by_process"].values()) == [4, 4]
    cores = figures["cpu"]["cores_used"]
    assert len(cores["workers"]) == 2 and cores["node"] >= max(cores["workers"])
    assert cores["load_generator"] > 0
    waited = figures["cpu"]["cores_waited_for"]
    assert len(waited["workers"]) == 2 and all(share >= 0 for share in waited["workers"])
    assert figures["cpu"]["postgresql_waits"]["samples"] > 0
