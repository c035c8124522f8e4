"""`health` and nodeStatus report the store and the disk as they are; the node's side never imports the client."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

from quicnprotochat.server.node import Node
from tests.conftest import UserFactory

ROOT = Path(__file__).resolve().parent.parent


async def test_status_reports_the_store_and_the_counters(node: Node, make_user: UserFactory) -> None:
    alice = await make_user(node, "alice")
    bob = await make_user(node, "bob")
    assert await alice.client.health() == "ok"
    status = await alice.client.node_status()
    assert status.healthy and status.status == "ok"
    assert status.store_reachable and status.store_writer_alive
    assert status.free_disk_bytes > status.min_free_disk_bytes == node.config.min_free_disk_bytes
    assert status.connections == 2
    assert status.parked_waiters == 0 and status.write_queue_depth == 0

    waiter = asyncio.ensure_future(bob.client.peek_wait(bob.key, timeout_ms=10_000))
    for _ in range(200):
        if (await alice.client.node_status()).parked_waiters == 1:
            break
        await asyncio.sleep(0.01)
    assert (await alice.client.node_status()).parked_waiters == 1
    await alice.client.enqueue(bob.key, b"wake up")
    assert [e.data for e in await asyncio.wait_for(waiter, 10)] == [b"wake up"]
    assert (await alice.client.node_status()).parked_waiters == 0


def test_the_node_does_not_import_the_client() -> None:
    for path in sorted((ROOT / "server").rglob("*.py")):
        for statement in ast.walk(ast.parse(path.read_text())):
            if isinstance(statement, ast.ImportFrom):
                names = [statement.module or ""]
            elif isinstance(statement, ast.Import):
                names = [alias.name for alias in statement.names]
            else:
                continue
            assert not any(name.startswith("quicnprotochat.client") for name in names), path


def test_container_healthcheck_is_the_health_probe() -> None:
    lines = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("HEALTHCHECK")]
    assert len(lines) == 1 and '"qpc-server", "health"' in lines[0]
