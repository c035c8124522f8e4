"""The interactive client: a prompt_toolkit prompt over a `ChatClient`.

Incoming messages and events are printed above the prompt (prompt_toolkit redraws the line being typed below
them). Colors when the output is a terminal and ``NO_COLOR`` is not set. Without a terminal on stdin (a pipe),
commands are read line by line and output is plain.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.application import run_in_terminal
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.styles import Style

from quicnprotochat.client.chat import (
    BotApprovalDecided,
    BotApprovalRequested,
    ChatClient,
    ChatError,
    ConnectionLost,
    ConnectionRestored,
    ErrorEvent,
    Event,
    FileReceived,
    GroupBroken,
    JoinedConversation,
    MemberJoined,
    MemberLeft,
    MessageReceived,
    MessageStateChanged,
    Notice,
    ReceiptReceived,
    RemovedFromConversation,
    key_fingerprint,
)
from quicnprotochat.client.chat.safety import safety_lines
from quicnprotochat.client.render import bot_decided, bot_question, clock, describe, route_text, sender, state_note
from quicnprotochat.client.state import Conversation, Message
from quicnprotochat.common.bot_keys import BotKeyError, bot_key_text, parse_bot_key

STYLE = Style.from_dict(
    {
        "time": "#888888",
        "conversation": "#5f87ff",
        "me": "#00af5f bold",
        "peer": "#d7af00 bold",
        "event": "#00afaf italic",
        "error": "#ff5f5f bold",
        "info": "",
        "prompt": "#5f87ff bold",
        "unread": "#ff8700 bold",
    }
)

HELP = """\
Commands:
  /dm @user            open (or create) the DM with user; /dm @me is your local notepad
  /group name          create a group and switch to it
  /invite @user ...    add users to the current group
  /remove @user        remove a user from the current group
  /leave               leave the current group (an invitation brings you back; your history stays)
  /delete [name]       delete a conversation and its history from this device (leaving the group first)
  /recreate            replace a group that cannot go on by a new one with its current members
  /join [name]         list the conversations you were invited to, or switch to one
  /switch name         switch to a conversation (@user for a DM)
  /list                conversations with unread counts
  /send-file PATH      send a file (encrypted; kept on the node for a while for the others to fetch)
  /members             members of the current conversation, with their key fingerprints
  /verify @user        the safety number to compare with user (in person or on a call)
  /trust @user         accept user's changed identity key (after comparing safety numbers)
  /history [n]         the last n messages (default 20) of the current conversation
  /whoami              your username, key fingerprint, node, state encryption
  /bots                your bots (keys that log in without a password) and whether they are revoked
  /revoke NAME|KEY     revoke one of your bots: its sessions end now, its key never logs in again
  /p2p [on|off]        direct delivery: on publishes this device's network addresses to logged-in users;
                       without an argument, whether it is on and how this conversation's last message went
  /help                this text
  /quit                leave (also Ctrl-D)
