"""Loads the wire schema once, for the node and the client alike."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import capnp  # type: ignore[import-untyped]

PROTOCOL_VERSION = 1
AUTH_VERSION = 1
ALPN = "capnp"


@functools.cache
def node_schema() -> Any:
    """The module pycapnp builds from `schema/node.capnp` (NodeService, Auth, Envelope, ServerInfo)."""
    path = resources.files("quicnprotochat.schema").joinpath("node.capnp")
    with resources.as_file(path) as real_path:
        return capnp.load(str(real_path))


def node_service_methods() -> dict[str, int]:
    """Method name -> ordinal of NodeService, as the schema declares them."""
    methods = node_schema().NodeService.schema.node.interface.methods
    return {method.name: ordinal for ordinal, method in enumerate(methods)}
