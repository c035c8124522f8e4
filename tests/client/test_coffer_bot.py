"""The whole bot story with secrets: `qpc bot new`, the owner approves, the operator loads a coffer for the bot's
key, and the bot, run from its key file alone, reads every secret back with its type through `ChatClient.coffer`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from quicnprotochat.client.bot_keyfile import load_bot_key_file
from quicnprotochat.client.chat import BotApprovalRequested, ChatClient, ChatError
from quicnprotochat.common.bot_keys import bot_key_text
from quicnprotochat.server.config import NodeConfig
from quicnprotochat.server.node import Node
from tests.client.conftest import ChatFactory
from tests.client.test_key_bot import qpc_bot_new
from tests.conftest import loopback_config
from tests.test_at_rest import make_key
from tests.test_coffer import load
from tests.test_coffer_file import EVERY_TYPE, EXPECTED, KEY_A, same_typed

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def node_config(tmp_path: Path) -> NodeConfig:
    """The suite's `node`, with a root key: a coffer lives only under one."""
    return loopback_config(tmp_path / "node", root_key_file=str(make_key(tmp_path / "root.key")))


async def test_a_bot_run_from_its_key_file_reads_its_typed_secrets(
    node: Node, open_chat: ChatFactory, tmp_path: Path
) -> None:
    key_file = tmp_path / "billing.bot"
    await qpc_bot_new(node, key_file, name="billing", owner="alice")
    alice, alice_log = await open_chat(node, "alice")
    opening = asyncio.ensure_future(ChatClient.open_bot(key_file))
    asked = await alice_log.wait_for(BotApprovalRequested)
    assert await alice.answer_bot(asked.request_id, True) == "approved"
    bot = await opening
    try:
        with pytest.raises(ChatError, match="no coffer shard for your key"):
            await bot.coffer()
        key = bot_key_text(load_bot_key_file(key_file).identity_key)
        root_key = node.config.root_key_file
        assert root_key is not None
        await load(node.config, Path(root_key), EVERY_TYPE.replace(KEY_A, key), tmp_path / "coffer.toml")
        same_typed(await bot.coffer(), EXPECTED)
    finally:
        await bot.close()
