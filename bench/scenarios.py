"""The load scenarios. Each drives the node under test through NodeClient (the client library bots use) and
returns its figures; every enqueued message is tracked until it is received exactly once.

With several nodes on one database, the sending side (producers, senders, actors) connects to node 1 and the
receiving side (consumers, recipients, waiters, readers) to node 2, or nodes 2..N in turn: every delivery crosses
nodes (the enqueue commits through node 1, the waiter on another node is woken by LISTEN/NOTIFY). `idle` uses
node 1 only."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import random
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quicnprotochat.bench import hostile
from quicnprotochat.bench.bots import Bot, Connector
from quicnprotochat.bench.budget import Budget, split
from quicnprotochat.bench.live import Live
from quicnprotochat.bench.load_generator_gc import QuietCollector
from quicnprotochat.bench.metrics import (
    MIN_PAYLOAD_BYTES,
    DeliveryTracker,
    ErrorCounts,
    Latencies,
    ProcessWatch,
    machine_cpu,
    now_ns,
    stamp_payload,
)
from quicnprotochat.bench.node_runner import NodeUnderTest
from quicnprotochat.client import NodeClient
from quicnprotochat.client.accounts import login_token, register

SCENARIOS = ("enqueue", "fanout", "longpoll", "idle", "mixed", "groups", "hostile", "p2p", "keylogin")
CONSUMERS = ("peekack", "fetchwait")


@dataclass(frozen=True)
class Spec:
    scenario: str = "enqueue"
    duration: float | None = 10.0
    count: int | None = None
    payload_size: int = 256
    concurrency: int = 64
    producers: int | None = None  # enqueue: 4; fanout: 1; mixed: 16 (bots that act)
    recipients: int = 100  # fanout
    clients: int = 1000  # longpoll: parked waiters
    connections: int = 1000  # idle
    # peekWait + ack by default: what a bot that must not lose messages does; fetchWait is at most once.
    consumer: str = "peekack"
    wait_ms: int = 25_000
    drain_timeout: float = 10.0
    settle_s: float = 1.0
    groups: int = 4  # groups: MLS groups
    members: int = 4  # groups: members per group
    commit_share: float = 0.2  # groups: the share of a member's actions that are commits (the rest: messages)
    think_ms: float = 10.0  # groups: a member's mean pause between actions

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}")
        if self.consumer not in CONSUMERS:
            raise ValueError(f"consumer must be one of {', '.join(CONSUMERS)}")
        if self.payload_size < MIN_PAYLOAD_BYTES:
            raise ValueError(f"payload size must be at least {MIN_PAYLOAD_BYTES} bytes (the bench's stamp)")
        if self.duration is None and self.count is None:
            raise ValueError("give a duration or a count")
        for name in ("concurrency", "recipients", "clients", "connections", "groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.members < 2:
            raise ValueError("members must be at least 2")
        if not 0 <= self.commit_share <= 1 or self.think_ms < 0:
            raise ValueError("commit share must be between 0 and 1, think time not negative")

    @property
    def producer_count(self) -> int:
        if self.producers is not None:
            return max(1, self.producers)
        return {"enqueue": 4, "fanout": 1, "mixed": 16}.get(self.scenario, 1)

    def bots_needed(self) -> int:
        if self.scenario == "enqueue":
            return self.producer_count
        if self.scenario == "fanout":
            return max(self.producer_count, self.recipients)
        if self.scenario == "longpoll":
            return longpoll_accounts(self.clients)
        if self.scenario == "mixed":
            return max(2, self.producer_count)
        if self.scenario == "groups":
            return self.groups * self.members
        if self.scenario == "hostile":
            return 3  # the normal client, its recipient, the attacker
        return 0


def longpoll_accounts(waiters: int) -> int:
    """Accounts whose inboxes give `waiters` distinct inboxes: each has its default inbox and one inbox in the
    channel it shares with every other account, so a accounts have a * a inboxes."""
    return max(2, math.isqrt(waiters - 1) + 1)


@dataclass
class Context:
    spec: Spec
    nodes: list[NodeUnderTest]
    connectors: list[Connector]  # one per node, in the same order
    bots: list[Bot]
    extras: dict[str, Any]
    live: Live
    work_dir: Path
    tracker: DeliveryTracker = field(default_factory=DeliveryTracker)
    errors: ErrorCounts = field(default_factory=ErrorCounts)
    save_extras: Callable[[], None] = lambda: None
    database_pid: int | None = None  # a throwaway PostgreSQL's postmaster: its CPU is measured with the nodes'
    roles: dict[str, set[int]] = field(default_factory=dict)  # which nodes each role connected to

    @property
    def node(self) -> NodeUnderTest:
        """Node 1: where setup (registration, KeyPackages) and the sending side go."""
        return self.nodes[0]

    @property
    def connector(self) -> Connector:
        return self.connectors[0]

    def sending(self, role: str) -> Connector:
        """Node 1, for the side that enqueues."""
        self.roles.setdefault(role, set()).add(0)
        return self.connectors[0]

    def receiving(self, role: str, index: int) -> Connector:
        """For the side that receives: node 2 onwards in turn (node 1 when it is alone)."""
        slot = 0 if len(self.connectors) == 1 else 1 + index % (len(self.connectors) - 1)
        self.roles.setdefault(role, set()).add(slot)
        return self.connectors[slot]

    def roles_report(self) -> dict[str, list[str]]:
        return {role: [self.nodes[slot].name for slot in sorted(slots)] for role, slots in self.roles.items()}

    def payload(self, message_id: int) -> bytes:
        return stamp_payload(self.tracker.run_id, message_id, self.spec.payload_size)


# -- pieces shared by the scenarios ----------------------------------------------------------------------------


async def open_many(
    factories: Sequence[Callable[[], Awaitable[NodeClient]]],
    parallel: int = 64,
    on_open: Callable[[], None] = lambda: None,
) -> list[NodeClient]:
    gate = asyncio.Semaphore(parallel)

    async def one(factory: Callable[[], Awaitable[NodeClient]]) -> NodeClient:
        async with gate:
            client = await factory()
            on_open()
            return client

    results = await asyncio.gather(*(one(factory) for factory in factories), return_exceptions=True)
    clients = [result for result in results if isinstance(result, NodeClient)]
    failures = [result for result in results if isinstance(result, BaseException)]
    if failures:
        await close_all(clients)
        raise failures[0]
    return clients


async def close_all(clients: Sequence[NodeClient]) -> None:
    await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)


class Consumer:
    """Receives one inbox for the whole run: fetchWait, or peekWait and ack (what `inbox_stream` does)."""

    def __init__(
        self,
        ctx: Context,
        bot: Bot,
        inbox: int,
        channel: bytes = b"",
        mode: str | None = None,
        on_message: Callable[[int, int], None] | None = None,
        role: str = "consumers",
    ) -> None:
        self.ctx = ctx
        self.role = role
        self.bot = bot
        self.inbox = inbox
        self.channel = channel
        self.mode = mode or ctx.spec.consumer
        self.on_message = on_message
        self.calls = 0
        self.client: NodeClient | None = None
        self.task: asyncio.Task[None] | None = None

    async def open(self) -> NodeClient:
        self.client = await self.ctx.receiving(self.role, self.inbox).open(self.bot)
        return self.client

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        client, key, channel, wait = self.client, self.bot.key, self.channel, self.ctx.spec.wait_ms
        assert client is not None
        tracker = self.ctx.tracker
        acked = 0
        while True:
            self.calls += 1
            try:
                if self.mode == "fetchwait":
                    envelopes = await client.fetch_wait(key, channel, timeout_ms=wait)
                else:
                    envelopes = [e for e in await client.peek_wait(key, channel, timeout_ms=wait) if e.seq > acked]
                at = now_ns()
                for envelope in envelopes:
                    message_id = tracker.received(envelope.data, self.inbox, at)
                    if message_id is not None and self.on_message is not None:
                        self.on_message(message_id, at)
                if self.mode == "peekack" and envelopes:
                    await client.ack(key, envelopes[-1].seq, channel)
                    acked = envelopes[-1].seq
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.ctx.errors.add(error)
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.client is not None:
            await self.client.close()


async def start_consumers(ctx: Context, consumers: Sequence[Consumer], what: str) -> None:
    with ctx.live.counter(f"connecting {what}", len(consumers)) as advance:
        await open_many([consumer.open for consumer in consumers], on_open=advance)
    for consumer in consumers:
        consumer.start()
    # Let the first long-polls reach the node and park before anything is sent.
    deadline = time.monotonic() + 10
    while any(consumer.calls == 0 for consumer in consumers) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)  # polls counters the consumers keep; nothing to wait on
    await asyncio.sleep(min(ctx.spec.settle_s, 0.2 + len(consumers) / 2000))


async def stop_all(consumers: Sequence[Consumer]) -> None:
    await asyncio.gather(*(consumer.stop() for consumer in consumers), return_exceptions=True)


async def drain(ctx: Context) -> float:
    """Waits until every acknowledged delivery was received (or the drain timeout); returns seconds waited."""
    started = time.monotonic()
    with ctx.live.status("draining: waiting for acknowledged messages to arrive"):
        while ctx.tracker.pending and time.monotonic() - started < ctx.spec.drain_timeout:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # polls the tracker's counter
    return time.monotonic() - started


def watch(pid: int | None) -> ProcessWatch | None:
    return ProcessWatch(pid) if pid is not None else None


async def sample_while(
    watches: Sequence[ProcessWatch | None],
    stop: asyncio.Event,
    every: float = 0.5,
    *,
    tick: Callable[[], None] | None = None,
) -> None:
    while not stop.is_set():
        if tick is not None:
            tick()
        for process in watches:
            if process is not None:
                with contextlib.suppress(OSError):
                    process.sample()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


PROFILE_FORMATS = {".json": "speedscope", ".txt": "raw", ".svg": "flamegraph"}


def store_metrics(nodes: Sequence[NodeUnderTest]) -> tuple[int, int] | None:
    """(write ops, commits) of the nodes' stores, summed; only known when the nodes run in this process."""
    found = [metrics for metrics in (node.store_metrics() for node in nodes) if metrics is not None]
    if not found:
        return None
    return sum(m.write_ops for m in found), sum(m.commits for m in found)


