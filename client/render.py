"""How `qpc` and the REPL put messages and events into words: one plain line each.

Shared by the command line (`quicnprotochat.client.cli`) and the REPL (`quicnprotochat.client.repl`), which
adds colors on top; neither imports the other.
"""

from __future__ import annotations

import datetime
import json

from quicnprotochat.client.chat import (
    BotApprovalDecided,
    BotApprovalRequested,
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
)
from quicnprotochat.client.state import Message
from quicnprotochat.common.bot_keys import bot_key_text


def clock(message: Message) -> str:
    when = message.sent_at if message.sent_at is not None else message.received_at
    return datetime.datetime.fromtimestamp(when).strftime("%H:%M")


def sender(message: Message) -> str:
    return "me" if message.outgoing else (message.sender_username or "?")


def state_note(message: Message) -> str:
    """How far an outgoing message got, as shown after it: " (pending)", " (sent)", " (failed: why)"; and
    whether it travelled directly between the clients rather than through the node: " (sent, direct)",
    " (direct)" after an incoming one."""
    route = ROUTE_NOTES.get(message.route or "", "")
    if message.state is None:
        return f" ({route.removeprefix(', ')})" if route else ""
    if message.state == "failed":
        return f" (failed: {message.failure or 'refused by the node'})"
    if message.state == "sent" and message.receipt is not None:
        return f" ({message.receipt}{route})"
    return f" ({message.state}{route})"


ROUTE_NOTES = {"direct": ", direct", "mixed": ", partly direct"}


def route_text(message: Message | None) -> str:
    """How a conversation's last message travelled, in words."""
    if message is None:
        return "no messages yet"
    if message.route is None:
        return "not recorded"
    return {"direct": "direct", "node": "through the node", "mixed": "partly direct, partly through the node"}[
        message.route
    ]


def format_message(conversation: str, message: Message) -> str:
    return f"{clock(message)} [{conversation}] {sender(message)}: {message.body}{state_note(message)}"


def bot_question(asked: BotApprovalRequested) -> str:
    return f"bot {bot_key_text(asked.identity_key)} wants to act as your bot {asked.name}: approve? [y/N]"


def bot_decided(event: BotApprovalDecided, *, here: bool = False) -> str:
    """How a bot approval request ended (`here`: answered by this client)."""
    bot = f"bot {event.name} ({bot_key_text(event.identity_key)})"
    if here and event.state in ("approved", "refused"):
        return f"* {event.state} {bot}"
    ended = {
        "approved": "was approved on another of your devices",
        "refused": "was refused on another of your devices",
    }.get(event.state, "was not answered in time: refused")
    return f"* {bot} {ended}"


def describe(event: Event) -> str:
    """One line for an event."""
    if isinstance(event, BotApprovalRequested):
        return f"* {bot_question(event)} (answer in qpc repl)"
    if isinstance(event, BotApprovalDecided):
        return bot_decided(event)
    if isinstance(event, MessageReceived | MessageStateChanged):
        return format_message(event.conversation.name, event.message)
    if isinstance(event, FileReceived):
        if event.path is None:
            return f"! {event.error}"
        return f"* saved {event.name} from {event.conversation.name} to {event.path}"
    if isinstance(event, ReceiptReceived):
        who = event.by or "a member"
        what = f"{who} read" if event.kind == "read" else f"delivered to {who}"
        return f"* {what}: {event.message.body}"
    if isinstance(event, ConnectionLost):
        return f"* disconnected, retrying in {event.retry_in:g} s ({event.reason})"
    if isinstance(event, ConnectionRestored):
        return "* connected again"
    if isinstance(event, JoinedConversation):
        by = f" (invited by {event.inviter})" if event.inviter else ""
        return f"* joined {event.conversation.name}{by}"
    if isinstance(event, MemberJoined):
        by = f" (added by {event.by})" if event.by else ""
        return f"* {event.username or event.identity_key.hex()[:16]} joined {event.conversation.name}{by}"
    if isinstance(event, MemberLeft):
        by = "" if event.left else f" (removed by {event.by})" if event.by else ""
        return f"* {event.username or event.identity_key.hex()[:16]} left {event.conversation.name}{by}"
    if isinstance(event, RemovedFromConversation):
        if event.left:
            by = f" (confirmed by {event.by})" if event.by else ""
            return f"* you left {event.conversation.name}{by}"
        by = f" by {event.by}" if event.by else ""
        return f"* you were removed from {event.conversation.name}{by}"
    if isinstance(event, GroupBroken):
        by = f" by {event.by}" if event.by else ""
        return (
            f"! {event.conversation.name} cannot go on: a change{by} cannot be processed here ({event.reason}); "
            "/recreate makes a new group with its current members"
        )
    if isinstance(event, Notice):
        return f"* {event.text}"
    assert isinstance(event, ErrorEvent)
    return f"! {event.text}"


def message_record(conversation: str, message: Message) -> dict[str, object]:
    """A message as `qpc ... --json` prints it (one JSON object per line)."""
    return {
        "conversation": conversation,
        "id": message.message_id.hex(),
        "sender": sender(message) if not message.outgoing else None,
        "outgoing": message.outgoing,
        "body": message.body,
        "sent_at": message.sent_at,
        "received_at": message.received_at,
        "seq": message.server_seq,
        "state": message.state,
        "failure": message.failure,
        "receipt": message.receipt,
        "route": message.route,
    }


def message_json(conversation: str, message: Message) -> str:
    return json.dumps(message_record(conversation, message), ensure_ascii=False, sort_keys=True)
