"""Running the node's main coroutine on its configured event loop (`loop`: uvloop by default, or asyncio)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from quicnprotochat.server.config import ConfigError


def run_on_loop(loop: str, main: Coroutine[Any, Any, None]) -> None:
    """Runs `main` to its end on uvloop or on the standard library's loop."""
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
