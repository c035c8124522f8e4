"""Direct delivery (opt-in, `ChatConfig.p2p`): application messages go straight to a peer's iroh endpoint when
the peer publishes one, with the node as the fallback.

- Publishing: while on, the client runs an iroh endpoint and publishes a record signed by its identity key
  (`common.endpoint_record`: iroh endpoint id, direct addresses, relay, expiry) with `publishEndpoint`, and
  publishes it again well before it expires. Off (or closing) takes the record down.
- Sending (`deliver_in_order`, used by the outbox for the pending copies to one peer): resolve the peer's record
  (cached, `direct_wire.PeerPaths`; checked once: signature and expiry), dial the iroh endpoint it names (the
  handshake proves that key), and send the sealed envelopes the node would have queued, one stream each, in
  order, up to `p2p_max_in_flight` of them not yet answered. The peer answers each only once it has stored it,
  and in the order the streams were opened. The stored ones are a prefix: at the first copy that is not
  stored (no record, a bad record, no connection, a wrong key, no answer within `p2p_timeout`, "not taken"),
  that copy and every later one go to the node (the outbox enqueues the same bytes with the same idempotency
  key). If the peer did store one but its answer was lost, the copy through the node is the same envelope:
  the peer stores messages by its hash and keeps it once.
- Receiving: each stream carries one envelope, handed to the receiver (`Receiver.receive_direct`), which stores
  it exactly as an inbox message and says whether it took it. A connection's streams are handled one after the
  other in the order they were opened, so a sender's messages are stored in the order it wrote them; after one
  that is not taken, nothing later on that connection is taken either (it goes through the node behind the
  refused one, in order). At most `direct_wire.MAX_IN_FLIGHT` requests are held per connection (a stream past
  that is reset); connections, reads and sizes are bounded.

Commits, proposals and Welcomes never come here: they go through the node's sequencer (`commits`), and the
receiver refuses anything but an application message on this path.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence

import iroh

from quicnprotochat.common import endpoint_record
from quicnprotochat.common.endpoint_record import EndpointRecord, RecordError
from quicnprotochat.common.errors import RpcError
from quicnprotochat.native import verify_ed25519

from . import direct_wire as wire
from .context import ChatContext
from .errors import ChatError
from .events import ErrorEvent
from .p2p_endpoint import P2PEndpoint, PeerMismatch

DirectReceiver = Callable[[bytes, bytes], Awaitable[bool]]
"""(channel, envelope) -> stored: the receiver's handling of one direct envelope."""
OnStored = Callable[[int], Awaitable[None]]
"""Called with a request's index once the peer answered that it stored it (in order)."""

MAX_INCOMING_CONNECTIONS = 32
MAX_OUTGOING_CONNECTIONS = 64
HANDSHAKE_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0
"""A peer that opened a stream has this long to send its request."""
PUBLISH_RETRY_S = 5.0
TAKE_DOWN_TIMEOUT_S = 2.0
DEFAULT_MAX_ENVELOPE = 1024 * 1024


