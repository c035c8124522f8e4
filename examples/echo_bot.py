"""An echo bot: answers every message with the same text, in the same conversation.

It uses only the public client API (`quicnprotochat.client.chat`): open a `ChatClient` (registering the account
on first use), start the receive loops, and react to `MessageReceived` events. Invitations are joined
automatically, so anyone can `/dm @echo` it or `/invite @echo` it into a group.

Run it::

    QPC_SERVER=127.0.0.1:7700 QPC_USERNAME=echo QPC_PASSWORD=... QPC_STATE_PASSWORD=... \\
        python examples/echo_bot.py [--server-fingerprint HEX] [--state-dir DIR]

Settings come from the arguments, else from the environment variables QPC_SERVER, QPC_USERNAME, QPC_PASSWORD,
QPC_STATE_PASSWORD (no state password: the bot's state is kept in clear, and it says so) and
QPC_SERVER_FINGERPRINT. It stops on SIGINT or SIGTERM, or after `--max-replies` answers.

Or without any password, as a bot of your account that logs in with its key file alone (see README, "Bots"); on
its first start you approve it from a logged-in `qpc repl`, and it tells you when it is up::

    qpc --server 127.0.0.1:7700 bot new helper --owner alice      # writes helper.bot (mode 0600) and helper.state/
    python examples/echo_bot.py --key-file helper.bot
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from quicnprotochat.client.chat import (
    ChatClient,
    ChatConfig,
    ChatError,
    ConnectionLost,
    ConnectionRestored,
    ErrorEvent,
    JoinedConversation,
    MessageReceived,
    default_state_dir,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="quicnprotochat echo bot")
    parser.add_argument("--server", default=os.environ.get("QPC_SERVER", "127.0.0.1:7700"))
    parser.add_argument("--transport", choices=("quic", "tcp"), default="quic")
    parser.add_argument("--server-fingerprint", default=os.environ.get("QPC_SERVER_FINGERPRINT"))
    parser.add_argument("--username", default=os.environ.get("QPC_USERNAME", "echo"))
    parser.add_argument("--password", default=os.environ.get("QPC_PASSWORD"))
    parser.add_argument("--state-password", default=os.environ.get("QPC_STATE_PASSWORD"))
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--max-replies", type=int, default=0, help="stop after this many replies (0: never)")
    parser.add_argument("--key-file", type=Path, help="log in as a bot by this key file (`qpc bot new`), no password")
    return parser.parse_args(argv)


async def open_chat(args: argparse.Namespace) -> ChatClient | None:
    """Logged in by key file (a bot of an account), or by username and password (its own account)."""
    if args.key_file is not None:
        print(f"logging in with {args.key_file} (the first time, the owner must approve the key)", flush=True)
        return await ChatClient.open_bot(args.key_file)
    if not args.password:
        print("echo bot: set QPC_PASSWORD (or --password), or give --key-file", file=sys.stderr)
        return None
    return await ChatClient.open(
        ChatConfig(
            server=args.server,
            username=args.username,
            password=args.password,
            state_dir=args.state_dir or default_state_dir(args.username),
            state_password=args.state_password or None,
            transport=args.transport,
            server_fingerprint=args.server_fingerprint,
            register=True,  # first run: create the account (later runs just log in)
        )
    )


async def run(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    """The bot's main coroutine: returns when `stop` is set, after `--max-replies` replies, or on a signal."""
    chat = await open_chat(args)
    if chat is None:
        return 2
    if chat.state_warning:
        print(f"echo bot: warning: {chat.state_warning}", file=sys.stderr)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not possible outside the main thread: the caller stops us through `stop` then.
        with contextlib.suppress(RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
            handled.append(signum)
    replies = 0
    try:
        events = chat.events()  # subscribe before receiving starts, so that nothing is missed
        await chat.start()
        if chat.config.bot_owner is not None:  # a bot: tell its owner
            await chat.send(await chat.dm(chat.config.bot_owner), f"{chat.username} is up")
        print(f"echo bot {chat.username} is listening on {chat.node.address}", flush=True)
        stopping = asyncio.ensure_future(stop.wait())
        while not stop.is_set():
            next_event = asyncio.ensure_future(anext(events))
            await asyncio.wait({next_event, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not next_event.done():
                next_event.cancel()
                break
            event = next_event.result()
            if isinstance(event, JoinedConversation):
                print(f"joined {event.conversation.name} (invited by {event.inviter})", flush=True)
            elif isinstance(event, ErrorEvent):
                print(f"error: {event.text}", file=sys.stderr, flush=True)
            elif isinstance(event, ConnectionLost):
                print(f"disconnected, retrying in {event.retry_in:g} s: {event.reason}", file=sys.stderr, flush=True)
            elif isinstance(event, ConnectionRestored):
                print("connected again", file=sys.stderr, flush=True)
            elif isinstance(event, MessageReceived):
                try:
                    await chat.send(event.conversation, event.message.body)
                except ChatError as error:
                    print(f"could not answer in {event.conversation.name}: {error}", file=sys.stderr, flush=True)
                    continue
                await chat.mark_read(event.conversation)
                replies += 1
                if args.max_replies and replies >= args.max_replies:
                    break
        stopping.cancel()
    finally:
        try:
            await chat.close()
        finally:
            # Given back: uvloop keeps a handler even after its loop is closed, and a program that runs the bot
            # on its own loop would then never see SIGINT or SIGTERM again.
            for signum in handled:
                loop.remove_signal_handler(signum)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except ChatError as error:
        print(f"echo bot: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
