"""ConversationStore: every operation round-trips, on an encrypted and on a plain database."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from quicnprotochat.client.state import (
    SCHEMA_VERSION,
    Conversation,
    ConversationExists,
    ConversationNotFound,
    ConversationStore,
    SchemaTooNew,
    StoreClosed,
)

from .conftest import mode, names

PEER = bytes(range(32))
OTHER = bytes(range(1, 33))
CHANNEL = bytes(range(16))


class FakeClock:
    """A deterministic clock (a plain function object, not a mock of the store)."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture(params=["encrypted", "plain"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ConversationStore]:
    key = os.urandom(32) if request.param == "encrypted" else None
    opened = await ConversationStore.open(tmp_path / "convdb.sqlite", key, clock=FakeClock())
    assert opened.encrypted is (key is not None)
    yield opened
    await opened.close()


async def test_new_database_is_owner_only(store: ConversationStore) -> None:
    assert mode(store.path) == 0o600


async def test_conversations_round_trip(store: ConversationStore) -> None:
    dm = await store.create_conversation("dm", "bob", channel_id=CHANNEL, peer_identity_key=PEER, group_id=b"g-dm")
    group = await store.create_conversation("group", "friends", group_id=b"g-friends")
    notes = await store.create_conversation("notes", "notes")
    assert dm == Conversation(dm.id, "dm", "bob", b"g-dm", CHANNEL, PEER, dm.created_at, dm.created_at)

    assert await store.get_conversation(dm.id) == dm
    assert await store.get_conversation(9999) is None
    assert await store.find_by_name("friends") == group
    assert await store.find_by_name("nobody") is None
    assert await store.find_by_group_id(b"g-friends") == group
    assert await store.find_by_channel(CHANNEL) == dm
    assert await store.find_dm(PEER) == dm
    assert await store.find_dm(OTHER) is None
    assert await store.notes() == notes
    # Most recent activity first: created last, listed first.
    assert [c.id for c in await store.list_conversations()] == [notes.id, group.id, dm.id]

    await store.rename_conversation(group.id, "best friends")
    assert (await store.find_by_name("best friends")) is not None
    assert await store.find_by_name("friends") is None
    await store.set_group_id(notes.id, b"g-notes")
    assert (await store.find_by_group_id(b"g-notes")) == await store.get_conversation(notes.id)

    assert await store.delete_conversation(group.id) is True
    assert await store.delete_conversation(group.id) is False
    assert await store.get_conversation(group.id) is None


async def test_conversation_uniqueness_and_validation(store: ConversationStore) -> None:
    dm = await store.create_conversation("dm", "bob", channel_id=CHANNEL, peer_identity_key=PEER)
    await store.create_conversation("notes", "notes")
    with pytest.raises(ConversationExists):
        await store.create_conversation("group", "bob")
    with pytest.raises(ConversationExists):
        await store.create_conversation("dm", "bob again", peer_identity_key=PEER)
    with pytest.raises(ConversationExists):
        await store.create_conversation("dm", "carol", peer_identity_key=OTHER, channel_id=CHANNEL)
    with pytest.raises(ConversationExists):
        await store.create_conversation("notes", "more notes")
    other = await store.create_conversation("group", "g")
    with pytest.raises(ConversationExists):
        await store.rename_conversation(other.id, "bob")
    with pytest.raises(ConversationNotFound):
        await store.rename_conversation(9999, "x")
    with pytest.raises(ValueError, match="channel id"):
        await store.create_conversation("dm", "dave", peer_identity_key=b"d" * 32, channel_id=b"short")
    with pytest.raises(ValueError, match="peer"):
        await store.create_conversation("dm", "erin")
    with pytest.raises(ValueError, match="kind"):
        await store.create_conversation("channel", "x")  # type: ignore[arg-type]
    assert await store.get_conversation(dm.id) == dm


