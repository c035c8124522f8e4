"""A receiving client SIGKILLed at random points, 20 times (a real process): no message lost (each one is in the
history exactly once), none shown twice (every `MessageReceived` the engine emits is printed at once, and none
twice across the restarts), and the group goes on."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

from quicnprotochat.client.chat import JoinedConversation
from quicnprotochat.server.node import Node
from tests.client.conftest import ChatFactory
from tests.client.terminal import client_env, env_for, qpc
from tests.conftest import node_address

KILLS = 20
PRINTER = Path(__file__).with_name("print_messages.py")


class Receiver:
    """One receiving client process (`tests.client.print_messages`); what it printed is appended to `printed`."""

    def __init__(self, args: list[str], env: dict[str, str], printed: list[str], errors: list[str]) -> None:
        self.args = args
        self.env = env
        self.printed = printed
        self.errors = errors
        self.process: asyncio.subprocess.Process | None = None
        self.readers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(PRINTER),
            *self.args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self.readers = [
            asyncio.create_task(
                self._read(self.process.stdout, lambda line: self.printed.append(json.loads(line)["body"]))
            ),
            asyncio.create_task(self._read(self.process.stderr, self.errors.append)),
        ]

    @staticmethod
    async def _read(stream: asyncio.StreamReader, sink: Callable[[str], None]) -> None:
        async for raw in stream:
            line = raw.decode().strip()
            if line:
                sink(line)

    async def stop(self, *, kill: bool) -> None:
        assert self.process is not None
        if self.process.returncode is not None:
            await asyncio.gather(*self.readers)
            raise AssertionError(f"qpc recv ended by itself ({self.process.returncode}): {self.errors}")
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        await self.process.wait()
        await asyncio.gather(*self.readers)


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def register_carol(node: Node, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """Registers carol with `qpc` (state in clear); her receiver's arguments and environment."""
    base = client_env(tmp_path, QPC_SERVER=node_address(node, "quic"), QPC_SERVER_FINGERPRINT=node.fingerprint)
    carol_env = dict(env_for(base, "carol", state_password=None), QPC_STATE_PASSWORD="")
    registered = await qpc("register", env=carol_env)
    assert registered.returncode == 0, registered.stderr
    # From now on the cached session is used (a given password would log in again on every start).
    carol_env = {key: value for key, value in carol_env.items() if key != "QPC_PASSWORD"}
    carol_state = tmp_path / "data" / "quicnprotochat" / "client" / "carol"
    return [node_address(node, "quic"), node.fingerprint, "carol", str(carol_state)], carol_env