class Measured:
    """Node(s), database and client CPU/RSS over the measured window, sampled in the background; optionally node
    1's profile over the same window (py-spy, if installed: `pip install py-spy`)."""

    profile_path: Path | None = None  # set by the CLI (--profile-node)

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.nodes = ctx.nodes
        # One watch per process: nodes in this process share one.
        self._watches: dict[int, ProcessWatch] = {}
        for node in self.nodes:
            if node.pid is not None and node.pid not in self._watches:
                self._watches[node.pid] = ProcessWatch(node.pid)
        self.node_watch = self._watches.get(self.nodes[0].pid) if self.nodes[0].pid is not None else None
        self.client_watch = watch(os.getpid()) if os.getpid() not in self._watches else None
        self.database_watch = ProcessWatch(ctx.database_pid, tree=True) if ctx.database_pid is not None else None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._profiler: asyncio.subprocess.Process | None = None
        self._machine = (0.0, 0.0)
        self.mode = self.nodes[0].mode
        self.pid = self.nodes[0].pid
        self._store_before: tuple[int, int] | None = None
        self._quiet: QuietCollector | None = None

    def _all_watches(self) -> list[ProcessWatch]:
        return [
            *self._watches.values(),
            *(w for w in (self.client_watch, self.database_watch) if w is not None),
        ]

    def start(self) -> None:
        for process in self._all_watches():
            process.start()
        self._machine = machine_cpu()
        self._store_before = store_metrics(self.nodes)
        # Not where a node shares this process (there is no client watch then): the node is what is measured.
        self._quiet = QuietCollector() if self.client_watch is not None else None
        if self._quiet is not None:
            self._quiet.start()
        tick = self._quiet.check if self._quiet is not None else None
        self._task = asyncio.get_running_loop().create_task(sample_while(self._all_watches(), self._stop, tick=tick))

    async def start_profiler(self) -> None:
        path = Measured.profile_path
        if path is None or self.pid is None:
            return
        self._profiler = await asyncio.create_subprocess_exec(
            "py-spy",
            "record",
            "--pid",
            str(self.pid),
            "--rate",
            "250",
            "--nonblocking",
            "--format",
            PROFILE_FORMATS.get(path.suffix, "flamegraph"),
            "--output",
            str(path),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.sleep(0.5)  # py-spy attaches

    async def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._task is not None:
            await self._task
        if self._quiet is not None:
            self._quiet.stop()
        if self._profiler is not None:
            self._profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            await self._profiler.wait()
        figures: dict[str, Any] = {}
        ours = 0.0
        by_pid = {pid: process.stop() for pid, process in self._watches.items()}
        for process in by_pid.values():
            ours += process["cpu_user_s"] + process["cpu_sys_s"]
        if len(self.nodes) == 1:
            if self.nodes[0].pid is not None:
                figures["node"] = by_pid[self.nodes[0].pid]
                if self.mode == "in-process":
                    figures["node"]["note"] = "in-process: node and load generator share this process"
        else:
            roles = self.ctx.roles_report()
            figures["nodes"] = {}
            seen: dict[int, str] = {}
            for node in self.nodes:
                node_figures: dict[str, Any] = {}
                if node.pid is not None and node.pid not in seen:
                    node_figures.update(by_pid[node.pid])
                node_figures["address"] = f"{node.host}:{node.quic_port or node.tcp_port}"
                node_figures["roles"] = [role for role, names in roles.items() if node.name in names]
                if node.mode == "in-process":
                    node_figures["note"] = (
                        f"in-process: counted with {seen[node.pid]}"
                        if node.pid in seen
                        else "in-process: the nodes and the load generator share this process"
                    )
                elif node.pid is None:
                    node_figures["note"] = "not measured (a target without --node-pid)"
                figures["nodes"][node.name] = node_figures
                if node.pid is not None:
                    seen.setdefault(node.pid, node.name)
        if self.client_watch is not None:
            figures["client"] = self.client_watch.stop()
            ours += figures["client"]["cpu_user_s"] + figures["client"]["cpu_sys_s"]
        if self._quiet is not None:
            figures["load_generator_gc"] = self._quiet.figures()
        if self.database_watch is not None:
            with contextlib.suppress(ProcessLookupError):
                figures["database"] = self.database_watch.stop()
                figures["database"]["what"] = "the throwaway PostgreSQL: postmaster and backends"
                ours += figures["database"]["cpu_user_s"] + figures["database"]["cpu_sys_s"]
        store_after = store_metrics(self.nodes)
        if self._store_before is not None and store_after is not None:
            writes = store_after[0] - self._store_before[0]
            commits = store_after[1] - self._store_before[1]
            figures["store"] = {
                "write_ops": writes,
                "commits": commits,
                "writes_per_commit": round(writes / commits, 2) if commits else 0.0,
            }
        busy, total = (after - before for after, before in zip(machine_cpu(), self._machine, strict=True))
        cores = os.cpu_count() or 1
        figures["machine"] = {
            "busy_percent_of_all_cores": round(100 * busy / total, 1) if total else 0.0,
            # What other processes (builds, tests) took meanwhile: the noise in these figures.
            "others_cores": round(max(0.0, busy - ours) / (total / cores), 2) if total else 0.0,
        }
        return figures


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def delivery_figures(ctx: Context, produce_started_ns: int) -> dict[str, Any]:
    tracker = ctx.tracker
    span = (tracker.last_receipt_ns - produce_started_ns) / 1e9 if tracker.last_receipt_ns else 0.0
    return {
        "deliveries": tracker.delivered,
        "deliveries_per_s": rate(tracker.delivered, span),
        "delivery_latency_ms": tracker.latency.summary(),
        "delivery_check": tracker.report(),
    }


# -- enqueue: many producers, one inbox each -------------------------------------------------------------------


async def run_enqueue(ctx: Context) -> dict[str, Any]:
    spec = ctx.spec
    count = spec.producer_count
    bots = ctx.bots[:count]
    consumers = [Consumer(ctx, bot, index) for index, bot in enumerate(bots)]
    producers: list[NodeClient] = []
    try:
        await start_consumers(ctx, consumers, "consumers")
        connector = ctx.sending("producers")
        with ctx.live.counter("connecting producers", count) as advance:
            producers = await open_many([functools.partial(connector.open, bot) for bot in bots], on_open=advance)
        figures = await produce(
            ctx,
            producers,
            # Producer i writes to the inbox of bot i+1 (its own when alone); consumer i reads inbox i.
            targets=[[(index + 1) % count] for index in range(count)],
            batch=False,
        )
    finally:
        await stop_all(consumers)
        await close_all(producers)
    return figures


async def produce(
    ctx: Context, producers: Sequence[NodeClient], targets: Sequence[list[int]], *, batch: bool
) -> dict[str, Any]:
    """Runs --concurrency calls in flight spread over the producers until the budget is spent, then drains."""
    spec, tracker, errors = ctx.spec, ctx.tracker, ctx.errors
    keys = [bot.key for bot in ctx.bots]
    rtt = Latencies()
    budget = Budget(spec.duration, spec.count)
    calls_done = 0

    async def loop(client: NodeClient, inboxes: list[int]) -> None:
        nonlocal calls_done
        recipient_keys = [keys[inbox] for inbox in inboxes]
        while budget.take():
            message_id = tracker.new_message()
            payload = ctx.payload(message_id)
            tracker.issued(len(inboxes))
            started = now_ns()
            try:
                if batch:
                    await client.batch_enqueue(recipient_keys, payload)
                else:
                    await client.enqueue(recipient_keys[0], payload)
            except Exception as error:
                errors.add(error)
                tracker.failed(message_id, inboxes)
                continue
            rtt.add_ns(now_ns() - started)
            tracker.acked(message_id, inboxes)
            calls_done += 1

    measured = Measured(ctx)
    tasks_per_producer = split(spec.concurrency, len(producers))

    def status() -> tuple[float, str]:
        return budget.fraction(), (
            f"{calls_done} calls, {tracker.delivered} delivered, {tracker.pending} pending, {errors.total()} errors"
        )

    await measured.start_profiler()
    measured.start()
    started_ns = now_ns()
    budget.start()
    async with ctx.live.running(f"{spec.scenario}: {spec.concurrency} in flight", status):
        await asyncio.gather(
            *(
                loop(client, targets[index])
                for index, client in enumerate(producers)
                for _ in range(tasks_per_producer[index])
            )
        )
        produce_seconds = budget.elapsed()
    drained = await drain(ctx)
    resources = await measured.stop()
    figures: dict[str, Any] = {
        "calls": calls_done,
        "calls_per_s": rate(calls_done, produce_seconds),
        "enqueues": tracker.acknowledged,
        "enqueues_per_s": rate(tracker.acknowledged, produce_seconds),
        "produce_seconds": round(produce_seconds, 3),
        "drain_seconds": round(drained, 3),
        "call_latency_ms": rtt.summary(),
        **delivery_figures(ctx, started_ns),
        **resources,
    }
    return figures


# -- fanout: batchEnqueue to many recipients -------------------------------------------------------------------


async def run_fanout(ctx: Context) -> dict[str, Any]:
    spec = ctx.spec
    recipients = ctx.bots[: spec.recipients]
    senders = ctx.bots[: spec.producer_count]
    consumers = [Consumer(ctx, bot, index, role="recipients") for index, bot in enumerate(recipients)]
    producers: list[NodeClient] = []
    try:
        await start_consumers(ctx, consumers, "recipients")
        connector = ctx.sending("producers")
        producers = await open_many([functools.partial(connector.open, bot) for bot in senders])
        everyone = list(range(len(recipients)))
        figures = await produce(ctx, producers, targets=[everyone for _ in producers], batch=True)
    finally:
        await stop_all(consumers)
        await close_all(producers)
    figures["recipients_per_batch"] = len(recipients)
    figures["batches_per_s"] = figures.pop("calls_per_s")
    figures["batches"] = figures.pop("calls")
    return figures


# -- longpoll: many parked fetchWaits, one message to each in turn ---------------------------------------------


@dataclass(frozen=True)
class Inbox:
    owner: int
    channel: bytes
    sender: int


async def longpoll_inboxes(ctx: Context, senders: Sequence[NodeClient], wanted: int) -> list[Inbox]:
    """Default inboxes first, then both inboxes of each pair's channel, until there are `wanted`."""
    count = len(senders)
    inboxes = [Inbox(index, b"", (index + 1) % count) for index in range(min(count, wanted))]
    pairs = [(a, b) for a in range(count) for b in range(a + 1, count)]
    needed = max(0, math.ceil((wanted - len(inboxes)) / 2))
    with ctx.live.counter("creating channels", needed) as advance:
        for a, b in pairs[:needed]:
            channel = await senders[a].create_channel(ctx.bots[b].key)
            inboxes += [Inbox(a, channel, b), Inbox(b, channel, a)]
            advance()
    return inboxes[:wanted]


async def run_longpoll(ctx: Context) -> dict[str, Any]:
    spec, tracker, errors = ctx.spec, ctx.tracker, ctx.errors
    accounts = ctx.bots[: longpoll_accounts(spec.clients)]
    senders: list[NodeClient] = []
    waiters: list[Consumer] = []
    arrivals: dict[int, asyncio.Future[int]] = {}

    def arrived(message_id: int, at: int) -> None:
        future = arrivals.get(message_id)
        if future is not None and not future.done():
            future.set_result(at)

    try:
        connector = ctx.sending("senders")
        senders = await open_many([functools.partial(connector.open, bot) for bot in accounts])
        inboxes = await longpoll_inboxes(ctx, senders, spec.clients)
        waiters = [
            Consumer(ctx, accounts[inbox.owner], index, inbox.channel, "fetchwait", arrived, role="waiters")
            for index, inbox in enumerate(inboxes)
        ]
        await start_consumers(ctx, waiters, "parked waiters")
        await asyncio.sleep(spec.settle_s)
        parked_calls = sum(waiter.calls for waiter in waiters)

        loop = asyncio.get_running_loop()
        budget = Budget(spec.duration, spec.count)
        enqueue_rtt, after_return = Latencies(), Latencies()
        woken = 0

        def status() -> tuple[float, str]:
            return budget.fraction(), f"{woken} wake-ups, {errors.total()} errors"

        measured = Measured(ctx)
        await measured.start_profiler()
        measured.start()
        started_ns = now_ns()
        budget.start()
        async with ctx.live.running(f"longpoll: {len(waiters)} parked, one message at a time", status):
            index = 0
            while budget.take():
                slot = index % len(inboxes)
                inbox = inboxes[slot]
                index += 1
                message_id = tracker.new_message()
                future: asyncio.Future[int] = loop.create_future()
                arrivals[message_id] = future
                tracker.issued()
                started = now_ns()
                try:
                    await senders[inbox.sender].enqueue(
                        accounts[inbox.owner].key, ctx.payload(message_id), inbox.channel
                    )
                except Exception as error:
                    errors.add(error)
                    tracker.failed(message_id, [slot])
                    continue
                returned = now_ns()
                enqueue_rtt.add_ns(returned - started)
                tracker.acked(message_id, [slot])
                try:
                    at = await asyncio.wait_for(future, 5.0)
                except TimeoutError as error:
                    errors.add(error)
                    continue
                finally:
                    del arrivals[message_id]
                after_return.add_ns(max(0, at - returned))
                woken += 1
            seconds = budget.elapsed()
        drained = await drain(ctx)
        resources = await measured.stop()
    finally:
        await stop_all(waiters)
        await close_all(senders)
    return {
        "parked_waiters": len(waiters),
        "accounts": len(accounts),
        "fetchwait_calls_before_start": parked_calls,
        "wakeups": woken,
        "wakeups_per_s": rate(woken, seconds),
        "enqueues": tracker.acknowledged,
        "enqueues_per_s": rate(tracker.acknowledged, seconds),
        "drain_seconds": round(drained, 3),
        "call_latency_ms": enqueue_rtt.summary(),
        "wakeup_after_enqueue_returned_ms": after_return.summary(),
        **delivery_figures(ctx, started_ns),
        **resources,
    }


# -- idle: N connections held open ----------------------------------------------------------------------------


async def run_idle(ctx: Context) -> dict[str, Any]:
    spec, errors = ctx.spec, ctx.errors
    if ctx.node.pid is None:
        raise ValueError("the idle scenario measures the node's RSS: run the node here or give --node-pid")
    clients: list[NodeClient] = []
    gate = asyncio.Semaphore(64)
    opened = 0

    # One connection first, so that what every connection shares (code, schema, TLS context) is already loaded.
    connector = ctx.sending("connections")
    warm = await connector.open()
    await warm.health()
    measured = Measured(ctx)
    before_node = measured.node_watch.sample() if measured.node_watch else None
    client_watch = watch(os.getpid())
    before_client = client_watch.sample() if client_watch else None

    async def one() -> None:
        nonlocal opened
        async with gate:
            client = connector.client()
            try:
                await client.health()  # the node has the RPC stream and its session once this returns
            except Exception as error:
                errors.add(error)
                await client.close()
                return
            clients.append(client)
            opened += 1

    started = time.monotonic()
    try:
        with ctx.live.counter(f"opening {spec.connections} connections", spec.connections) as advance:
            tasks = [asyncio.ensure_future(one()) for _ in range(spec.connections)]
            for task in tasks:
                task.add_done_callback(lambda _t: advance())
            await asyncio.gather(*tasks)
        open_seconds = time.monotonic() - started
        await asyncio.sleep(spec.settle_s)
        after_open = measured.node_watch.sample() if measured.node_watch else None
        client_after_open = client_watch.sample() if client_watch else None
        budget = Budget(spec.duration or 0.0, None)
        await measured.start_profiler()
        measured.start()
        budget.start()
        async with ctx.live.running(f"idle: holding {len(clients)} connections", lambda: (budget.fraction(), "")):
            await asyncio.sleep(spec.duration or 0.0)
        resources = await measured.stop()
        # Still alive? One call on a sample of the connections.
        sample = random.sample(clients, min(20, len(clients)))
        alive = sum(
            1
            for result in await asyncio.gather(*(c.health() for c in sample), return_exceptions=True)
            if result == "ok"
        )
        mass_disconnect = await disconnect_all(ctx, clients, warm)
    finally:
        await close_all([*clients, warm])
    figures: dict[str, Any] = {
        "connections": opened,
        "connections_per_s": rate(opened, open_seconds),
        "alive_after_hold": f"{alive}/{len(sample)}",
        "held_seconds": spec.duration,
        "mass_disconnect": mass_disconnect,
        **resources,
    }
    if before_node is not None and after_open is not None and opened:
        growth = after_open.rss_bytes - before_node.rss_bytes
        figures["node_rss_before_bytes"] = before_node.rss_bytes
        figures["node_rss_open_bytes"] = after_open.rss_bytes
        figures["node_rss_per_connection_bytes"] = round(growth / opened)
        figures["node_rss_projected_5000_bytes"] = round(before_node.rss_bytes + 5000 * growth / opened)
    if before_client is not None and client_after_open is not None and opened and ctx.node.mode != "in-process":
        figures["client_rss_per_connection_bytes"] = round(
            (client_after_open.rss_bytes - before_client.rss_bytes) / opened
        )
    return figures


async def disconnect_all(ctx: Context, clients: list[NodeClient], probe: NodeClient) -> dict[str, Any]:
    """Closes `clients` at once and measures the node until it holds none of them: the seconds until then (by
    the node's own count, read through `probe`) and the node's CPU meanwhile."""
    quic = probe.transport == "quic"

    async def left() -> int:
        status = await probe.node_status()
        return (status.quic_connections if quic else status.connections) - 1  # the probe's own

    node_watch = watch(ctx.node.pid)
    if node_watch is not None:
        node_watch.start()
    started = time.monotonic()
    with ctx.live.status(f"closing {len(clients)} connections at once"):
        await close_all(clients)
        closed = time.monotonic() - started
        remaining = await left()
        while remaining > 0 and time.monotonic() - started < DRAIN_TIMEOUT_S:
            await asyncio.sleep(0.05)
            remaining = await left()
    figures: dict[str, Any] = {
        "connections": len(clients),
        "client_close_seconds": round(closed, 3),
        "drain_seconds": round(time.monotonic() - started, 3),
        "left_open": remaining,
    }
    if node_watch is not None:
        cpu = node_watch.stop()
        figures["node_cpu_s"] = round(cpu["cpu_user_s"] + cpu["cpu_sys_s"], 3)
    return figures


DRAIN_TIMEOUT_S = 300.0


# -- mixed: a chat-like mix ------------------------------------------------------------------------------------

MIX = (("enqueue", 0.60), ("resolveUser", 0.25), ("fetchKeyPackage", 0.15))
KEY_PACKAGE_ACCOUNTS = 2
KEY_PACKAGES_EACH = 20


async def key_package_identities(ctx: Context) -> list[bytes]:
    """Accounts whose KeyPackages bots fetch: vault-backed (a KeyPackage needs MLS keys), each with ordinary
    packages and a last-resort one, so fetches keep returning a package. Made once and remembered."""
    saved = [bytes.fromhex(key) for key in ctx.extras.get("key_package_identities", [])]
    if saved:
        return saved
    from quicnprotochat.native import Vault

    keys: list[bytes] = []
    with tempfile.TemporaryDirectory(dir=ctx.work_dir) as tmp, ctx.live.status("registering KeyPackage accounts"):
        for index in range(KEY_PACKAGE_ACCOUNTS):
            vault = Vault.open(str(Path(tmp) / f"kp{index}.vault"), os.urandom(32))
            try:
                client = await ctx.connector.open()
                try:
                    name, password = f"kp{os.urandom(4).hex()}-{index}", os.urandom(16).hex()
                    await register(client, vault, name, password)
                    client.access_token = await login_token(client, vault, name, password)
                    for number in range(KEY_PACKAGES_EACH + 1):
                        package = vault.create_key_package(last_resort=number == KEY_PACKAGES_EACH)
                        await client.upload_key_package(vault.identity_key, package)
                    keys.append(vault.identity_key)
                finally:
                    await client.close()
            finally:
                vault.close()
    ctx.extras["key_package_identities"] = [key.hex() for key in keys]
    ctx.save_extras()
    return keys


async def run_mixed(ctx: Context) -> dict[str, Any]:
    spec, tracker, errors = ctx.spec, ctx.tracker, ctx.errors
    bots = ctx.bots[: max(2, spec.producer_count)]
    kp_keys = await key_package_identities(ctx)
    # Half the bots read with fetchWait, half with peekWait + ack.
    consumers = [
        Consumer(ctx, bot, index, mode="fetchwait" if index % 2 == 0 else "peekack", role="readers")
        for index, bot in enumerate(bots)
    ]
    actors: list[NodeClient] = []
    latency = {name: Latencies() for name, _ in MIX}
    done = dict.fromkeys(latency, 0)
    names = [name for name, _ in MIX]
    weights = [weight for _, weight in MIX]
    budget = Budget(spec.duration, spec.count)
    rng = random.Random(1)

    async def act(me: int, client: NodeClient) -> None:
        while budget.take():
            operation = rng.choices(names, weights)[0]
            started = now_ns()
            message_id, inbox = 0, -1
            try:
                if operation == "enqueue":
                    inbox = rng.choice([other for other in range(len(bots)) if other != me])
                    message_id = tracker.new_message()
                    tracker.issued()
                    await client.enqueue(bots[inbox].key, ctx.payload(message_id))
                    tracker.acked(message_id, [inbox])
                elif operation == "resolveUser":
                    await client.resolve_user(rng.choice(bots).username)
                else:
                    await client.fetch_key_package(rng.choice(kp_keys))
            except Exception as error:
                errors.add(error)
                if message_id:
                    tracker.failed(message_id, [inbox])
                continue
            latency[operation].add_ns(now_ns() - started)
            done[operation] += 1

    try:
        await start_consumers(ctx, consumers, "readers")
        connector = ctx.sending("actors")
        actors = await open_many([functools.partial(connector.open, bot) for bot in bots])
        measured = Measured(ctx)

        def status() -> tuple[float, str]:
            return (
                budget.fraction(),
                f"{sum(done.values())} calls, {tracker.delivered} delivered, {errors.total()} errors",
            )

        await measured.start_profiler()
        measured.start()
        started_ns = now_ns()
        budget.start()
        per_actor = split(spec.concurrency, len(actors))
        async with ctx.live.running(f"mixed: {spec.concurrency} in flight over {len(actors)} bots", status):
            await asyncio.gather(
                *(act(index, client) for index, client in enumerate(actors) for _ in range(per_actor[index]))
            )
            seconds = budget.elapsed()
        drained = await drain(ctx)
        resources = await measured.stop()
    finally:
        await stop_all(consumers)
        await close_all(actors)
    total = sum(done.values())
    return {
        "bots": len(bots),
        "calls": total,
        "calls_per_s": rate(total, seconds),
        "enqueues": tracker.acknowledged,
        "enqueues_per_s": rate(tracker.acknowledged, seconds),
        "drain_seconds": round(drained, 3),
        "by_method": {
            name: {"calls": done[name], "calls_per_s": rate(done[name], seconds), "latency_ms": latency[name].summary()}
            for name in names
        },
        **delivery_figures(ctx, started_ns),
        **resources,
    }


# -- hostile: the attacks of tests/hostile while a normal client works -----------------------------------------


async def run_hostile(ctx: Context) -> dict[str, Any]:
    """Each attack for `duration` seconds against the node's default limits (bench/hostile.py)."""
    node = ctx.node
    if node.pid is None or node.tcp_port is None:
        raise ValueError("the hostile scenario measures the node's RSS over TLS: run the node here")
    normal_bot, recipient_bot, attacker_bot = ctx.bots[:3]
    connector = ctx.connectors[0]
    normal = await connector.open(normal_bot)
    attacker = await connector.open(attacker_bot)
    try:
        await attacker.enqueue(attacker_bot.key, os.urandom(hostile.MIB))  # what the unread peeks ask for
        who = {
            "attacker_key": attacker_bot.key,
            "attacker_token": attacker.access_token,
            "normal_name": normal_bot.username,
            "quic_address": None if node.quic_port is None else (node.host, node.quic_port),
        }
        results = await hostile.run_attacks(
            (node.host, node.tcp_port),
            node.pid,
            normal,
            recipient_bot.key,
            who,
            ctx.spec.duration or 10.0,
            lambda name: ctx.live.note(f"attack: {name}"),
        )
        token = await login_token(normal, normal_bot.signer, normal_bot.username, normal_bot.password)
        return {"attack_seconds": ctx.spec.duration, "attacks": results, "normal_user_logs_in_after": bool(token)}
    finally:
        await close_all([normal, attacker])


RUNNERS: dict[str, Callable[[Context], Awaitable[dict[str, Any]]]] = {
    "enqueue": run_enqueue,
    "fanout": run_fanout,
    "longpoll": run_longpoll,
    "idle": run_idle,
    "mixed": run_mixed,
    "hostile": run_hostile,
}
