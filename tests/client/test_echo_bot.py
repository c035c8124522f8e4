"""The example echo bot, run through its main coroutine against a real node."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import signal
import sys
from pathlib import Path
from types import ModuleType

from quicnprotochat.client.chat import JoinedConversation, MessageReceived
from quicnprotochat.server.node import Node
from tests.client.conftest import ChatFactory
from tests.conftest import node_address

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "echo_bot.py"


def held_by(loop: asyncio.AbstractEventLoop) -> set[signal.Signals]:
    """The stop signals whose process-wide handler is `loop`'s (uvloop's handler is a method of its loop)."""
    return {
        signum
        for signum in (signal.SIGINT, signal.SIGTERM)
        if getattr(signal.getsignal(signum), "__self__", None) is loop
    }


def load_echo_bot() -> ModuleType:
    spec = importlib.util.spec_from_file_location("echo_bot", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["echo_bot"] = module
    spec.loader.exec_module(module)
    return module


async def test_echo_bot_answers(node: Node, open_chat: ChatFactory, tmp_path: Path) -> None:
    echo_bot = load_echo_bot()
    args: argparse.Namespace = echo_bot.parse_args(
        [
            "--server",
            node_address(node, "quic"),
            "--username",
            "echo",
            "--password",
            "echo password",
            "--state-password",
            "echo state",
            "--state-dir",
            str(tmp_path / "echo-state"),
            "--server-fingerprint",
            node.fingerprint,
        ]
    )
    stop = asyncio.Event()
    bot = asyncio.create_task(echo_bot.run(args, stop))
    alice, alice_log = await open_chat(node, "alice")
    bob, bob_log = await open_chat(node, "bob")
    # The bot registers on its own; wait until its account is there.
    for _ in range(100):
        if await alice.node.resolve_user("echo") is not None:
            break
        await asyncio.sleep(0.1)

    dm = await alice.dm("@echo")
    await alice.send(dm, "ping")
    answer = await alice_log.message("ping")
    assert answer.message.sender_username == "echo" and answer.conversation.id == dm.id

    group = await alice.create_group("echoes")
    await alice.invite(group, "echo")
    await alice.invite(group, "bob")
    await bob_log.wait_for(JoinedConversation)
    await bob.send("echoes", "hello group")
    from_echo = await alice_log.wait_for(
        MessageReceived, lambda e: e.message.body == "hello group" and e.message.sender_username == "echo"
    )
    assert from_echo.conversation.name == "echoes"
    await bob_log.wait_for(MessageReceived, lambda e: e.message.sender_username == "echo")
    assert held_by(asyncio.get_running_loop()) == {signal.SIGINT, signal.SIGTERM}  # they stop the bot
    stop.set()
    assert await asyncio.wait_for(bot, 10) == 0
    # Given back: uvloop would keep them even once this loop is closed, and the test process would never again
    # stop on SIGINT or SIGTERM.
    assert held_by(asyncio.get_running_loop()) == set()
