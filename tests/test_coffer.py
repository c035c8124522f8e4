"""The coffer end to end: `qpc-server coffer load` (a real subprocess) on a real node's store, bots reading their
own shard over QUIC, sealed at rest under the root key and in transit to the bot's hybrid key."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from quicnprotochat.client import accounts
from quicnprotochat.common.bot_keys import bot_key_text
from quicnprotochat.common.coffer_shard import CofferValue, coffer_info, decode_shard
from quicnprotochat.common.errors import FailedPrecondition, NotFound, RpcError
from quicnprotochat.native import NativeError
from quicnprotochat.server.cli import main
from quicnprotochat.server.config import NodeConfig
from quicnprotochat.server.identity import KEY_FILE
from quicnprotochat.server.node import Node
from quicnprotochat.server.sealed_secrets import SealedDataError
from tests.bots.botlib import approved_key_login
from tests.conftest import BotFactory, ClientFactory, User, UserFactory, loopback_config
from tests.pgcluster import PgServer
from tests.test_at_rest import files_holding, make_key
from tests.test_coffer_file import EVERY_TYPE, PLANTED


async def coffer_cli(
    config: NodeConfig, *args: str, key: Path | None = None, data_dir: Path | None = None
) -> tuple[int, str, str]:
    """`qpc-server coffer ...` as the operator runs it; (exit code, stdout, stderr)."""
    where = str(data_dir or config.data_dir)
    command = [sys.executable, "-m", "quicnprotochat.server.cli", "--data-dir", where, "coffer", *args]
    if data_dir is None:
        command += ["--store", config.store_location]
    if key is not None:
        command += ["--root-key-file", str(key)]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def load(config: NodeConfig, key: Path, text: str, path: Path) -> str:
    path.write_text(text)  # noqa: ASYNC240 -- a small file, before the subprocess reads it
    code, out, err = await coffer_cli(config, "load", str(path), key=key)
    assert code == 0, err
    return out


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, PgServer | None]]:
    """(store, its PostgreSQL server): "" is the node's own SQLite file."""
    if request.param == "sqlite":
        yield "", None
        return
    server: PgServer = request.getfixturevalue("pg_server")
    url = await server.create_database()
    try:
        yield url, server
    finally:
        await server.drop_database(url)


@pytest.fixture
def root_key(tmp_path: Path) -> Path:
    return make_key(tmp_path / "root.key")


async def started(config: NodeConfig) -> Node:
    node = Node(config)
    await node.start()
    return node


@pytest.fixture
async def sealed_node(tmp_path: Path, root_key: Path) -> AsyncIterator[Node]:
    node = await started(loopback_config(tmp_path / "node", root_key_file=str(root_key)))
    try:
        yield node
    finally:
        await node.stop()


async def bot(make_user: UserFactory, node: Node, name: str, *, hybrid: bool = True) -> User:
    """A logged-in identity that published its hybrid key, as every client does after login."""
    user = await make_user(node, name)
    if hybrid:
        await user.client.upload_hybrid_key(user.key, user.vault.hybrid_public_key())
    return user


async def key_bot(
    owner: User, connect: ClientFactory, make_bot: BotFactory, node: Node, name: str, *, hybrid: bool = True
) -> User:
    """A bot logged in by its key alone (approved by `owner`) that published its hybrid key, as clients do."""
    vault = make_bot()
    client = await connect(node)
    client.access_token = await approved_key_login(owner.client, owner.name, client, vault, name)
    if hybrid:
        await client.upload_hybrid_key(vault.identity_key, vault.hybrid_public_key())
    return User(name, "", vault, client)


async def read_shard(user: User) -> dict[str, CofferValue]:
    sealed = await user.client.fetch_coffer()
    return decode_shard(user.vault.open_envelope(sealed, coffer_info(user.key)))


def definition(**bots: tuple[bytes, str]) -> str:
    """A coffer file: each bot's key, then its table's lines."""
    clients = "".join(f'"{name}" = "{bot_key_text(key)}"\n' for name, (key, _lines) in bots.items())
    tables = "".join(f'\n["{name}"]\n{lines}' for name, (_key, lines) in bots.items() if lines)
    return f"[clients]\n{clients}{tables}"


