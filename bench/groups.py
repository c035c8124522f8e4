"""`qpc-bench groups`: G MLS groups of M members; every member sends and commits (add, remove, update) at random,
and the node's sequencer (submitCommit) orders the commits of each group.

Each member is a bench account with its own native Vault and two loops over one NodeClient: one acts (send an
application message to the group, or commit a change and submit it), one receives (peekWait, then processes each
envelope in seq order: a Welcome joins, a commit or proposal moves the group, an application message is decrypted
and timed). A committer applies its commit only when the node accepted it; on `stale` it drops it and waits until
its inbox has brought it to the node's epoch. A member removed from its group may be added again later.

Figures: accepted commits per second, the stale rate, and the delivery latency of application messages (from
encryption by the sender to decryption by each recipient). At the end, every current member of every group must
agree on the epoch, the member list and the exporter secret (and the node's member set must be theirs).

The node knows members by their account keys; MLS knows them by their vaults' keys. The bench maps one to the
other (a client whose account key is its vault key needs no map).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from quicnprotochat import native
from quicnprotochat.bench.bots import Bot
from quicnprotochat.bench.budget import Budget
from quicnprotochat.bench.metrics import now_ns, stamp_payload
from quicnprotochat.bench.scenarios import Context, Measured, close_all, delivery_figures, rate
from quicnprotochat.client import NodeClient
from quicnprotochat.client.node_client import Delivery
from quicnprotochat.common.errors import RpcError

# The first byte of every payload says what follows (the bench sends MLS bytes unsealed: the node never reads them).
WELCOME, HANDSHAKE, APPLICATION = b"W", b"H", b"A"
EXPORTER_LABEL = "qpc-bench groups"
Change = Literal["add", "remove", "update"]


@dataclass
class Group:
    group_id: bytes
    seats: list[Member]
    """Everyone who may be a member of this group; at least two are members at any time."""
    epoch: int = 0
    """The node's epoch, from the last accepted commit."""
    members: set[bytes] = field(default_factory=set)
    """The node's member set (account keys), from the last accepted commit."""


@dataclass
class Counts:
    accepted: int = 0
    duplicate: int = 0
    stale: int = 0
    by_change: Counter[str] = field(default_factory=Counter)
    refused_after_removal: int = 0
    """Submissions of a member the node had removed before it knew (`forbidden:`): expected under churn."""
    dropped_after_removal: int = 0
    """Messages that reached a member after it was removed (it cannot read them any more): expected."""
    dropped_before_join: int = 0
    """Messages of an epoch before the recipient (re)joined: sent while it was still a member the last time, read
    only after it came back. Expected under churn."""
    too_old: int = 0
    """Messages of an epoch older than the past epochs a vault keeps secrets for (MAX_PAST_EPOCHS): the group moved
    on too many times before the recipient read them. Lost for the user: the cost of frequent commits."""
    undecryptable: int = 0
    sends: int = 0

    def unreadable(self) -> int:
        """Messages that reached a recipient's inbox but could not be read there."""
        return self.dropped_after_removal + self.dropped_before_join + self.too_old + self.undecryptable


