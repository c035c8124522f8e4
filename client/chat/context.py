"""`ChatContext`: what every part of a `ChatClient` shares (state, vault, node, the MLS lock, events), and
`guard`, which turns node and transport failures into the `ChatError`s users see."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from quicnprotochat.client.known_hosts import FingerprintMismatch
from quicnprotochat.client.node_client import NodeClient
from quicnprotochat.client.state import ClientState, ConversationStore, StateError
from quicnprotochat.common.errors import Disconnected, ResourceExhausted, RpcError, Unauthenticated
from quicnprotochat.native import Vault

from .config import ChatConfig
from .errors import ChatError, LoginFailed, NodeUnavailable, StateUnavailable
from .event_bus import EventBus
from .events import Event
from .leave_proposals import LeaveProposals

T = TypeVar("T")


@dataclass
class ChatContext:
    config: ChatConfig
    state: ClientState
    vault: Vault
    node: NodeClient
    username: str
    bus: EventBus = field(default_factory=EventBus)
    mls: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held around every use of the vault's groups together with the store, so that both stay in step."""
    groups_changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a group (or a DM alias) appears or a commit settles: a held envelope is looked at again."""
    unconfirmed: set[bytes] = field(default_factory=set)
    """Groups whose vault holds a commit of this client the node has not answered yet: their incoming messages
    wait (they may be for the epoch that commit starts)."""
    proposals: LeaveProposals = field(init=False)
    """Leave proposals received and not yet committed (kept in the store)."""

    def __post_init__(self) -> None:
        self.proposals = LeaveProposals(self.state.conversations)

    @property
    def store(self) -> ConversationStore:
        return self.state.conversations

    @property
    def identity_key(self) -> bytes:
        return self.vault.identity_key

    def emit(self, event: Event) -> None:
        self.bus.emit(event)

    async def guard(self, operation: Awaitable[T]) -> T:
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


async def reraise(error: BaseException) -> None:
    """An awaitable that raises `error`: `guard(reraise(error))` translates an error already caught."""
    raise error