Anything else is sent to the current conversation. When a new bot key asks to act as your bot, the prompt asks
you: y approves, n or Enter refuses (another of your devices may answer first: the question then goes away)."""

ANSWERS = {"y": True, "yes": True, "n": False, "no": False, "": False}


def colors_wanted() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


@dataclass
class Output:
    """Prints styled lines; without colors the same text, unstyled."""

    color: bool

    def line(self, *parts: tuple[str, str]) -> None:
        if self.color:
            print_formatted_text(
                FormattedText([(f"class:{style}" if style else "", text) for style, text in parts]), style=STYLE
            )
        else:
            print("".join(text for _style, text in parts), flush=True)

    def info(self, text: str) -> None:
        self.line(("info", text))

    def event(self, text: str) -> None:
        self.line(("event", text))

    def error(self, text: str) -> None:
        self.line(("error", text))

    def message(self, conversation: str, message: Message) -> None:
        self.line(
            ("time", clock(message) + " "),
            ("conversation", f"[{conversation}] "),
            ("me" if message.outgoing else "peer", sender(message)),
            ("", ": " + message.body),
            ("error" if message.state == "failed" else "time", state_note(message)),
        )


class Repl:
    def __init__(self, chat: ChatClient, output: Output) -> None:
        self.chat = chat
        self.out = output
        self.current: Conversation | None = None
        self.invited: list[str] = []
        self.running = True
        self.pending: set[int] = set()
        """Outgoing messages shown as pending: shown again when they are sent or fail."""
        self.redraw: Callable[[], None] = lambda: None
        """Set by the prompt loop: redraws the prompt (its text names the current conversation)."""
        self.interactive = False
        """The prompt is on screen (a terminal): a question is asked there, not printed."""
        self.asking: list[BotApprovalRequested] = []
        """Bot keys waiting for this user's answer, oldest first: the prompt asks about the first."""
        self.commands: dict[str, Callable[[list[str]], Awaitable[None]]] = {
            "/dm": self.cmd_dm,
            "/group": self.cmd_group,
            "/invite": self.cmd_invite,
            "/remove": self.cmd_remove,
            "/leave": self.cmd_leave,
            "/delete": self.cmd_delete,
            "/recreate": self.cmd_recreate,
            "/join": self.cmd_join,
            "/switch": self.cmd_switch,
            "/list": self.cmd_list,
            "/members": self.cmd_members,
            "/send-file": self.cmd_send_file,
            "/verify": self.cmd_verify,
            "/trust": self.cmd_trust,
            "/history": self.cmd_history,
            "/whoami": self.cmd_whoami,
            "/bots": self.cmd_bots,
            "/revoke": self.cmd_revoke,
            "/p2p": self.cmd_p2p,
            "/help": self.cmd_help,
            "/quit": self.cmd_quit,
            "/exit": self.cmd_quit,
        }

    def prompt(self) -> str:
        if self.asking:
            return bot_question(self.asking[0]) + " "
        return f"[{self.current.name}] > " if self.current else f"{self.chat.username} > "

    # ── bot approvals ─────────────────────────────────────────────────────────────────────────────────────

    def on_bot_event(self, event: BotApprovalRequested | BotApprovalDecided) -> None:
        if isinstance(event, BotApprovalRequested):
            self.asking.append(event)
            if not self.interactive or len(self.asking) > 1:
                # On a terminal the prompt asks about the first; a later one (or a pipe) gets a line.
                self.out.event(bot_question(event))
        else:
            waiting = [asked for asked in self.asking if asked.request_id == event.request_id]
            if not waiting:
                return  # answered here: the answer printed its outcome
            self.asking.remove(waiting[0])
            self.out.event(bot_decided(event))
        self.redraw()

    async def answer(self, approve: bool) -> None:
        asked = self.asking.pop(0)
        self.redraw()
        try:
            state = await self.chat.answer_bot(asked.request_id, approve)
        except ChatError:
            self.asking.insert(0, asked)  # not answered: ask again
            self.redraw()
            raise
        decided = BotApprovalDecided(asked.request_id, asked.identity_key, asked.name, state)
        # Our answer, unless another client's came first.
        self.out.event(bot_decided(decided, here=state == ("approved" if approve else "refused")))

    # ── incoming ──────────────────────────────────────────────────────────────────────────────────────────

    async def on_event(self, event: Event) -> None:
        if isinstance(event, BotApprovalRequested | BotApprovalDecided):
            self.on_bot_event(event)
            return
        if isinstance(event, MessageReceived):
            self.out.message(event.conversation.name, event.message)
            # On screen is read, whichever conversation it belongs to: unread counts what was not shown.
            await self.chat.mark_read(event.conversation, event.message.id)
            return
        if isinstance(event, MessageStateChanged):
            if event.message.id in self.pending:
                self.pending.discard(event.message.id)
                self.out.message(event.conversation.name, event.message)
            return
        if isinstance(event, FileReceived):
            if event.path is not None:  # a refusal came as an ErrorEvent already
                self.out.event(describe(event))
            return
        if isinstance(event, ReceiptReceived):
            if event.kind == "read":  # "delivered" shows in /history; a line for each would drown the chat
                self.out.event(describe(event))
            return
        if isinstance(event, ConnectionLost | ConnectionRestored):
            self.out.event(describe(event))
            return
        if isinstance(event, JoinedConversation):
            self.invited.append(event.conversation.name)
            self.out.event(describe(event) + (f" - /switch {event.conversation.name}" if self.current else ""))
            if self.current is None:
                await self.switch(event.conversation)
            return
        own_change = isinstance(event, MemberJoined | MemberLeft) and event.by == self.chat.username
        if own_change and not (isinstance(event, MemberLeft) and event.left):
            return  # this client's own change: the command printed its outcome
        if isinstance(event, RemovedFromConversation | MemberJoined | MemberLeft | Notice):
            self.out.event(describe(event))
            return
        assert isinstance(event, ErrorEvent | GroupBroken)
        self.out.error(describe(event))

    # ── commands ──────────────────────────────────────────────────────────────────────────────────────────

    async def handle(self, line: str) -> None:
        line = line.strip()
        if self.asking and line.lower() in ANSWERS:
            await self.answer(ANSWERS[line.lower()])
            return
        if not line:
            return
        if not line.startswith("/") or line.startswith("//"):
            text = line[1:] if line.startswith("//") else line
            if self.current is None:
                self.out.error("no conversation selected: /dm @user, /group name or /switch name first")
                return
            message = await self.chat.send(self.current, text)
            if message.state == "pending":
                self.pending.add(message.id)
            self.out.message(self.current.name, message)
            await self.chat.mark_read(self.current)  # who writes has read what came before
            return
        try:
            words = shlex.split(line)
        except ValueError:
            words = line.split()
        command = self.commands.get(words[0].lower())
        if command is None:
            self.out.error(f"unknown command {words[0]}: /help lists them")
            return
        await command(words[1:])

    async def switch(self, conversation: Conversation) -> None:
        self.current = conversation
        unread = await self.chat.store.unread_count(conversation.id)
        await self.chat.mark_read(conversation)
        suffix = f" ({unread} unread: /history {max(unread, 1)})" if unread else ""
        self.out.info(f"now in {conversation.name}{suffix}")
        self.redraw()

    def _need_current(self) -> Conversation:
        if self.current is None:
            raise ChatError("no conversation selected: /switch name first")
        return self.current

    async def cmd_dm(self, args: list[str]) -> None:
        if len(args) != 1:
            raise ChatError("usage: /dm @user")
        await self.switch(await self.chat.dm(args[0]))

    async def cmd_group(self, args: list[str]) -> None:
        if len(args) != 1:
            raise ChatError("usage: /group name")
        await self.switch(await self.chat.create_group(args[0]))

    async def cmd_invite(self, args: list[str]) -> None:
        if not args:
            raise ChatError("usage: /invite @user [@user ...]")
        conversation = self._need_current()
        for user in args:
            try:
                committed = await self.chat.invite(conversation, user)
            except ChatError as error:
                self.out.error(f"{user.removeprefix('@')} was not added to {conversation.name}: {error}")
                continue
            self.out.event(f"* {user.removeprefix('@')} is now in {conversation.name}{committed.retry_note}")

    async def cmd_remove(self, args: list[str]) -> None:
        if len(args) != 1:
            raise ChatError("usage: /remove @user")
        conversation = self._need_current()
        user = args[0].removeprefix("@")
        try:
            committed = await self.chat.remove(conversation, args[0])
        except ChatError as error:
            raise ChatError(f"{user} was not removed from {conversation.name}: {error}") from None
        self.out.event(f"* removed {user} from {conversation.name}{committed.retry_note}")

    async def cmd_leave(self, args: list[str]) -> None:
        if args:
            raise ChatError("usage: /leave (leaves the current group)")
        conversation = self._need_current()
        await self.chat.leave(conversation)
        self.out.event(f"* you asked to leave {conversation.name}; your history stays (/delete removes it)")

    async def cmd_delete(self, args: list[str]) -> None:
        if len(args) > 1:
            raise ChatError("usage: /delete [name]")
        conversation = await self.chat.conversation(args[0]) if args else self._need_current()
        await self.chat.delete(conversation)
        if self.current is not None and self.current.id == conversation.id:
            self.current = None
        self.out.event(f"* deleted {conversation.name} from this device")

    async def cmd_recreate(self, args: list[str]) -> None:
        if args:
            raise ChatError("usage: /recreate (re-creates the current group)")
        committed, missing = await self.chat.recreate(self._need_current())
        self.current = committed.conversation
        members = await self.chat.members(committed.conversation)
        names = ", ".join(m.username or m.identity_key.hex()[:16] for m in members)
        self.out.event(f"* {committed.conversation.name} re-created with {names}{committed.retry_note}")
        if missing:
            self.out.error("not invited again: " + "; ".join(missing))

    async def cmd_join(self, args: list[str]) -> None:
        if args:
            await self.switch(await self.chat.conversation(args[0]))
            return
        if not self.invited:
            self.out.info("no invitations in this session (invitations are joined automatically; /list shows all)")
            return
        self.out.info("joined by invitation: " + ", ".join(self.invited) + " - /join name to switch")

    async def cmd_switch(self, args: list[str]) -> None:
        if len(args) != 1:
            raise ChatError("usage: /switch name")
        await self.switch(await self.chat.conversation(args[0]))

    async def cmd_list(self, _args: list[str]) -> None:
        summaries = await self.chat.conversations()
        if not summaries:
            self.out.info("no conversations yet: /dm @user or /group name")
            return
        for summary in summaries:
            conversation = summary.conversation
            marker = "*" if self.current is not None and conversation.id == self.current.id else " "
            parts: list[tuple[str, str]] = [
                ("", f"{marker} "),
                ("conversation", conversation.name),
                ("", f"  {conversation.kind}"),
            ]
            if summary.unread:
                parts.append(("unread", f"  {summary.unread} unread"))
            if not summary.active:
                parts.append(("error", "  (you left)"))
            if conversation.kind != "notes":
                parts.append(("time", f"  last: {route_text(await self._last_message(conversation))}"))
            self.out.line(*parts)

    async def _last_message(self, conversation: Conversation) -> Message | None:
        last = await self.chat.history(conversation, 1)
        return last[-1] if last else None

    async def cmd_members(self, _args: list[str]) -> None:
        conversation = self._need_current()
        members = await self.chat.members(conversation)
        names = [
            ("you" if m.identity_key == self.chat.identity_key else m.username or m.identity_key.hex()[:16])
            for m in members
        ]
        self.out.info(f"{conversation.name}: " + ", ".join(names))
        for name, member in zip(names, members, strict=True):
            self.out.line(("", f"  {name:<16} "), ("time", key_fingerprint(member.identity_key)))

    async def cmd_send_file(self, args: list[str]) -> None:
        if len(args) != 1:
            raise ChatError("usage: /send-file PATH (quote a path with spaces)")
        conversation = self._need_current()
        message = await self.chat.send_file(conversation, Path(args[0]))
        if message.state == "pending":
            self.pending.add(message.id)
        self.out.message(conversation.name, message)

    async def cmd_verify(self, args: list[str]) -> None:
        if len(args) != 1:
            raise ChatError("usage: /verify @user")
        check = await self.chat.verify(args[0])
        me = self.chat.username
        self.out.info(f"safety number of you and {check.username} (they see the same with /verify @{me}):")
        for line in safety_lines(check.safety_number):
            self.out.line(("me", "    " + line))
        self.out.info(f"{check.username}'s key fingerprint: {check.fingerprint}")
        if check.changed:
            self.out.error(
                f"this key is NOT the one you had for {check.username}: if the numbers match, /trust @{check.username}"
            )

    async def cmd_trust(self, args: list[str]) -> None:
        if len(args) != 1:
            raise ChatError("usage: /trust @user")
        fingerprint = await self.chat.trust(args[0])
        self.out.event(f"* accepted the new identity key of {args[0].removeprefix('@')} ({fingerprint})")

    async def cmd_history(self, args: list[str]) -> None:
        conversation = self._need_current()
        try:
            count = int(args[0]) if args else 20
        except ValueError:
            raise ChatError("usage: /history [n]") from None
        messages = await self.chat.history(conversation, max(1, count))
        if not messages:
            self.out.info(f"no messages in {conversation.name} yet")
        for message in messages:
            self.out.message(conversation.name, message)
        await self.chat.mark_read(conversation)

    async def cmd_whoami(self, _args: list[str]) -> None:
        chat = self.chat
        state = "encrypted" if chat.encrypted else "NOT encrypted (stored in clear)"
        self.out.info(f"username:    {chat.username}")
        self.out.info(f"fingerprint: {chat.fingerprint}")
        self.out.info(f"node:        {chat.node.address} ({chat.node.transport}, key {chat.node.fingerprint or '?'})")
        self.out.info(f"local state: {chat.state.dir.root} - {state}")
        self.out.info(f"direct:      {'on (/p2p shows what is published)' if chat.p2p else 'off'}")

    async def cmd_p2p(self, args: list[str]) -> None:
        if len(args) > 1 or (args and args[0].lower() not in ("on", "off")):
            raise ChatError("usage: /p2p [on|off]")
        chat = self.chat
        if args:
            await chat.set_p2p(args[0].lower() == "on")
        if chat.p2p:
            addresses = ", ".join(chat.p2p_addresses()) or "none (relay only)"
            self.out.info(f"direct delivery: on - published to logged-in users: {addresses}")
        else:
            self.out.info("direct delivery: off - everything goes through the node; nothing published")
        if self.current is not None and self.current.kind != "notes":
            last = route_text(await self._last_message(self.current))
            self.out.info(f"last message in {self.current.name}: {last}")

    async def cmd_bots(self, _args: list[str]) -> None:
        bots = await self.chat.bots()
        if not bots:
            self.out.info("no bots yet: `qpc bot new NAME --owner YOU` makes one; you approve it on its first login")
            return
        for bot in bots:
            approved = time.strftime("%Y-%m-%d %H:%M", time.localtime(bot.approved_at))
            parts: list[tuple[str, str]] = [
                ("", f"  {bot.name:<16} {bot_key_text(bot.identity_key)}  approved {approved}")
            ]
            if bot.revoked:
                parts.append(("error", "  revoked"))
            self.out.line(*parts)

    async def cmd_revoke(self, args: list[str]) -> None:
        if len(args) != 1:
            raise ChatError("usage: /revoke NAME or /revoke KEY (as /bots shows them)")
        live = [bot for bot in await self.chat.bots() if not bot.revoked]
        try:
            key = parse_bot_key(args[0])
            matches = [bot for bot in live if bot.identity_key == key]
        except BotKeyError:
            matches = [bot for bot in live if bot.name == args[0]]
        if not matches:
            raise ChatError(f"no bot of yours named or keyed {args[0]} (see /bots)")
        if len(matches) > 1:
            raise ChatError(f"{len(matches)} of your bots are named {args[0]}: /revoke KEY (see /bots)")
        await self.chat.revoke_bot(matches[0].identity_key)
        self.out.event(f"* revoked bot {matches[0].name} ({bot_key_text(matches[0].identity_key)}): logged out now")

    async def cmd_help(self, _args: list[str]) -> None:
        for line in HELP.splitlines():
            self.out.info(line)

    async def cmd_quit(self, _args: list[str]) -> None:
        self.running = False


