"""The receiving client of `qpc-bench p2p`, in its own process (as on another device: its MLS, envelope and
encrypted-state work does not share the sender's interpreter). Prints one JSON line per event the bench waits
for: {"ready": true} once its endpoint is published, {"joined": name}, {"body": ..., "route": ...}.

Run: python -m quicnprotochat.bench.p2p_peer SERVER TRANSPORT FINGERPRINT KNOWN_HOSTS USERNAME STATE_DIR
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from quicnprotochat.client.chat import ChatClient, ChatConfig, Event, JoinedConversation, MessageReceived
from quicnprotochat.client.known_hosts import KnownHosts
from quicnprotochat.client.node_client import Transport


def show(event: Event) -> None:
    if isinstance(event, MessageReceived):
        print(json.dumps({"body": event.message.body, "route": event.message.route}), flush=True)
    elif isinstance(event, JoinedConversation):
        print(json.dumps({"joined": event.conversation.name}), flush=True)


def config(
    server: str, transport: Transport, fingerprint: str, known_hosts: KnownHosts, username: str, state_dir: Path
) -> ChatConfig:
    """Both clients of the bench are set up alike (the sender with the bench's own `known_hosts`)."""
    return ChatConfig(
        server=server,
        username=username,
        state_dir=state_dir,
        password=f"bench password of {username}",
        state_password="bench state",
        transport=transport,
        server_fingerprint=fingerprint,
        known_hosts=known_hosts,
        register=True,
        receipts=False,
        p2p=True,
        p2p_bind=("127.0.0.1:0",),
        # Generous: a direct copy that times out on a loaded machine would be counted as a node delivery.
        p2p_timeout=10.0,
    )


async def main(server: str, transport: str, fingerprint: str, known_hosts: str, username: str, state_dir: str) -> None:
    if transport not in ("quic", "tcp"):
        raise SystemExit(f"transport must be quic or tcp, not {transport}")
    kind: Transport = "quic" if transport == "quic" else "tcp"
    # Quiet, as the bench's own: the node's fingerprint is given, and notices would land in the bench's terminal.
    pins = KnownHosts(Path(known_hosts), notice=lambda _message: None)
    chat = await ChatClient.open(config(server, kind, fingerprint, pins, username, Path(state_dir)))
    chat.add_listener(show)
    await chat.start()
    print(json.dumps({"ready": chat.p2p}), flush=True)
    try:
        await asyncio.Event().wait()  # until the bench ends this process
    finally:
        await chat.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