async def test_members_round_trip(store: ConversationStore) -> None:
    group = await store.create_conversation("group", "friends")
    await store.add_member(group.id, PEER, "bob")
    await store.add_member(group.id, OTHER, None)
    members = await store.list_members(group.id)
    assert [(m.identity_key, m.username) for m in members] == [(PEER, "bob"), (OTHER, None)]
    # Adding again updates the username; None keeps the known one.
    await store.add_member(group.id, OTHER, "carol")
    await store.add_member(group.id, PEER, None)
    members = await store.list_members(group.id)
    assert [(m.identity_key, m.username) for m in members] == [(PEER, "bob"), (OTHER, "carol")]
    assert await store.remove_member(group.id, PEER) is True
    assert await store.remove_member(group.id, PEER) is False
    assert [m.identity_key for m in await store.list_members(group.id)] == [OTHER]
    with pytest.raises(ConversationNotFound):
        await store.add_member(9999, PEER, "bob")
    # Deleting the conversation takes its members with it.
    await store.delete_conversation(group.id)
    assert await store.list_members(group.id) == []


async def test_message_round_trip_and_idempotent_insert(store: ConversationStore) -> None:
    dm = await store.create_conversation("dm", "bob", peer_identity_key=PEER)
    stored = await store.add_message(
        dm.id,
        b"envelope-hash-1",
        "hello there",
        sender_identity_key=PEER,
        sender_username="bob",
        sent_at=500.0,
        received_at=600.0,
        server_seq=7,
    )
    assert stored is not None
    assert (stored.conversation_id, stored.message_id, stored.body) == (dm.id, b"envelope-hash-1", "hello there")
    assert (stored.sender_identity_key, stored.sender_username) == (PEER, "bob")
    assert (stored.sent_at, stored.received_at, stored.outgoing, stored.server_seq) == (500.0, 600.0, False, 7)
    assert await store.get_message(b"envelope-hash-1") == stored

    # A redelivered envelope: nothing stored, nothing changed.
    assert await store.add_message(dm.id, b"envelope-hash-1", "hello there", server_seq=8) is None
    assert await store.history(dm.id) == [stored]
    assert await store.unread_count(dm.id) == 1

    with pytest.raises(ConversationNotFound):
        await store.add_message(9999, b"x", "lost")
    with pytest.raises(ValueError):
        await store.add_message(dm.id, b"", "no id")


async def test_last_activity_follows_messages(store: ConversationStore) -> None:
    first = await store.create_conversation("group", "first")
    second = await store.create_conversation("group", "second")
    assert [c.id for c in await store.list_conversations()] == [second.id, first.id]
    await store.add_message(first.id, b"m", "news", received_at=10_000.0)
    refreshed = await store.get_conversation(first.id)
    assert refreshed is not None and refreshed.last_activity == 10_000.0
    assert [c.id for c in await store.list_conversations()] == [first.id, second.id]


async def test_history_order_and_paging(store: ConversationStore) -> None:
    group = await store.create_conversation("group", "friends")
    other = await store.create_conversation("group", "others")
    ids = []
    for n in range(10):
        message = await store.add_message(group.id, f"m{n}".encode(), f"body {n}")
        assert message is not None
        ids.append(message.id)
        await store.add_message(other.id, f"o{n}".encode(), f"other {n}")

    everything = await store.history(group.id, limit=100)
    assert [m.body for m in everything] == [f"body {n}" for n in range(10)]
    assert [m.id for m in everything] == sorted(ids)

    last_three = await store.history(group.id, limit=3)
    assert [m.body for m in last_three] == ["body 7", "body 8", "body 9"]
    previous = await store.history(group.id, limit=3, before=last_three[0].id)
    assert [m.body for m in previous] == ["body 4", "body 5", "body 6"]
    oldest = await store.history(group.id, limit=10, before=ids[2])
    assert [m.body for m in oldest] == ["body 0", "body 1"]
    assert await store.history(group.id, limit=5, before=ids[0]) == []
    assert await store.history(group.id, limit=0) == []
    assert await store.history(9999) == []