class DirectDelivery:
    def __init__(self, context: ChatContext, receive: DirectReceiver, clock: Callable[[], float] = time.time) -> None:
        self._context = context
        self._receive = receive
        self._clock = clock
        config = context.config
        self._paths = wire.PeerPaths(resolve_every_s=config.p2p_resolve_every_s, backoff_s=config.p2p_backoff_s)
        self._endpoint: P2PEndpoint | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._serving: set[asyncio.Task[None]] = set()
        self._connections: dict[bytes, iroh.Connection] = {}
        self._max_envelope = DEFAULT_MAX_ENVELOPE
        self._max_in_flight = min(max(1, config.p2p_max_in_flight), wire.MAX_IN_FLIGHT)
        self._lock = asyncio.Lock()

    @property
    def running(self) -> bool:
        return self._endpoint is not None

    def endpoint_id(self) -> bytes | None:
        return None if self._endpoint is None else self._endpoint.endpoint_id

    def addresses(self) -> list[str]:
        return [] if self._endpoint is None else self._endpoint.addresses()

    # ── on and off ──────────────────────────────────────────────────────────────────────────────────────

    async def start(self) -> None:
        """Bind the endpoint, publish its signed record, and serve peers; ChatError if the node refuses it."""
        async with self._lock:
            if self._endpoint is not None:
                return
            config = self._context.config
            endpoint = await P2PEndpoint.bind(config.p2p_relays, config.p2p_bind)
            try:
                with contextlib.suppress(Exception):
                    info = await self._context.node.server_info()
                    self._max_envelope = info.limits.max_payload_bytes
                await self._context.guard(self._publish(endpoint))
            except BaseException:
                await endpoint.close()
                raise
            self._endpoint = endpoint
            self._tasks = [
                asyncio.create_task(self._refresh_forever(endpoint), name="p2p publish"),
                asyncio.create_task(self._accept_forever(endpoint), name="p2p accept"),
            ]

    async def stop(self) -> None:
        """Take the record down (best effort: it expires anyway), stop serving, close the endpoint."""
        async with self._lock:
            endpoint, self._endpoint = self._endpoint, None
            if endpoint is None:
                return
            tasks = [*self._tasks, *self._serving]
            self._tasks = []
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            context = self._context
            with contextlib.suppress(Exception):
                await asyncio.wait_for(context.node.publish_endpoint(context.identity_key, b""), TAKE_DOWN_TIMEOUT_S)
            for connection in self._connections.values():
                connection.close(0, b"closing")
            self._connections.clear()
            await endpoint.close()

    async def _publish(self, endpoint: P2PEndpoint) -> float:
        """Publish a fresh record; returns its expiry."""
        context = self._context
        expires_at = int(self._clock()) + context.config.p2p_record_ttl
        record = endpoint_record.sign_record(
            context.vault.sign,
            context.identity_key,
            endpoint.endpoint_id,
            endpoint.addresses(),
            endpoint.relay_url(),
            expires_at,
        )
        await context.node.publish_endpoint(context.identity_key, endpoint_record.encode(record))
        return expires_at

    async def _refresh_forever(self, endpoint: P2PEndpoint) -> None:
        # Published again at a third of the lifetime: two refreshes may fail before the record lapses.
        every = max(1.0, self._context.config.p2p_record_ttl / 3)
        failures = 0
        while True:
            await asyncio.sleep(every if failures == 0 else PUBLISH_RETRY_S)
            try:
                await self._publish(endpoint)
                failures = 0
            except asyncio.CancelledError:
                raise
            except (RpcError, OSError, TimeoutError, RecordError) as error:
                failures += 1
                if failures == 1:
                    self._context.emit(ErrorEvent(f"direct delivery: could not publish the endpoint: {error}", error))

    # ── sending ─────────────────────────────────────────────────────────────────────────────────────────

    async def deliver_in_order(self, peer: bytes, requests: Sequence[tuple[bytes, bytes]], on_stored: OnStored) -> int:
        """Deliver (channel, envelope) `requests` to `peer` directly, in order, with up to `p2p_max_in_flight`
        in flight; `on_stored(i)` is awaited as the peer answers that it stored request i. Returns how many were
        stored: always the first ones; the others must go through the node. Never raises for a failed attempt."""
        endpoint = self._endpoint
        if endpoint is None or not requests or not self._paths.should_try(peer, self._clock()):
            return 0
        record: EndpointRecord | None = None
        stored = 0

        async def counted(index: int) -> None:
            nonlocal stored
            stored += 1
            await on_stored(index)

        try:
            async with asyncio.timeout(self._context.config.p2p_timeout):
                record = await self._record_of(peer)
                if record is None:
                    return 0
                connection = await self._connection(endpoint, record)
            if not await self._pipeline(connection, requests, counted):
                # "Not taken": the peer takes nothing more on this connection (`_serve_streams`); the next copy to
                # it starts a fresh one.
                self._forget_connection(record.endpoint_id)
        except asyncio.CancelledError:
            raise
        except (TimeoutError, iroh.IrohError, PeerMismatch, RpcError, OSError, RecordError):
            if record is not None:
                self._forget_connection(record.endpoint_id)
            self._paths.failed(peer, self._clock())
            return stored
        self._paths.succeeded(peer)
        return stored

    async def _record_of(self, peer: bytes) -> EndpointRecord | None:
        now = self._clock()
        fresh, record = self._paths.cached_record(peer, now)
        if fresh:
            return record
        data = await self._context.node.resolve_endpoint(peer)
        # Checked whatever the node says (a record that is not the peer's own is never dialed), once per record:
        # the cache holds only checked records, and never past their expiry.
        record = (
            None
            if data is None
            else endpoint_record.decode_checked(data, identity_key=peer, now=now, verify=verify_ed25519)
        )
        self._paths.resolved(peer, record, now)
        return record

    async def _connection(self, endpoint: P2PEndpoint, record: EndpointRecord) -> iroh.Connection:
        connection = self._connections.get(record.endpoint_id)
        if connection is not None and connection.close_reason() is not None:
            self._forget_connection(record.endpoint_id)
            connection = None
        if connection is None:
            connection = await endpoint.connect(record)
            if len(self._connections) >= MAX_OUTGOING_CONNECTIONS:
                self._forget_connection(next(iter(self._connections)))
            self._connections[record.endpoint_id] = connection
        return connection

    async def _pipeline(
        self, connection: iroh.Connection, requests: Sequence[tuple[bytes, bytes]], on_stored: OnStored
    ) -> bool:
        """Send every request on its own stream, opened in order (the peer handles them in that order), with at
        most `p2p_max_in_flight` unanswered; read the answers in the same order. True when all were stored,
        False at the first "not taken"; raises (TimeoutError, IrohError) when the path broke. The oldest
        unanswered copy gets `p2p_timeout` from the moment the one before it was answered."""
        room = asyncio.Semaphore(self._max_in_flight)
        opened: asyncio.Queue[iroh.BiStream | Exception] = asyncio.Queue()

        async def write() -> None:
            for channel, envelope in requests:
                await room.acquire()
                try:
                    # Waits while the peer allows no more streams on this connection.
                    stream = await connection.open_bi()
                    send = stream.send()
                    await send.write_all(wire.encode_request(channel, envelope))
                    await send.finish()
                except Exception as error:  # noqa: BLE001 - handed to the reader, which raises it in its place
                    opened.put_nowait(error)
                    return
                opened.put_nowait(stream)

        writer = asyncio.create_task(write(), name="p2p pipeline")
        try:
            for index in range(len(requests)):
                async with asyncio.timeout(self._context.config.p2p_timeout):
                    stream = await opened.get()
                    if isinstance(stream, Exception):
                        raise stream
                    answer = await stream.recv().read_to_end(1)
                room.release()
                if answer != wire.STORED:
                    return False
                await on_stored(index)
            return True
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    def _forget_connection(self, endpoint_id: bytes) -> None:
        connection = self._connections.pop(endpoint_id, None)
        if connection is not None:
            connection.close(0, b"done")

    # ── receiving ───────────────────────────────────────────────────────────────────────────────────────

    async def _accept_forever(self, endpoint: P2PEndpoint) -> None:
        failures = 0
        while True:
            try:
                incoming = await endpoint.accept()
            except iroh.IrohError as error:
                # Keep serving: one bad attempt must not end direct delivery for everyone else.
                failures += 1
                if failures == 1:
                    self._context.emit(ErrorEvent(f"direct delivery: accepting a peer failed: {error.message()}"))
                await asyncio.sleep(min(0.1 * failures, 2.0))
                continue
            failures = 0
            if incoming is None:
                return
            if len(self._serving) >= MAX_INCOMING_CONNECTIONS:
                await incoming.refuse()
                continue
            task = asyncio.create_task(self._serve(incoming), name="p2p peer")
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)

    async def _serve(self, incoming: iroh.Incoming) -> None:
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                connection = await (await incoming.accept()).connect()
        except (TimeoutError, iroh.IrohError):
            return
        try:
            if connection.alpn() != wire.ALPN:
                return
            await self._serve_streams(connection)
        except iroh.IrohError:
            return  # the peer closed the connection (or it idled out)
        finally:
            connection.close(0, b"bye")

    async def _serve_streams(self, connection: iroh.Connection) -> None:
        """Accept streams as they come and hand them, in that order (the order the sender opened them), to one
        handler: a sender's messages are stored in the order it wrote them. At most `MAX_IN_FLIGHT` are held
        (accepted, and not yet read and handled); one past that is reset at once. The stream limit below only
        bounds what QUIC grants later: the first streams of a connection are granted by iroh's transport settings
        (100), which the bindings do not set, so the count here is what bounds a stranger's buffered requests."""
        connection.set_max_concurrent_bi_streams(wire.MAX_IN_FLIGHT)
        queue: asyncio.Queue[iroh.BiStream | None] = asyncio.Queue()
        held = 0

        async def handle() -> None:
            nonlocal held
            taking = True
            while True:
                stream = await queue.get()
                if stream is None:
                    taking = False  # one was reset here: a later one taken would overtake it
                    continue
                try:
                    stored = await self._handle_request(stream, taking)
                finally:
                    # Read and handled: no longer held. Released before the answer goes out, since the sender may
                    # open its next stream as soon as it has the answer.
                    held -= 1
                if stored is not None:
                    try:
                        await _answer(stream, stored)
                    except iroh.IrohError:
                        connection.close(0, b"stream failed")
                        return
                if not stored:
                    # Refused or reset, it goes through the node; a later one taken here would overtake it.
                    taking = False

        handler = asyncio.create_task(handle(), name="p2p peer streams")
        marked = False
        try:
            while True:
                stream = await connection.accept_bi()
                if held >= wire.MAX_IN_FLIGHT:
                    # The handler takes nothing after the first refusal's marker, so one marker is enough: a stream
                    # of refusals while the handler is busy queues nothing more.
                    if not marked:
                        queue.put_nowait(None)
                        marked = True
                    await _refuse(stream)
                    continue
                held += 1
                queue.put_nowait(stream)
        finally:
            handler.cancel()
            await asyncio.gather(handler, return_exceptions=True)

    async def _handle_request(self, stream: iroh.BiStream, taking: bool) -> bool | None:
        """Read one request and hand its envelope to the receiver (only while `taking`): whether it was stored, or
        None if the request was unreadable (the stream is reset)."""
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                request = await stream.recv().read_to_end(self._max_envelope + wire.REQUEST_OVERHEAD)
            channel, envelope = wire.decode_request(request)
        except (TimeoutError, wire.WireError, iroh.IrohError):
            with contextlib.suppress(iroh.IrohError):
                await stream.send().reset(1)
            return None
        if not taking:
            return False
        try:
            return await self._receive(channel, envelope)
        except ChatError:
            return False


async def _answer(stream: iroh.BiStream, stored: bool) -> None:
    send = stream.send()
    await send.write_all(wire.STORED if stored else wire.VIA_NODE)
    await send.finish()


async def _refuse(stream: iroh.BiStream) -> None:
    """Reset both directions of a stream: its request's bytes are dropped unread, and the sender sees an error."""
    with contextlib.suppress(iroh.IrohError):
        await stream.recv().stop(1)
    with contextlib.suppress(iroh.IrohError):
        await stream.send().reset(1)
