"""Starting the processes the bench runs beside it (echo servers, the front end spike's servers) and ending them
(those and nodes): politely first, then for sure."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any


async def terminate(process: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM, then SIGKILL if the process has not ended within `grace_s`; returns once it has ended."""
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace_s)
    except TimeoutError:
        process.kill()
        await process.wait()


async def start_announcing(
    *command: str, stderr: int | None = None, timeout_s: float = 60.0
) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    """Starts `command`, whose first line on stdout is a JSON object saying where it serves; returns the process
    and that object. A process that does not announce itself within `timeout_s` is killed."""
    process = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=stderr
    )
    assert process.stdout is not None
    try:
        announced = json.loads(await asyncio.wait_for(process.stdout.readline(), timeout_s))
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return process, announced
