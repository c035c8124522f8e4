"""A node killed with SIGKILL while clients enqueue loses no message whose seq it returned."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from quicnprotochat.client import KnownHosts, NodeClient, accounts
from quicnprotochat.native import Vault
from tests.test_cli import start_node_process, stop_node_process

SENDERS = 10


async def test_sigkill_loses_no_acknowledged_message(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    process, fingerprint, ports, _ = start_node_process(data_dir)
    known = KnownHosts(tmp_path / "known_hosts", notice=lambda _m: None)
    address = f"127.0.0.1:{ports['quic']}"
    vaults = [Vault.open(str(tmp_path / f"v{i}.sqlite"), os.urandom(32)) for i in range(SENDERS + 1)]
    clients: list[NodeClient] = []
    try:
        for index, vault in enumerate(vaults):
            client = NodeClient(address, known_hosts=known, server_fingerprint=fingerprint)
            await accounts.register(client, vault, f"user{index}", "pw")
            await accounts.login(client, vault, f"user{index}", "pw")
            clients.append(client)
        recipient = vaults[0].identity_key
        acknowledged: dict[int, bytes] = {}
        enough = asyncio.Event()

        async def send(index: int) -> None:
            n = 0
            while True:
                payload = f"sender {index} message {n}".encode()
                try:
                    seq = await clients[index].enqueue(recipient, payload)
                except (ConnectionError, OSError):
                    return  # the node is gone; this message may or may not have landed
                acknowledged[seq] = payload
                if len(acknowledged) >= 300:
                    enough.set()
                n += 1

        senders = [asyncio.ensure_future(send(i)) for i in range(1, SENDERS + 1)]
        await asyncio.wait_for(enough.wait(), 60)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        await asyncio.wait_for(asyncio.gather(*senders), 60)
    finally:
        for client in clients:
            await client.close()
        if process.poll() is None:
            process.kill()

    process, fingerprint_again, ports, _ = start_node_process(data_dir)
    try:
        assert fingerprint_again == fingerprint
        reader = NodeClient(f"127.0.0.1:{ports['quic']}", known_hosts=KnownHosts(tmp_path / "kh2", notice=print))
        await accounts.login(reader, vaults[0], "user0", "pw")
        stored: dict[int, bytes] = {}
        while batch := await reader.fetch(vaults[0].identity_key):
            stored.update((envelope.seq, envelope.data) for envelope in batch)
        await reader.close()
    finally:
        stop_node_process(process)
        for vault in vaults:
            vault.close()
    missing = sorted(set(acknowledged) - set(stored))
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. seqs {missing[:5]}"
    assert all(stored[seq] == payload for seq, payload in acknowledged.items())
    # Seqs stay gap-free: whatever landed got the next number.
    assert sorted(stored) == list(range(1, len(stored) + 1))
