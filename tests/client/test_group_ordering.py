"""Groups that never fork: members committing at the same instant, against a real node (and two nodes of one
PostgreSQL database). After every round all members agree on epoch, member list and exporter secret, and every
message sent after the round reaches every current member exactly once."""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from quicnprotochat.client.chat import ChatClient, Event, GroupBroken, JoinedConversation, MessageReceived
from quicnprotochat.server.node import Node
from tests.client.conftest import ChatFactory, EventLog

GROUP = "team"
ROUNDS = int(os.environ.get("QPC_TEST_GROUP_ROUNDS") or "200")
"""The issue's 200 rounds (QPC_TEST_GROUP_ROUNDS changes it: fewer for a quick look, more for a soak)."""
# 200 rounds take 20-100 s each on a quiet 2-core machine and several times that under load, longer than the
# suite's 120 s per test; every round has its own time limits (agree, receive), so a hang still fails fast.
pytestmark = pytest.mark.timeout(900 if ROUNDS <= 200 else 3600)


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """The node's and the clients' state on tmpfs: what is under test is the order of commits, not the disk's
    fsync rate, which would otherwise make hundreds of rounds take minutes."""
    path = Path(tempfile.mkdtemp(prefix="qpc-group-ordering-", dir="/dev/shm"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Received:
    """How often each message body reached one client (MessageReceived events), with a way to wait."""

    def __init__(self, chat: ChatClient) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.problems: list[Event] = []
        self._changed = asyncio.Event()
        chat.add_listener(self._record)

    def _record(self, event: Event) -> None:
        if isinstance(event, MessageReceived):
            self.counts[event.message.body] += 1
            self._changed.set()
        elif isinstance(event, GroupBroken):
            self.problems.append(event)

    async def wait_all(self, bodies: Sequence[str], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while any(self.counts[body] == 0 for body in bodies):
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = [body for body in bodies if self.counts[body] == 0]
                raise AssertionError(f"not received: {missing}")
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                continue


def joined_count(log: EventLog) -> int:
    return sum(isinstance(event, JoinedConversation) for event in log.events)


async def wait_for_join(log: EventLog, joins_before: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while joined_count(log) <= joins_before:
        if time.monotonic() > deadline:
            raise AssertionError("the removed member was not invited back")
        await asyncio.sleep(0.01)


async def group_state(chat: ChatClient) -> tuple[int, frozenset[bytes], bytes]:
    conversation = await chat.conversation(GROUP)
    assert conversation.group_id is not None
    group_id = conversation.group_id
    vault = chat.vault
    return (
        vault.epoch(group_id),
        frozenset(vault.members(group_id)),
        vault.export_secret(group_id, "quicnprotochat test", b"", 32),
    )


async def agree(chats: Sequence[ChatClient], timeout: float = 20) -> tuple[int, frozenset[bytes], bytes]:
    """Wait until every member has processed the round's commits, then check they agree on everything."""
    deadline = time.monotonic() + timeout
    while True:
        states = [await group_state(chat) for chat in chats]
        if len({state[0] for state in states}) == 1 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    assert len(set(states)) == 1, [(s[0], len(s[1])) for s in states]
    assert states[0][1] == frozenset(chat.identity_key for chat in chats)
    return states[0]


async def form_group(chats: Sequence[ChatClient], logs: Sequence[EventLog]) -> None:
    first = chats[0]
    group = await first.create_group(GROUP)
    for chat, log in zip(chats[1:], logs[1:], strict=True):
        await first.invite(group, chat.username)
        await log.wait_for(JoinedConversation, lambda e: e.conversation.name == GROUP)
    await agree(chats)


async def talk(
    chats: Sequence[ChatClient], senders: Sequence[ChatClient], received: dict[str, Received], label: str
) -> None:
    """`senders` send one message each; every member of `chats` but its sender must get it."""
    bodies = {chat.username: f"{label} from {chat.username}" for chat in senders}
    await asyncio.gather(*(chat.send(GROUP, bodies[chat.username]) for chat in senders))
    await asyncio.gather(
        *(
            received[chat.username].wait_all([body for name, body in bodies.items() if name != chat.username])
            for chat in chats
        )
    )


async def race(members: list[tuple[ChatClient, EventLog]], rounds: int, spare_every: int) -> int:
    """`rounds` rounds of every member committing at the same instant; returns how many changes were built again
    because another member's came first. Every `spare_every` rounds the last member is removed in one round (while
    the others update their keys) and invited back in the next (it reads only what is sent after)."""
    chats = [chat for chat, _log in members]
    received = {chat.username: Received(chat) for chat in chats}
    await form_group(chats, [log for _chat, log in members])
    retries = 0
    current = list(chats)
    for number in range(rounds):
        phase = number % spare_every if spare_every else -1
        if phase == spare_every - 2 and len(chats) > 2:
            spare = chats[-1]
            current = chats[:-1]
            # Who removes and invites the spare member again changes from cycle to cycle: one member fetching
            # the same peer's KeyPackage every few seconds for minutes is what the node's per-pair limit refuses.
            changer = current[(number // spare_every) % len(current)]
            outcomes = await asyncio.gather(
                changer.remove(GROUP, spare.username),
                *(chat.update_keys(GROUP) for chat in current if chat is not changer),
            )
        elif phase == spare_every - 1 and len(chats) > 2:
            current = list(chats)
            joins = joined_count(members[-1][1])
            changer = chats[(number // spare_every) % (len(chats) - 1)]
            outcomes = await asyncio.gather(
                changer.invite(GROUP, chats[-1].username),
                *(chat.update_keys(GROUP) for chat in chats[:-1] if chat is not changer),
            )
            await wait_for_join(members[-1][1], joins)
        else:
            outcomes = await asyncio.gather(*(chat.update_keys(GROUP) for chat in current))
        retries += sum(outcome.tries - 1 for outcome in outcomes)
        await agree(current)
        # One member talks after each round (all of them every tenth round): what they send must reach every
        # current member once.
        senders = current if number % 10 == 0 else [current[number % len(current)]]
        await talk(current, senders, received, f"round {number}")
    for chat in chats:
        problems = received[chat.username].problems
        assert not problems, problems
        duplicated = {body: count for body, count in received[chat.username].counts.items() if count != 1}
        assert not duplicated, (chat.username, duplicated)
        history = [m.body for m in await chat.history(GROUP, limit=100_000)]
        assert len(history) == len(set(history))
    return retries


@pytest.mark.parametrize(("size", "rounds"), [(2, ROUNDS), (5, ROUNDS)])
async def test_members_committing_at_the_same_instant(
    node: Node, open_chat: ChatFactory, size: int, rounds: int
) -> None:
    names = ["alice", "bob", "carol", "dave", "erin"][:size]
    members = [await open_chat(node, name, key_packages=4, key_packages_low=2) for name in names]
    retries = await race(members, rounds, spare_every=25)
    # Every round had several members commit at the same instant: losing to another member's commit happened
    # (and was recovered from) many times.
    assert retries >= rounds // 2


async def test_committers_on_two_nodes_of_one_database(two_nodes: tuple[Node, Node], open_chat: ChatFactory) -> None:
    a, b = two_nodes
    names = ["alice", "bob", "carol", "dave"]
    members = [await open_chat(a if i % 2 == 0 else b, name, key_packages=4) for i, name in enumerate(names)]
    retries = await race(members, ROUNDS, spare_every=10)
    assert retries >= ROUNDS // 2
