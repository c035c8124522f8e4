"""The node's secrets at rest: sealed under a root key, checked before anything is written, moved by `rekey`."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import sqlite3
import sys
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from quicnprotochat.bench.node_runner import start_node_process
from quicnprotochat.client import accounts
from quicnprotochat.native import OPAQUE_SETUP_PURPOSE, MalformedError, RootKey, sealed_record_info
from quicnprotochat.server.cli import main
from quicnprotochat.server.config import NodeConfig
from quicnprotochat.server.identity import KEY_FILE, SEALED_KEY_FILE, TLS_KEY_CONTEXT, TLS_KEY_PURPOSE, IdentityError
from quicnprotochat.server.node import Node
from quicnprotochat.server.sealed_secrets import (
    OPAQUE_SETUP_NAME,
    SealedDataError,
    context,
    load_or_create_secret,
    rekey_secrets,
)
from quicnprotochat.server.store import open_store
from tests.client.terminal import Tmux
from tests.conftest import ClientFactory, User, UserFactory, loopback_config
from tests.pgcluster import PgServer

SETUP_CONTEXT = context(OPAQUE_SETUP_NAME)


def make_key(path: Path) -> Path:
    RootKey.generate().write_key_file(str(path))
    return path


def sealed_config(tmp_path: Path, key: Path, **settings: object) -> NodeConfig:
    return loopback_config(tmp_path / "node", root_key_file=str(key), **settings)


def stored_setup(config: NodeConfig) -> bytes:
    with closing(sqlite3.connect(config.store_location)) as conn:
        row = conn.execute("SELECT value FROM server_secrets WHERE name = ?", (OPAQUE_SETUP_NAME,)).fetchone()
    return bytes(row[0])


def store_setup(config: NodeConfig, value: bytes) -> None:
    with closing(sqlite3.connect(config.store_location, isolation_level=None)) as conn:
        conn.execute("UPDATE server_secrets SET value = ? WHERE name = ?", (value, OPAQUE_SETUP_NAME))


def tls_key_secrets(pem: bytes | bytearray) -> list[bytes]:
    """What of the TLS key must not be on disk: its PEM body, PKCS#8 DER, and the raw private scalar."""
    key = serialization.load_pem_private_key(bytes(pem), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    body = b"".join(bytes(pem).splitlines()[1:3])
    return [der, body, key.private_numbers().private_value.to_bytes(32, "big")]


def chunks(secret: bytes | bytearray, size: int = 16) -> list[bytes]:
    return [bytes(secret[i : i + size]) for i in range(0, len(secret) - size + 1, size)]


def files_holding(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.relative_to(root)}" for needle in needles if needle in data]
    return found


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


async def login(connect: ClientFactory, node: Node, user: User) -> None:
    """Logs in again over a new connection: the password file and the OPAQUE setup still work together."""
    client = await connect(node)
    session = await accounts.login(client, user.vault, user.name, user.password)
    assert session.username == user.name  # login raises on a password file the setup cannot check


async def test_no_secret_in_clear_on_disk_sqlite(tmp_path: Path, make_user: UserFactory) -> None:
    key_file = make_key(tmp_path / "root.key")
    config = sealed_config(tmp_path, key_file)
    node = Node(config)
    await node.start()
    try:
        await make_user(node, "alice")
    finally:
        await node.stop()
    root = RootKey.from_key_file(str(key_file))
    assert not (config.data_dir / KEY_FILE).exists()
    pem = root.open(TLS_KEY_PURPOSE, TLS_KEY_CONTEXT, (config.data_dir / SEALED_KEY_FILE).read_bytes())
    record = stored_setup(config)
    assert sealed_record_info(record) == (1, root.key_id)
    setup = root.open(OPAQUE_SETUP_PURPOSE, SETUP_CONTEXT, record)
    assert len(setup) >= 64
    assert files_holding(config.data_dir, tls_key_secrets(pem) + chunks(setup)) == []


async def test_no_secret_in_clear_on_disk_postgres(
    tmp_path: Path, make_user: UserFactory, pg_server: PgServer, pg_url: str
) -> None:
    if pg_server.cluster is None or pg_server.cluster.base is None:
        pytest.skip("the PostgreSQL server was not started here: its files cannot be scanned")
    key_file = make_key(tmp_path / "root.key")
    config = sealed_config(tmp_path, key_file, store=pg_url)
    node = Node(config)
    await node.start()
    try:
        await make_user(node, "alice")
        assert node.state is not None
        record = await node.state.store.get_secret(OPAQUE_SETUP_NAME)
        await node.state.store.scrub_replaced_secrets()  # a checkpoint of sorts: the table is rewritten to disk
    finally:
        await node.stop()
    assert record is not None
    root = RootKey.from_key_file(str(key_file))
    setup = root.open(OPAQUE_SETUP_PURPOSE, SETUP_CONTEXT, record)
    admin = await asyncpg.connect(pg_server.admin_url)
    try:
        await admin.execute("CHECKPOINT")  # whatever the server holds in its buffers is now in its files
    finally:
        await admin.close()
    assert files_holding(pg_server.cluster.base, chunks(setup)) == []
    assert files_holding(config.data_dir, chunks(setup)) == []


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(args)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def run_args(config: NodeConfig, *extra: str) -> list[str]:
    return ["--data-dir", str(config.data_dir), "run", "--quic-listen", "127.0.0.1:0", "--tcp-listen", "127.0.0.1:0"]


async def start_and_stop(config: NodeConfig) -> str:
    node = Node(config)
    await node.start()
    fingerprint = node.fingerprint
    await node.stop()
    return fingerprint


def refuse(config: NodeConfig, key_args: list[str], capsys: pytest.CaptureFixture[str], pattern: str) -> None:
    before = snapshot(config.data_dir)
    code, lines = run_cli([*run_args(config), *key_args], capsys)
    assert code == 2
    assert len(lines) == 1, lines
    assert re.search(pattern, lines[0]), lines[0]
    assert snapshot(config.data_dir) == before


def test_refusals_change_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = make_key(tmp_path / "root.key")
    config = sealed_config(tmp_path, key_file)
    asyncio.run(start_and_stop(config))
    wrong = make_key(tmp_path / "wrong.key")
    refuse(config, ["--root-key-file", str(wrong)], capsys, r"sealed under another root key")
    refuse(config, ["--root-key-file", str(tmp_path / "missing.key")], capsys, r"root key file .* does not exist")
    refuse(config, [], capsys, r"sealed: give the root key")
    (tmp_path / "short.key").write_bytes(b"x" * 31)
    refuse(config, ["--root-key-file", str(tmp_path / "short.key")], capsys, r"exactly 32 bytes")

    # A tampered sealed TLS key.
    sealed = config.data_dir / SEALED_KEY_FILE
    original = sealed.read_bytes()
    sealed.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    refuse(config, ["--root-key-file", str(key_file)], capsys, r"node-key.sealed cannot be opened: damaged or tampered")
    sealed.write_bytes(original)

    # A tampered sealed OPAQUE setup in the store.
    record = stored_setup(config)
    store_setup(config, record[:-1] + b"\0")
    refuse(config, ["--root-key-file", str(key_file)], capsys, r"opaque_server_setup.*damaged or tampered")
    store_setup(config, record)
    asyncio.run(start_and_stop(config))  # the right key, undamaged records: it starts


async def test_upgrade_from_clear_data_dir(tmp_path: Path, make_user: UserFactory, connect: ClientFactory) -> None:
    clear = loopback_config(tmp_path / "node")
    node = Node(clear)
    await node.start()
    try:
        alice = await make_user(node, "alice")
        fingerprint = node.fingerprint
    finally:
        await node.stop()
    clear_pem = (clear.data_dir / KEY_FILE).read_bytes()
    clear_setup = stored_setup(clear)
    with pytest.raises(MalformedError):  # the node ran without a root key: the setup is in clear
        sealed_record_info(clear_setup)

    key_file = make_key(tmp_path / "root.key")
    sealed = replace(clear, root_key_file=str(key_file))
    await expect_same_node(sealed, connect, alice, fingerprint)
    assert not (clear.data_dir / KEY_FILE).exists()
    assert sealed_record_info(stored_setup(sealed))[1] == RootKey.from_key_file(str(key_file)).key_id
    assert files_holding(clear.data_dir, tls_key_secrets(clear_pem) + chunks(clear_setup)) == []


def rekey_command(config: NodeConfig, old: Path, new: Path) -> list[str]:
    return [
        *(sys.executable, "-m", "quicnprotochat.server.cli", "--data-dir", str(config.data_dir), "rekey"),
        *("--store", config.store_location, "--root-key-file", str(old), "--new-root-key-file", str(new)),
    ]


async def rekey(config: NodeConfig, old: Path, new: Path) -> str:
    process = await asyncio.create_subprocess_exec(
        *rekey_command(config, old, new), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode()


async def start_sealed_node_with_user(config: NodeConfig, make_user: UserFactory) -> tuple[User, str]:
    node = Node(config)
    await node.start()
    try:
        return await make_user(node, "alice"), node.fingerprint
    finally:
        await node.stop()


async def expect_same_node(config: NodeConfig, connect: ClientFactory, user: User, fingerprint: str) -> None:
    """The node starts with `config`, keeps its fingerprint, and `user` logs in."""
    node = Node(config)
    await node.start()
    try:
        assert node.fingerprint == fingerprint
        await login(connect, node, user)
    finally:
        await node.stop()


async def test_rekey(tmp_path: Path, make_user: UserFactory, connect: ClientFactory) -> None:
    old_key = make_key(tmp_path / "old.key")
    config = sealed_config(tmp_path, old_key)
    alice, fingerprint = await start_sealed_node_with_user(config, make_user)
    new_key = make_key(tmp_path / "new.key")
    assert "2 records moved" in await rekey(config, old_key, new_key)  # the TLS key and the OPAQUE setup
    new_id = RootKey.from_key_file(str(new_key)).key_id
    assert sealed_record_info(stored_setup(config))[1] == new_id
    assert sealed_record_info((config.data_dir / SEALED_KEY_FILE).read_bytes())[1] == new_id
    with pytest.raises(IdentityError, match="sealed under another root key"):
        await Node(config).start()
    await expect_same_node(replace(config, root_key_file=str(new_key)), connect, alice, fingerprint)


async def test_rekey_killed_halfway_resumes(
    tmp_path: Path, make_user: UserFactory, connect: ClientFactory, pg_url: str
) -> None:
    old_key = make_key(tmp_path / "old.key")
    config = sealed_config(tmp_path, old_key, store=pg_url)
    alice, fingerprint = await start_sealed_node_with_user(config, make_user)
    new_key = make_key(tmp_path / "new.key")
    new_id = RootKey.from_key_file(str(new_key)).key_id

    # Lock the setup's row so that the rekey stops after moving the TLS key, and kill it there.
    blocker = await asyncpg.connect(pg_url)
    transaction = blocker.transaction()
    await transaction.start()
    await blocker.execute("SELECT value FROM server_secrets FOR UPDATE")
    process = await asyncio.create_subprocess_exec(*rekey_command(config, old_key, new_key))
    try:
        deadline = time.monotonic() + 60
        while sealed_record_info((config.data_dir / SEALED_KEY_FILE).read_bytes())[1] != new_id:
            assert process.returncode is None and time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # let it reach the locked row
        process.send_signal(signal.SIGKILL)
        await process.wait()
        # A killed client's statement still waits in its server process until that notices: end it too, as a
        # crashed machine would.
        await blocker.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await transaction.rollback()
    row = await blocker.fetchrow("SELECT value FROM server_secrets WHERE name = $1", OPAQUE_SETUP_NAME)
    await blocker.close()
    assert sealed_record_info(bytes(row[0]))[1] != new_id  # the store's record had not moved

    assert "1 records moved" in await rekey(config, old_key, new_key)  # run again: only the setup was left
    assert "0 records moved" in await rekey(config, old_key, new_key)
    await expect_same_node(replace(config, root_key_file=str(new_key)), connect, alice, fingerprint)


def mappings(smaps: str) -> list[tuple[int, int, set[str], int]]:
    """(start, end, VmFlags, Locked kB) of each mapping in a /proc/PID/smaps text."""
    found = []
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", smaps):
        start, end = (int(part, 16) for part in block.split()[0].split("-"))
        flags = re.search(r"VmFlags:(.*)", block)
        locked = re.search(r"Locked:\s+(\d+) kB", block)
        found.append((start, end, set(flags[1].split()) if flags else set(), int(locked[1]) if locked else 0))
    return found


def test_root_key_pages_are_locked_and_not_dumped(tmp_path: Path) -> None:
    root = RootKey.from_key_file(str(make_key(tmp_path / "root.key")))
    locked, not_dumped, address = root.memory_protection
    assert locked and not_dumped
    [(_, _, flags, locked_kb)] = [m for m in mappings(Path("/proc/self/smaps").read_text()) if m[0] <= address < m[1]]
    assert {"lo", "dd"} <= flags  # mlock'd, and left out of core dumps
    assert locked_kb >= 4


def test_init_makes_a_key_file_and_a_sealed_identity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, key_file = tmp_path / "node", tmp_path / "root.key"
    assert main(["--data-dir", str(data_dir), "init", "--root-key-file", str(key_file)]) == 0
    assert key_file.stat().st_size == 32 and key_file.stat().st_mode & 0o077 == 0
    assert (data_dir / SEALED_KEY_FILE).exists() and not (data_dir / KEY_FILE).exists()
    written = key_file.read_bytes()
    code, lines = run_cli(["--data-dir", str(data_dir), "init", "--root-key-file", str(key_file)], capsys)
    assert code == 2 and "never overwrites" in lines[0]
    assert key_file.read_bytes() == written
    assert main(["--data-dir", str(data_dir), "info"]) == 0
    key_id = RootKey.from_key_file(str(key_file)).key_id.hex()
    assert f"sealed under root key {key_id}" in capsys.readouterr().out


def test_a_passphrase_root_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "node"
    monkeypatch.setenv("QPC_SERVER_ROOT_PASSPHRASE", "correct horse battery staple")
    assert main(["--data-dir", str(data_dir), "init", "--root-passphrase"]) == 0
    assert (data_dir / "root-key.salt").exists()
    config = loopback_config(data_dir)  # the passphrase in the environment is enough to use it
    fingerprint = asyncio.run(start_and_stop(config))
    monkeypatch.setenv("QPC_SERVER_ROOT_PASSPHRASE", "wrong horse battery staple")
    refuse(config, [], capsys, r"sealed under another root key")
    monkeypatch.delenv("QPC_SERVER_ROOT_PASSPHRASE")
    refuse(config, [], capsys, r"sealed: give the root key")
    monkeypatch.setenv("QPC_SERVER_ROOT_PASSPHRASE", "correct horse battery staple")
    assert asyncio.run(start_and_stop(config)) == fingerprint


async def test_nodes_sharing_a_database_share_the_root_key(tmp_path: Path, make_user: UserFactory, pg_url: str) -> None:
    key_file = make_key(tmp_path / "root.key")
    first = loopback_config(tmp_path / "node1", root_key_file=str(key_file), store=pg_url)
    second = loopback_config(tmp_path / "node2", root_key_file=str(key_file), store=pg_url)
    await start_sealed_node_with_user(first, make_user)
    node = Node(second)  # its own identity, the database's sealed setup: alice's password file works through it
    await node.start()
    try:
        await make_user(node, "bob")
    finally:
        await node.stop()
    stranger = loopback_config(tmp_path / "node3", root_key_file=str(make_key(tmp_path / "other.key")), store=pg_url)
    with pytest.raises(SealedDataError, match="sealed under another root key"):
        await Node(stranger).start()
    assert not (tmp_path / "node3" / SEALED_KEY_FILE).exists()  # refused before making an identity


async def test_the_running_node_holds_its_root_key_on_a_locked_page(tmp_path: Path) -> None:
    key_file = make_key(tmp_path / "root.key")
    node = await start_node_process(tmp_path / "node", {"root_key_file": str(key_file), "log_level": "warning"})
    try:
        assert node.pid is not None
        smaps = Path(f"/proc/{node.pid}/smaps").read_text()  # noqa: ASYNC240 -- one small read
    finally:
        await node.stop()
    # The node's root key page: locked (lo) and left out of core dumps (dd); nothing else in the node asks for both.
    assert any({"lo", "dd"} <= flags and locked_kb >= 4 for _, _, flags, locked_kb in mappings(smaps))


def test_rekey_from_a_key_file_to_a_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = make_key(tmp_path / "root.key")
    config = sealed_config(tmp_path, key_file)
    fingerprint = asyncio.run(start_and_stop(config))
    monkeypatch.setenv("QPC_SERVER_NEW_ROOT_PASSPHRASE", "a new passphrase")
    rekey_args = ["--data-dir", str(config.data_dir), "rekey", "--root-key-file", str(key_file)]
    assert main([*rekey_args, "--new-root-passphrase"]) == 0
    assert (config.data_dir / "root-key.salt").exists() and not (config.data_dir / "root-key.salt.next").exists()
    monkeypatch.setenv("QPC_SERVER_ROOT_PASSPHRASE", "a new passphrase")
    assert asyncio.run(start_and_stop(loopback_config(config.data_dir))) == fingerprint


async def test_a_later_server_secret_is_sealed_and_rekeyed(tmp_path: Path) -> None:
    root, new = RootKey.generate(), RootKey.generate()
    store = await open_store(str(tmp_path / "node.sqlite3"), clock=time.time)
    try:
        made = await load_or_create_secret(store, root, "coffer_key", lambda: b"k" * 32)
        again = await load_or_create_secret(store, root, "coffer_key", lambda: b"x" * 32)
        assert made == again == bytearray(b"k" * 32)  # made once; the second candidate is not stored
        stored = await store.get_secret("coffer_key")
        assert stored is not None and sealed_record_info(stored)[1] == root.key_id
        assert b"k" * 16 not in stored
        with pytest.raises(SealedDataError, match="sealed: give the root key"):
            await load_or_create_secret(store, None, "coffer_key", lambda: b"x" * 32)
        assert await rekey_secrets(store, root, new) == 1
        assert await load_or_create_secret(store, new, "coffer_key", lambda: b"x" * 32) == bytearray(b"k" * 32)
        with pytest.raises(SealedDataError, match="another root key"):
            await load_or_create_secret(store, root, "coffer_key", lambda: b"x" * 32)
    finally:
        await store.close()


async def test_init_asks_for_the_passphrase_twice_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "node"
    command = [
        sys.executable,
        "-m",
        "quicnprotochat.server.cli",
        "--data-dir",
        str(data_dir),
        "init",
        "--root-passphrase",
    ]
    env = {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    tmux = Tmux(tmp_path / "tmux.sock")
    try:
        await tmux.start("typo", command, env)
        await tmux.wait_for("typo", "root key passphrase:")
        await tmux.line("typo", "one passphrase")
        await tmux.wait_for("typo", "(again):")
        await tmux.line("typo", "another passphrase")
        screen = await tmux.wait_for("typo", "EXITED 2")
        assert "the two passphrases differ" in screen and "one passphrase" not in screen  # no echo
        assert not (data_dir / "root-key.salt").exists()  # nothing written before both agree

        await tmux.start("init", command, env)
        await tmux.wait_for("init", "root key passphrase:")
        await tmux.line("init", "one passphrase")
        await tmux.wait_for("init", "(again):")
        await tmux.line("init", "one passphrase")
        await tmux.wait_for("init", "EXITED 0", timeout=60)
    finally:
        await tmux.close()
    monkeypatch.setenv("QPC_SERVER_ROOT_PASSPHRASE", "one passphrase")
    await start_and_stop(loopback_config(data_dir))


async def test_upgrade_on_postgres_leaves_the_clear_setup_only_in_old_wal(
    tmp_path: Path, make_user: UserFactory, connect: ClientFactory, pg_server: PgServer, pg_url: str
) -> None:
    if pg_server.cluster is None or pg_server.cluster.base is None:
        pytest.skip("the PostgreSQL server was not started here: its files cannot be scanned")
    clear = loopback_config(tmp_path / "node", store=pg_url)
    node = Node(clear)
    await node.start()
    try:
        alice = await make_user(node, "alice")
        fingerprint = node.fingerprint
        assert node.state is not None
        clear_setup = await node.state.store.get_secret(OPAQUE_SETUP_NAME)
    finally:
        await node.stop()
    assert clear_setup is not None
    sealed = replace(clear, root_key_file=str(make_key(tmp_path / "root.key")))
    await expect_same_node(sealed, connect, alice, fingerprint)
    admin = await asyncpg.connect(pg_server.admin_url)
    try:
        await admin.execute("CHECKPOINT")  # the table's old file, replaced by VACUUM FULL, goes at a checkpoint
    finally:
        await admin.close()
    holding = files_holding(pg_server.cluster.base, chunks(clear_setup))
    # Write-ahead log segments written before the upgrade keep it until recycled (docs/THREAT_MODEL.md).
    assert [path for path in holding if "pg_wal" not in Path(path).parts] == []
