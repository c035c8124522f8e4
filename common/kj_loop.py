"""Sharing pycapnp's kj event loop between the node and any number of clients on one asyncio loop.

pycapnp needs its kj loop running (`capnp.kj_loop()`) for every RPC object, and leaving that context closes all
of them, so it must stay up until the last user on the loop is done.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import Any

import capnp  # type: ignore[import-untyped]

_owned: dict[asyncio.AbstractEventLoop, tuple[AbstractAsyncContextManager[Any], int]] = {}


async def acquire() -> None:
    loop = asyncio.get_running_loop()
    if loop in _owned:
        context, users = _owned[loop]
        _owned[loop] = (context, users + 1)
        return
    if hasattr(loop, "_kj_loop"):
        return  # started by the application itself (capnp.kj_loop()/capnp.run), which also ends it
    context = capnp.kj_loop()
    await context.__aenter__()
    _owned[loop] = (context, 1)


async def release() -> None:
    loop = asyncio.get_running_loop()
    if loop not in _owned:
        return
    context, users = _owned[loop]
    if users > 1:
        _owned[loop] = (context, users - 1)
        return
    del _owned[loop]
    await context.__aexit__(None, None, None)
