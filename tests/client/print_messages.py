"""A minimal receiving client for the crash tests: prints every `MessageReceived` event (one JSON line) as the
engine emits it, and nothing else. Run: python print_messages.py SERVER FINGERPRINT USERNAME STATE_DIR"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from quicnprotochat.client.chat import ChatClient, ChatConfig, Event, MessageReceived


def show(event: Event) -> None:
    if isinstance(event, MessageReceived):
        print(json.dumps({"body": event.message.body, "id": event.message.message_id.hex()}), flush=True)


async def main(server: str, fingerprint: str, username: str, state_dir: str) -> None:
    config = ChatConfig(server=server, username=username, state_dir=Path(state_dir), server_fingerprint=fingerprint)
    chat = await ChatClient.open(config)
    chat.add_listener(show)
    await chat.start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
