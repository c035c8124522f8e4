"""`qpc`: the chat client on the command line.

    qpc --server HOST:PORT --username alice register
    qpc --username alice send @bob "hello"          # a DM (a group: `send team "hello"`)
    echo hello | qpc --username alice send @bob -   # the text from stdin (or --file PATH)
    qpc --username alice recv [--follow] [--json]
    qpc --username alice history @bob [-n 20] [--json]
    qpc --username alice list [--json]
    qpc --username alice repl [--register]

Passwords: `--password` / `QPC_PASSWORD` (the account) and `--state-password` / `QPC_STATE_PASSWORD` (the local
state). When missing and a terminal is attached, they are asked for without echo, and only when needed (a
cached session token spares the account password). Without a state password the local state is stored in clear,
and `qpc` says so. Errors: one line on stderr and exit status 1 (2 for usage errors), never a traceback.

`qpc send` prints what became of the message: "sent to @bob (seq 4)" (status 0), "failed: ..." with the node's
reason (status 1), or "pending: ..." when the node stopped answering after the message was stored (status 75;
it goes out, in order and once, with the next `qpc send`, `recv` or `repl`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from quicnprotochat.client.chat import (
    ChatClient,
    ChatConfig,
    ChatError,
    Event,
    LoginFailed,
    MessageReceived,
    PasswordRequired,
    default_state_dir,
)
from quicnprotochat.client.chat.safety import safety_lines
from quicnprotochat.client.known_hosts import FingerprintMismatch
from quicnprotochat.client.node_client import TRANSPORTS, Transport
from quicnprotochat.client.render import describe, format_message, message_json
from quicnprotochat.client.state import Message, StateDir, StateError
from quicnprotochat.common.errors import InvalidArgument
from quicnprotochat.common.usernames import normalize_username

DEFAULT_SERVER = "127.0.0.1:7700"
PROG = "qpc"
PASSWORD_TRIES = 3
EXIT_PENDING = 75
"""`qpc send`: stored, not sent yet (EX_TEMPFAIL: the node did not answer)."""


class UsageError(Exception):
    """Bad command-line input: reported like argparse's errors (exit status 2)."""


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stderr.isatty()


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--server",
        default=default(os.environ.get("QPC_SERVER", DEFAULT_SERVER)),
        help="node address host:port (env QPC_SERVER; default %(default)s)",
    )
    parser.add_argument("--transport", choices=TRANSPORTS, default=default("quic"), help="quic (default) or tcp")
    parser.add_argument(
        "--server-fingerprint",
        default=default(os.environ.get("QPC_SERVER_FINGERPRINT")),
        help="expected node key fingerprint (hex, from `qpc-server info`); without it, trust on first use",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default(None),
        help="local state directory (default ~/.local/share/quicnprotochat/client/<username>)",
    )
    parser.add_argument("--username", default=default(os.environ.get("QPC_USERNAME")), help="env QPC_USERNAME")
    parser.add_argument(
        "--no-receipts",
        action="store_true",
        default=default(os.environ.get("QPC_RECEIPTS", "1") in ("0", "off", "no")),
        help="send no delivery or read receipts (env QPC_RECEIPTS=0)",
    )
    parser.add_argument(
        "--p2p",
        action="store_true",
        default=default(os.environ.get("QPC_P2P", "0") in ("1", "on", "yes")),
        help="direct delivery (repl, recv --follow): publishes this device's network addresses to logged-in users"
        " (env QPC_P2P=1)",
    )
    parser.add_argument(
        "--p2p-relays",
        default=default(os.environ.get("QPC_P2P_RELAYS", "off")),
        help="off (default), default (iroh's public relays), or comma-separated relay URLs (env QPC_P2P_RELAYS)",
    )
    parser.add_argument(
        "--p2p-timeout",
        type=float,
        default=default(os.environ.get("QPC_P2P_TIMEOUT", "2")),
        metavar="SECONDS",
        help="how long a direct attempt may take before the node is used (env QPC_P2P_TIMEOUT; default 2)",
    )
    parser.add_argument(
        "--p2p-bind",
        action="append",
        default=default(None),
        metavar="IP:PORT",
        help="local address of the direct-delivery endpoint (once per family; default: every interface)",
    )
    parser.add_argument(
        "--password",
        default=default(None),
        help="account password (prefer env QPC_PASSWORD or the prompt: arguments are visible to other users)",
    )
    parser.add_argument(
        "--state-password",
        default=default(None),
        help="password of the local state (env QPC_STATE_PASSWORD; empty string: keep state in clear)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="quicnprotochat chat client")
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("register", parents=[common], help="create the account and publish its keys")
    commands.add_parser("login", parents=[common], help="log in (refreshes the cached session)")
    send = commands.add_parser("send", parents=[common], help="send a message: @user (a DM) or a group name")
    send.add_argument("to", help="@username for a DM, or a conversation name")
    send.add_argument("text", nargs="*", help="the message; '-' reads it from stdin")
    send.add_argument("--file", type=Path, help="read the message text from this file (UTF-8)")
    send.add_argument("--attach", type=Path, help="send this file (encrypted), after the text if there is one")
    recv = commands.add_parser("recv", parents=[common], help="print pending messages and exit")
    recv.add_argument("--follow", "-f", action="store_true", help="keep waiting for new messages")
    recv.add_argument("--json", action="store_true", help="one JSON object per message and line")
    history = commands.add_parser("history", parents=[common], help="print a conversation's last messages")
    history.add_argument("conversation", help="@username for a DM, or a conversation name")
    history.add_argument("-n", "--count", type=int, default=20, help="how many (default %(default)s)")
    history.add_argument("--json", action="store_true", help="one JSON object per message and line")
    verify = commands.add_parser("verify", parents=[common], help="the safety number to compare with a user")
    verify.add_argument("user", help="@username")
    trust = commands.add_parser("trust", parents=[common], help="accept a user's changed identity key")
    trust.add_argument("user", help="@username")
    listing = commands.add_parser("list", parents=[common], help="the conversations, with unread counts")
    listing.add_argument("--json", action="store_true", help="one JSON object per conversation and line")
    repl = commands.add_parser("repl", parents=[common], help="the interactive client")
    repl.add_argument("--register", action="store_true", help="register the account on first use")
    bot = commands.add_parser("bot", help="bots that log in by key (no password)")
    bot_commands = bot.add_subparsers(dest="bot_command", required=True, metavar="BOT_COMMAND")
    bot_new = bot_commands.add_parser(
        "new", parents=[common], help="a new bot key file (the owner approves the key on its first login)"
    )
    bot_new.add_argument("name", help="the bot's name, shown to its owner")
    bot_new.add_argument("--owner", required=True, help="the username the bot belongs to")
    bot_new.add_argument("-o", "--key-file", type=Path, help="where to write it (default NAME.bot); never overwritten")
    return parser


def _username(args: argparse.Namespace) -> str:
    raw = args.username
    if not raw and _interactive():
        raw = input("Username: ").strip()
    if not raw:
        raise UsageError("a username is needed: --username or QPC_USERNAME")
    try:
        return normalize_username(str(raw).removeprefix("@"))
    except InvalidArgument as error:
        raise UsageError(error.reason) from None


def _state_password(args: argparse.Namespace, state_dir: Path) -> str | None:
    value = args.state_password if args.state_password is not None else os.environ.get("QPC_STATE_PASSWORD")
    if value is not None:
        return value or None
    if not _interactive():
        return None
    directory = StateDir(state_dir)
    if directory.root.exists() and any(directory.root.iterdir()) and not directory.is_encrypted():
        return None  # existing plain state: nothing to ask (the warning is shown)
    if directory.is_encrypted():
        return getpass.getpass(f"State password for {state_dir}: ") or None
    return _new_password("New state password (empty: store local state in clear): ", "state password") or None


def _new_password(prompt: str, what: str) -> str:
    """Ask for a new password and its repetition until both match (a few tries; empty is taken at once)."""
    for _attempt in range(PASSWORD_TRIES):
        first = getpass.getpass(prompt)
        if not first or getpass.getpass(f"Repeat the {what}: ") == first:
            return first
        print(f"{PROG}: the two {what}s differ; again, please", file=sys.stderr)
    raise UsageError(f"the {what}s did not match {PASSWORD_TRIES} times")


def _password_source(args: argparse.Namespace, username: str, confirm: bool) -> str | Callable[[], str] | None:
    value = args.password if args.password is not None else os.environ.get("QPC_PASSWORD")
    if value is not None:
        return str(value)
    if not _interactive():
        return None

    def prompt() -> str:
        if confirm:
            return _new_password(f"Password for {username}: ", "password")
        return getpass.getpass(f"Password for {username}: ")

    return prompt


def _config(args: argparse.Namespace, *, register: bool = False, fresh_login: bool = False) -> ChatConfig:
    username = _username(args)
    state_dir = args.state_dir or default_state_dir(username)
    password = _password_source(args, username, confirm=register)
    return ChatConfig(
        server=args.server,
        username=username,
        state_dir=state_dir,
        password=password,
        state_password=_state_password(args, state_dir),
        transport=args.transport,
        server_fingerprint=args.server_fingerprint,
        register=register,
        receipts=not args.no_receipts,
        p2p=args.p2p,
        p2p_relays=args.p2p_relays,
        p2p_timeout=args.p2p_timeout,
        p2p_bind=tuple(args.p2p_bind or ()),
        # A password given on the command line or in the environment is checked, cached session or not: a
        # wrong one must not go unnoticed until the session expires.
        fresh_login=fresh_login or isinstance(password, str),
    )


async def _open(config: ChatConfig) -> ChatClient:
    chat = await ChatClient.open(config)
    if chat.state_warning:
        print(f"{PROG}: warning: {chat.state_warning}", file=sys.stderr)
    return chat


def _printer(as_json: bool) -> Callable[[str, Message], None]:
    render = message_json if as_json else format_message

    def show(conversation: str, message: Message) -> None:
        print(render(conversation, message), flush=True)

    return show


async def _print_unread(chat: ChatClient, show: Callable[[str, Message], None]) -> int:
    count = 0
    for summary in reversed(await chat.conversations()):
        if not summary.unread:
            continue
        conversation = summary.conversation
        last_read = await chat.store.last_read(conversation.id)
        for message in await chat.store.history(conversation.id, limit=max(summary.unread * 2, 100)):
            if message.id > last_read and not message.outgoing:
                show(conversation.name, message)
                count += 1
        await chat.mark_read(conversation)
    return count


def _message_text(args: argparse.Namespace) -> str:
    """The text to send, from the arguments, stdin (`-`) or --file; refused when empty."""
    words: list[str] = list(args.text)
    if args.file is not None:
        if words:
            raise UsageError("give the message as arguments or with --file, not both")
        path: Path = args.file
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise UsageError(f"cannot read {args.file}: {error.strerror or error}") from None
        except UnicodeDecodeError:
            raise UsageError(f"{args.file} is not UTF-8 text") from None
    elif words == ["-"]:
        text = sys.stdin.read()
    else:
        text = " ".join(words)
    text = text.removesuffix("\n")  # what `echo` and editors add
    if not text.strip():
        raise UsageError("the message is empty: nothing was sent")
    return text


async def cmd_register(args: argparse.Namespace) -> int:
    chat = await _open(_config(args, register=True))
    try:
        print(f"registered {chat.username} on {chat.node.address}; identity fingerprint {chat.fingerprint}")
    finally:
        await chat.close()
    return 0


async def cmd_login(args: argparse.Namespace) -> int:
    chat = await _open(_config(args, fresh_login=True))
    try:
        print(f"logged in as {chat.username} on {chat.node.address}")
    finally:
        await chat.close()
    return 0


async def cmd_send(args: argparse.Namespace) -> int:
    attach: Path | None = args.attach
    text = _message_text(args) if attach is None or args.text or args.file is not None else None
    chat = await _open(_config(args))
    try:
        await chat.sync()  # joins a DM the peer opened first, instead of opening a second one
        target = str(args.to)
        conversation = await chat.dm(target) if target.startswith("@") else await chat.conversation(target)
        if text is not None:
            message = await chat.send(conversation, text)
        if attach is not None and (text is None or message.state != "failed"):
            message = await chat.send_file(conversation, attach)
    finally:
        await chat.close()
    if message.state == "failed":
        print(f"failed: not sent to {conversation.name}: {message.failure}", flush=True)
        return 1
    if message.state == "pending":
        print(
            f"pending: the node did not answer; the message to {conversation.name} goes out with the next"
            " `qpc send`, `qpc recv` or `qpc repl` once it is back",
            flush=True,
        )
        return EXIT_PENDING
    seq = f" (seq {message.server_seq})" if message.server_seq is not None else ""
    print(f"sent to {conversation.name}{seq}", flush=True)
    return 0


async def cmd_recv(args: argparse.Namespace) -> int:
    show = _printer(args.json)
    chat = await _open(_config(args))
    try:
        chat.add_listener(_print_event_unless_message)
        await chat.sync()
        await _print_unread(chat, show)
        if not args.follow:
            return 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)

        async def on_message(event: Event) -> None:
            if isinstance(event, MessageReceived):
                show(event.conversation.name, event.message)
                await chat.mark_read(event.conversation, event.message.id)

        chat.add_listener(on_message)
        await chat.start()
        await stop.wait()
        return 0
    finally:
        await chat.close()


