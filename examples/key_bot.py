"""A bot that logs in with its key file alone (no password): it tells its owner it is up, then answers every
message with the same text, in the same conversation.

Make its key file once, then run it; on its first start its owner approves it from a logged-in `qpc repl`
("bot KEY wants to act as your bot NAME: approve? [y/N]")::

    qpc --server 127.0.0.1:7700 bot new helper --owner alice      # writes helper.bot (mode 0600) and helper.state/
    python examples/key_bot.py --key-file helper.bot

It stops on SIGINT or SIGTERM, or after `--max-replies` answers. A refusal, or no answer from the owner in time,
ends it with the node's reason.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from quicnprotochat.client.chat import ChatClient, ChatError, ErrorEvent, MessageReceived


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="quicnprotochat bot that logs in by key")
    parser.add_argument("--key-file", type=Path, required=True, help="written by `qpc bot new`")
    parser.add_argument("--max-replies", type=int, default=0, help="stop after this many replies (0: never)")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace, stop: asyncio.Event | None = None) -> int:
    """The bot's main coroutine: returns when `stop` is set, after `--max-replies` replies, or on a signal."""
    print(f"logging in with {args.key_file} (the first time, the owner must approve the key)", flush=True)
    chat = await ChatClient.open_bot(args.key_file)
    owner = chat.config.bot_owner
    assert owner is not None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(RuntimeError, ValueError):  # not the main thread: the caller uses `stop`
            loop.add_signal_handler(signum, stop.set)
    replies = 0
    try:
        events = chat.events()  # subscribe before receiving starts, so that nothing is missed
        await chat.start()
        await chat.send(await chat.dm(owner), f"{chat.username} is up")
        print(f"bot {chat.username} of {owner} is listening on {chat.node.address}", flush=True)
        stopping = asyncio.ensure_future(stop.wait())
        while not stop.is_set():
            next_event = asyncio.ensure_future(anext(events))
            await asyncio.wait({next_event, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not next_event.done():
                next_event.cancel()
                break
            event = next_event.result()
            if isinstance(event, ErrorEvent):
                print(f"error: {event.text}", file=sys.stderr, flush=True)
            elif isinstance(event, MessageReceived):
                try:
                    await chat.send(event.conversation, event.message.body)
                except ChatError as error:
                    print(f"could not answer in {event.conversation.name}: {error}", file=sys.stderr, flush=True)
                    continue
                replies += 1
                if args.max_replies and replies >= args.max_replies:
                    break
        stopping.cancel()
    finally:
        await chat.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(run(args))
    except ChatError as error:
        print(f"key bot: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