class Member:
    def __init__(self, ctx: Context, bot: Bot, index: int, vault: native.Vault, shared: Shared) -> None:
        self.ctx = ctx
        self.bot = bot
        self.index = index
        self.vault = vault
        self.shared = shared
        self.group: Group | None = None
        self.joined_epoch = 0
        self.client: NodeClient | None = None
        # One MLS operation (or commit round trip) at a time: what a real client's state machine does.
        self.lock = asyncio.Lock()
        self.progress = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def mls_key(self) -> bytes:
        return self.vault.identity_key

    def is_member(self) -> bool:
        return self.group is not None and active(self.vault, self.group.group_id)

    async def vault_call(self, fn: Any, *args: Any) -> Any:
        # The vault's calls run without the GIL: off the event loop, so the loop keeps serving the others.
        return await asyncio.to_thread(fn, *args)

    # -- receiving -------------------------------------------------------------------------------------------------

    async def receive_forever(self) -> None:
        client, key = self.client, self.bot.key
        assert client is not None
        acked = 0
        while True:
            try:
                # At least once: peek, process, then ack (a lost connection loses nothing).
                envelopes = [e for e in await client.peek_wait(key, timeout_ms=self.ctx.spec.wait_ms) if e.seq > acked]
                for envelope in envelopes:
                    async with self.lock:
                        try:
                            await self._receive(envelope.data)
                        except Exception as error:  # counted; the next envelope is processed all the same
                            self.ctx.errors.add(error)
                if envelopes:
                    await client.ack(key, envelopes[-1].seq)
                    acked = envelopes[-1].seq
            except asyncio.CancelledError:
                raise
            except Exception as error:  # counted; the loop goes on as a client's would
                self.ctx.errors.add(error)
                await asyncio.sleep(0.05)
                continue
            self.progress.set()

    async def _receive(self, data: bytes) -> None:
        kind, body = data[:1], data[1:]
        counts = self.shared.counts
        if kind == WELCOME:
            group = self.shared.by_welcome.get(body)
            try:
                await self.vault_call(self.vault.join_group, body)
            except native.NativeError as error:
                self.ctx.errors.add(error)
                return
            self.group = group
            if group is not None:
                self.joined_epoch = self.vault.epoch(group.group_id)
            return
        if not self.is_member():
            if kind == APPLICATION:
                counts.dropped_after_removal += 1
            return
        at = now_ns()
        try:
            processed = await self.vault_call(self.vault.process, body)
        except native.NativeError as error:
            self._unreadable(kind, body, error)
            return
        if kind == APPLICATION and processed.plaintext is not None:
            self.ctx.tracker.received(processed.plaintext, self.index, at)
        elif processed.kind == "commit" and processed.self_removed and self.group is not None:
            await self.vault_call(self.vault.delete_group, self.group.group_id)

    def _unreadable(self, kind: bytes, body: bytes, error: native.NativeError) -> None:
        counts = self.shared.counts
        if kind != APPLICATION:
            self.ctx.errors.add(RuntimeError(f"a handshake message the node accepted did not process: {error}"))
        elif native.mls_message_info(body).epoch < self.joined_epoch:
            counts.dropped_before_join += 1
        elif isinstance(error, native.WrongEpoch):
            counts.too_old += 1
        else:
            counts.undecryptable += 1

    # -- acting ----------------------------------------------------------------------------------------------------

    async def act_forever(self, budget: Budget) -> None:
        spec = self.ctx.spec
        rng = random.Random(os.urandom(8))
        while budget.take():
            if spec.think_ms:
                await asyncio.sleep(rng.expovariate(1000 / spec.think_ms))
            try:
                if rng.random() < spec.commit_share:
                    await self.commit(rng)
                else:
                    await self.send()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # counted; the member goes on
                self.ctx.errors.add(error)

    async def send(self) -> None:
        async with self.lock:
            if not self.is_member() or self.group is None:
                return
            group_id = self.group.group_id
            others = [m for m in self.group.seats if m is not self and m.mls_key in self._mls_members()]
            if not others:
                return
            tracker = self.ctx.tracker
            message_id = tracker.new_message()
            plaintext = stamp_payload(tracker.run_id, message_id, self.ctx.spec.payload_size)
            ciphertext = await self.vault_call(self.vault.encrypt, group_id, plaintext)
        assert self.client is not None
        tracker.issued(len(others))
        self.shared.counts.sends += 1
        try:
            await self.client.batch_enqueue([m.bot.key for m in others], APPLICATION + ciphertext)
        except RpcError:
            tracker.failed(message_id, [m.index for m in others])
            raise
        tracker.acked(message_id, [m.index for m in others])

    def _mls_members(self) -> set[bytes]:
        assert self.group is not None
        return set(self.vault.members(self.group.group_id))

    async def commit(self, rng: random.Random) -> None:
        counts = self.shared.counts
        async with self.lock:
            group = self.group
            if group is None or not self.is_member():
                return
            group_id = group.group_id
            inside = [m for m in group.seats if m.mls_key in self._mls_members()]
            outside = [m for m in group.seats if m not in inside]
            changes: list[Change] = ["update"]
            if outside:
                changes.append("add")
            if len(inside) > 2:
                changes.append("remove")
            change = rng.choice(changes)
            epoch = self.vault.epoch(group_id)
            welcome: bytes | None = None
            after = inside
            if change == "add":
                newcomer = rng.choice(outside)
                package = await self.vault_call(newcomer.vault.create_key_package)
                commit, welcome = await self.vault_call(self.vault.add_members, group_id, [package])
                after = [*inside, newcomer]
            elif change == "remove":
                gone = rng.choice([m for m in inside if m is not self])
                commit = await self.vault_call(self.vault.remove_members, group_id, [gone.mls_key])
                after = [m for m in inside if m is not gone]
            else:
                commit = await self.vault_call(self.vault.self_update, group_id)
            deliveries = [Delivery(m.bot.key, HANDSHAKE + commit) for m in inside if m is not self]
            welcomes = []
            if welcome is not None:
                self.shared.by_welcome[welcome] = group
                welcomes = [Delivery(m.bot.key, WELCOME + welcome) for m in after if m not in inside]
            assert self.client is not None
            try:
                result = await self.client.submit_commit(
                    group_id, epoch, commit, deliveries, welcomes, [m.bot.key for m in after]
                )
            except RpcError as error:
                await self.vault_call(self.vault.clear_pending_commit, group_id)
                if error.code == "forbidden":
                    counts.refused_after_removal += 1
                    return
                raise
            if result.outcome == "stale":
                counts.stale += 1
                await self.vault_call(self.vault.clear_pending_commit, group_id)
                target = result.epoch
            else:
                counts.accepted += result.outcome == "accepted"
                counts.duplicate += result.outcome == "duplicate"
                counts.by_change[change] += 1
                await self.vault_call(self.vault.merge_pending_commit, group_id)
                group.epoch, group.members = result.epoch, {m.bot.key for m in after}
                return
        await self.catch_up(group_id, target)

    async def catch_up(self, group_id: bytes, epoch: int) -> None:
        """After `stale`: wait until the inbox has brought this member to the node's epoch (or out of the group)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not active(self.vault, group_id) or self.vault.epoch(group_id) >= epoch:
                return
            self.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), 0.5)


def active(vault: native.Vault, group_id: bytes) -> bool:
    """Whether the vault is a member of the group (a member removed deleted the group: it is unknown then)."""
    try:
        return vault.is_active(group_id)
    except native.GroupNotFound:
        return False


@dataclass
class Shared:
    counts: Counts = field(default_factory=Counts)
    by_welcome: dict[bytes, Group] = field(default_factory=dict)


def open_vault(work_dir: Path, bot: Bot) -> native.Vault:
    path = work_dir / f"{bot.username}.vault"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)  # a fresh MLS identity every run
    vault = native.Vault.open(str(path), os.urandom(32))
    if not hasattr(vault, "merge_pending_commit"):
        raise SystemExit("qpc-bench groups needs the native vault's pending commits (merge_pending_commit)")
    return vault


async def create_group(group: Group) -> None:
    """The first seat creates the group and adds every other seat."""
    creator, others = group.seats[0], group.seats[1:]
    group.group_id = await creator.vault_call(creator.vault.create_group)
    packages = [await m.vault_call(m.vault.create_key_package) for m in others]
    commit, welcome = await creator.vault_call(creator.vault.add_members, group.group_id, packages)
    assert creator.client is not None
    result = await creator.client.submit_commit(
        group.group_id,
        0,
        commit,
        [],
        [Delivery(m.bot.key, WELCOME + welcome) for m in others],
        [m.bot.key for m in group.seats],
    )
    if result.outcome != "accepted":
        raise RuntimeError(f"creating a bench group: the node answered {result.outcome}")
    await creator.vault_call(creator.vault.merge_pending_commit, group.group_id)
    group.epoch, group.members = result.epoch, {m.bot.key for m in group.seats}
    for member in group.seats:
        member.group = group
    creator.shared.by_welcome[welcome] = group


def agreement(groups: list[Group]) -> dict[str, Any]:
    """Whether every current member of each group has the same epoch, member list and exporter secret, and whether
    those members are the node's member set."""
    agreeing = 0
    problems: list[str] = []
    for number, group in enumerate(groups):
        inside = [m for m in group.seats if active(m.vault, group.group_id)]
        views = {
            (
                m.vault.epoch(group.group_id),
                tuple(sorted(m.vault.members(group.group_id))),
                m.vault.export_secret(group.group_id, EXPORTER_LABEL, b"", 32),
            )
            for m in inside
        }
        node_view = {m.bot.key for m in inside} == group.members
        if len(views) == 1 and node_view and next(iter(views))[0] == group.epoch:
            agreeing += 1
        else:
            problems.append(
                f"group {number}: {len(views)} different views among {len(inside)} members"
                + ("" if node_view else "; the node's member set differs")
            )
    return {"groups": len(groups), "agreeing": agreeing, "problems": problems[:10]}