async def cmd_history(args: argparse.Namespace) -> int:
    if args.count < 1:
        raise UsageError("-n is at least 1")
    show = _printer(args.json)
    chat = await _open(_config(args))
    try:
        conversation = await chat.conversation(str(args.conversation))
        for message in await chat.history(conversation, args.count):
            show(conversation.name, message)
    finally:
        await chat.close()
    return 0


async def cmd_verify(args: argparse.Namespace) -> int:
    chat = await _open(_config(args))
    try:
        check = await chat.verify(str(args.user))
    finally:
        await chat.close()
    print(f"safety number of {chat.username} and {check.username}:")
    for line in safety_lines(check.safety_number):
        print("    " + line)
    print(f"{check.username}'s key fingerprint: {check.fingerprint}")
    if check.changed:
        print(f"this key is NOT the one known for {check.username}: if the numbers match, qpc trust @{check.username}")
        return 1
    return 0


async def cmd_trust(args: argparse.Namespace) -> int:
    chat = await _open(_config(args))
    try:
        fingerprint = await chat.trust(str(args.user))
    finally:
        await chat.close()
    print(f"accepted the new identity key of {str(args.user).removeprefix('@')} ({fingerprint})")
    return 0


async def cmd_list(args: argparse.Namespace) -> int:
    chat = await _open(_config(args))
    try:
        await chat.sync()
        for summary in await chat.conversations():
            conversation = summary.conversation
            if args.json:
                record = {
                    "name": conversation.name,
                    "kind": conversation.kind,
                    "unread": summary.unread,
                    "active": summary.active,
                }
                print(json.dumps(record, ensure_ascii=False, sort_keys=True), flush=True)
            else:
                state = "" if summary.active else "  (you left)"
                unread = f"  {summary.unread} unread" if summary.unread else ""
                print(f"{conversation.name}  {conversation.kind}{unread}{state}", flush=True)
    finally:
        await chat.close()
    return 0


