"""Approving bots from real REPLs (tmux): the owner has two REPLs open; a new bot key is asked about on both
prompts, the first answer wins and the other prompt goes away; refused or unanswered, the bot is told why."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from quicnprotochat.client import KnownHosts
from quicnprotochat.client.bot_keyfile import create_bot_key_file
from quicnprotochat.client.chat import ChatClient, LoginFailed
from quicnprotochat.common.errors import Unauthenticated
from quicnprotochat.server.config import NodeConfig
from quicnprotochat.server.node import Node
from tests.client.terminal import QPC, Tmux, client_env, env_for
from tests.conftest import node_address

pytestmark = pytest.mark.timeout(120)

APPROVAL_TIMEOUT_S = 6.0
QUESTION = "approve? [y/N]"


async def test_two_repls_are_asked_the_first_answer_wins(node_config: NodeConfig, tmp_path: Path, tmux: Tmux) -> None:
    node = Node(replace(node_config, bot_approval_timeout_s=APPROVAL_TIMEOUT_S))
    await node.start()
    try:
        await _two_repls(node, tmp_path, tmux)
    finally:
        await node.stop()


async def _two_repls(node: Node, tmp_path: Path, tmux: Tmux) -> None:
    address = node_address(node, "quic")
    base = client_env(tmp_path, QPC_SERVER=address, QPC_SERVER_FINGERPRINT=node.fingerprint, NO_COLOR="1")
    # Two REPLs of alice on one state directory (kept in clear: Argon2id would only slow the test).
    env = dict(env_for(base, "alice", state_password=None), QPC_STATE_PASSWORD="")
    await tmux.start("phone", [*QPC, "repl", "--register"], env)
    await tmux.wait_for("phone", "logged in as alice")
    await tmux.start("laptop", [*QPC, "repl"], env)
    await tmux.wait_for("laptop", "logged in as alice")

    known_hosts = KnownHosts(tmp_path / "bot_known_hosts", notice=lambda _m: None)

    async def new_bot(name: str) -> tuple[Path, str]:
        key_file = tmp_path / f"{name}.bot"
        bot = await create_bot_key_file(key_file, name, "alice", address, server_fingerprint=node.fingerprint)
        return key_file, bot.key_text

    async def start_bot(key_file: Path) -> ChatClient:
        return await ChatClient.open_bot(key_file, known_hosts=known_hosts, wait_ms=5_000)

    # Approved on the phone: the laptop's question goes away, and it says how it ended.
    helper_file, helper_key = await new_bot("helper")
    login = asyncio.create_task(start_bot(helper_file))
    question = f"bot {helper_key} wants to act as your bot helper: {QUESTION}"
    for terminal in ("phone", "laptop"):
        await tmux.wait_for(terminal, question)
    await tmux.line("phone", "y")
    await tmux.wait_for("phone", f"* approved bot helper ({helper_key})")
    laptop = await tmux.wait_for("laptop", f"* bot helper ({helper_key}) was approved on another of your devices")
    assert QUESTION not in laptop
    assert laptop.rstrip().endswith("alice >")  # the prompt is back
    helper = await asyncio.wait_for(login, 15)
    try:
        assert await helper.node.resolve_user("alice") is not None  # logged in: its session works
        # /bots lists it; /revoke ends its session at once.
        await tmux.line("laptop", "/bots")
        await tmux.wait_for("laptop", f"helper           {helper_key}  approved ")
        await tmux.line("laptop", "/revoke helper")
        await tmux.wait_for("laptop", f"* revoked bot helper ({helper_key}): logged out now")
        relogin, helper.node.relogin = helper.node.relogin, None
        with pytest.raises(Unauthenticated, match="revoked"):
            await helper.node.list_bots()  # its open session, as it was
        helper.node.relogin = relogin
        with pytest.raises(LoginFailed, match="revoked by its owner"):
            await helper.node.list_bots()  # and it cannot log in again
        await tmux.line("phone", "/bots")
        await tmux.wait_for("phone", "revoked")
    finally:
        await helper.close()

    # Refused on the laptop: the bot is told; the phone's question goes away.
    rogue_file, rogue_key = await new_bot("rogue")
    login = asyncio.create_task(start_bot(rogue_file))
    question = f"bot {rogue_key} wants to act as your bot rogue: {QUESTION}"
    for terminal in ("phone", "laptop"):
        await tmux.wait_for(terminal, question)
    await tmux.line("laptop", "n")
    await tmux.wait_for("laptop", f"* refused bot rogue ({rogue_key})")
    phone = await tmux.wait_for("phone", f"* bot rogue ({rogue_key}) was refused on another of your devices")
    assert question not in phone
    with pytest.raises(LoginFailed, match="alice refused this bot key"):
        await asyncio.wait_for(login, 15)

    # Nobody answers: after the timeout the bot is refused and both questions go away.
    late_file, late_key = await new_bot("late")
    login = asyncio.create_task(start_bot(late_file))
    question = f"bot {late_key} wants to act as your bot late: {QUESTION}"
    for terminal in ("phone", "laptop"):
        await tmux.wait_for(terminal, question)
    with pytest.raises(LoginFailed, match=f"did not approve this bot key within {APPROVAL_TIMEOUT_S:g} s"):
        await asyncio.wait_for(login, APPROVAL_TIMEOUT_S + 10)
    for terminal in ("phone", "laptop"):
        screen = await tmux.wait_for(terminal, f"* bot late ({late_key}) was not answered in time: refused")
        assert question not in screen
