"""What a caller learns from a failed call: a stable code and a reason, never a traceback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from quicnprotochat.client import KnownHosts, NodeClient
from quicnprotochat.common import kj_loop
from quicnprotochat.common.errors import (
    Forbidden,
    Internal,
    ResourceExhausted,
    error_from_reason,
)
from quicnprotochat.server.config import NodeConfig
from quicnprotochat.server.identity import load_or_create_identity
from quicnprotochat.server.node_counters import NodeCounters
from quicnprotochat.server.node_state import connection_limits
from quicnprotochat.server.rpc_errors import install_error_sanitizer
from quicnprotochat.server.rpc_service import NodeServiceImpl
from quicnprotochat.server.rpc_session import RpcSessions
from quicnprotochat.server.tcp_listener import TcpListener, tls_server_context


class FailingService(NodeServiceImpl):
    """A NodeService whose handlers fail the ways real handlers can."""

    async def health(self, _context: Any, **_params: Any) -> str:
        raise KeyError("/srv/secret/path token=deadbeef")

    async def resolveUser(self, username: str, auth: Any, _context: Any, **_: Any) -> bytes:
        raise Forbidden("you may not")

    async def createChannel(self, peerKey: bytes, auth: Any, _context: Any, **_: Any) -> bytes:
        raise ResourceExhausted("too many calls", retry_after=1.5)


@pytest.fixture
async def failing_client(node_config: NodeConfig, known_hosts: KnownHosts) -> AsyncIterator[NodeClient]:
    install_error_sanitizer()
    await kj_loop.acquire()
    identity, _ = load_or_create_identity(node_config.data_dir)
    sessions = RpcSessions(
        lambda peer, budget: FailingService(None, peer, budget),  # type: ignore[arg-type]
        1 << 20,
        connection_limits(node_config),
        NodeCounters(),
    )
    listener = TcpListener(
        sessions, tls_server_context(identity), write_buffer_high=node_config.max_unsent_bytes_per_connection
    )
    host, port = await listener.start("127.0.0.1", 0)
    client = NodeClient(f"{host}:{port}", transport="tcp", known_hosts=known_hosts)
    try:
        yield client
    finally:
        await client.close()
        await listener.close()
        await sessions.close()
        await kj_loop.release()


async def test_unexpected_errors_hide_details(failing_client: NodeClient, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(Internal) as raised:
        await failing_client.health()
    text = str(raised.value)
    assert text.startswith("internal: unexpected error (ref ")
    assert "secret" not in text and "Traceback" not in text and ".py" not in text
    # The node's operator gets the details, under the same reference.
    reference = text.split("ref ")[1].split(";")[0]
    assert any(reference in record.getMessage() and record.exc_info for record in caplog.records)


async def test_codes_map_to_classes(failing_client: NodeClient) -> None:
    with pytest.raises(Forbidden, match=r"^forbidden: you may not$"):
        await failing_client.resolve_user("alice")
    with pytest.raises(ResourceExhausted) as raised:
        await failing_client.create_channel(b"x" * 32)
    assert raised.value.retry_after == 1.5


def test_reason_parsing() -> None:
    assert isinstance(error_from_reason("remote exception: message = forbidden: no"), Forbidden)
    assert isinstance(error_from_reason("forbidden: no"), Forbidden)
    unknown = error_from_reason("remote exception: something odd")
    assert isinstance(unknown, Internal) and "something odd" in unknown.reason
