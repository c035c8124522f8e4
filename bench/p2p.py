"""`qpc-bench p2p`: direct delivery against delivery through the node, between two real chat clients.

Two `ChatClient`s (MLS, hybrid envelopes, encrypted local state, the outbox) share a DM on the node under test;
both run direct delivery (iroh on 127.0.0.1, relays off). The same messages are then sent both ways round:
- direct: the sender's outbox hands each copy to the peer's iroh endpoint, which answers once it stored it;
- node: the sender's direct delivery is off, so each copy is enqueued and the peer's receive loop (peekWait,
  process, ack) picks it up.

For each path: latency, one message at a time (from `send` to the peer's `MessageReceived`; 100 samples, or
`--count` if fewer), then throughput:
`--count` messages (default 200) sent back to back, until the peer stored the last one. A client's outbox sends
one copy at a time, so this is what one conversation gets, not what a node can carry. Receipts are off so that
only the messages travel.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from quicnprotochat.bench.metrics import Latencies
from quicnprotochat.bench.scenarios import Context, rate
from quicnprotochat.client.chat import ChatClient, ChatConfig, Event, JoinedConversation, MessageReceived

LATENCY_SAMPLES = 100
DEFAULT_COUNT = 200
WAIT_S = 30.0


class Arrivals:
    """The peer's received messages by body, with a way to wait for one."""

    def __init__(self) -> None:
        self.routes: dict[str, str | None] = {}
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self.joined = asyncio.Event()

    def on_event(self, event: Event) -> None:
        if isinstance(event, JoinedConversation):
            self.joined.set()
        if isinstance(event, MessageReceived):
            self.routes[event.message.body] = event.message.route
            waiter = self._waiting.pop(event.message.body, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def wait(self, body: str) -> None:
        if body in self.routes:
            return
        waiter = self._waiting.setdefault(body, asyncio.get_running_loop().create_future())
        await asyncio.wait_for(waiter, WAIT_S)


async def open_client(ctx: Context, name: str) -> ChatClient:
    connector = ctx.connector
    config = ChatConfig(
        server=connector.address,
        username=name,
        state_dir=ctx.work_dir / f"p2p-{name}",
        password=f"bench password of {name}",
        state_password="bench state",
        transport=connector.transport,
        server_fingerprint=connector.fingerprint,
        known_hosts=connector.known_hosts,
        register=True,
        receipts=False,
        p2p=True,
        p2p_bind=("127.0.0.1:0",),
        # Generous: a direct copy that times out on a loaded machine would be counted as a node delivery.
        p2p_timeout=10.0,
    )
    return await ChatClient.open(config)


def body(path: str, kind: str, index: int, size: int) -> str:
    head = f"{path} {kind} {index} "
    return head + "x" * max(0, size - len(head))


async def measure(ctx: Context, sender: ChatClient, peer: str, arrivals: Arrivals, path: str) -> dict[str, Any]:
    spec = ctx.spec
    count = spec.count or DEFAULT_COUNT
    samples = min(LATENCY_SAMPLES, count)
    latency = Latencies()
    routes: dict[str, int] = {}
    with ctx.live.counter(f"{path}: latency, one message at a time", samples) as advance:
        for index in range(samples):
            text = body(path, "latency", index, spec.payload_size)
            started = time.perf_counter_ns()
            await sender.send(peer, text)
            await arrivals.wait(text)
            latency.add_ns(time.perf_counter_ns() - started)
            route = str(arrivals.routes.get(text))
            routes[route] = routes.get(route, 0) + 1
            advance()
    with ctx.live.counter(f"{path}: {count} messages back to back", count) as advance:
        started = time.perf_counter_ns()
        last = ""
        for index in range(count):
            last = body(path, "burst", index, spec.payload_size)
            await sender.send(peer, last)
            advance()
        await arrivals.wait(last)
        seconds = (time.perf_counter_ns() - started) / 1e9
    return {
        "latency_ms": latency.summary(),
        "messages_per_s": rate(count, seconds),
        "messages": count,
        "routes_seen_by_receiver": routes,
    }


async def run_p2p(ctx: Context) -> dict[str, Any]:
    suffix = os.urandom(3).hex()
    alice = await open_client(ctx, f"p2pa{suffix}")
    bob = await open_client(ctx, f"p2pb{suffix}")
    arrivals = Arrivals()
    try:
        bob.add_listener(arrivals.on_event)
        await alice.start()
        await bob.start()
        if not (alice.p2p and bob.p2p):
            raise RuntimeError("direct delivery did not start on both clients")
        await alice.dm(bob.username)
        await asyncio.wait_for(arrivals.joined.wait(), WAIT_S)
        results: dict[str, Any] = {}
        for path in ("direct", "node"):
            await alice.set_p2p(path == "direct")
            results[path] = await measure(ctx, alice, bob.username, arrivals, path)
    finally:
        await asyncio.gather(alice.close(), bob.close(), return_exceptions=True)
    direct, node = results["direct"], results["node"]
    return {
        "p2p": results,
        "direct_vs_node": {
            "p50_latency_ratio": _ratio(direct["latency_ms"].get("p50"), node["latency_ms"].get("p50")),
            "throughput_ratio": _ratio(direct["messages_per_s"], node["messages_per_s"]),
        },
        "payload_bytes": ctx.spec.payload_size,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None
