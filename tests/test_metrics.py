"""Prometheus `/metrics` on its own loopback port, read by prometheus_client's own text parser during a load run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from quicnprotochat.common.errors import NotFound
from quicnprotochat.server.config import ConfigError
from quicnprotochat.server.node import Node, parse_announcement
from tests.conftest import UserFactory, loopback_config

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def http_get(address: tuple[str, int], path: str) -> tuple[str, str]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    response = (await asyncio.wait_for(reader.read(), 10)).decode()
    writer.close()
    head, _, body = response.partition("\r\n\r\n")
    return head.split("\r\n", 1)[0], body


async def scrape(node: Node) -> Samples:
    assert node.metrics_address is not None
    status, body = await http_get(node.metrics_address, "/metrics")
    assert status == "HTTP/1.1 200 OK"
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.fixture
async def metrics_node(tmp_path: Path) -> AsyncIterator[Node]:
    node = Node(loopback_config(tmp_path / "node", metrics_listen="127.0.0.1:0"))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def test_metrics_scraped_during_a_load_run(metrics_node: Node, make_user: UserFactory) -> None:
    node = metrics_node
    alice = await make_user(node, "alice")
    bob = await make_user(node, "bob")
    waiter = asyncio.ensure_future(bob.client.peek_wait(bob.key, b"", timeout_ms=20_000))
    with pytest.raises(NotFound):
        await alice.client.enqueue(b"\x01" * 32, b"nobody")

    async def sender(index: int) -> None:
        for n in range(50):
            await alice.client.enqueue(bob.key, b"%d %d" % (index, n))

    load = asyncio.ensure_future(asyncio.gather(*(sender(i) for i in range(4))))
    scrapes = []
    while not load.done():
        scrapes.append(await scrape(node))
        await asyncio.sleep(0.05)
    await load
    final = await scrape(node)
    waiter.cancel()

    def enqueued(samples: Samples) -> float:
        return samples.get(("qpc_rpc_calls_total", (("code", "ok"), ("method", "enqueue"))), 0.0)

    counts = [enqueued(samples) for samples in [*scrapes, final]]
    assert counts == sorted(counts) and counts[-1] == 200
    assert len(scrapes) >= 2 and counts[0] < 200  # scraped while the load ran
    assert final[("qpc_rpc_calls_total", (("code", "not_found"), ("method", "enqueue")))] == 1
    assert final[("qpc_rpc_call_duration_seconds_count", (("method", "enqueue"),))] == 201
    assert final[("qpc_rpc_call_duration_seconds_bucket", (("le", "+Inf"), ("method", "enqueue")))] == 201
    assert final[("qpc_connections", ())] == 2
    assert final[("qpc_connections_by_transport", (("transport", "quic"),))] == 2
    assert final[("qpc_connections_by_transport", (("transport", "tcp"),))] == 0
    assert any(samples[("qpc_parked_waiters", ())] == 1 for samples in scrapes)
    assert final[("qpc_store_commits_total", ())] > 0
    assert final[("qpc_store_batch_size_count", ())] == final[("qpc_store_commits_total", ())]
    assert final[("qpc_store_batch_size_sum", ())] == final[("qpc_store_write_ops_total", ())]
    assert final[("qpc_store_up", ())] == 1 and final[("qpc_store_writer_up", ())] == 1
    assert final[("qpc_store_failed_batches_total", ())] == 0
    assert final[("qpc_free_disk_bytes", ())] > 0
    assert final[("qpc_incoming_bytes_in_progress", ())] == 0  # every message complete and read


async def test_metrics_port_serves_only_metrics(metrics_node: Node) -> None:
    assert metrics_node.metrics_address is not None
    status, _ = await http_get(metrics_node.metrics_address, "/")
    assert status == "HTTP/1.1 404 Not Found"
    line = f"serving Prometheus metrics on http://127.0.0.1:{metrics_node.metrics_address[1]}/metrics"
    assert parse_announcement(line) == ("metrics", str(metrics_node.metrics_address[1]))


def test_metrics_listen_must_be_loopback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        loopback_config(tmp_path, metrics_listen="0.0.0.0:9464")
    assert loopback_config(tmp_path, metrics_listen="127.0.0.1:9464").metrics_listen == "127.0.0.1:9464"