QUIT_HINT = "(to leave: Ctrl-D or /quit)"


def _key_bindings(output: Output) -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add("c-c")
    def _interrupt(event: KeyPressEvent) -> None:
        # Ctrl-C clears a half-typed line; on an empty line it says how to leave instead of doing nothing.
        buffer = event.app.current_buffer
        if buffer.text:
            buffer.reset()
        else:
            run_in_terminal(lambda: output.info(QUIT_HINT))

    return bindings


async def _read_lines() -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        yield line


async def run_repl(chat: ChatClient, *, color: bool | None = None) -> int:
    """Run the interactive client until /quit or end of input; returns the exit status."""
    output = Output(colors_wanted() if color is None else color)
    repl = Repl(chat, output)
    chat.add_listener(repl.on_event)
    interactive = repl.interactive = sys.stdin.isatty()
    with patch_stdout(raw=True) if interactive else contextlib.nullcontext():
        if chat.state_warning:
            output.error(f"warning: {chat.state_warning}")
        output.info(f"logged in as {chat.username} on {chat.node.address}. /help lists the commands.")
        try:
            await chat.sync()
        except ChatError as error:
            output.error(str(error))
        await chat.start()
        unread = sum(s.unread for s in await chat.conversations())
        if unread:
            output.info(f"{unread} unread message(s): /list")
        session: PromptSession[str] | None = None
        if interactive:
            session = PromptSession(key_bindings=_key_bindings(output))
            repl.redraw = session.app.invalidate
        lines = None if interactive else _read_lines()
        prompt_style = "class:prompt" if output.color else ""
        while repl.running:
            try:
                if session is not None:
                    line = await session.prompt_async(
                        lambda: FormattedText([(prompt_style, repl.prompt())]), style=STYLE if output.color else None
                    )
                else:
                    assert lines is not None
                    line = await anext(lines)
            except KeyboardInterrupt:
                continue
            except (EOFError, StopAsyncIteration):
                break
            try:
                await repl.handle(line)
            except ChatError as error:
                output.error(str(error))
    return 0