def _print_event_unless_message(event: Event) -> None:
    if not isinstance(event, MessageReceived):
        print(describe(event), file=sys.stderr, flush=True)


async def cmd_repl(args: argparse.Namespace) -> int:
    from quicnprotochat.client.repl import run_repl

    chat = await _open(_config(args, register=args.register))
    try:
        return await run_repl(chat)
    finally:
        await chat.close()


async def cmd_bot(args: argparse.Namespace) -> int:
    from quicnprotochat.client.bot_keyfile import BotKeyFileError, create_bot_key_file

    path = args.key_file or Path(f"{args.name}.bot")
    try:
        bot = await create_bot_key_file(
            path,
            args.name,
            args.owner,
            args.server,
            server_fingerprint=args.server_fingerprint,
            transport=args.transport,
            state_dir=args.state_dir,
        )
    except BotKeyFileError as error:
        raise UsageError(str(error)) from None
    print(f"bot {bot.name} of {bot.owner}: key {bot.key_text}")
    print(f"key file {bot.path} (mode 0600; whoever reads it can act as the bot), state in {bot.state_dir}")
    print(f"on its first login, {bot.owner} approves this key from a logged-in qpc repl")
    return 0


COMMANDS = {
    "register": cmd_register,
    "login": cmd_login,
    "send": cmd_send,
    "recv": cmd_recv,
    "history": cmd_history,
    "list": cmd_list,
    "verify": cmd_verify,
    "trust": cmd_trust,
    "repl": cmd_repl,
    "bot": cmd_bot,
}


def _fail(message: str, status: int = 1) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.transport not in TRANSPORTS:
        parser.error("--transport is quic or tcp")
    transport: Transport = args.transport
    args.transport = transport
    try:
        return asyncio.run(COMMANDS[args.command](args))
    except UsageError as error:
        return _fail(str(error), 2)
    except LoginFailed as error:
        if isinstance(error, PasswordRequired) or args.command == "register" or getattr(args, "register", False):
            return _fail(str(error))
        return _fail(f"{error} (no account yet? register first: qpc register, or qpc repl --register)")
    except (ChatError, StateError, FingerprintMismatch) as error:
        return _fail(str(error))
    except ValueError as error:  # a malformed --server address, for instance
        return _fail(str(error), 2)
    except (KeyboardInterrupt, EOFError):
        return _fail("interrupted", 130)
    except Exception as error:
        if os.environ.get("QPC_DEBUG"):
            raise
        return _fail(f"unexpected error: {type(error).__name__}: {error}")


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
