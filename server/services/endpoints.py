"""P2P endpoint records (`publishEndpoint`, `resolveEndpoint`): the node keeps one signed record per identity,
checked before it is stored (`common.endpoint_record`: names the caller, signed by the caller's identity key, not
expired, not too long-lived, within `max_endpoint_bytes`), and never hands one out past its expiry. An empty
record takes the caller's down."""

from __future__ import annotations

from quicnprotochat.common import endpoint_record
from quicnprotochat.common.errors import InvalidArgument
from quicnprotochat.native import verify_ed25519
from quicnprotochat.server.services import validation
from quicnprotochat.server.services.errors import store_errors
from quicnprotochat.server.services.sessions import Caller
from quicnprotochat.server.store import Clock, EndpointStore


class EndpointService:
    def __init__(self, store: EndpointStore, *, max_endpoint_bytes: int, clock: Clock) -> None:
        self._store = store
        self._max_endpoint_bytes = max_endpoint_bytes
        self._clock = clock

    async def publish(self, caller: Caller, identity_key: bytes, record: bytes) -> None:
        identity_key = validation.own_identity_key(caller, identity_key, "publish an endpoint")
        if not record:
            with store_errors():
                await self._store.delete_endpoint(identity_key)
            return
        if len(record) > self._max_endpoint_bytes:
            raise InvalidArgument(f"nodeAddr must be at most {self._max_endpoint_bytes} bytes")
        try:
            checked = endpoint_record.decode_checked(
                record, identity_key=identity_key, now=self._clock(), verify=verify_ed25519
            )
        except endpoint_record.RecordError as error:
            raise InvalidArgument(f"nodeAddr is not a valid endpoint record: {error}") from None
        with store_errors():
            await self._store.put_endpoint(identity_key, record, float(checked.expires_at))

    async def resolve(self, identity_key: bytes) -> bytes:
        return await self._store.get_endpoint(validation.identity_key(identity_key)) or b""

    async def purge_expired(self) -> int:
        return await self._store.purge_expired_endpoints()
