"""The NodeService capability: one instance per connection, thin handlers that delegate to the node.

Handlers parse the call, authorize it, call a service and let RpcErrors travel back to the caller; they never
touch storage directly. A method this node does not implement yet answers `unimplemented:` naming itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quicnprotochat.common.errors import Unimplemented
from quicnprotochat.common.schema import node_schema, node_service_methods

if TYPE_CHECKING:
    from quicnprotochat.server.node import NodeState
    from quicnprotochat.server.peer import Peer

_NodeServiceServer: Any = node_schema().NodeService.Server


class NodeServiceImpl(_NodeServiceServer):  # type: ignore[misc]
    def __init__(self, node: NodeState, peer: Peer) -> None:
        self._node = node
        self._peer = peer

    async def health(self, _context: Any, **_params: Any) -> str:
        return "ok"

    async def serverInfo(self, _context: Any, **_params: Any) -> dict[str, Any]:  # noqa: N802 (schema name)
        return self._node.server_info()


def _unimplemented(name: str) -> Any:
    async def handler(self: NodeServiceImpl, _context: Any, **_params: Any) -> None:
        raise Unimplemented(f"{name} is not implemented by this node yet")

    handler.__name__ = name
    return handler


for _name in node_service_methods():
    if not hasattr(NodeServiceImpl, _name):
        setattr(NodeServiceImpl, _name, _unimplemented(_name))
