"""How `qpc` and the REPL put messages and events into words: one plain line each.

Shared by the command line (`quicnprotochat.client.cli`) and the REPL (`quicnprotochat.client.repl`), which
adds colors on top; neither imports the other.
"""

from __future__ import annotations

import datetime
import json

from quicnprotochat.client.chat import (
    ErrorEvent,
    Event,
    JoinedConversation,
    MemberJoined,
    MemberLeft,
    MessageReceived,
    Notice,
    RemovedFromConversation,
)
from quicnprotochat.client.state import Message


def clock(message: Message) -> str:
    when = message.sent_at if message.sent_at is not None else message.received_at
    return datetime.datetime.fromtimestamp(when).strftime("%H:%M")


def sender(message: Message) -> str:
    return "me" if message.outgoing else (message.sender_username or "?")


def format_message(conversation: str, message: Message) -> str:
    return f"{clock(message)} [{conversation}] {sender(message)}: {message.body}"


def describe(event: Event) -> str:
    """One line for an event."""
    if isinstance(event, MessageReceived):
        return format_message(event.conversation.name, event.message)
    if isinstance(event, JoinedConversation):
        by = f" (invited by {event.inviter})" if event.inviter else ""
        return f"* joined {event.conversation.name}{by}"
    if isinstance(event, MemberJoined):
        by = f" (added by {event.by})" if event.by else ""
        return f"* {event.username or event.identity_key.hex()[:16]} joined {event.conversation.name}{by}"
    if isinstance(event, MemberLeft):
        by = f" (removed by {event.by})" if event.by else ""
        return f"* {event.username or event.identity_key.hex()[:16]} left {event.conversation.name}{by}"
    if isinstance(event, RemovedFromConversation):
        by = f" by {event.by}" if event.by else ""
        return f"* you were removed from {event.conversation.name}{by}"
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
    }


def message_json(conversation: str, message: Message) -> str:
    return json.dumps(message_record(conversation, message), ensure_ascii=False, sort_keys=True)