async def quiesce(ctx: Context, groups: list[Group], counts: Counts, timeout: float) -> float:
    """Waits until every current member is at its group's epoch and every acknowledged message was read or found
    unreadable by its recipient (or the timeout: what is still missing then is reported as lost)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        behind = any(
            active(m.vault, g.group_id) and m.vault.epoch(g.group_id) < g.epoch for g in groups for m in g.seats
        )
        if not behind and ctx.tracker.pending <= counts.unreadable():
            break
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def run_groups(ctx: Context) -> dict[str, Any]:
    spec = ctx.spec
    work_dir = ctx.work_dir / "groups"
    work_dir.mkdir(parents=True, exist_ok=True)
    shared = Shared()
    bots = ctx.bots[: spec.groups * spec.members]
    members = [Member(ctx, bot, index, open_vault(work_dir, bot), shared) for index, bot in enumerate(bots)]
    groups = [Group(b"", members[g * spec.members : (g + 1) * spec.members]) for g in range(spec.groups)]
    try:
        with ctx.live.counter("connecting members", len(members)) as advance:
            for index, member in enumerate(members):
                # Half the groups' members on node 1 and half on the others: commits race across nodes.
                connector = ctx.sending("members") if index % 2 == 0 else ctx.receiving("members", index)
                member.client = await connector.open(member.bot)
                advance()
        with ctx.live.status(f"creating {spec.groups} groups of {spec.members}"):
            await asyncio.gather(*(create_group(group) for group in groups))
        for member in members:
            member.tasks.append(asyncio.get_running_loop().create_task(member.receive_forever()))
        budget = Budget(spec.duration, spec.count)
        measured = Measured(ctx)
        await measured.start_profiler()
        measured.start()
        started_ns = now_ns()
        budget.start()
        actors = [asyncio.ensure_future(m.act_forever(budget)) for m in members]

        def status() -> tuple[float, str]:
            counts = shared.counts
            return budget.fraction(), (
                f"{counts.accepted} commits accepted, {counts.stale} stale, {counts.sends} messages sent, "
                f"{ctx.tracker.delivered} delivered, {ctx.errors.total()} errors"
            )

        async with ctx.live.running(f"groups: {len(members)} members sending and committing", status):
            await asyncio.gather(*actors)
        acting_s = budget.elapsed()
        with ctx.live.status("draining: every member reaches its group's epoch"):
            drained_s = await quiesce(ctx, groups, shared.counts, spec.drain_timeout)
        figures = await measured.stop()
    finally:
        for member in members:
            for task in member.tasks:
                task.cancel()
            for task in member.tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await close_all([m.client for m in members if m.client is not None])
    counts = shared.counts
    submitted = counts.accepted + counts.stale
    deliveries = delivery_figures(ctx, started_ns)
    # The tracker counts a message as received when its recipient decrypted it. What reached an inbox but could not
    # be read there (the recipient was removed or came back since, or the group had moved on too far) was delivered
    # by the node all the same: with nothing lost by the node, `lost` is exactly that.
    deliveries["delivery_check"]["delivered_unreadable"] = counts.unreadable()
    result = {
        "groups": spec.groups,
        "members_per_group": spec.members,
        "seconds": round(acting_s, 3),
        "drain_s": round(drained_s, 3),
        "commits_accepted": counts.accepted,
        "commits_accepted_per_s": rate(counts.accepted, acting_s),
        "commits_by_change": dict(sorted(counts.by_change.items())),
        "commits_stale": counts.stale,
        "stale_rate": round(counts.stale / submitted, 3) if submitted else 0.0,
        "commits_duplicate": counts.duplicate,
        "submissions_refused_after_removal": counts.refused_after_removal,
        "messages_sent": counts.sends,
        "messages_dropped_after_removal": counts.dropped_after_removal,
        "messages_dropped_before_join": counts.dropped_before_join,
        "messages_too_old": counts.too_old,
        "messages_undecryptable": counts.undecryptable,
        "agreement": agreement(groups),
        **deliveries,
        **figures,
    }
    for member in members:
        member.vault.close()
    return result
