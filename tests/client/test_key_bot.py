"""A bot made with `qpc bot new` and run from examples/echo_bot.py --key-file logs in with its key file alone, once its
owner approves it through ChatClient; refused, it stops with the node's reason."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import stat
import sys
from pathlib import Path

import pytest

from quicnprotochat.client.bot_keyfile import BotKeyFileError, load_bot_key_file
from quicnprotochat.client.chat import (
    BotApprovalDecided,
    BotApprovalRequested,
    ChatClient,
    ChatError,
    LoginFailed,
    MessageReceived,
    StateUnavailable,
)
from quicnprotochat.common.bot_keys import bot_key_text
from quicnprotochat.server.node import Node
from tests.client.conftest import ChatFactory
from tests.client.terminal import QPC, client_env, env_for, qpc
from tests.client.test_echo_bot import load_echo_bot
from tests.conftest import node_address

pytestmark = pytest.mark.timeout(90)


async def qpc_bot_new(node: Node, key_file: Path, name: str = "helper", owner: str = "alice") -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "quicnprotochat.client.cli",
        "--server",
        node_address(node, "quic"),
        "--server-fingerprint",
        node.fingerprint,
        "bot",
        "new",
        name,
        "--owner",
        owner,
        "-o",
        str(key_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_a_bot_runs_from_its_key_file_once_its_owner_approves(
    node: Node, open_chat: ChatFactory, tmp_path: Path
) -> None:
    key_file = tmp_path / "helper.bot"
    printed = await qpc_bot_new(node, key_file)
    bot_file = load_bot_key_file(key_file)
    assert f"bot helper of alice: key {bot_key_text(bot_file.identity_key)}" in printed
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    alice, alice_log = await open_chat(node, "alice")

    echo_bot = load_echo_bot()
    args: argparse.Namespace = echo_bot.parse_args(["--key-file", str(key_file)])
    stop = asyncio.Event()
    bot = asyncio.create_task(echo_bot.run(args, stop))
    asking = asyncio.ensure_future(alice_log.wait_for(BotApprovalRequested))
    await asyncio.wait({asking, bot}, return_when=asyncio.FIRST_COMPLETED)
    if not asking.done():  # the bot ended before its owner was asked: its own error says why
        asking.cancel()
        raise AssertionError(f"the bot ended before asking for approval: {bot.result()!r}")
    asked = asking.result()
    assert (asked.identity_key, asked.name) == (bot_file.identity_key, "helper")
    assert await alice.answer_bot(asked.request_id, True) == "approved"
    decided = await alice_log.wait_for(BotApprovalDecided)
    assert (decided.request_id, decided.state) == (asked.request_id, "approved")

    up = await alice_log.message("helper is up", timeout=30)
    await alice.send(up.conversation, "ping")
    echo = await alice_log.wait_for(MessageReceived, lambda e: e.message.body == "ping" and not e.message.outgoing)
    assert echo.conversation.id == up.conversation.id
    (listed,) = await alice.bots()
    assert (listed.identity_key, listed.name, listed.revoked) == (bot_file.identity_key, "helper", False)
    stop.set()
    assert await asyncio.wait_for(bot, 10) == 0

    # Known now: the next start needs nobody; revoked, it cannot start any more.
    again = await ChatClient.open_bot(key_file)
    await again.close()
    await alice.revoke_bot(bot_file.identity_key)
    with pytest.raises(LoginFailed, match="revoked by its owner"):
        await ChatClient.open_bot(key_file)


async def test_a_refused_bot_stops_with_the_reason(
    node: Node, open_chat: ChatFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "helper.bot"
    await qpc_bot_new(node, key_file)
    alice, alice_log = await open_chat(node, "alice")
    echo_bot = load_echo_bot()
    args = echo_bot.parse_args(["--key-file", str(key_file)])
    bot = asyncio.create_task(echo_bot.run(args))
    asked = await alice_log.wait_for(BotApprovalRequested)
    assert await alice.answer_bot(asked.request_id, False) == "refused"
    with pytest.raises(LoginFailed, match="key login as bot helper of alice failed: alice refused this bot key"):
        await asyncio.wait_for(bot, 10)
    assert await alice.bots() == []


async def test_a_key_file_others_can_read_or_a_second_one_is_refused(node: Node, tmp_path: Path) -> None:
    key_file = tmp_path / "helper.bot"
    await qpc_bot_new(node, key_file)
    os.chmod(key_file, 0o644)
    with pytest.raises(StateUnavailable, match="may be read by others"):
        await ChatClient.open_bot(key_file)
    with pytest.raises(BotKeyFileError, match=r"chmod 600"):
        load_bot_key_file(key_file)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "quicnprotochat.client.cli",
        "bot",
        "new",
        "helper",
        "--owner",
        "alice",
        "-o",
        str(key_file),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode == 2
    assert "exists: a key file is never overwritten" in err.decode()


async def test_a_repl_without_a_terminal_prints_the_question_and_reads_the_answer(
    node: Node, open_chat: ChatFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from quicnprotochat.client.repl.app import Output, Repl

    key_file = tmp_path / "helper.bot"
    await qpc_bot_new(node, key_file)
    alice, alice_log = await open_chat(node, "alice")
    repl = Repl(alice, Output(color=False))  # as on a pipe: no prompt on screen
    alice.add_listener(repl.on_event)
    login = asyncio.create_task(ChatClient.open_bot(key_file))
    await alice_log.wait_for(BotApprovalRequested)
    key = bot_key_text(load_bot_key_file(key_file).identity_key)
    assert f"bot {key} wants to act as your bot helper: approve? [y/N]" in capsys.readouterr().out
    await repl.handle("hello")  # not an answer: handled as usual, the question stays
    assert repl.asking
    await repl.handle("yes")
    assert f"* approved bot helper ({key})" in capsys.readouterr().out
    await (await asyncio.wait_for(login, 15)).close()
    await repl.handle("/bots")
    assert f"helper           {key}  approved " in capsys.readouterr().out
    await repl.handle(f"/revoke {key}")  # by key as well as by name
    assert f"* revoked bot helper ({key}): logged out now" in capsys.readouterr().out
    with pytest.raises(ChatError, match="no bot of yours named or keyed helper"):  # the REPL prints it
        await repl.handle("/revoke helper")


async def test_qpc_recv_follow_tells_of_a_bot_waiting_for_approval(node: Node, tmp_path: Path) -> None:
    base = client_env(tmp_path, QPC_SERVER=node_address(node, "quic"), QPC_SERVER_FINGERPRINT=node.fingerprint)
    alice = dict(env_for(base, "alice", state_password=None), QPC_STATE_PASSWORD="")
    assert (await qpc("register", env=alice)).returncode == 0
    follower = await asyncio.create_subprocess_exec(
        *QPC, "recv", "--follow", env=alice, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        key_file = tmp_path / "helper.bot"
        await qpc_bot_new(node, key_file)
        key = bot_key_text(load_bot_key_file(key_file).identity_key)
        login = asyncio.create_task(ChatClient.open_bot(key_file))
        assert follower.stderr is not None
        line = await asyncio.wait_for(follower.stderr.readline(), 30)
        while b"wants to act" not in line and line:
            line = await asyncio.wait_for(follower.stderr.readline(), 30)
        expected = f"* bot {key} wants to act as your bot helper: approve? [y/N] (answer in qpc repl)"
        assert line.decode().strip() == expected
        login.cancel()
    finally:
        follower.send_signal(signal.SIGTERM)
        await asyncio.wait_for(follower.wait(), 20)
    assert follower.returncode == 0
