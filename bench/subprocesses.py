"""Ending the processes the bench starts (nodes, echo servers): politely first, then for sure."""

from __future__ import annotations

import asyncio
import signal


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
