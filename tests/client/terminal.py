"""Running `qpc` as users do: subprocesses, and the REPL in a real terminal (tmux) driven key by key.

Everything is awaited, so that an in-process node on the same event loop keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

QPC = [sys.executable, "-m", "quicnprotochat.client.cli"]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def env_for(base: dict[str, str], name: str, *, state_password: str | None = "state secret") -> dict[str, str]:
    env = dict(base, QPC_USERNAME=name, QPC_PASSWORD=f"password of {name}")
    if state_password is not None:
        env["QPC_STATE_PASSWORD"] = state_password
    return env


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if not line.startswith("qpc: warning:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def client_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QPC_")}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_DATA_HOME=str(tmp_path / "data"), **extra)
    return env


async def qpc(*args: str, env: dict[str, str], stdin: bytes = b"", timeout: float = 60) -> Result:
    process = await asyncio.create_subprocess_exec(
        *QPC,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    assert process.returncode is not None
    return Result(process.returncode, out.decode(), err.decode())


class Tmux:
    """One private tmux server (its own socket under tmp_path); one window per REPL."""

    def __init__(self, socket: Path) -> None:
        if shutil.which("tmux") is None:
            raise RuntimeError("tmux is not installed")
        self.socket = str(socket)
        self.started = False

    async def run(self, *args: str) -> str:
        # subprocess in a thread, not the loop's subprocesses: a tmux server started through uvloop's does not
        # outlive the tmux command that started it (the next command finds "no server running").
        result = await asyncio.to_thread(subprocess.run, ["tmux", "-S", self.socket, *args], capture_output=True)
        if result.returncode != 0:
            raise RuntimeError(f"tmux {args[0]} failed: {result.stderr.decode().strip()}")
        return result.stdout.decode()

    async def start(self, name: str, command: list[str], env: dict[str, str], width: int = 160) -> None:
        env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
        shell = " ".join(_quote(part) for part in command) + "; echo EXITED $?; sleep 600"
        if not self.started:
            self.started = True
            await self.run("new-session", "-d", "-s", "qpc", "-n", name, "-x", str(width), "-y", "50", *env_args, shell)
        else:
            await self.run("new-window", "-d", "-t", "qpc", "-n", name, *env_args, shell)

    async def keys(self, name: str, *keys: str) -> None:
        await self.run("send-keys", "-t", f"qpc:{name}", *keys)

    async def type(self, name: str, text: str) -> None:
        await self.run("send-keys", "-t", f"qpc:{name}", "-l", text)

    async def line(self, name: str, text: str) -> None:
        await self.type(name, text)
        await self.keys(name, "Enter")

    async def screen(self, name: str, *, escapes: bool = False) -> str:
        """The window's text (with `escapes`, its colors and attributes as SGR sequences too)."""
        options = ["-e"] if escapes else []
        return await self.run("capture-pane", "-p", "-J", *options, "-S", "-200", "-t", f"qpc:{name}")

    async def wait_for(self, name: str, text: str, timeout: float = 20, count: int = 1) -> str:
        return await self._screen_when(
            name, lambda screen: screen.count(text) >= count, timeout, f"{text!r} not on {name}'s screen"
        )

    async def output_of(self, name: str, command: str, prompt: str, timeout: float = 20) -> str:
        """Types `command` and returns what the window shows after it, once the REPL shows `prompt` again: all of
        the command's output (the REPL prompts for the next line only when a command is done)."""

        def after(screen: str) -> str:
            return screen.rsplit(command, 1)[1] if command in screen else ""

        await self.line(name, command)
        failure = f"{name}'s prompt {prompt!r} not back after {command!r}"
        screen = await self._screen_when(name, lambda screen: prompt in after(screen), timeout, failure)
        return after(screen).split(prompt, 1)[0]

    async def _screen_when(self, name: str, ready: Callable[[str], bool], timeout: float, failure: str) -> str:
        """The window's text once `ready` holds for it; AssertionError saying `failure` after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            screen = await self.screen(name)
            if ready(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{failure} after {timeout} s:\n{screen}")
            await asyncio.sleep(0.1)

    async def pid(self, name: str) -> int:
        """The process id of the program running in window `name` (the child of the window's shell)."""
        shell = int((await self.run("list-panes", "-t", f"qpc:{name}", "-F", "#{pane_pid}")).split()[0])
        children = (await asyncio.to_thread(Path(f"/proc/{shell}/task/{shell}/children").read_text)).split()
        return int(children[0])

    async def close(self) -> None:
        if self.started:
            with contextlib.suppress(RuntimeError):
                await self.run("kill-server")


def _quote(part: str) -> str:
    return shlex.quote(part)