async def test_a_bot_reads_its_own_shard_and_nothing_else(
    tmp_path: Path,
    root_key: Path,
    make_user: UserFactory,
    connect: ClientFactory,
    make_bot: BotFactory,
    backend: tuple[str, PgServer | None],
) -> None:
    node = await started(loopback_config(tmp_path / "node", root_key_file=str(root_key), store=backend[0]))
    try:
        # The bots log in by key alone, approved by their owner's account.
        owner = await make_user(node, "owner")
        alice = await key_bot(owner, connect, make_bot, node, "alice")
        bob = await key_bot(owner, connect, make_bot, node, "bob")
        carol = await key_bot(owner, connect, make_bot, node, "carol")  # no shard
        dave = await key_bot(owner, connect, make_bot, node, "dave", hybrid=False)  # no hybrid key to seal it to
        text = definition(
            alice=(alice.key, 'token = "alice token"\nport = 1\n'),
            bob=(bob.key, 'token = "bob token"\nadmin = true\n'),
            dave=(dave.key, 'token = "dave token"\n'),
        )
        await load(node.config, root_key, text, tmp_path / "coffer.toml")

        assert await read_shard(alice) == {"token": "alice token", "port": 1}
        assert await read_shard(bob) == {"token": "bob token", "admin": True}
        with pytest.raises(NotFound, match="no coffer shard for your key"):
            await carol.client.fetch_coffer()
        with pytest.raises(FailedPrecondition, match="publish your hybrid key first"):
            await dave.client.fetch_coffer()
        # What alice gets is sealed to her alone: bob's keys open it neither as his shard nor as hers.
        sealed = await alice.client.fetch_coffer()
        for info in (coffer_info(bob.key), coffer_info(alice.key)):
            with pytest.raises(NativeError):
                bob.vault.open_envelope(sealed, info)

        # A new load replaces every shard at once, and the running node serves the new set.
        await load(node.config, root_key, definition(alice=(alice.key, "port = 2\n")), tmp_path / "coffer.toml")
        assert await read_shard(alice) == {"port": 2}
        with pytest.raises(NotFound):
            await bob.client.fetch_coffer()
        code, out, _err = await coffer_cli(node.config, "list")
        assert code == 0
        assert out.split("\t")[:3] == ["alice", bot_key_text(alice.key), "1 secret"]
        assert len(out.splitlines()) == 1
    finally:
        await node.stop()


def shard_rows(config: NodeConfig) -> list[tuple[bytes, bytes, float]]:
    with closing(sqlite3.connect(config.store_location)) as conn:
        rows = conn.execute("SELECT identity_key, sealed, loaded_at FROM coffer_shards ORDER BY name").fetchall()
    return [(bytes(row[0]), bytes(row[1]), float(row[2])) for row in rows]


async def test_bad_files_change_nothing(
    tmp_path: Path, sealed_node: Node, root_key: Path, make_user: UserFactory
) -> None:
    config = sealed_node.config
    alice = await bot(make_user, sealed_node, "alice")
    good = definition(alice=(alice.key, f'token = "{PLANTED}"\n'))
    await load(config, root_key, good, tmp_path / "good.toml")
    before = shard_rows(config)
    assert len(before) == 1

    other_key = make_key(tmp_path / "other.key")
    key_line = f'"alice" = "{bot_key_text(alice.key)}"\n'
    bad: dict[str, tuple[str | bytes | None, Path | None, str]] = {
        "unknown name": (good + f'\n[mallory]\nx = "{PLANTED}"\n', root_key, "line 7: .*not a bot named"),
        "malformed key": (f'[clients]\nalice = "{PLANTED}"\n', root_key, "line 2: clients.alice is not a bot key"),
        "unsupported type": (good + f'list = ["{PLANTED}"]\n', root_key, "line 6: alice.list is an array"),
        "syntax": (good + f'broken = "{PLANTED}\n', root_key, "line 6: not valid TOML"),
        "not utf-8": (good.encode() + b'bin = "\xff"\n', root_key, "line 6: not UTF-8"),
        "missing file": (None, root_key, "No such file"),
        "no root key": (good.replace("token", "other"), None, "sealed under the node's root key: give it"),
        "another root key": (good.replace("token", "other"), other_key, "sealed under another root key"),
        "no clients": (f'[alice]\ntoken = "{PLANTED}"\n', root_key, r"needs a \[clients\] table"),
        "duplicate key": (good.replace(key_line, key_line + key_line.replace("alice", "bob")), root_key, "same key"),
        "no node there": (good.replace("token", "other"), root_key, "no node in .*typo"),
    }

    async def attempt(kind: str, text: str | bytes | None, key: Path | None) -> tuple[str, int, str, str]:
        path = tmp_path / f"{kind.replace(' ', '-')}.toml"
        if isinstance(text, str):
            path.write_text(text)
        elif text is not None:
            path.write_bytes(text)
        elsewhere = tmp_path / "typo" if kind == "no node there" else None
        code, out, err = await coffer_cli(config, "load", str(path), key=key, data_dir=elsewhere)
        return kind, code, out, err

    results = await asyncio.gather(*(attempt(kind, text, key) for kind, (text, key, _why) in bad.items()))
    for kind, code, out, err in results:
        lines = err.strip().splitlines()
        assert code == 2, (kind, err)
        assert len(lines) == 1, (kind, err)
        assert lines[0].startswith("qpc-server: "), (kind, lines[0])
        assert re.search(bad[kind][2], lines[0]), (kind, lines[0])
        assert PLANTED not in out + err, kind
    assert shard_rows(config) == before
    assert not (tmp_path / "typo").exists()
    assert await read_shard(alice) == {"token": PLANTED}


