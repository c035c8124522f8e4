"""A client process with direct delivery on, for the direct-delivery tests: prints one JSON line per event it
cares about ({"joined": name}, {"body": ..., "route": ...}) and {"ready": true} once its endpoint is published.

Run: python p2p_peer.py SERVER FINGERPRINT USERNAME STATE_DIR [--die-before-storing | --die-before-answering]
                        [--hold-first] [--die-after-storing N] [--slow-answers MS]

The --die options SIGKILL the process from inside the direct receive path (a test's wrapper around the
receiver's method, installed here; the client itself has no such hook): before the envelope is stored, or after
it is stored and before the sender gets its answer; --die-after-storing N does the latter at the Nth envelope.
--hold-first keeps the first direct envelope waiting (it prints {"holding": true}) until the process gets SIGUSR1,
so that a test can let the sender's outbox fill up first. --slow-answers MS returns from finishing each answer
stream MS milliseconds after the answer went out, as when the process's loop or its GIL is busy elsewhere: the
sender has the answer, and may open its next stream, before the receiver is back from writing it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import iroh

from quicnprotochat.client.chat import ChatClient, ChatConfig, Event, JoinedConversation, MessageReceived
from quicnprotochat.client.chat.receiver import Receiver


def show(event: Event) -> None:
    if isinstance(event, MessageReceived):
        print(json.dumps({"body": event.message.body, "route": event.message.route}), flush=True)
    elif isinstance(event, JoinedConversation):
        print(json.dumps({"joined": event.conversation.name}), flush=True)


def die_before_storing() -> None:
    async def dying(self: Receiver, channel: bytes, data: bytes) -> bool:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable: the process is gone")

    Receiver.receive_direct = dying  # type: ignore[method-assign]


def hold_first() -> None:
    original = Receiver.receive_direct
    seen = 0

    async def holding(self: Receiver, channel: bytes, data: bytes) -> bool:
        nonlocal seen
        seen += 1
        if seen == 1:
            released = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, released.set)
            print(json.dumps({"holding": True}), flush=True)
            await released.wait()
        return await original(self, channel, data)

    Receiver.receive_direct = holding  # type: ignore[method-assign]


def die_after_storing(count: int) -> None:
    original = Receiver.receive_direct
    stored_so_far = 0

    async def dying(self: Receiver, channel: bytes, data: bytes) -> bool:
        nonlocal stored_so_far
        stored = await original(self, channel, data)
        stored_so_far += stored
        if stored_so_far == count:
            os.kill(os.getpid(), signal.SIGKILL)
        return stored

    Receiver.receive_direct = dying  # type: ignore[method-assign]


def slow_answers(milliseconds: int) -> None:
    original = iroh.SendStream.finish

    async def finishing_late(self: iroh.SendStream) -> None:
        await original(self)
        await asyncio.sleep(milliseconds / 1000)

    iroh.SendStream.finish = finishing_late  # type: ignore[method-assign]


def option(flags: tuple[str, ...], name: str) -> str | None:
    return flags[flags.index(name) + 1] if name in flags else None


async def main(server: str, fingerprint: str, username: str, state_dir: str, *flags: str) -> None:
    if "--die-before-storing" in flags:
        die_before_storing()
    if "--die-before-answering" in flags:
        die_after_storing(1)  # killed once the first envelope is stored, before its answer is written
    if (count := option(flags, "--die-after-storing")) is not None:
        die_after_storing(int(count))
    if "--hold-first" in flags:
        hold_first()
    if (milliseconds := option(flags, "--slow-answers")) is not None:
        slow_answers(int(milliseconds))
    config = ChatConfig(
        server=server,
        username=username,
        state_dir=Path(state_dir),
        server_fingerprint=fingerprint,
        password=f"password of {username}",
        register=True,
        wait_ms=5_000,
        p2p=True,
        p2p_bind=("127.0.0.1:0",),
        p2p_timeout=1.5,
    )
    chat = await ChatClient.open(config)
    chat.add_listener(show)
    await chat.start()
    print(json.dumps({"ready": chat.p2p}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