async def test_receiver_killed_at_random_points(node: Node, open_chat: ChatFactory, tmp_path: Path) -> None:
    carol_args, carol_env = await register_carol(node, tmp_path)
    alice, alice_log = await open_chat(node, "alice")
    bob, bob_log = await open_chat(node, "bob")
    group = await alice.create_group("team")
    await alice.invite(group, "bob")
    await alice.invite(group, "carol")
    await bob_log.wait_for(JoinedConversation)

    sent: list[str] = []
    stop = asyncio.Event()

    async def chatter() -> None:
        # Messages and, now and then, a commit: kills land while carol processes either.
        number = 0
        while not stop.is_set():
            sender = (alice, bob)[number % 2]
            if number % 7 == 3:
                await sender.update_keys("team")
            body = f"message {number}"
            await sender.send("team", body)
            sent.append(body)
            number += 1
            await asyncio.sleep(0.01)

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    printed: list[str] = []
    errors: list[str] = []
    talking = asyncio.create_task(chatter())
    try:
        for _kill in range(KILLS):
            receiver = Receiver(carol_args, carol_env, printed, errors)
            before = len(printed)
            await receiver.start()

            def printed_more(before: int = before) -> bool:
                return len(printed) > before

            with contextlib.suppress(AssertionError):  # some kills land before anything was printed: fine too
                await wait_until(printed_more, 15, "carol to print")
            await asyncio.sleep(rng.uniform(0, 0.3))
            await receiver.stop(kill=True)
    finally:
        stop.set()
        await talking

    # A last run, not killed: it reads up to the last message sent.
    await run_until_printed(carol_args, carol_env, printed, errors, sent[-1], seed)
    counts = collections.Counter(printed)
    assert [body for body, count in counts.items() if count != 1] == [], f"seed {seed}: shown twice"
    stored = await stored_bodies(carol_env)
    # Nothing lost: every message is in carol's history exactly once. Those not printed are exactly those whose
    # display a kill cut off between storing and printing: at most one per kill, and they are in the history
    # like any message that arrived while the client was not running.
    assert sorted(stored) == sorted(sent), f"seed {seed}"
    unprinted = set(sent) - set(counts)
    assert len(unprinted) <= KILLS, f"seed {seed}: {sorted(unprinted)}"
    assert not [line for line in errors if line.startswith("!")], (seed, errors)

    # The group goes on: carol talks, alice changes the group, carol reads what comes after.
    assert (await qpc("send", "team", "carol is fine", env=carol_env)).returncode == 0
    await alice_log.message("carol is fine")
    await bob_log.message("carol is fine")
    await alice.update_keys("team")
    await alice.send("team", "after the crashes")
    await run_until_printed(carol_args, carol_env, printed, errors, "after the crashes", seed)
    assert collections.Counter(printed)["after the crashes"] == 1


async def stored_bodies(env: dict[str, str]) -> list[str]:
    history = await qpc("history", "team", "-n", "100000", "--json", env=env)
    return [json.loads(line)["body"] for line in history.stdout.splitlines() if not json.loads(line)["outgoing"]]


async def run_until_printed(
    args: list[str], env: dict[str, str], printed: list[str], errors: list[str], last: str, seed: int
) -> None:
    receiver = Receiver(args, env, printed, errors)
    await receiver.start()
    try:
        await wait_until(lambda: last in printed, 60, f"{last!r} to be printed (seed {seed})")
    finally:
        await receiver.stop(kill=False)


BACKLOG_ROUNDS = 4
BACKLOG = 40


async def test_receiver_killed_while_it_works_through_a_backlog(
    node: Node, open_chat: ChatFactory, tmp_path: Path
) -> None:
    """Messages that piled up while the receiver was down come in fetched batches, which the vault decrypts in one
    transaction each (`Vault.process_batch`) before they are stored one by one and acked. Killed as soon as it
    shows the first of them (the batch decrypted and journaled, most of it not yet stored nor acked) or at a random
    moment before: nothing is lost, nothing shown twice, no message fails to decrypt on the next start."""
    carol_args, carol_env = await register_carol(node, tmp_path)
    alice, _alice_log = await open_chat(node, "alice")
    group = await alice.create_group("team")
    await alice.invite(group, "carol")

    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    sent: list[str] = []
    printed: list[str] = []
    errors: list[str] = []
    for round_ in range(BACKLOG_ROUNDS):
        for number in range(BACKLOG):
            body = f"round {round_} message {number}"
            await alice.send("team", body)
            sent.append(body)
        receiver = Receiver(carol_args, carol_env, printed, errors)
        before = len(printed)
        await receiver.start()
        if round_ % 2 == 0:

            def printed_more(before: int = before) -> bool:
                return len(printed) > before

            await wait_until(printed_more, 30, f"carol to print (seed {seed})")
        else:
            await asyncio.sleep(rng.uniform(0.5, 2.5))
        await receiver.stop(kill=True)

    await run_until_printed(carol_args, carol_env, printed, errors, sent[-1], seed)
    counts = collections.Counter(printed)
    assert [body for body, count in counts.items() if count != 1] == [], f"seed {seed}: shown twice"
    assert sorted(await stored_bodies(carol_env)) == sorted(sent), f"seed {seed}"
    assert not [line for line in errors if line.startswith("!")], (seed, errors)