async def test_a_secret_never_appears_in_logs_errors_or_on_disk(
    tmp_path: Path,
    root_key: Path,
    make_user: UserFactory,
    backend: tuple[str, PgServer | None],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    store, pg = backend
    node = await started(loopback_config(tmp_path / "node", root_key_file=str(root_key), store=store))
    said: list[str] = []  # every error and output text the operator or a client saw
    try:
        alice = await bot(make_user, node, "alice")
        shy = await bot(make_user, node, "shy", hybrid=False)
        stranger = await bot(make_user, node, "stranger")
        text = definition(alice=(alice.key, f'token = "{PLANTED}"\n'), shy=(shy.key, f'token = "{PLANTED}"\n'))
        said.append(await load(node.config, root_key, text, tmp_path / "coffer.toml"))
        assert await read_shard(alice) == {"token": PLANTED}
        for user in (shy, stranger):
            with pytest.raises(RpcError) as refused:
                await user.client.fetch_coffer()
            said.append(str(refused.value))
        for broken in (text + f'again = "{PLANTED}\n', text.replace(f'"{PLANTED}"', PLANTED)):
            (tmp_path / "broken.toml").write_text(broken)
            code, out, err = await coffer_cli(node.config, "load", str(tmp_path / "broken.toml"), key=root_key)
            assert code == 2
            said += [out, err]
        code, out, err = await coffer_cli(node.config, "list")
        said += [out, err]
        assert node.state is not None
        shards = await node.state.store.coffer_shards()
        assert {shard.name for shard in shards} == {"alice", "shy"}
    finally:
        await node.stop()
    needle = PLANTED.encode()
    assert sorted(files_holding(tmp_path, [needle])) == ["broken.toml", "coffer.toml"]  # the scan finds it in clear
    (tmp_path / "coffer.toml").unlink()
    (tmp_path / "broken.toml").unlink()
    captured = capfd.readouterr()
    assert all(PLANTED not in text for text in said), said
    assert PLANTED not in caplog.text
    assert PLANTED not in captured.out + captured.err
    assert files_holding(tmp_path, [needle]) == []  # the data dir, its database, WAL and everything else here
    if pg is not None:
        if pg.cluster is None or pg.cluster.base is None:
            pytest.skip("the PostgreSQL server was not started here: its files cannot be scanned")
        admin = await asyncpg.connect(pg.admin_url)
        try:
            await admin.execute("CHECKPOINT")
        finally:
            await admin.close()
        assert files_holding(pg.cluster.base, [needle]) == []
    assert os.stat(root_key).st_mode & 0o077 == 0


async def test_rekey_moves_the_shards(
    tmp_path: Path, root_key: Path, make_user: UserFactory, connect: ClientFactory
) -> None:
    config = loopback_config(tmp_path / "node", root_key_file=str(root_key))
    node = await started(config)
    try:
        alice = await bot(make_user, node, "alice")
        await load(config, root_key, definition(alice=(alice.key, "port = 7\n")), tmp_path / "coffer.toml")
    finally:
        await node.stop()
    new_key = make_key(tmp_path / "new.key")
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "quicnprotochat.server.cli", "--data-dir", str(config.data_dir), "rekey"),
        *("--root-key-file", str(root_key), "--new-root-key-file", str(new_key)),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _err = await process.communicate()
    assert process.returncode == 0
    assert out.decode().startswith("rekeyed: 3 records moved")  # the TLS key, the OPAQUE setup, alice's shard
    node = await started(loopback_config(tmp_path / "node", root_key_file=str(new_key)))
    try:
        client = await connect(node)
        await accounts.login(client, alice.vault, alice.name, alice.password)
        assert await read_shard(User(alice.name, alice.password, alice.vault, client)) == {"port": 7}
    finally:
        await node.stop()


