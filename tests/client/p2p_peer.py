"""A client process with direct delivery on, for the direct-delivery tests: prints one JSON line per event it
cares about ({"joined": name}, {"body": ..., "route": ...}) and {"ready": true} once its endpoint is published.

Run: python p2p_peer.py SERVER FINGERPRINT USERNAME STATE_DIR [--die-before-storing | --die-before-answering]

The two --die options SIGKILL the process from inside the direct receive path (a test's wrapper around the
receiver's method, installed here; the client itself has no such hook): before the envelope is stored, or after
it is stored and before the sender gets its answer."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from quicnprotochat.client.chat import ChatClient, ChatConfig, Event, JoinedConversation, MessageReceived
from quicnprotochat.client.chat.receiver import Receiver


def show(event: Event) -> None:
    if isinstance(event, MessageReceived):
        print(json.dumps({"body": event.message.body, "route": event.message.route}), flush=True)
    elif isinstance(event, JoinedConversation):
        print(json.dumps({"joined": event.conversation.name}), flush=True)


def die_in_receive(after_storing: bool) -> None:
    original = Receiver.receive_direct

    async def dying(self: Receiver, channel: bytes, data: bytes) -> bool:
        if not after_storing:
            os.kill(os.getpid(), signal.SIGKILL)
        stored = await original(self, channel, data)
        if stored:
            os.kill(os.getpid(), signal.SIGKILL)
        return stored

    Receiver.receive_direct = dying  # type: ignore[method-assign]


async def main(server: str, fingerprint: str, username: str, state_dir: str, *flags: str) -> None:
    if "--die-before-storing" in flags:
        die_in_receive(after_storing=False)
    if "--die-before-answering" in flags:
        die_in_receive(after_storing=True)
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
