"""The group sequencer (submitCommit) on a real node, on SQLite and on PostgreSQL: one commit per epoch, decided
with its deliveries in one transaction; retries, staleness, membership, proposals, refusals and bounds.

Every MLS message here is real (the native Vault). Many different commits for one epoch come from copies of a
member's vault file: each copy is that member at the same epoch, and commits differently.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from quicnprotochat import native
from quicnprotochat.client import NodeClient, accounts
from quicnprotochat.client.node_client import CommitResult, Delivery
from quicnprotochat.common.errors import Forbidden, InvalidArgument, ResourceExhausted
from quicnprotochat.server.node import Node
from tests.conftest import ClientFactory, loopback_config
from tests.test_metrics import scrape


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """ "" (the node's own SQLite file) or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield ""
        return
    server = request.getfixturevalue("pg_server")
    url: str = await server.create_database()
    try:
        yield url
    finally:
        await server.drop_database(url)


@pytest.fixture
async def group_node(store_url: str, tmp_path: Path) -> AsyncIterator[Node]:
    node = Node(loopback_config(tmp_path / "node", store=store_url))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


@dataclass
class Member:
    name: str
    path: Path
    vault_key: bytes
    vault: native.Vault
    client: NodeClient
    opened: list[native.Vault] = field(default_factory=list)

    @property
    def key(self) -> bytes:
        return self.vault.identity_key

    def copy_vault(self) -> tuple[Path, native.Vault]:
        """Another vault holding this member's state as it is now."""
        self.vault.close()
        target = self.path.with_name(f"{self.path.name}.{len(self.opened)}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                shutil.copyfile(source, f"{target}{suffix}")
        self.vault = native.Vault.open(str(self.path), self.vault_key)
        copy = native.Vault.open(str(target), self.vault_key)
        self.opened.append(copy)
        return target, copy

    def close(self) -> None:
        for vault in {id(v): v for v in (self.vault, *self.opened)}.values():
            vault.close()


@pytest.fixture
async def members(tmp_path: Path, connect: ClientFactory) -> AsyncIterator[Any]:
    made: list[Member] = []

    async def factory(node: Node, count: int, prefix: str = "member") -> list[Member]:
        async def one(index: int) -> Member:
            name = f"{prefix}{index}"
            path = tmp_path / f"{name}.vault"
            key = os.urandom(32)
            vault = native.Vault.open(str(path), key)
            client = await connect(node)
            await accounts.register(client, vault, name, f"pw {name}")
            await accounts.login(client, vault, name, f"pw {name}")
            member = Member(name, path, key, vault, client)
            made.append(member)
            return member

        return list(await asyncio.gather(*(one(i) for i in range(count))))

    yield factory
    for member in made:
        member.close()


async def login_on(node: Node, member: Member, connect: ClientFactory) -> NodeClient:
    client = await connect(node)
    await accounts.login(client, member.vault, member.name, f"pw {member.name}")
    return client


def applied(vault: native.Vault, group_id: bytes) -> None:
    """The committer applies its commit once the node accepted it (where the vault keeps commits pending)."""
    merge = getattr(vault, "merge_pending_commit", None)
    if merge is not None:
        merge(group_id)


def to_all(message: bytes, recipients: Sequence[Member]) -> list[Delivery]:
    return [Delivery(m.key, message) for m in recipients]


async def make_group(group: list[Member]) -> bytes:
    """The first member creates the group and adds the others; every member ends at epoch 1, inboxes empty."""
    creator, others = group[0], group[1:]
    group_id = creator.vault.create_group()
    packages = [m.vault.create_key_package() for m in others]
    commit, welcome = creator.vault.add_members(group_id, packages)
    result = await creator.client.submit_commit(
        group_id, 0, commit, [], to_all(welcome, others), [m.key for m in group]
    )
    assert (result.outcome, result.epoch, len(result.seqs)) == ("accepted", 1, len(others))
    applied(creator.vault, group_id)
    for member in others:
        received = await member.client.fetch(member.key)
        assert [e.data for e in received] == [welcome]
        assert member.vault.join_group(welcome) == group_id
    return group_id


async def inbox(member: Member) -> list[bytes]:
    return [e.data for e in await member.client.peek(member.key)]


@dataclass
class Entry:
    member: Member
    path: Path
    vault: native.Vault
    commit: bytes
    result: CommitResult | None = None


async def race(
    group_id: bytes, epoch: int, group: list[Member], copies: int, clients: dict[str, NodeClient] | None = None
) -> list[Entry]:
    """Every member submits `copies` different self-update commits for `epoch` at once (each from its own copy
    of the member's vault), then the group follows the winner: its member keeps the winning copy, the others
    process the winning commit."""
    entries = []
    for member in group:
        for _ in range(copies):
            path, vault = member.copy_vault()
            entries.append(Entry(member, path, vault, vault.self_update(group_id)))
    clients = clients or {}

    async def submit(entry: Entry) -> None:
        others = [m for m in group if m is not entry.member]
        client = clients.get(entry.member.name, entry.member.client)
        entry.result = await client.submit_commit(
            group_id, epoch, entry.commit, to_all(entry.commit, others), [], [m.key for m in group]
        )

    await asyncio.gather(*(submit(e) for e in entries))
    await check_one_winner(entries, group, epoch)
    winner = next(e for e in entries if e.result is not None and e.result.outcome == "accepted")
    applied(winner.vault, group_id)
    winner.member.vault, winner.member.path = winner.vault, winner.path
    for member in group:
        if member is not winner.member:
            assert member.vault.process(winner.commit).epoch == epoch + 1
            await member.client.fetch(member.key)
    return entries


async def check_one_winner(entries: list[Entry], group: list[Member], epoch: int) -> None:
    results = [e.result for e in entries if e.result is not None]
    accepted = [e for e in entries if e.result is not None and e.result.outcome == "accepted"]
    assert len(accepted) == 1, [r.outcome for r in results]
    winner = accepted[0]
    assert winner.result is not None and winner.result.epoch == epoch + 1
    for result in results:
        if result is not winner.result:
            assert (result.outcome, result.epoch, result.seqs) == ("stale", epoch + 1, [])
    # Every delivery of the winner is queued, with the seqs it was given, and nothing of the losers.
    recipients = [m for m in group if m is not winner.member]
    for member, seq in zip(recipients, winner.result.seqs, strict=True):
        queued = await member.client.peek(member.key)
        assert [(e.seq, e.data) for e in queued] == [(seq, winner.commit)]
    assert await inbox(winner.member) == []


async def test_concurrent_commits_for_one_epoch_have_one_winner(store_url: str, tmp_path: Path, members: Any) -> None:
    node = Node(loopback_config(tmp_path / "node", store=store_url, metrics_listen="127.0.0.1:0"))
    await node.start()
    try:
        group = await members(node, 4)
        group_id = await make_group(group)
        for epoch in (1, 2):
            assert len(await race(group_id, epoch, group, copies=4)) == 16
        # Operators see the outcomes: the creation and one winner per round accepted, the rest stale.
        samples = await scrape(node)
        assert samples[("qpc_group_submissions_total", (("kind", "commit"), ("outcome", "accepted")))] == 3
        assert samples[("qpc_group_submissions_total", (("kind", "commit"), ("outcome", "stale")))] == 30
    finally:
        await node.stop()


async def test_concurrent_commits_across_two_nodes_of_one_database(
    pg_url: str, tmp_path: Path, members: Any, connect: ClientFactory
) -> None:
    nodes = [Node(loopback_config(tmp_path / name, store=pg_url)) for name in ("a", "b")]
    for node in nodes:
        await node.start()
    try:
        group = await members(nodes[0], 4)
        group_id = await make_group(group)
        # Half the members submit through the other node.
        on_b = {m.name: await login_on(nodes[1], m, connect) for m in group[::2]}
        for epoch in (1, 2, 3):
            await race(group_id, epoch, group, copies=3, clients=on_b)
        # A retry through the other node while the first call is still running: one acceptance, the same seqs.
        committer = group[0]
        commit = committer.vault.self_update(group_id)
        deliveries, keys = to_all(commit, group[1:]), [m.key for m in group]
        first, second = await asyncio.gather(
            committer.client.submit_commit(group_id, 4, commit, deliveries, [], keys),
            on_b[committer.name].submit_commit(group_id, 4, commit, deliveries, [], keys),
        )
        assert sorted((first.outcome, second.outcome)) == ["accepted", "duplicate"]
        assert first.seqs == second.seqs and first.epoch == second.epoch == 5
    finally:
        for node in nodes:
            await node.stop()


async def test_a_retry_gets_the_first_acceptance(group_node: Node, members: Any) -> None:
    group = await members(group_node, 3)
    group_id = await make_group(group)
    alice, bob, carol = group
    commit = alice.vault.remove_members(group_id, [carol.key])
    deliveries = to_all(commit, [bob, carol])
    # The same bytes twice at once, then once more: one acceptance, the same seqs every time.
    first, second = await asyncio.gather(
        alice.client.submit_commit(group_id, 1, commit, deliveries, [], [alice.key, bob.key]),
        alice.client.submit_commit(group_id, 1, commit, deliveries, [], [alice.key, bob.key]),
    )
    assert sorted((first.outcome, second.outcome)) == ["accepted", "duplicate"]
    assert first.seqs == second.seqs and first.epoch == second.epoch == 2
    again = await alice.client.submit_commit(group_id, 1, commit, deliveries, [], [alice.key, bob.key])
    assert (again.outcome, again.epoch, again.seqs) == ("duplicate", 2, first.seqs)
    assert await inbox(bob) == [commit]  # enqueued once
    assert await inbox(carol) == [commit]  # the removed member hears of it


async def test_non_members_and_removed_members_cannot_submit(group_node: Node, members: Any) -> None:
    group = await members(group_node, 4)
    alice, bob, carol, dave = group
    group_id = await make_group(group[:3])
    carol_commit = carol.vault.self_update(group_id)
    # dave has an account and a real commit of this group in hand, but is not a member.
    with pytest.raises(Forbidden, match="members"):
        await dave.client.submit_commit(group_id, 1, carol_commit, to_all(carol_commit, [alice]), [], [dave.key])
    removal = alice.vault.remove_members(group_id, [carol.key])
    result = await alice.client.submit_commit(
        group_id, 1, removal, to_all(removal, [bob, carol]), [], [alice.key, bob.key]
    )
    assert result.outcome == "accepted"
    # carol's commit was made while she was a member; she is not one any more.
    with pytest.raises(Forbidden, match="members"):
        await carol.client.submit_commit(
            group_id, 1, carol_commit, to_all(carol_commit, [alice, bob]), [], [alice.key, bob.key, carol.key]
        )
    assert await inbox(alice) == []


async def test_refusals_say_why(group_node: Node, members: Any) -> None:
    group = await members(group_node, 2)
    alice, bob = group
    group_id = await make_group(group)
    commit = alice.vault.self_update(group_id)
    keys = [alice.key, bob.key]

    async def refused(message: bytes, match: str, *, epoch: int = 1, gid: bytes = group_id) -> None:
        with pytest.raises(InvalidArgument, match=match):
            await alice.client.submit_commit(gid, epoch, message, to_all(message, [bob]), [], keys)

    await refused(os.urandom(200), "not an MLS")
    await refused(b"", "empty")
    await refused(bob.vault.encrypt(group_id, b"hello"), "application message")
    await refused(bob.vault.create_key_package(), "not an MLS")
    await refused(commit + b"\x00", "not an MLS")
    await refused(commit, "epoch 1, not epoch 2", epoch=2)
    await refused(commit, "another group", gid=os.urandom(16))
    await refused(commit, "epoch must be at most", epoch=(1 << 64) - 1)
    await refused(commit, "groupId", gid=b"")
    with pytest.raises(InvalidArgument, match=r"deliveries\[0\]"):
        await alice.client.submit_commit(group_id, 1, commit, [Delivery(os.urandom(8), commit)], [], keys)
    with pytest.raises(InvalidArgument, match="committer"):
        await alice.client.submit_commit(group_id, 1, commit, to_all(commit, [bob]), [], [bob.key])
    with pytest.raises(InvalidArgument, match="every member of the group but the submitter"):
        await alice.client.submit_commit(group_id, 1, commit, [], [], keys)
    # Nothing of the refused calls was queued, and the epoch is still free.
    assert await inbox(bob) == []
    result = await alice.client.submit_commit(group_id, 1, commit, to_all(commit, [bob]), [], keys)
    assert result.outcome == "accepted"
    # A commit for an epoch the group has not reached (made on top of one the node never saw) is refused.
    applied(alice.vault, group_id)
    unseen = alice.vault.self_update(group_id)
    applied(alice.vault, group_id)
    ahead = alice.vault.self_update(group_id)
    await refused(ahead, "ahead", epoch=3)
    assert (await alice.client.submit_commit(group_id, 2, unseen, to_all(unseen, [bob]), [], keys)).epoch == 3


async def test_proposals_are_ordered_with_commits(group_node: Node, members: Any) -> None:
    group = await members(group_node, 3)
    alice, bob, carol = group
    group_id = await make_group(group)
    leave = carol.vault.leave_group(group_id)
    proposed = await carol.client.submit_commit(group_id, 1, leave, to_all(leave, [alice, bob]), [], [])
    assert (proposed.outcome, proposed.epoch) == ("accepted", 1)  # a proposal does not move the epoch
    update = bob.vault.self_update(group_id)
    committed = await bob.client.submit_commit(
        group_id, 1, update, to_all(update, [alice, carol]), [], [m.key for m in group]
    )
    assert (committed.outcome, committed.epoch) == ("accepted", 2)
    queued = await alice.client.peek(alice.key)
    assert [e.data for e in queued] == [leave, update]
    assert [e.seq for e in queued] == [proposed.seqs[0], committed.seqs[0]]
    # The same proposal again is a retry; a proposal made at epoch 1 is now stale.
    retried = await carol.client.submit_commit(group_id, 1, leave, to_all(leave, [alice, bob]), [], [])
    assert (retried.outcome, retried.seqs) == ("duplicate", proposed.seqs)
    other = alice.vault.leave_group(group_id)
    late = await alice.client.submit_commit(group_id, 1, other, to_all(other, [bob, carol]), [], [])
    assert (late.outcome, late.epoch, late.seqs) == ("stale", 2, [])
    assert [e.data for e in await bob.client.peek(bob.key)] == [leave]


async def test_proposals_per_epoch_are_bounded(store_url: str, tmp_path: Path, members: Any) -> None:
    node = Node(loopback_config(tmp_path / "node", store=store_url, max_group_proposals_per_epoch=2))
    await node.start()
    try:
        group = await members(node, 4)
        group_id = await make_group(group)
        leaving = [(m, m.vault.leave_group(group_id)) for m in group[1:]]
        for member, proposal in leaving[:2]:
            others = [m for m in group if m is not member]
            assert (await member.client.submit_commit(group_id, 1, proposal, to_all(proposal, others))).outcome == (
                "accepted"
            )
        member, proposal = leaving[2]
        others = [m for m in group if m is not member]
        with pytest.raises(ResourceExhausted, match="max_proposals_per_epoch"):
            await member.client.submit_commit(group_id, 1, proposal, to_all(proposal, others))
        # A commit moves the group on, and the next epoch has room again.
        alice = group[0]
        update = alice.vault.self_update(group_id)
        keys = [m.key for m in group]
        result = await alice.client.submit_commit(group_id, 1, update, to_all(update, group[1:]), [], keys)
        assert result.outcome == "accepted"
        applied(alice.vault, group_id)
        again = alice.vault.leave_group(group_id)
        assert (await alice.client.submit_commit(group_id, 2, again, to_all(again, group[1:]))).outcome == "accepted"
    finally:
        await node.stop()


async def test_bounds_are_configurable_and_published(tmp_path: Path, members: Any) -> None:
    node = Node(
        loopback_config(
            tmp_path / "node",
            max_commit_deliveries=2,
            max_commit_bytes=6000,
            max_groups_per_identity=1,
            group_log_epochs=2,
        )
    )
    await node.start()
    try:
        group = await members(node, 4)
        alice = group[0]
        limits = (await alice.client.server_info()).limits
        assert (limits.max_commit_deliveries, limits.max_commit_bytes, limits.max_group_members) == (2, 6000, 1000)
        group_id = alice.vault.create_group()
        packages = [m.vault.create_key_package() for m in group[1:]]
        commit, welcome = alice.vault.add_members(group_id, packages)
        keys = [m.key for m in group]
        with pytest.raises(InvalidArgument, match="at most 2"):
            await alice.client.submit_commit(group_id, 0, commit, [], to_all(welcome, group[1:]), keys)
        with pytest.raises(InvalidArgument, match="at most 6000"):
            await alice.client.submit_commit(group_id, 0, commit, [], [Delivery(group[1].key, bytes(6000))], keys)
        first = alice.vault.create_group()
        solo = alice.vault.self_update(first)
        assert (await alice.client.submit_commit(first, 0, solo, [], [], [alice.key])).outcome == "accepted"
        other = alice.vault.create_group()
        with pytest.raises(ResourceExhausted, match="max_groups_per_creator"):
            await alice.client.submit_commit(other, 0, alice.vault.self_update(other), [], [], [alice.key])
        # The node remembers accepted commits for group_log_epochs epochs: a retry that late is only stale.
        bob, carol = group[1], group[2]
        pair = await make_group([bob, carol])
        keys = [bob.key, carol.key]
        commits = []
        for epoch in (1, 2, 3):
            commit = bob.vault.self_update(pair)
            result = await bob.client.submit_commit(pair, epoch, commit, to_all(commit, [carol]), [], keys)
            assert result.outcome == "accepted"
            applied(bob.vault, pair)
            commits.append((epoch, commit, result.seqs))
        (first, oldest, _), (last, newest, seqs) = commits[0], commits[-1]
        retried = await bob.client.submit_commit(pair, first, oldest, to_all(oldest, [carol]), [], keys)
        assert (retried.outcome, retried.epoch) == ("stale", 4)
        retried = await bob.client.submit_commit(pair, last, newest, to_all(newest, [carol]), [], keys)
        assert (retried.outcome, retried.seqs) == ("duplicate", seqs)
    finally:
        await node.stop()


async def test_a_full_inbox_refuses_the_whole_commit(store_url: str, tmp_path: Path, members: Any) -> None:
    node = Node(loopback_config(tmp_path / "node", store=store_url, max_inbox_depth=2))
    await node.start()
    try:
        group = await members(node, 3)
        alice, bob, carol = group
        group_id = await make_group(group)
        for n in range(2):
            await alice.client.enqueue(carol.key, b"filler %d" % n)
        commit = alice.vault.self_update(group_id)
        deliveries = to_all(commit, [bob, carol])
        with pytest.raises(ResourceExhausted, match="#1"):
            await alice.client.submit_commit(group_id, 1, commit, deliveries, [], [m.key for m in group])
        # Nowhere: bob got nothing, and the epoch is still free for the same commit once carol has room.
        assert await inbox(bob) == []
        await carol.client.fetch(carol.key)
        result = await alice.client.submit_commit(group_id, 1, commit, deliveries, [], [m.key for m in group])
        assert (result.outcome, result.epoch) == ("accepted", 2)
        assert await inbox(bob) == [commit] and await inbox(carol) == [commit]
    finally:
        await node.stop()


async def test_the_group_cap_holds_across_nodes(
    pg_url: str, tmp_path: Path, members: Any, connect: ClientFactory
) -> None:
    nodes = [Node(loopback_config(tmp_path / name, store=pg_url, max_groups_per_identity=2)) for name in ("a", "b")]
    for node in nodes:
        await node.start()
    try:
        (alice,) = await members(nodes[0], 1)
        clients = [alice.client, await login_on(nodes[1], alice, connect)]
        creations = []
        for index in range(6):
            group_id = alice.vault.create_group()
            commit = alice.vault.self_update(group_id)
            creations.append(clients[index % 2].submit_commit(group_id, 0, commit, [], [], [alice.key]))
        results = await asyncio.gather(*creations, return_exceptions=True)
        assert sum(isinstance(r, CommitResult) and r.outcome == "accepted" for r in results) == 2
        assert sum(isinstance(r, ResourceExhausted) for r in results) == 4
    finally:
        for node in nodes:
            await node.stop()
