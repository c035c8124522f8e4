"""Running the node's main coroutine on its configured event loop (`loop`: uvloop by default, or asyncio)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

from quicnprotochat.server.config import ConfigError

SWITCH_INTERVAL_S = 0.001
"""How long the node's store threads wait at most for the interpreter lock while the event loop runs Python.
The interpreter's default, 5 ms, is how long a commit could sit finished (or a fetch queued) behind a busy loop:
every wake-up passes the lock between the loop and the writer thread four times."""


@contextmanager
def _switch_interval(seconds: float) -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def run_on_loop(loop: str, main: Coroutine[Any, Any, None]) -> None:
    """Runs `main` to its end on uvloop or on the standard library's loop."""
    with _switch_interval(SWITCH_INTERVAL_S):
        _run(loop, main)


def _run(loop: str, main: Coroutine[Any, Any, None]) -> None:
    if loop == "uvloop":
        try:
            import uvloop  # a dependency, but a platform without a build of it can still run the standard loop
        except ImportError:
            main.close()
            message = "loop = uvloop needs the uvloop package (pip install uvloop; or loop = asyncio)"
            raise ConfigError(message) from None
        uvloop.run(main)
    else:
        # The standard library's loop, whatever loop policy the process has installed.
        with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
            runner.run(main)
