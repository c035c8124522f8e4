"""Over QUIC, an answer carries the ACK of its call, and the next call carries the ACK of that answer: a call
answered within the ACK delay costs one datagram each way, not two (common/quic_acks.py). Counted by a UDP relay
between a real client and a real node."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from quicnprotochat.client import KnownHosts, NodeClient, accounts
from quicnprotochat.common.quic_acks import ACK_DELAY_S
from quicnprotochat.server.node import Node
from tests.conftest import UserFactory

CALLS = 20
ANSWER_AFTER_MS = 8
"""The node answers each call this long after it arrived: later than aioquic's own 1 ms ACK timer, well within
the ACK delay."""


class CountingRelay(asyncio.DatagramProtocol):
    """Forwards one client's datagrams to the node and the node's back, counting both ways."""

    def __init__(self, node: tuple[str, int]) -> None:
        self.node = node
        self.client: Any = None
        self.to_node = 0
        self.to_client = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        if addr == self.node:
            self.to_client += 1
            self.transport.sendto(data, self.client)
        else:
            self.client = addr
            self.to_node += 1
            self.transport.sendto(data, self.node)


async def test_a_call_and_its_answer_carry_each_others_acks(
    node: Node, make_user: UserFactory, known_hosts: KnownHosts
) -> None:
    assert ANSWER_AFTER_MS / 1000 < ACK_DELAY_S
    alice = await make_user(node, "alice", login=False)
    assert node.quic_address is not None
    node_port = node.quic_address[1]
    loop = asyncio.get_running_loop()
    transport, relay = await loop.create_datagram_endpoint(
        lambda: CountingRelay(("127.0.0.1", node_port)), local_addr=("127.0.0.1", 0)
    )
    client = NodeClient(f"127.0.0.1:{transport.get_extra_info('sockname')[1]}", known_hosts=known_hosts)
    try:
        await client.connect()
        await accounts.login(client, alice.vault, alice.name, alice.password)
        assert await client.fetch_wait(alice.key, timeout_ms=ANSWER_AFTER_MS) == []
        await asyncio.sleep(2 * ACK_DELAY_S)  # whatever the login left to acknowledge is sent

        before_to_node, before_to_client = relay.to_node, relay.to_client
        for _ in range(CALLS):
            # An empty inbox: the node answers when the wait ends.
            assert await client.fetch_wait(alice.key, timeout_ms=ANSWER_AFTER_MS) == []
        to_node = relay.to_node - before_to_node
        to_client = relay.to_client - before_to_client
        # With aioquic's own timing each side also sends an ACK-only datagram per call: 2 * CALLS each way.
        assert to_client <= CALLS + CALLS // 4, (to_node, to_client)
        assert to_node <= CALLS + CALLS // 4, (to_node, to_client)
    finally:
        await client.close()
        transport.close()
