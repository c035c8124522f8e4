"""`ChatClient`: conversations (1:1 DMs, groups, a local notepad) over MLS and hybrid envelopes.

This is what bots and the REPL use::

    chat = await ChatClient.open(ChatConfig(server="127.0.0.1:7700", username="alice", password="...",
                                            state_dir=Path("..."), state_password="...", register=True))
    await chat.start()                       # background receive loops
    conversation = await chat.dm("bob")
    await chat.send(conversation, "hello")
    async for event in chat.events():        # MessageReceived, JoinedConversation, MemberJoined, ...
        ...
    await chat.close()

First use
---------
The Vault of the state directory already holds the Ed25519 identity key (the MLS credential) and the X-Wing
key pair. `open` registers the account when asked (`register=True`, once per state directory), logs in (or
reuses the cached session token), publishes the hybrid public key, and uploads a stock of KeyPackages
(`key_packages`, default 10, plus one last-resort package). The node has no count RPC, so the client counts
itself: every Welcome it joins consumed one package; when the count falls to `key_packages_low`, it uploads
enough to be back at the stock.

Inbox layout (why each group's MLS traffic is in one ordered inbox per recipient)
---------------------------------------------------------------------------------
- A DM is a 2-member MLS group plus a node channel (createChannel). Its Welcome goes to the peer's *default*
  inbox (the peer cannot know the channel before); every later DM message goes to the peer's inbox on that
  channel. The peer starts reading the channel inbox only after the Welcome has been joined, so the Welcome
  always comes first.
- Groups use the default inbox for everything: Welcomes, commits and application messages. One group's
  traffic to one recipient is thus in a single inbox whose seqs the node assigns in enqueue order.
- An inviter sends the Welcome to the newcomer *before* the commit to the other members: a member can only
  write to the newcomer after processing that commit, so whatever it writes lands after the Welcome.
- Each inbox is read by one task (`peekWait`), envelope by envelope in seq order. A message is acked only
  after its result is stored locally; the last processed seq per inbox is stored too, so a redelivered
  envelope (ack lost, crash) is skipped, not processed twice. An envelope whose MLS group is not known yet
  (two peers opening a DM to each other at the same time: the other side's Welcome sits in the default inbox)
  is held back, without acking anything after it, until the group appears (or for `defer_seconds`).
- The node does not order commits across senders. Two members committing in the same epoch fork the group;
  the engine reports an `ErrorEvent` then (MLS can decrypt application messages up to two epochs old, so
  ordinary messages crossing a commit are fine).

Every payload is sealed to each recipient separately:
``seal_envelope(peer_hybrid_key, frame, envelope_info(peer_identity_key, channel_id))``; the frame format is in
`quicnprotochat.client.chat.framing`. The node only ever sees the recipient, the channel and ciphertext.

Message ids (the store's dedup key): incoming, SHA-256 of the envelope bytes; outgoing, SHA-256 of
``b"out" | MLS ciphertext``; notes, SHA-256 of ``b"note" | random``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from quicnprotochat.client import accounts
from quicnprotochat.client.known_hosts import FingerprintMismatch, KnownHosts
from quicnprotochat.client.node_client import Envelope, NodeClient, Transport
from quicnprotochat.client.state import (
    CachedSession,
    ClientState,
    Conversation,
    ConversationExists,
    Member,
    Message,
    StateDir,
    StateError,
)
from quicnprotochat.common.errors import (
    AlreadyExists,
    Disconnected,
    InvalidArgument,
    ResourceExhausted,
    RpcError,
    Unauthenticated,
)
from quicnprotochat.common.usernames import normalize_username
from quicnprotochat.native import (
    GroupNotFound,
    NativeError,
    ProcessedMessage,
    Vault,
    WrongEpoch,
    envelope_info,
    seal_envelope,
    validate_key_package,
)

from .errors import (
    ChatError,
    DeliveryFailed,
    LoginFailed,
    NodeUnavailable,
    NoHybridKey,
    NoKeyPackage,
    NotAllowed,
    PasswordRequired,
    StateUnavailable,
    UnknownConversation,
    UserNotFound,
)
from .events import (
    ErrorEvent,
    Event,
    JoinedConversation,
    MemberJoined,
    MemberLeft,
    MessageReceived,
    Notice,
    RemovedFromConversation,
)
from .framing import FrameError, MlsFrame, TextContent, WelcomeFrame, decode_content, decode_frame

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

NOTES_NAME = "@me"
"""The self-DM notepad: local only, no MLS, nothing sent to the node."""
SELF_ALIASES = ("me", "@me")
MAX_GROUP_NAME = 64
# Assumed session lifetime for the token cache: the node does not say (its default is 24 h). A token the node
# refuses earlier is simply replaced by a new login.
SESSION_CACHE_SECONDS = 12 * 3600

_SETTING_USERNAME = "account.username"
_SETTING_REGISTERED = "account.registered"
_SETTING_HYBRID = "account.hybrid_published"
_SETTING_KP_STOCK = "account.key_packages"
_SETTING_ALIAS = "group_alias:"
_SETTING_LEFT = "left:"
_MAX_TRIES = 3

PasswordSource = str | Callable[[], str] | None
"""The account password, or a function asked for it only when a login is needed (a no-echo prompt)."""

EventCallback = Callable[[Event], Awaitable[None] | None]


@dataclass
class ChatConfig:
    server: str
    """host:port of the node."""
    username: str
    state_dir: Path
    password: PasswordSource = None
    state_password: str | None = None
    """None: state is kept in clear (the client says so: `ChatClient.state_warning`)."""
    transport: Transport = "quic"
    server_fingerprint: str | None = None
    known_hosts: KnownHosts | None = None
    register: bool = False
    """Register the account on first use of this state directory (an existing account is then logged into)."""
    fresh_login: bool = False
    """Log in with the password even if a cached session token is still valid."""
    key_packages: int = 10
    key_packages_low: int = 3
    wait_ms: int = 25_000
    """peekWait timeout of the background loops (must stay below the node's QUIC idle timeout)."""
    defer_seconds: float = 60.0
    """How long an envelope for a not-yet-known group is held back before it is dropped as an error."""
    connect_timeout: float = 10.0


def default_state_dir(username: str) -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "quicnprotochat" / "client" / normalize_username(username)


def key_fingerprint(identity_key: bytes) -> str:
    """A short, human-comparable fingerprint of an identity key: SHA-256, first 16 bytes, hex in groups."""
    digest = hashlib.sha256(identity_key).hexdigest()[:32]
    return " ".join(digest[i : i + 4] for i in range(0, len(digest), 4))


@dataclass(frozen=True)
class ConversationSummary:
    conversation: Conversation
    unread: int
    active: bool
    """False once this client was removed (or the group is otherwise gone)."""


@dataclass
class _InboxState:
    channel: bytes
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None
    deferred_since: dict[int, float] = field(default_factory=dict)
    failures: dict[int, int] = field(default_factory=dict)


class _Deferred(Exception):
    """The envelope needs a group this client has not joined yet."""


class ChatClient:
    """A logged-in chat client over one state directory and one node connection. Build with `open`."""

    def __init__(self, config: ChatConfig, state: ClientState, vault: Vault, node: NodeClient) -> None:
        self.config = config
        self.state = state
        self.store = state.conversations
        self.vault = vault
        self.node = node
        self.username = self._checked_username(config.username)
        self.identity_key = vault.identity_key
        self._password: str | None = config.password if isinstance(config.password, str) else None
        self._mls = asyncio.Lock()
        self._inboxes: dict[bytes, _InboxState] = {}
        self._running = False
        self._closed = False
        self._queues: list[asyncio.Queue[Event]] = []
        self._callbacks: list[EventCallback] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._names: dict[bytes, str] = {self.identity_key: self.username}
        self._hybrid_keys: dict[bytes, bytes] = {}
        self._groups_changed = asyncio.Event()
        self._replenishing = asyncio.Lock()
        self._stock_lock = asyncio.Lock()

    # ── opening and closing ─────────────────────────────────────────────────────────────────────────────

    @classmethod
    async def open(cls, config: ChatConfig) -> ChatClient:
        """Unlock the state, connect, register if asked and needed, log in, publish keys. Raises ChatError."""
        username = cls._checked_username(config.username)
        try:
            state = await StateDir(config.state_dir).open(config.state_password)
        except StateError as error:
            raise StateUnavailable(str(error)) from None
        vault: Vault | None = None
        node: NodeClient | None = None
        try:
            stored = await state.conversations.get_setting(_SETTING_USERNAME)
            if stored is not None and stored != username:
                raise StateUnavailable(f"{config.state_dir} holds the state of {stored!r}, not {username!r}")
            try:
                vault = await asyncio.to_thread(state.open_vault)
            except StateError as error:
                raise StateUnavailable(str(error)) from None
            try:
                node = NodeClient(
                    config.server,
                    transport=config.transport,
                    known_hosts=config.known_hosts,
                    server_fingerprint=config.server_fingerprint,
                    connect_timeout=config.connect_timeout,
                )
            except ValueError as error:  # a malformed address or transport
                raise ChatError(str(error)) from None
            chat = cls(config, state, vault, node)
            await chat._guard(chat._sign_in(stored is None))
            await chat._guard(chat._publish_keys())
        except BaseException:
            if node is not None:
                with contextlib.suppress(Exception):
                    await node.close()
            if vault is not None:
                vault.close()
            await state.close()
            raise
        return chat

    @staticmethod
    def _checked_username(username: str) -> str:
        try:
            return normalize_username(username.removeprefix("@"))
        except InvalidArgument as error:
            raise ChatError(str(error)) from None

    async def close(self) -> None:
        """Stop the receive loops and close the connection, the vault and the state (wiping its keys)."""
        if self._closed:
            return
        self._closed = True
        self._running = False
        tasks = [inbox.task for inbox in self._inboxes.values() if inbox.task is not None]
        tasks += list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Wait for whatever an operation still does with the vault or the store.
        async with self._mls:
            with contextlib.suppress(Exception):
                await self.node.close()
            self.vault.close()
            await self.state.close()
        for queue in self._queues:
            queue.put_nowait(_CLOSED)

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def encrypted(self) -> bool:
        return self.state.encrypted

    @property
    def state_warning(self) -> str | None:
        """Set when state is stored in clear: show it to the user."""
        return self.state.warning

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self.identity_key)

    # ── errors ──────────────────────────────────────────────────────────────────────────────────────────

    async def _guard(self, operation: Awaitable[T]) -> T:
        """Run a node operation, turning transport and RPC failures into ChatError subclasses."""
        try:
            return await operation
        except ChatError:
            raise
        except FingerprintMismatch as error:
            raise NodeUnavailable(str(error)) from None
        except Unauthenticated as error:
            raise LoginFailed(f"the node refused the login: {error.reason}") from None
        except ResourceExhausted as error:
            raise ChatError(f"the node refused: {error.reason}") from None
        except RpcError as error:
            if isinstance(error, Disconnected):
                raise NodeUnavailable(f"the node at {self.node.address} is unreachable: {error.reason}") from None
            raise ChatError(f"the node refused: {error.reason}") from None
        except TimeoutError:
            raise NodeUnavailable(
                f"cannot reach the node at {self.node.address}: no answer within {self.config.connect_timeout:g} s"
            ) from None
        except OSError as error:
            detail = str(error) or type(error).__name__
            raise NodeUnavailable(f"cannot reach the node at {self.node.address}: {detail}") from None
        except StateError as error:
            raise StateUnavailable(str(error)) from None

    # ── account ─────────────────────────────────────────────────────────────────────────────────────────

    async def _get_password(self) -> str:
        if self._password is not None:
            return self._password
        source = self.config.password
        if callable(source):
            self._password = await asyncio.to_thread(source)
            return self._password
        raise PasswordRequired(f"no valid session for {self.username} is cached: an account password is needed")

    async def _sign_in(self, first_use: bool) -> None:
        tokens = self.state.tokens
        cached = await asyncio.to_thread(tokens.load)
        if (
            not self.config.fresh_login
            and cached is not None
            and cached.is_valid()
            and cached.username == self.username
            and cached.node_address == self.node.address
        ):
            self.node.access_token = cached.token
        else:
            taken = False
            if self.config.register and await self.store.get_setting(_SETTING_REGISTERED) is None:
                password = await self._get_password()
                try:
                    await accounts.register(self.node, self.vault, self.username, password)
                except AlreadyExists:
                    # Taken, or registered by an earlier run of this state dir that stopped before recording
                    # it: the login below tells which.
                    taken = True
            try:
                await self._login()
            except LoginFailed:
                if taken:
                    raise LoginFailed(f"the username {self.username!r} is already taken on this node") from None
                raise
        if first_use:
            await self.store.set_setting(_SETTING_USERNAME, self.username)
        self.node.relogin = self._relogin

    async def _login(self) -> None:
        password = await self._get_password()
        try:
            token = await accounts.login_token(self.node, self.vault, self.username, password)
        except Unauthenticated:
            raise LoginFailed(
                f"login as {self.username} failed: wrong username or password, or the account belongs to "
                "another identity key (another state directory)"
            ) from None
        self.node.access_token = token
        await self.store.set_setting(_SETTING_REGISTERED, "1")
        session = CachedSession(
            token=token,
            expires_at=time.time() + SESSION_CACHE_SECONDS,
            username=self.username,
            node_address=self.node.address,
        )
        await asyncio.to_thread(self.state.tokens.save, session)

    async def _relogin(self) -> None:
        await asyncio.to_thread(self.state.tokens.clear)
        await self._login()

    async def _publish_keys(self) -> None:
        hybrid = self.vault.hybrid_public_key()
        marker = f"{self.node.address}:{hashlib.sha256(hybrid).hexdigest()}"
        if await self.store.get_setting(_SETTING_HYBRID) != marker:
            await self.node.upload_hybrid_key(self.identity_key, hybrid)
            await self.store.set_setting(_SETTING_HYBRID, marker)
        if await self.store.get_setting(_SETTING_KP_STOCK) is None:
            package = await asyncio.to_thread(self.vault.create_key_package, True)
            await self.node.upload_key_package(self.identity_key, package)
            await self.store.set_setting(_SETTING_KP_STOCK, "0")
        await self._replenish_key_packages()

    async def key_package_stock(self) -> int:
        """How many (non last-resort) KeyPackages this client believes the node still holds for it."""
        return int(await self.store.get_setting(_SETTING_KP_STOCK) or 0)

    async def _adjust_key_package_stock(self, delta: int) -> int:
        async with self._stock_lock:
            stock = max(0, await self.key_package_stock() + delta)
            await self.store.set_setting(_SETTING_KP_STOCK, str(stock))
            return stock

    async def _replenish_key_packages(self) -> None:
        async with self._replenishing:
            if await self.key_package_stock() > self.config.key_packages_low:
                return
            while await self.key_package_stock() < self.config.key_packages:
                package = await asyncio.to_thread(self.vault.create_key_package, False)
                await self.node.upload_key_package(self.identity_key, package)
                await self._adjust_key_package_stock(+1)

    async def _consumed_key_package(self) -> None:
        if await self._adjust_key_package_stock(-1) <= self.config.key_packages_low:
            self._spawn(self._replenish_in_background())

    async def _replenish_in_background(self) -> None:
        try:
            await self._guard(self._replenish_key_packages())
        except ChatError as error:
            self._emit(ErrorEvent(f"could not publish new key packages: {error}", error))

    # ── names ───────────────────────────────────────────────────────────────────────────────────────────

    async def username_of(self, identity_key: bytes) -> str | None:
        """The username of an identity key (resolveIdentity, cached); None if the node knows none."""
        name = self._names.get(identity_key)
        if name is not None:
            return name
        try:
            name = await self.node.resolve_identity(identity_key)
        except (RpcError, OSError, TimeoutError):
            return None
        if name:
            self._names[identity_key] = name
        return name

    async def _display_name(self, identity_key: bytes) -> str:
        return await self.username_of(identity_key) or identity_key.hex()[:16]

    async def resolve_user(self, username: str) -> tuple[str, bytes]:
        """(normalized username, identity key); UserNotFound if the node has no such account."""
        name = self._checked_username(username)
        for known_key, known in self._names.items():
            if known == name:
                return name, known_key
        key = await self._guard(self.node.resolve_user(name))
        if key is None:
            raise UserNotFound(f"no user named {name!r} on {self.node.address}")
        self._names[key] = name
        return name, key

    async def _hybrid_key(self, identity_key: bytes, name: str) -> bytes:
        key = self._hybrid_keys.get(identity_key)
        if key is None:
            key = await self._guard(self.node.fetch_hybrid_key(identity_key))
            if key is None:
                raise NoHybridKey(f"{name} has not published a hybrid key yet: they have to log in once")
            self._hybrid_keys[identity_key] = key
        return key

    # ── events ──────────────────────────────────────────────────────────────────────────────────────────

    def events(self) -> EventStream:
        """Every event from the moment of this call on (subscribe before `start` to miss nothing), until
        `close`. Several consumers may each have their own stream; `EventStream.close` unsubscribes."""
        stream = EventStream(self._queues)
        if self._closed:
            stream.close()
        return stream

    def add_listener(self, callback: EventCallback) -> None:
        """Call `callback(event)` for every event (a coroutine function is scheduled as a task)."""
        self._callbacks.append(callback)

    def _emit(self, event: Event) -> None:
        for queue in self._queues:
            queue.put_nowait(event)
        for callback in self._callbacks:
            try:
                result = callback(event)
            except Exception:
                log.exception("event callback failed")
                continue
            if inspect.isawaitable(result):
                self._spawn(_awaited(result))

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ── conversations ───────────────────────────────────────────────────────────────────────────────────

    async def conversation(self, ref: Conversation | str | int) -> Conversation:
        """Look a conversation up by object, id or name (``bob`` finds the DM ``@bob``); UnknownConversation."""
        if isinstance(ref, Conversation):
            ref = ref.id
        if isinstance(ref, int):
            found = await self.store.get_conversation(ref)
        else:
            name = ref.strip()
            if name in SELF_ALIASES or name.removeprefix("@") == self.username:
                found = await self.store.notes()
            else:
                found = await self.store.find_by_name(name)
                if found is None and not name.startswith("@"):
                    found = await self.store.find_by_name("@" + name)
        if found is None:
            raise UnknownConversation(f"no conversation {ref!r}")
        return found

    async def conversations(self) -> list[ConversationSummary]:
        """All conversations, most recent activity first, with unread counts."""
        unread = await self.store.unread_counts()
        result = []
        for conversation in await self.store.list_conversations():
            result.append(
                ConversationSummary(conversation, unread.get(conversation.id, 0), await self._active(conversation))
            )
        return result

    async def _active(self, conversation: Conversation) -> bool:
        if conversation.kind == "notes":
            return True
        if await self.store.get_setting(_SETTING_LEFT + str(conversation.id)) is not None:
            return False
        group_id = conversation.group_id
        if group_id is None:
            return False
        try:
            return await asyncio.to_thread(self.vault.is_active, group_id)
        except NativeError:
            return False

    async def members(self, ref: Conversation | str | int) -> list[Member]:
        conversation = await self.conversation(ref)
        return await self.store.list_members(conversation.id)

    async def history(self, ref: Conversation | str | int, limit: int = 50) -> list[Message]:
        conversation = await self.conversation(ref)
        return await self.store.history(conversation.id, limit)

    async def mark_read(self, ref: Conversation | str | int) -> None:
        conversation = await self.conversation(ref)
        await self.store.mark_read(conversation.id)

    async def notes(self) -> Conversation:
        """The local notepad (created on first use)."""
        existing = await self.store.notes()
        if existing is not None:
            return existing
        conversation = await self.store.create_conversation("notes", NOTES_NAME)
        await self.store.add_member(conversation.id, self.identity_key, self.username)
        return conversation

    async def dm(self, username: str) -> Conversation:
        """The DM with `username`, created (MLS group + channel, Welcome sent) if there is none yet.
        Your own username (or ``me``) gives the local notepad."""
        raw = username.strip()
        if raw in SELF_ALIASES:
            return await self.notes()
        name, peer = await self.resolve_user(raw)
        if peer == self.identity_key:
            return await self.notes()
        existing = await self.store.find_dm(peer)
        if existing is not None:
            return existing
        hybrid = await self._hybrid_key(peer, name)
        package = await self._fetch_key_package(peer, name)
        channel = await self._guard(self.node.create_channel(peer))
        async with self._mls:
            existing = await self.store.find_dm(peer)  # a Welcome from the peer may have come meanwhile
            if existing is not None:
                return existing
            group_id = await asyncio.to_thread(self.vault.create_group)
            try:
                _commit, welcome = await asyncio.to_thread(self.vault.add_members, group_id, [package])
                frame = WelcomeFrame("dm", "", channel, self.identity_key, welcome).encode()
                await self._deliver_one(peer, name, hybrid, frame, b"")
                conversation = await self.store.create_conversation(
                    "dm",
                    await self._free_name("@" + name),
                    group_id=group_id,
                    channel_id=channel,
                    peer_identity_key=peer,
                )
            except BaseException:
                with contextlib.suppress(NativeError):
                    await asyncio.to_thread(self.vault.delete_group, group_id)
                raise
            await self.store.add_member(conversation.id, self.identity_key, self.username)
            await self.store.add_member(conversation.id, peer, name)
        self._watch(channel)
        self._groups_changed.set()
        return conversation

    async def create_group(self, name: str) -> Conversation:
        """A new group with only this client in it; `invite` adds members."""
        name = name.strip()
        if not name or len(name) > MAX_GROUP_NAME or name.startswith("@") or any(c.isspace() for c in name):
            raise ChatError(f"a group name is 1 to {MAX_GROUP_NAME} characters, no spaces, not starting with '@'")
        if await self.store.find_by_name(name) is not None:
            raise ChatError(f"there is already a conversation named {name!r}")
        async with self._mls:
            group_id = await asyncio.to_thread(self.vault.create_group)
            try:
                conversation = await self.store.create_conversation("group", name, group_id=group_id)
            except ConversationExists:
                await asyncio.to_thread(self.vault.delete_group, group_id)
                raise ChatError(f"there is already a conversation named {name!r}") from None
            await self.store.add_member(conversation.id, self.identity_key, self.username)
        return conversation

    async def _group_of(self, conversation: Conversation, action: str) -> bytes:
        if conversation.kind == "notes":
            raise NotAllowed(f"cannot {action} in your notepad")
        if not await self._active(conversation) or conversation.group_id is None:
            raise NotAllowed(f"you are no longer a member of {conversation.name}")
        return conversation.group_id

    async def invite(self, ref: Conversation | str | int, username: str) -> None:
        """Add `username` to a group: their KeyPackage is fetched, the commit goes to the other members and the
        Welcome to them. They can read what is sent from now on, nothing earlier."""
        conversation = await self.conversation(ref)
        if conversation.kind != "group":
            raise NotAllowed("invitations are for groups: create one with /group, then /invite")
        name, peer = await self.resolve_user(username)
        group_id = await self._group_of(conversation, "invite")
        members = await asyncio.to_thread(self.vault.members, group_id)
        if peer in members:
            raise NotAllowed(f"{name} is already a member of {conversation.name}")
        hybrid = await self._hybrid_key(peer, name)
        package = await self._fetch_key_package(peer, name)
        async with self._mls:
            members = await asyncio.to_thread(self.vault.members, group_id)
            commit, welcome = await asyncio.to_thread(self.vault.add_members, group_id, [package])
            frame = WelcomeFrame("group", conversation.name, None, self.identity_key, welcome).encode()
            # The Welcome first: see "Inbox layout" in the module docs.
            welcome_error: ChatError | None = None
            try:
                await self._deliver_one(peer, name, hybrid, frame, b"")
            except ChatError as error:
                welcome_error = error
            await self.store.add_member(conversation.id, peer, name)
            others = [key for key in members if key != self.identity_key]
            await self._deliver(others, MlsFrame(commit).encode(), b"")
        self._emit(MemberJoined(conversation, peer, name, self.username))
        if welcome_error is not None:
            raise DeliveryFailed(f"{name} was added but did not get the invitation: {welcome_error}", [name])

    async def remove(self, ref: Conversation | str | int, username: str) -> None:
        """Remove `username` from a group; they cannot read anything sent afterwards."""
        conversation = await self.conversation(ref)
        if conversation.kind != "group":
            raise NotAllowed("only group members can be removed; a DM stays between its two members")
        name, peer = await self.resolve_user(username)
        if peer == self.identity_key:
            raise NotAllowed("to leave a group, ask another member to remove you")
        group_id = await self._group_of(conversation, "remove members")
        async with self._mls:
            members = await asyncio.to_thread(self.vault.members, group_id)
            if peer not in members:
                raise NotAllowed(f"{name} is not a member of {conversation.name}")
            commit = await asyncio.to_thread(self.vault.remove_members, group_id, [peer])
            await self.store.remove_member(conversation.id, peer)
            # Everyone who was a member gets the commit, the removed member included (so it learns of it).
            await self._deliver([key for key in members if key != self.identity_key], MlsFrame(commit).encode(), b"")
        self._emit(MemberLeft(conversation, peer, name, self.username))

    async def send(self, ref: Conversation | str | int, text: str) -> Message:
        """Encrypt `text` for the conversation's members and send it; returns the stored outgoing message."""
        conversation = await self.conversation(ref)
        sent_at = time.time()
        if conversation.kind == "notes":
            return await self._store_outgoing(
                conversation, hashlib.sha256(b"note" + os.urandom(16)).digest(), text, sent_at
            )
        group_id = await self._group_of(conversation, "send")
        content = TextContent(text, sent_at).encode()
        async with self._mls:
            ciphertext = await asyncio.to_thread(self.vault.encrypt, group_id, content)
            members = await asyncio.to_thread(self.vault.members, group_id)
            recipients = [key for key in members if key != self.identity_key]
            channel = conversation.channel_id if conversation.kind == "dm" else None
            partial: DeliveryFailed | None = None
            try:
                await self._deliver(recipients, MlsFrame(ciphertext).encode(), channel or b"")
            except DeliveryFailed as error:
                partial = error  # some members got it: keep it in the history, then say who did not
            message = await self._store_outgoing(
                conversation, hashlib.sha256(b"out" + ciphertext).digest(), text, sent_at
            )
        if partial is not None:
            raise partial
        return message

    async def _store_outgoing(
        self, conversation: Conversation, message_id: bytes, text: str, sent_at: float
    ) -> Message:
        message = await self.store.add_message(
            conversation.id,
            message_id,
            text,
            sender_identity_key=self.identity_key,
            sender_username=self.username,
            sent_at=sent_at,
            outgoing=True,
        )
        assert message is not None  # ids are fresh (random, or the hash of a new ciphertext): never a duplicate
        return message

    async def _fetch_key_package(self, peer: bytes, name: str) -> bytes:
        package = await self._guard(self.node.fetch_key_package(peer))
        if package is None:
            raise NoKeyPackage(f"{name} has no key package left on the node: they have to come online first")
        try:
            info = validate_key_package(package)
        except NativeError as error:
            raise ChatError(f"the node returned an invalid key package for {name}: {error}") from None
        if info.identity_key != peer:
            raise ChatError(f"the node returned a key package of another identity for {name}")
        return package

    async def _free_name(self, wanted: str) -> str:
        name, counter = wanted, 1
        while await self.store.find_by_name(name) is not None:
            counter += 1
            name = f"{wanted}-{counter}"
        return name

    # ── delivery ────────────────────────────────────────────────────────────────────────────────────────

    async def _deliver(self, recipients: Sequence[bytes], frame: bytes, channel: bytes) -> None:
        """Seal `frame` to each recipient and enqueue it; DeliveryFailed names those who did not get it."""
        if not recipients:
            return
        names = [await self._display_name(key) for key in recipients]
        results = await asyncio.gather(
            *(self._deliver_to(key, name, frame, channel) for key, name in zip(recipients, names, strict=True)),
            return_exceptions=True,
        )
        failed = [(name, error) for name, error in zip(names, results, strict=True) if isinstance(error, BaseException)]
        if not failed:
            return
        for _name, error in failed:
            if not isinstance(error, Exception):
                raise error
        if len(failed) == len(recipients) and all(isinstance(error, NodeUnavailable) for _n, error in failed):
            raise failed[0][1]
        detail = "; ".join(f"{name}: {error}" for name, error in failed)
        raise DeliveryFailed(f"not delivered to {detail}", [name for name, _error in failed])

    async def _deliver_to(self, peer: bytes, name: str, frame: bytes, channel: bytes) -> None:
        hybrid = await self._hybrid_key(peer, name)
        await self._deliver_one(peer, name, hybrid, frame, channel)

    async def _deliver_one(self, peer: bytes, name: str, hybrid: bytes, frame: bytes, channel: bytes) -> None:
        envelope = seal_envelope(hybrid, frame, envelope_info(peer, channel or None))
        # The same bytes are sent again after a dropped connection: the recipient stores by the envelope's hash,
        # so a copy that did land before the drop is not shown twice.
        # Only a connection lost during the call is retried (the next call reconnects); a node that cannot be
        # reached at all fails at once rather than after several connect timeouts.
        for attempt in range(3):
            try:
                await self.node.enqueue(peer, envelope, channel)
                return
            except Disconnected as error:
                if attempt == 2:
                    await self._guard(_reraise(error))
                await asyncio.sleep(0.2 * (attempt + 1))
            except (RpcError, OSError, TimeoutError) as error:
                await self._guard(_reraise(error))

    # ── receiving ───────────────────────────────────────────────────────────────────────────────────────

    async def start(self) -> None:
        """Start the background receive loops: the default inbox and every DM channel's inbox."""
        if self._running:
            return
        self._running = True
        for channel in await self._channels():
            self._watch(channel)

    async def _channels(self) -> list[bytes]:
        channels = [b""]
        for conversation in await self.store.list_conversations():
            if conversation.kind == "dm" and conversation.channel_id is not None:
                channels.append(conversation.channel_id)
        return channels

    def _inbox(self, channel: bytes) -> _InboxState:
        inbox = self._inboxes.get(channel)
        if inbox is None:
            inbox = self._inboxes[channel] = _InboxState(channel)
        return inbox

    def _watch(self, channel: bytes) -> None:
        if not self._running or self._closed:
            return
        inbox = self._inbox(channel)
        if inbox.task is None or inbox.task.done():
            inbox.task = asyncio.create_task(self._inbox_loop(inbox), name=f"inbox {channel.hex() or 'default'}")

    async def sync(self) -> int:
        """Process everything queued now in every inbox (DM channels joined meanwhile included), without
        waiting for more; returns how many envelopes were processed."""
        done: set[bytes] = set()
        total = 0
        while True:
            pending = [channel for channel in await self._channels() if channel not in done]
            if not pending:
                return total
            for channel in pending:
                done.add(channel)
                inbox = self._inbox(channel)
                envelopes = await self._guard(self.node.peek(self.identity_key, channel))
                processed, _deferred = await self._process(inbox, envelopes, final=False)
                total += processed

    async def _inbox_loop(self, inbox: _InboxState) -> None:
        failures = 0
        while self._running:
            try:
                envelopes = await self.node.peek_wait(self.identity_key, inbox.channel, timeout_ms=self.config.wait_ms)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - the loop reports and retries whatever fails
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    await self._report_loop_error(inbox, error)
                await asyncio.sleep(min(0.25 * 2 ** min(failures, 5), 5.0))
                continue
            if failures:
                failures = 0
                if not inbox.channel:
                    self._emit(Notice(f"connected to {self.node.address} again"))
            try:
                _processed, deferred = await self._process(inbox, envelopes, final=True)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - reported; the loop must keep receiving
                await self._report_loop_error(inbox, error)
                await asyncio.sleep(1.0)
                continue
            if deferred:
                # Wait for a new group (a Welcome on another inbox) before looking at the held envelope again.
                self._groups_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._groups_changed.wait(), 2.0)

    async def _report_loop_error(self, inbox: _InboxState, error: Exception) -> None:
        try:
            await self._guard(_reraise(error))
        except ChatError as wrapped:
            if isinstance(wrapped, NodeUnavailable) and inbox.channel:
                return  # reported once, by the default inbox's loop
            self._emit(ErrorEvent(f"receiving: {wrapped}", wrapped))
        except Exception as other:  # noqa: BLE001 - anything unexpected becomes an event, not a crash
            self._emit(ErrorEvent(f"receiving failed: {other!r}", other))

    async def _process(self, inbox: _InboxState, envelopes: list[Envelope], *, final: bool) -> tuple[int, bool]:
        """Handle `envelopes` in seq order and ack what was handled; returns (count, whether one was held)."""
        processed = 0
        async with inbox.lock:
            last = await self.store.get_last_seq(self.identity_key, inbox.channel)
            acked_up_to = 0
            deferred = False
            for envelope in sorted(envelopes, key=lambda e: e.seq):
                if envelope.seq > last:
                    try:
                        async with self._mls:
                            await self._handle(inbox.channel, envelope)
                    except (NodeUnavailable, Disconnected, OSError, TimeoutError):
                        raise  # transient: the envelope is tried again later
                    except _Deferred:
                        first = inbox.deferred_since.setdefault(envelope.seq, time.monotonic())
                        if not final or time.monotonic() - first < self.config.defer_seconds:
                            deferred = True
                            break
                        self._emit(
                            ErrorEvent(f"dropped a message for a group this client never joined (seq {envelope.seq})")
                        )
                    except Exception as error:
                        # A bug or a local failure: try the envelope again a few times, then give up on it so
                        # that one bad envelope cannot block its inbox for ever.
                        tries = inbox.failures.get(envelope.seq, 0) + 1
                        inbox.failures[envelope.seq] = tries
                        if tries < _MAX_TRIES:
                            raise
                        self._emit(ErrorEvent(f"gave up on a message (seq {envelope.seq}): {error!r}", error))
                    inbox.failures.pop(envelope.seq, None)
                    inbox.deferred_since.pop(envelope.seq, None)
                    await self.store.set_last_seq(self.identity_key, inbox.channel, envelope.seq)
                    last = envelope.seq
                    processed += 1
                acked_up_to = envelope.seq
            if acked_up_to:
                await self._guard(self.node.ack(self.identity_key, acked_up_to, inbox.channel))
        return processed, deferred

    async def _handle(self, channel: bytes, envelope: Envelope) -> None:
        message_id = hashlib.sha256(envelope.data).digest()
        if await self.store.get_message(message_id) is not None:
            return  # a copy of an envelope already stored (sent again after a dropped connection)
        try:
            plaintext = await asyncio.to_thread(
                self.vault.open_envelope, envelope.data, envelope_info(self.identity_key, channel or None)
            )
            frame = decode_frame(plaintext)
        except (NativeError, FrameError) as error:
            self._emit(
                ErrorEvent(f"ignored an envelope that does not open or parse (seq {envelope.seq}): {error}", error)
            )
            return
        if isinstance(frame, WelcomeFrame):
            await self._on_welcome(frame)
        else:
            await self._on_mls(frame.message, envelope, message_id)

    async def _on_welcome(self, frame: WelcomeFrame) -> None:
        if frame.conversation_kind == "dm" and frame.inviter != self.identity_key:
            # The node gives a pair of identities one channel: asking for it checks the one in the Welcome
            # (before joining, so that a node that cannot be reached leaves the Welcome to be tried again).
            channel = await self._guard(self.node.create_channel(frame.inviter))
            if channel != frame.channel_id:
                self._emit(ErrorEvent("ignored a DM invitation naming a channel that is not the sender's and ours"))
                return
        try:
            group_id = await asyncio.to_thread(self.vault.join_group, frame.welcome)
        except NativeError as error:
            self._emit(ErrorEvent(f"could not join a conversation an invitation was for: {error}", error))
            return
        await self._consumed_key_package()
        members = await asyncio.to_thread(self.vault.members, group_id)
        inviter: bytes | None = frame.inviter if frame.inviter in members else None
        inviter_name = await self.username_of(inviter) if inviter is not None else None
        if frame.conversation_kind == "dm":
            conversation = await self._joined_dm(frame, group_id, members, inviter, inviter_name)
            if conversation is None:
                return
        else:
            existing = await self.store.find_by_group_id(group_id)
            if existing is not None:
                return
            base = frame.name if frame.name and not frame.name.startswith("@") else "group"
            conversation = await self.store.create_conversation(
                "group", await self._free_name(base[:MAX_GROUP_NAME]), group_id=group_id
            )
        await self._sync_members(conversation, group_id)
        self._groups_changed.set()
        self._emit(JoinedConversation(conversation, inviter_name))

    async def _joined_dm(
        self,
        frame: WelcomeFrame,
        group_id: bytes,
        members: list[bytes],
        inviter: bytes | None,
        inviter_name: str | None,
    ) -> Conversation | None:
        others = [key for key in members if key != self.identity_key]
        if inviter is None or others != [inviter] or frame.channel_id is None:
            self._emit(ErrorEvent("ignored a DM invitation whose members do not match its sender"))
            await asyncio.to_thread(self.vault.delete_group, group_id)
            return None
        existing = await self.store.find_dm(inviter)
        if existing is not None:
            # Both sides opened the DM at once: both keep both groups, and both send in the one whose id is
            # smaller, so they end up in the same group; messages of the other still land here (alias).
            assert existing.group_id is not None
            if group_id < existing.group_id:
                await self.store.set_setting(_SETTING_ALIAS + existing.group_id.hex(), str(existing.id))
                await self.store.set_group_id(existing.id, group_id)
            else:
                await self.store.set_setting(_SETTING_ALIAS + group_id.hex(), str(existing.id))
            self._groups_changed.set()
            return None
        name = await self._free_name("@" + (inviter_name or inviter.hex()[:16]))
        conversation = await self.store.create_conversation(
            "dm", name, group_id=group_id, channel_id=frame.channel_id, peer_identity_key=inviter
        )
        self._watch(frame.channel_id)
        return conversation

    async def _conversation_of_group(self, group_id: bytes) -> Conversation | None:
        conversation = await self.store.find_by_group_id(group_id)
        if conversation is not None:
            return conversation
        alias = await self.store.get_setting(_SETTING_ALIAS + group_id.hex())
        return None if alias is None else await self.store.get_conversation(int(alias))

    async def _on_mls(self, message: bytes, envelope: Envelope, message_id: bytes) -> None:
        try:
            processed = await asyncio.to_thread(self.vault.process, message)
        except GroupNotFound:
            raise _Deferred from None
        except WrongEpoch as error:
            self._emit(ErrorEvent(f"dropped a message from another epoch (seq {envelope.seq}): {error}", error))
            return
        except NativeError as error:
            self._emit(ErrorEvent(f"dropped a message that does not decrypt (seq {envelope.seq}): {error}", error))
            return
        conversation = await self._conversation_of_group(processed.group_id)
        if conversation is None:
            self._emit(ErrorEvent("dropped a message for a group without a conversation"))
            return
        sender = processed.sender
        sender_name = await self.username_of(sender) if sender is not None else None
        if processed.kind == "application":
            await self._on_application(conversation, processed, envelope, message_id, sender, sender_name)
        elif processed.kind == "commit":
            await self._on_commit(conversation, processed, sender_name)

    async def _on_application(
        self,
        conversation: Conversation,
        processed: ProcessedMessage,
        envelope: Envelope,
        message_id: bytes,
        sender: bytes | None,
        sender_name: str | None,
    ) -> None:
        try:
            content = decode_content(processed.plaintext or b"")
        except FrameError as error:
            self._emit(ErrorEvent(f"ignored a message this client cannot read: {error}", error))
            return
        stored = await self.store.add_message(
            conversation.id,
            message_id,
            content.body,
            sender_identity_key=sender,
            sender_username=sender_name,
            sent_at=content.sent_at,
            server_seq=envelope.seq,
        )
        if stored is not None:
            self._emit(MessageReceived(conversation, stored))

    async def _on_commit(self, conversation: Conversation, processed: ProcessedMessage, by: str | None) -> None:
        if processed.self_removed:
            await self.store.set_setting(_SETTING_LEFT + str(conversation.id), "1")
            for member in await self.store.list_members(conversation.id):
                if member.identity_key != self.identity_key:
                    await self.store.remove_member(conversation.id, member.identity_key)
            self._emit(RemovedFromConversation(conversation, by))
            return
        for key in processed.added:
            name = await self.username_of(key)
            await self.store.add_member(conversation.id, key, name)
            self._emit(MemberJoined(conversation, key, name, by))
        for key in processed.removed:
            name = await self.username_of(key)
            await self.store.remove_member(conversation.id, key)
            self._emit(MemberLeft(conversation, key, name, by))
        await self._sync_members(conversation, processed.group_id)

    async def _sync_members(self, conversation: Conversation, group_id: bytes) -> None:
        keys = await asyncio.to_thread(self.vault.members, group_id)
        known = {member.identity_key for member in await self.store.list_members(conversation.id)}
        for key in known - set(keys):
            await self.store.remove_member(conversation.id, key)
        for key in keys:
            if key not in known:
                await self.store.add_member(conversation.id, key, await self.username_of(key))


class _Closed:
    pass


_CLOSED: Any = _Closed()


class EventStream:
    """An async iterator over a `ChatClient`'s events; subscribed from its creation on."""

    def __init__(self, queues: list[asyncio.Queue[Event]]) -> None:
        self._queues = queues
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._done = False
        queues.append(self._queue)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        if self._done:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is _CLOSED:
            self.close()
            raise StopAsyncIteration
        return event

    def close(self) -> None:
        """Unsubscribe; iteration ends."""
        self._done = True
        if self._queue in self._queues:
            self._queues.remove(self._queue)


async def _awaited(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("event callback failed")


async def _reraise(error: BaseException) -> None:
    raise error


__all__ = [
    "NOTES_NAME",
    "ChatClient",
    "ChatConfig",
    "ConversationSummary",
    "EventStream",
    "PasswordSource",
    "default_state_dir",
    "key_fingerprint",
]
