"""`qpc` as a user runs it: real processes against a real node; the REPL in a real terminal (tmux)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from quicnprotochat.server.node import Node
from tests.client.terminal import QPC, Tmux, client_env, env_for, one_line_error, qpc
from tests.conftest import node_address


async def test_qpc_commands(node: Node, tmp_path: Path) -> None:
    base = client_env(tmp_path, QPC_SERVER=node_address(node, "quic"), QPC_SERVER_FINGERPRINT=node.fingerprint)
    alice = env_for(base, "alice")
    bob = env_for(base, "bob", state_password=None)

    registered = await qpc("register", env=alice)
    assert registered.returncode == 0, registered.stderr
    assert registered.stdout.startswith("registered alice on ")
    registered = await qpc("register", env=bob)
    assert registered.returncode == 0, registered.stderr
    assert "state is stored in clear" in registered.stderr

    sent = await qpc("send", "@bob", "hello", "bob", env=alice)
    assert sent.returncode == 0, sent.stderr
    received = await qpc("recv", env=bob)
    assert received.returncode == 0, received.stderr
    assert received.stdout.strip().endswith("[@alice] alice: hello bob")
    assert "joined @alice (invited by alice)" in received.stderr
    again = await qpc("recv", env=bob)
    assert again.returncode == 0 and again.stdout == ""

    # The cached session spares the account password.
    bob_no_password = {k: v for k, v in bob.items() if k != "QPC_PASSWORD"}
    answered = await qpc("send", "@alice", "hi", "alice", env=bob_no_password)
    assert answered.returncode == 0, answered.stderr

    # Follow mode prints messages as they come and stops cleanly on SIGTERM.
    follower = await asyncio.create_subprocess_exec(
        *QPC, "recv", "--follow", env=alice, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert follower.stdout is not None
    first = await asyncio.wait_for(follower.stdout.readline(), 30)
    assert first.decode().strip().endswith("[@bob] bob: hi alice")
    assert (await qpc("send", "@alice", "live", "one", env=bob_no_password)).returncode == 0
    live = await asyncio.wait_for(follower.stdout.readline(), 30)
    assert live.decode().strip().endswith("[@bob] bob: live one")
    follower.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(follower.wait(), 20) == 0

    # Errors: one clear line on stderr, a non-zero status, no traceback.
    wrong = await qpc("recv", env=dict(alice, QPC_STATE_PASSWORD="not it"))
    assert wrong.returncode == 1
    assert "wrong state password" in one_line_error(wrong.stderr)
    missing = await qpc("recv", env={k: v for k, v in alice.items() if k != "QPC_STATE_PASSWORD"})
    assert missing.returncode == 1 and "state password is needed" in one_line_error(missing.stderr)
    unknown = await qpc("send", "@nobody", "hi", env=alice)
    assert unknown.returncode == 1 and "no user named 'nobody'" in one_line_error(unknown.stderr)
    bad_password = await qpc("login", env=dict(alice, QPC_PASSWORD="wrong"))
    assert bad_password.returncode == 1 and "login as alice failed" in one_line_error(bad_password.stderr)
    usage = await qpc("send", env=alice)
    assert usage.returncode == 2 and "Traceback" not in usage.stderr


async def test_qpc_node_unreachable(tmp_path: Path) -> None:
    base = client_env(tmp_path, QPC_SERVER="127.0.0.1:9")
    down = await qpc("--transport", "tcp", "register", env=env_for(base, "alice"))
    assert down.returncode == 1
    assert "cannot reach the node at 127.0.0.1:9" in one_line_error(down.stderr)


async def test_repl_without_terminal_is_plain(node: Node, tmp_path: Path) -> None:
    base = client_env(tmp_path, QPC_SERVER=node_address(node, "quic"), QPC_SERVER_FINGERPRINT=node.fingerprint)
    result = await qpc(
        "repl", "--register", env=env_for(base, "carol"), stdin=b"/whoami\n/dm @me\nnote to self\n/history\n/quit\n"
    )
    assert result.returncode == 0, result.stderr
    assert "username:    carol" in result.stdout
    assert "local state: " in result.stdout and "- encrypted" in result.stdout
    assert "[@me] me: note to self" in result.stdout
    assert "\x1b[" not in result.stdout


async def test_repl_in_a_terminal(node: Node, tmp_path: Path, tmux: Tmux) -> None:
    base = client_env(
        tmp_path, QPC_SERVER=node_address(node, "quic"), QPC_SERVER_FINGERPRINT=node.fingerprint, TERM="xterm-256color"
    )
    await tmux.start("alice", [*QPC, "repl", "--register"], env_for(base, "alice"))
    await tmux.start("bob", [*QPC, "repl", "--register"], dict(env_for(base, "bob"), NO_COLOR="1"))
    await tmux.wait_for("alice", "logged in as alice")
    await tmux.wait_for("bob", "logged in as bob")

    await tmux.line("alice", "/dm @bob")
    await tmux.wait_for("alice", "now in @bob")
    await tmux.line("alice", "hello bob")
    await tmux.wait_for("bob", "joined @alice (invited by alice)")
    await tmux.wait_for("bob", "alice: hello bob")
    await tmux.wait_for("bob", "[@alice] >")  # the prompt names the new conversation without an Enter
    await tmux.line("bob", "hi alice")  # bob's REPL switched to the conversation he was invited to
    await tmux.wait_for("alice", "bob: hi alice")

    # A message arriving while alice types is printed above her prompt; her half-typed line stays.
    await tmux.type("alice", "half typed")
    await tmux.wait_for("alice", "[@bob] > half typed")
    await tmux.line("bob", "while you type")
    await tmux.wait_for("alice", "bob: while you type")
    # The prompt is redrawn just after the message is printed: give the redraw a moment.
    screen = await tmux.wait_for("alice", "while you type\n[@bob] > half typed", timeout=5)
    lines = [line for line in screen.splitlines() if line.strip()]
    assert lines[-1].rstrip() == "[@bob] > half typed", screen
    await tmux.line("alice", " line")
    await tmux.wait_for("bob", "alice: half typed line")

    await tmux.line("alice", "/history")
    screen = await tmux.wait_for("alice", "me: half typed line", count=2)
    assert "me: hello bob" in screen.split("/history", 1)[1]
    await tmux.line("alice", "/list")
    await tmux.wait_for("alice", "* @bob  dm")
    await tmux.line("alice", "/members")
    await tmux.wait_for("alice", "@bob: you, bob")
    await tmux.line("alice", "/verify @bob")
    screen = await tmux.wait_for("alice", "bob's key fingerprint: ")
    assert "safety number of you and bob (they see the same with /verify @alice)" in screen
    fingerprint = screen.split("bob's key fingerprint: ", 1)[1].splitlines()[0].strip()
    assert [line for line in screen.splitlines() if line.strip().startswith("bob ")][-1].endswith(fingerprint)
    await tmux.line("alice", "/whoami")
    # "local state:" is the last of the four lines: wait for it, not for an earlier one.
    screen = await tmux.wait_for("alice", "local state:")
    assert "username:    alice" in screen and "- encrypted" in screen and node.fingerprint in screen

    # A group: created, bob invited, messages both ways; what bob's screen showed is not unread.
    await tmux.line("alice", "/group team")
    await tmux.wait_for("alice", "now in team")
    await tmux.line("alice", "/invite @bob")
    await tmux.wait_for("bob", "joined team (invited by alice)")
    await tmux.line("alice", "first in team")
    await tmux.wait_for("bob", "[team] alice: first in team")
    await tmux.line("bob", "/list")
    screen = await tmux.wait_for("bob", "team  group")
    assert "unread" not in screen.split("/list")[-1], screen
    await tmux.line("bob", "/switch team")
    await tmux.wait_for("bob", "now in team")
    await tmux.line("bob", "hello team")
    await tmux.wait_for("alice", "[team] bob: hello team")
    await tmux.line("bob", "/members")
    await tmux.wait_for("bob", "team: ")
    # Colors on a terminal, none with NO_COLOR.
    assert "\x1b[38;" in await tmux.screen("alice", escapes=True)
    assert "\x1b[38;" not in await tmux.screen("bob", escapes=True)
    # Ctrl-C on an empty line says how to leave; on a half-typed line it clears it.
    await tmux.keys("alice", "C-c")
    await tmux.wait_for("alice", "(to leave: Ctrl-D or /quit)")
    await tmux.type("alice", "never sent")
    await tmux.wait_for("alice", "> never sent")
    await tmux.keys("alice", "C-c")
    await tmux.line("alice", "/quit")
    screen = await tmux.wait_for("alice", "EXITED 0")
    assert "never sent" not in await tmux.screen("bob") and "Traceback" not in screen
    await tmux.keys("bob", "C-d")
    await tmux.wait_for("bob", "EXITED 0")
