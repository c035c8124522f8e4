"""How every NodeService call enters the node: `serve_methods` gives each schema method a `<name>_context` entry,
which pycapnp prefers over the plain method.

The entry runs the call under its connection's budget (server/connection_budget.py), reads the parameters
eagerly (server/rpc_params.py: a malformed one is `invalid_argument:`, after authentication when the call
carries auth), calls the handler and fills the results. A schema method the node does not implement is
`unimplemented:`. New methods get all of this by being declared in the schema and defined on the class.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from quicnprotochat.common.errors import InvalidArgument, Unimplemented
from quicnprotochat.server.connection_budget import ConnectionBudget
from quicnprotochat.server.rpc_params import MalformedParams, StructReader
from quicnprotochat.server.rpc_results import ResultWriter

Handler = Callable[..., Awaitable[Any]]


class Dispatching(Protocol):
    @property
    def budget(self) -> ConnectionBudget: ...

    async def authenticate_first(self, auth: Any) -> None:
        """Raise `unauthenticated:` if `auth` does not stand for a live session (called before a malformed
        parameter is reported)."""

    def client_fault(self, method: str, reason: str) -> None:
        """Note (rate-limited in the log) that a client sent a malformed call."""


C = TypeVar("C")


def _entry(name: str, params: StructReader, results: ResultWriter) -> Callable[[Any, Any], Awaitable[None]]:
    async def entry(self: Dispatching, context: Any) -> None:
        budget = self.budget
        if not budget.start_call():
            await budget.wait_to_start_call()
        try:
            # Looked up per call, so that subclasses' handlers are the ones served.
            handler: Handler | None = getattr(self, name, None)
            if handler is None:
                raise Unimplemented(f"{name} is not implemented by this node")
            try:
                values = params.values(context.params)
            except MalformedParams as fault:
                auth = fault.decoded.get("auth")
                if auth is not None:
                    await self.authenticate_first(auth)
                self.client_fault(name, str(fault))
                raise InvalidArgument(str(fault)) from None
            result = await handler(_context=context, **values)
            results.fill(context, result)
        finally:
            budget.end_call()

    entry.__name__ = f"{name}_context"
    return entry


def serve_methods(interface: Any) -> Callable[[type[C]], type[C]]:
    """Class decorator: every method of the `interface` schema enters through `_entry`, with its parameters'
    readers and its results' field order worked out once."""

    def decorate(cls: type[C]) -> type[C]:
        for name, method in interface.schema.methods.items():
            entry = _entry(name, StructReader(method.param_type), ResultWriter(name, method.result_type))
            setattr(cls, f"{name}_context", entry)
        return cls

    return decorate