async def test_the_node_refuses_to_start_on_shards_its_root_key_cannot_open(
    tmp_path: Path, make_user: UserFactory
) -> None:
    """A node that ran without a root key takes a coffer loaded with one; started later with another key, it
    refuses in one line and has changed nothing."""
    config = loopback_config(tmp_path / "node")
    node = await started(config)
    try:
        alice = await bot(make_user, node, "alice")
    finally:
        await node.stop()
    loaded_with = make_key(tmp_path / "one.key")
    await load(config, loaded_with, definition(alice=(alice.key, "port = 7\n")), tmp_path / "coffer.toml")
    before = shard_rows(config)
    other = loopback_config(tmp_path / "node", root_key_file=str(make_key(tmp_path / "two.key")))
    with pytest.raises(SealedDataError, match=r"the coffer shard of 'alice' \(.{43}\) is sealed under another root"):
        await started(other)
    with pytest.raises(SealedDataError, match=r"the coffer shard of 'alice' .* is sealed: give the root key"):
        await started(config)
    assert shard_rows(config) == before
    assert (config.data_dir / KEY_FILE).exists()  # still in clear: the refused start sealed nothing


def test_check_reads_a_file_and_touches_no_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(EVERY_TYPE)
    bad.write_text(EVERY_TYPE + f'list = ["{PLANTED}"]\n')
    nowhere = ["--data-dir", str(tmp_path / "no-node")]
    assert main([*nowhere, "coffer", "check", str(good)]) == 0
    assert capsys.readouterr().out == f"{good}: 2 bots, 21 secrets; nothing loaded\n"
    assert main([*nowhere, "coffer", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"qpc-server: {bad}: line 29: billing.list is an array; a coffer holds only strings, integers, "
        "floats, booleans, and dates, times or date-times\n"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bad.toml", "good.toml"]


async def test_a_tampered_shard_is_refused_and_logged(
    tmp_path: Path, sealed_node: Node, root_key: Path, make_user: UserFactory, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = await bot(make_user, sealed_node, "alice"), await bot(make_user, sealed_node, "bob")
    text = definition(alice=(alice.key, f'token = "{PLANTED}"\n'), bob=(bob.key, 'token = "bob"\n'))
    await load(sealed_node.config, root_key, text, tmp_path / "coffer.toml")
    with closing(sqlite3.connect(sealed_node.config.store_location, isolation_level=None)) as conn:
        # Bob's record in Alice's row: it is bound to Bob's key, so it does not open as hers.
        conn.execute(
            "UPDATE coffer_shards SET sealed = (SELECT sealed FROM coffer_shards WHERE name = 'bob')"
            " WHERE name = 'alice'"
        )
    with pytest.raises(FailedPrecondition, match="the node cannot open your coffer shard"):
        await alice.client.fetch_coffer()
    assert "the coffer shard of 'alice'" in caplog.text
    assert "damaged or tampered with" in caplog.text
    assert await read_shard(bob) == {"token": "bob"}


async def test_every_node_of_a_database_serves_a_load(
    tmp_path: Path, root_key: Path, make_user: UserFactory, pg_url: str
) -> None:
    """Nodes sharing a PostgreSQL database share their root key: a load through one node's data dir is served by
    the others at once."""
    nodes = [await started(loopback_config(tmp_path / n, root_key_file=str(root_key), store=pg_url)) for n in "ab"]
    try:
        alice = await bot(make_user, nodes[1], "alice")
        await load(nodes[0].config, root_key, definition(alice=(alice.key, "port = 9\n")), tmp_path / "coffer.toml")
        assert await read_shard(alice) == {"port": 9}
    finally:
        for node in nodes:
            await node.stop()