async def test_unread_counts_and_read_markers(store: ConversationStore) -> None:
    group = await store.create_conversation("group", "friends")
    quiet = await store.create_conversation("group", "quiet")
    incoming = []
    for n in range(4):
        message = await store.add_message(group.id, f"in{n}".encode(), f"in {n}", sender_identity_key=PEER)
        assert message is not None
        incoming.append(message)
    assert await store.unread_counts() == {group.id: 4, quiet.id: 0}
    assert await store.last_read(group.id) == 0

    assert await store.mark_read(group.id, incoming[1].id) == incoming[1].id
    assert await store.unread_count(group.id) == 2
    # The marker never moves back.
    assert await store.mark_read(group.id, incoming[0].id) == incoming[1].id
    assert await store.unread_count(group.id) == 2

    # Own messages never count as unread, and writing does not mark what came before read (a `qpc send`
    # leaves it for `qpc recv`).
    await store.add_message(group.id, b"out", "my answer", outgoing=True)
    assert await store.unread_count(group.id) == 2
    await store.add_message(group.id, b"in4", "in 4", sender_identity_key=PEER)
    assert await store.unread_count(group.id) == 3
    latest = await store.mark_read(group.id)
    assert await store.last_read(group.id) == latest
    assert await store.unread_counts() == {group.id: 0, quiet.id: 0}
    assert await store.mark_read(quiet.id) == 0
    with pytest.raises(ConversationNotFound):
        await store.mark_read(9999)


async def test_delete_conversation_removes_messages(store: ConversationStore) -> None:
    group = await store.create_conversation("group", "friends")
    await store.add_message(group.id, b"m1", "to be deleted")
    await store.mark_read(group.id)
    await store.delete_conversation(group.id)
    assert await store.get_message(b"m1") is None
    assert await store.history(group.id) == []
    assert group.id not in await store.unread_counts()
    # The message id is free again.
    again = await store.create_conversation("group", "friends")
    assert await store.add_message(again.id, b"m1", "new") is not None


async def test_settings_round_trip(store: ConversationStore) -> None:
    assert await store.get_setting("username") is None
    await store.set_setting("username", "alice")
    await store.set_setting("node", "127.0.0.1:7000")
    await store.set_setting("username", "alice2")
    assert await store.get_setting("username") == "alice2"
    assert await store.settings() == {"node": "127.0.0.1:7000", "username": "alice2"}
    await store.set_setting("node", None)
    assert await store.get_setting("node") is None

    assert await store.get_last_seq(PEER) == 0
    await store.set_last_seq(PEER, b"", 5)
    await store.set_last_seq(PEER, CHANNEL, 2)
    await store.set_last_seq(PEER, b"", 3)  # never moves back
    assert await store.get_last_seq(PEER) == 5
    assert await store.get_last_seq(PEER, CHANNEL) == 2
    await store.set_last_seq(PEER, b"", 12)
    assert await store.get_last_seq(PEER, b"") == 12


async def test_data_survives_reopen(tmp_path: Path, db_key: bytes) -> None:
    path = tmp_path / "convdb.sqlite"
    store = await ConversationStore.open(path, db_key)
    group = await store.create_conversation("group", "friends", group_id=b"gid")
    await store.add_member(group.id, PEER, "bob")
    await store.add_message(group.id, b"m1", "kept", sender_username="bob")
    await store.set_setting("username", "alice")
    await store.close()
    assert store.closed
    with pytest.raises(StoreClosed):
        await store.list_conversations()
    await store.close()  # idempotent

    async with await ConversationStore.open(path, db_key) as reopened:
        found = await reopened.find_by_group_id(b"gid")
        assert found is not None and (found.id, found.name, found.kind) == (group.id, "friends", "group")
        assert [m.username for m in await reopened.list_members(group.id)] == ["bob"]
        assert [m.body for m in await reopened.history(group.id)] == ["kept"]
        assert await reopened.get_setting("username") == "alice"
    # Only the database file: no journal, -wal or -shm left behind.
    assert names(tmp_path) == ["convdb.sqlite"]


async def test_newer_schema_is_refused_untouched(tmp_path: Path, db_key: bytes) -> None:
    from quicnprotochat.client.state import _sqlcipher as sql
    from quicnprotochat.client.state.keys import sqlcipher_key_literal

    path = tmp_path / "convdb.sqlite"
    await (await ConversationStore.open(path, db_key)).close()
    conn = sql.connect(path)
    conn.execute(f'PRAGMA key = "{sqlcipher_key_literal(db_key)}"')
    conn.execute("INSERT INTO schema_version VALUES (?, 'future', 0)", (SCHEMA_VERSION + 1,))
    conn.close()
    before = path.read_bytes()
    with pytest.raises(SchemaTooNew):
        await ConversationStore.open(path, db_key)
    assert path.read_bytes() == before
