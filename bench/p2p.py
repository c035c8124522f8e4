"""`qpc-bench p2p`: direct delivery against delivery through the node, between two real chat clients.

Two `ChatClient`s (MLS, hybrid envelopes, encrypted local state, the outbox) share a DM on the node under test;
both run direct delivery (iroh on 127.0.0.1, relays off). The sender runs in the bench's process, the receiver
in its own (`p2p_peer`), as on two devices: each client's MLS, envelope and state work has its own interpreter.
The same messages are then sent both ways round:
- direct: the sender's outbox hands the copies to the peer's iroh endpoint, which answers each once it stored it;
- node: the sender's direct delivery is off, so each copy is enqueued and the peer's receive loop (peekWait,
  process, ack) picks it up.

For each path: latency, one message at a time (from `send` to the peer's `MessageReceived`; 100 samples, or
`--count` if fewer), then throughput three ways, each until the peer stored every message:
- back to back: `--count` messages (default 200), each `send` awaited before the next (a `send` returns once the
  peer or the node stored its copy);
- pipelined: `--count` messages with up to `--concurrency` sends under way at once (default 64), as a bot that
  does not wait for one message before writing the next. Pending copies to one peer go out together: through
  the node one enqueue after the other, directly several in flight on the peer's connection (up to the
  sender's `p2p_max_in_flight`);
- not waiting: `--count` messages, each `send(..., wait=False)` (it returns once the message is stored and the
  outbox sends it in the background).
This is what one conversation gets, not what a node can carry. Receipts are off so that only the messages
travel.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from quicnprotochat.bench.metrics import Latencies
from quicnprotochat.bench.p2p_peer import config as peer_config
from quicnprotochat.bench.scenarios import Context, rate
from quicnprotochat.bench.subprocesses import terminate
from quicnprotochat.client.chat import ChatClient

LATENCY_SAMPLES = 100
DEFAULT_COUNT = 200
WAIT_S = 30.0

Advance = Callable[[], None]


class Peer:
    """The receiving client's process: its messages by body (with the route they took), and a way to wait."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.routes: dict[str, str | None] = {}
        self.joined = asyncio.Event()
        self.ready = asyncio.Event()
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, ctx: Context, name: str) -> Peer:
        connector = ctx.connector
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "quicnprotochat.bench.p2p_peer",
            connector.address,
            connector.transport,
            connector.fingerprint,
            str(connector.known_hosts.path),
            name,
            str(ctx.work_dir / f"p2p-{name}"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
        )
        peer = cls(process)
        try:
            await peer.wait_for(peer.ready)
        except BaseException:
            await peer.stop()
            raise
        return peer

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            line = json.loads(raw)
            if "body" in line:
                self.routes[line["body"]] = line["route"]
            elif "joined" in line:
                self.joined.set()
            elif "ready" in line:
                if not line["ready"]:
                    raise RuntimeError("direct delivery did not start on the receiving client")
                self.ready.set()
            self._changed.set()

    async def wait_for(self, event: asyncio.Event) -> None:
        waiting = asyncio.ensure_future(event.wait())
        done, _ = await asyncio.wait({waiting, self._reader}, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if waiting not in done:
            if self._reader in done:
                self._reader.result()  # the receiver's own failure, when reading its output raised one
            raise RuntimeError(f"the receiving client {'ended' if self._reader in done else 'did not answer'}")

    async def wait(self, body: str) -> None:
        """Until the receiver stored the message `body` (it ended or went silent: RuntimeError)."""
        while body not in self.routes:
            self._changed.clear()
            await self.wait_for(self._changed)

    def route_counts(self, bodies: list[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for text in bodies:
            route = str(self.routes.get(text))
            counts[route] = counts.get(route, 0) + 1
        return counts

    async def stop(self) -> None:
        await terminate(self.process, WAIT_S)
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


async def open_client(ctx: Context, name: str) -> ChatClient:
    connector = ctx.connector
    return await ChatClient.open(
        peer_config(
            connector.address,
            connector.transport,
            connector.fingerprint,
            connector.known_hosts,
            name,
            ctx.work_dir / f"p2p-{name}",
        )
    )


def body(path: str, kind: str, index: int, size: int) -> str:
    head = f"{path} {kind} {index} "
    return head + "x" * max(0, size - len(head))


async def measure(ctx: Context, sender: ChatClient, peer: str, arrivals: Peer, path: str) -> dict[str, Any]:
    spec = ctx.spec
    count = spec.count or DEFAULT_COUNT
    samples = min(LATENCY_SAMPLES, count)
    latency = Latencies()
    latency_bodies: list[str] = []
    with ctx.live.counter(f"{path}: latency, one message at a time", samples) as advance:
        for index in range(samples):
            text = body(path, "latency", index, spec.payload_size)
            started = time.perf_counter_ns()
            await sender.send(peer, text)
            await arrivals.wait(text)
            latency.add_ns(time.perf_counter_ns() - started)
            latency_bodies.append(text)
            advance()

    async def in_turn(bodies: list[str], advance: Advance, *, wait: bool = True) -> None:
        for text in bodies:
            await sender.send(peer, text, wait=wait)
            advance()

    window = min(spec.concurrency, count)

    async def windowed(bodies: list[str], advance: Advance) -> None:
        room = asyncio.Semaphore(window)

        async def send(text: str) -> None:
            async with room:
                await sender.send(peer, text)
                advance()

        await asyncio.gather(*(send(text) for text in bodies))

    def not_waiting(bodies: list[str], advance: Advance) -> Awaitable[None]:
        return in_turn(bodies, advance, wait=False)

    per_s, _ = await _throughput(ctx, arrivals, path, "burst", "back to back", in_turn)
    pipelined_per_s, pipelined = await _throughput(ctx, arrivals, path, "window", f"{window} sends at a time", windowed)
    queued_per_s, queued = await _throughput(ctx, arrivals, path, "queued", "not waiting", not_waiting)
    return {
        "latency_ms": latency.summary(),
        "messages_per_s": per_s,
        "messages": count,
        "routes_seen_by_receiver": arrivals.route_counts(latency_bodies),
        "pipelined_messages_per_s": pipelined_per_s,
        "sends_at_a_time": window,
        "pipelined_routes_seen_by_receiver": arrivals.route_counts(pipelined),
        "not_waiting_messages_per_s": queued_per_s,
        "not_waiting_routes_seen_by_receiver": arrivals.route_counts(queued),
    }


async def _throughput(
    ctx: Context,
    arrivals: Peer,
    path: str,
    kind: str,
    how: str,
    send_all: Callable[[list[str], Advance], Awaitable[None]],
) -> tuple[float, list[str]]:
    """`--count` messages sent by `send_all`, timed until the receiver stored every one: messages per second, and
    the messages' bodies."""
    count = ctx.spec.count or DEFAULT_COUNT
    with ctx.live.counter(f"{path}: {count} messages, {how}", count) as advance:
        started = time.perf_counter_ns()
        bodies = [body(path, kind, index, ctx.spec.payload_size) for index in range(count)]
        await send_all(bodies, advance)
        for text in bodies:
            await arrivals.wait(text)
        seconds = (time.perf_counter_ns() - started) / 1e9
    return rate(count, seconds), bodies


async def run_p2p(ctx: Context) -> dict[str, Any]:
    suffix = os.urandom(3).hex()
    alice = await open_client(ctx, f"p2pa{suffix}")
    bob: Peer | None = None
    try:
        bob_name = f"p2pb{suffix}"
        bob = await Peer.start(ctx, bob_name)
        await alice.start()
        if not alice.p2p:
            raise RuntimeError("direct delivery did not start on the sending client")
        await alice.dm(bob_name)
        await bob.wait_for(bob.joined)
        results: dict[str, Any] = {}
        for path in ("direct", "node"):
            await alice.set_p2p(path == "direct")
            results[path] = await measure(ctx, alice, bob_name, bob, path)
    finally:
        await asyncio.gather(alice.close(), *([bob.stop()] if bob is not None else []), return_exceptions=True)
    direct, node = results["direct"], results["node"]
    return {
        "p2p": results,
        "direct_vs_node": {
            "p50_latency_ratio": _ratio(direct["latency_ms"].get("p50"), node["latency_ms"].get("p50")),
            "throughput_ratio": _ratio(direct["messages_per_s"], node["messages_per_s"]),
            "pipelined_throughput_ratio": _ratio(direct["pipelined_messages_per_s"], node["pipelined_messages_per_s"]),
            "not_waiting_throughput_ratio": _ratio(
                direct["not_waiting_messages_per_s"], node["not_waiting_messages_per_s"]
            ),
        },
        "payload_bytes": ctx.spec.payload_size,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None
