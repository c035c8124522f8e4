"""Several nodes on one PostgreSQL database: the scale-out deployment."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from quicnprotochat.client import KnownHosts, NodeClient, accounts
from quicnprotochat.native import Vault
from quicnprotochat.server.node import Node
from tests.conftest import ClientFactory, User, UserFactory, loopback_config
from tests.test_cli import start_node_process, stop_node_process


async def _login_elsewhere(user: User, node: Node, connect: ClientFactory) -> NodeClient:
    """The same account, logged in through another node (one password file serves every node)."""
    client = await connect(node)
    await accounts.login(client, user.vault, user.name, user.password)
    return client


async def test_message_sent_on_one_node_wakes_a_waiter_on_another(
    two_nodes: tuple[Node, Node], make_user: UserFactory, connect: ClientFactory
) -> None:
    a, b = two_nodes
    alice = await make_user(a, "alice")
    bob = await make_user(a, "bob")
    bob_on_b = await _login_elsewhere(bob, b, connect)
    waiter = asyncio.ensure_future(bob_on_b.fetch_wait(bob.key, timeout_ms=20_000))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    started = time.monotonic()
    await alice.client.enqueue(bob.key, b"across nodes")
    assert [e.data for e in await asyncio.wait_for(waiter, 10)] == [b"across nodes"]
    assert time.monotonic() - started < 5  # woken by the notification, far from the 20 s timeout


async def test_seqs_stay_gap_free_with_enqueuers_on_both_nodes(
    two_nodes: tuple[Node, Node], make_user: UserFactory, connect: ClientFactory
) -> None:
    a, b = two_nodes
    alice = await make_user(a, "alice")
    bob = await make_user(b, "bob")
    alice_on_b = await _login_elsewhere(alice, b, connect)
    senders = [alice.client, alice_on_b]

    async def send(index: int) -> list[int]:
        return [await senders[index % 2].enqueue(bob.key, b"%d-%d" % (index, n)) for n in range(10)]

    seqs = sorted(seq for batch in await asyncio.gather(*(send(i) for i in range(10))) for seq in batch)
    assert seqs == list(range(1, 101))
    assert len(await bob.client.fetch(bob.key)) == 100


async def test_key_package_is_never_handed_out_twice_across_nodes(
    two_nodes: tuple[Node, Node], make_user: UserFactory, connect: ClientFactory
) -> None:
    a, b = two_nodes
    alice = await make_user(a, "alice")
    bob = await make_user(a, "bob")
    alice_on_b = await _login_elsewhere(alice, b, connect)
    packages = [bob.vault.create_key_package() for _ in range(10)]
    for package in packages:
        await bob.client.upload_key_package(bob.key, package)
    takers = [alice.client, alice_on_b]
    taken = await asyncio.gather(*(takers[i % 2].fetch_key_package(bob.key) for i in range(14)))
    assert sorted(p for p in taken if p is not None) == sorted(packages)


async def test_killing_one_node_leaves_the_other_serving(pg_url: str, tmp_path: Path) -> None:
    process, fingerprint, ports, _ = start_node_process(tmp_path / "a", env=dict(os.environ, QPC_SERVER_STORE=pg_url))
    survivor = Node(loopback_config(tmp_path / "b", store=pg_url))
    await survivor.start()
    known = KnownHosts(tmp_path / "known_hosts", notice=lambda _m: None)
    vaults = [Vault.open(str(tmp_path / f"v{i}"), os.urandom(32)) for i in range(2)]
    clients: list[NodeClient] = []
    try:
        for index, vault in enumerate(vaults):
            client = NodeClient(f"127.0.0.1:{ports['quic']}", known_hosts=known, server_fingerprint=fingerprint)
            await accounts.register(client, vault, f"user{index}", "pw")
            await accounts.login(client, vault, f"user{index}", "pw")
            clients.append(client)
        recipient = vaults[1].identity_key
        acknowledged: dict[int, bytes] = {}
        enough = asyncio.Event()

        async def send() -> None:
            n = 0
            while True:
                try:
                    seq = await clients[0].enqueue(recipient, b"m%d" % n)
                except (ConnectionError, OSError):
                    return
                acknowledged[seq] = b"m%d" % n
                n += 1
                if n >= 100:
                    enough.set()

        sender = asyncio.ensure_future(send())
        await asyncio.wait_for(enough.wait(), 60)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        await asyncio.wait_for(sender, 60)

        # The other node serves the same accounts and inboxes.
        assert survivor.quic_address is not None
        reader = NodeClient(f"127.0.0.1:{survivor.quic_address[1]}", known_hosts=known)
        await accounts.login(reader, vaults[1], "user1", "pw")
        stored = {e.seq: e.data for e in await reader.fetch(recipient)}
        await reader.close()
        assert set(acknowledged) <= set(stored)
        assert all(stored[seq] == data for seq, data in acknowledged.items())
    finally:
        for client in clients:
            await client.close()
        if process.poll() is None:
            stop_node_process(process)
        await survivor.stop()
        for vault in vaults:
            vault.close()
