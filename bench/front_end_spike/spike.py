"""The Python side of the Rust front end spike (issue 18), and its measurements.

Servers (each prints {"port": P, "pid": PID} once listening, serves until SIGTERM):
- `serve-handoff DIR [--store]`: the Rust front end (`front_end_spike.FrontEnd`, on its own thread) hands decoded
  `enqueue` calls to this process's event loop in batches; `EnqueueHandler` answers them, in batches too.
- `serve-pycapnp DIR [--store]`: the same handler behind the node's own RPC stack (`QuicListener`,
  `RpcSessions`, pycapnp): the like-for-like comparison.
Both run on uvloop, as the node does. `--store` adds the node's SQLite store (`open_store`, durable group commit).

`measure`: interleaved rounds of every front end under the bench's ceiling load (`baselines._drive`: 4
connections, 64 calls in flight, 256-byte payloads, the client's `open_quic`), server CPU per call from /proc.
`interop`: the Python client, unchanged, against the Rust front end.
`decode-cost`: what decoding an `enqueue`'s parameters with pycapnp in Python costs (a generic hand-off's price).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import capnp.lib.capnp as capnp_lib  # type: ignore[import-untyped]

from quicnprotochat.bench.baselines import (
    MAX_MESSAGE_BYTES,
    Load,
    bare_echo,
    capnp_echo,
    drive_rpc,
    pinned,
    start_echo_process,
)
from quicnprotochat.bench.cores import load_options
from quicnprotochat.bench.metrics import ProcessWatch
from quicnprotochat.bench.subprocesses import start_announcing, terminate
from quicnprotochat.common import kj_loop
from quicnprotochat.common.connect import RpcConnection, open_quic
from quicnprotochat.common.errors import (
    InvalidArgument,
    NotFound,
    RpcError,
    Unauthenticated,
    error_from_reason,
)
from quicnprotochat.common.schema import AUTH_VERSION, node_schema
from quicnprotochat.server.config import NodeConfig
from quicnprotochat.server.event_loops import run_on_loop
from quicnprotochat.server.identity import load_or_create_identity
from quicnprotochat.server.node_counters import NodeCounters
from quicnprotochat.server.node_state import connection_limits, store_limits
from quicnprotochat.server.quic_listener import QuicListener, quic_server_configuration
from quicnprotochat.server.quic_resets import StatelessResets
from quicnprotochat.server.rpc_errors import render_error
from quicnprotochat.server.rpc_session import RpcSessions
from quicnprotochat.server.services import validation
from quicnprotochat.server.services.sessions import TOKEN_BYTES, auth_absent, token_hash
from quicnprotochat.server.store import Store, open_store
from quicnprotochat.server.store.idempotency import MAX_KEY_BYTES

SPIKE_DIR = Path(__file__).resolve().parent
BINARY = SPIKE_DIR / "target" / "release" / "front_end_spike"
THIS_SCRIPT = [sys.executable, str(SPIKE_DIR / "spike.py")]
# The load's one sender and recipient, as the Rust load generator sends them (client.rs).
RECIPIENT = bytes([7]) * 32
TOKEN = bytes([9]) * 32
SENDER = bytes([5]) * 32
TTL_S = 7 * 24 * 3600.0
SPREAD_INBOXES = 4096

Auth = tuple[int, bytes, bytes] | None


@dataclass(frozen=True)
class Prepared:
    recipient: bytes
    channel: bytes
    payload: bytes
    sender: bytes


class EnqueueHandler:
    """The node's enqueue around its store write: the session check (the node's 2 s session cache hit), the
    parameter checks of `InboxService.enqueue`, the recipient-account check (its cache hit); then a seq from a
    counter, or the store's durable enqueue. Not done: rate limits, idempotency, disk-space checks."""

    def __init__(self, store: Store | None, max_payload: int) -> None:
        self._store = store
        self._max_payload = max_payload
        self._sessions = {token_hash(TOKEN): SENDER}
        self._accounts = {RECIPIENT, SENDER}
        self._seqs: dict[tuple[bytes, bytes], int] = {}
        self._spread = [os.urandom(32) for _ in range(SPREAD_INBOXES)]
        self._stored = 0

    @property
    def stores(self) -> bool:
        return self._store is not None

    def prepare(
        self, recipient: bytes, payload: bytes, channel: bytes, version: int, auth: Auth, idempotency_key: bytes
    ) -> Prepared:
        if auth is None:
            raise Unauthenticated("this method needs auth with an access token")
        auth_version, token, _device = auth
        if auth_version != AUTH_VERSION:
            raise InvalidArgument(f"auth.version must be {AUTH_VERSION}, got {auth_version}")
        if len(token) != TOKEN_BYTES:
            raise Unauthenticated("malformed access token")
        sender = self._sessions.get(token_hash(token))
        if sender is None:
            raise Unauthenticated("unknown, expired or revoked access token; log in again")
        validation.wire_version(version)
        recipient = validation.identity_key(recipient, "recipientKey")
        channel = validation.channel_id(channel)
        if not payload:
            raise InvalidArgument("payload is empty")
        if len(payload) > self._max_payload:
            raise InvalidArgument(f"payload is larger than {self._max_payload} bytes")
        if len(idempotency_key) > MAX_KEY_BYTES:
            raise InvalidArgument(f"idempotencyKey must be at most {MAX_KEY_BYTES} bytes")
        if recipient not in self._accounts:
            raise NotFound("recipientKey has no account on this node")
        return Prepared(recipient, channel, payload, sender)

    def counted(self, prepared: Prepared) -> int:
        inbox = (prepared.recipient, prepared.channel)
        seq = self._seqs.get(inbox, 0) + 1
        self._seqs[inbox] = seq
        return seq

    async def stored(self, prepared: Prepared) -> int:
        assert self._store is not None
        # Nothing drains the inboxes here, and an enqueue costs more the deeper its inbox is (at 3,000 queued
        # from one sender 4x what it costs at a few: measured here), while the node's bench keeps them shallow
        # with consumers. So the calls go to many inboxes in turn, none of which grows deep in a run.
        self._stored += 1
        recipient = self._spread[self._stored % len(self._spread)]
        return await self._store.enqueue(
            recipient, prepared.channel, prepared.payload, time.time() + TTL_S, sender=prepared.sender
        )


async def _open_handler(data_dir: Path, use_store: bool) -> tuple[EnqueueHandler, Store | None]:
    config = NodeConfig()
    store = None
    if use_store:
        # A fresh file per server, and inboxes that never fill up: nobody drains them here (as the bench's store
        # ceiling does).
        limits = dataclasses.replace(
            store_limits(config), max_inbox_depth=2**40, max_inbox_bytes=2**50, max_inbox_share_per_sender=2**40
        )
        store = await open_store(data_dir / f"spike-{os.getpid()}.sqlite3", limits)
    return EnqueueHandler(store, config.max_payload_bytes), store


# -- the hand-off consumer -------------------------------------------------------------------------------------


class HandoffConsumer:
    """Drains the front end's queue when its socket is readable; answers go back in one batch per loop tick."""

    def __init__(self, front: Any, handler: EnqueueHandler) -> None:
        self._front = front
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self._seqs: list[tuple[int, int]] = []
        self._errors: list[tuple[int, str]] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.calls = 0
        self.answered = 0
        self._loop.add_reader(front.wake_fd(), self._drain)

    def close(self) -> None:
        self._loop.remove_reader(self._front.wake_fd())

    def _drain(self) -> None:
        calls = self._front.take_calls()
        if not calls:
            return
        self.batches += 1
        self.calls += len(calls)
        for call_id, recipient, payload, channel, version, auth, key in calls:
            try:
                prepared = self._handler.prepare(recipient, payload, channel, version, auth, key)
            except RpcError as error:
                self._errors.append((call_id, str(error)))
                continue
            if self._handler.stores:
                task = self._loop.create_task(self._store_one(call_id, prepared))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                self._seqs.append((call_id, self._handler.counted(prepared)))
        self._flush()

    async def _store_one(self, call_id: int, prepared: Prepared) -> None:
        try:
            seq = await self._handler.stored(prepared)
        except Exception as error:
            self._errors.append((call_id, render_error(error)))
        else:
            # Appended after the await: _flush() replaces the lists meanwhile.
            self._seqs.append((call_id, seq))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._seqs or self._errors:
            self.answered += len(self._seqs) + len(self._errors)
            self._front.answer(self._seqs, self._errors)
            self._seqs, self._errors = [], []


def thread_cpu_seconds() -> dict[str, float]:
    """User + system CPU seconds of this process's threads since they started, by thread name."""
    ticks = os.sysconf("SC_CLK_TCK")
    by_name: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        stat = (task / "stat").read_text()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        # utime and stime are fields 14 and 15 of stat(5); `fields` starts at field 3.
        by_name[name] = round(by_name.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks, 3)
    return by_name


def _import_front_end() -> Any:
    sys.path.insert(0, str(SPIKE_DIR))
    try:
        import front_end_spike  # type: ignore[import-not-found,unused-ignore]
    except ImportError as error:
        raise SystemExit(f"build the spike first ({SPIKE_DIR / 'build.sh'}): {error}") from None
    return front_end_spike


async def _wait_for_stop() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


async def serve_handoff(data_dir: Path, use_store: bool) -> None:
    identity = load_or_create_identity(data_dir)[0]
    handler, store = await _open_handler(data_dir, use_store)
    front = _import_front_end().FrontEnd(
        identity.cert_path.read_bytes(), (data_dir / "node-key.pem").read_bytes(), "127.0.0.1", 0
    )
    consumer = HandoffConsumer(front, handler)
    print(json.dumps({"port": front.port, "pid": os.getpid()}), flush=True)
    try:
        await _wait_for_stop()
    finally:
        consumer.close()
        # Read before close(): the RPC thread ends there.
        summary: dict[str, Any] = {"batches": consumer.batches, "calls": consumer.calls, "answered": consumer.answered}
        summary["cpu_s_by_thread"] = thread_cpu_seconds()
        _connections, summary["datagrams_received"], summary["datagrams_sent"] = front.wire_stats()
        front.close()
        print(json.dumps(summary), file=sys.stderr, flush=True)
        if store is not None:
            await store.close()


# -- the same handler behind pycapnp ---------------------------------------------------------------------------


class PycapnpNode(node_schema().NodeService.Server):  # type: ignore[misc]
    def __init__(self, handler: EnqueueHandler) -> None:
        self._handler = handler

    async def health(self, _context: Any, **_: Any) -> str:
        return "ok"

    # Parameter names are the schema's (camelCase): pycapnp passes them by name.
    async def enqueue(
        self,
        recipientKey: bytes,  # noqa: N803
        payload: bytes,
        channelId: bytes,  # noqa: N803
        version: int,
        auth: Any,
        _context: Any,
        idempotencyKey: bytes = b"",  # noqa: N803
        **_: Any,
    ) -> int:
        wire_auth: Auth = (
            None if auth_absent(auth) else (int(auth.version), bytes(auth.accessToken), bytes(auth.deviceId))
        )
        prepared = self._handler.prepare(
            bytes(recipientKey), bytes(payload), bytes(channelId), int(version), wire_auth, bytes(idempotencyKey)
        )
        if self._handler.stores:
            return await self._handler.stored(prepared)
        return self._handler.counted(prepared)


async def serve_pycapnp(data_dir: Path, use_store: bool) -> None:
    identity = load_or_create_identity(data_dir)[0]
    handler, store = await _open_handler(data_dir, use_store)
    await kj_loop.acquire()
    sessions = RpcSessions(
        lambda _peer, _budget: PycapnpNode(handler),
        MAX_MESSAGE_BYTES,
        connection_limits(NodeConfig()),
        NodeCounters(),
    )
    listener = QuicListener(
        sessions,
        quic_server_configuration(identity, 60.0),
        4 * MAX_MESSAGE_BYTES,
        resets=StatelessResets.of(identity),
    )
    port = (await listener.start("127.0.0.1", 0))[1]
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    try:
        await _wait_for_stop()
    finally:
        await listener.close()
        await sessions.close()
        await kj_loop.release()
        if store is not None:
            await store.close()


# -- measuring -------------------------------------------------------------------------------------------------


@dataclass
class Server:
    port: int
    pid: int
    process: asyncio.subprocess.Process

    async def stop(self) -> str:
        await terminate(self.process, 10)
        assert self.process.stderr is not None
        return (await self.process.stderr.read()).decode(errors="replace").strip()


async def start_server(*command: str) -> Server:
    process, announced = await start_announcing(*command, stderr=asyncio.subprocess.PIPE)
    return Server(int(announced["port"]), int(announced["pid"]), process)


async def node_enqueue_load(port: int, fingerprint: str, load: Load, pid: int) -> dict[str, Any]:
    """`enqueue` calls through the client's own `open_quic` and pycapnp, as NodeClient makes them."""
    payload = b"\xa5" * load.payload_size
    auth = {"version": AUTH_VERSION, "accessToken": TOKEN}

    def enqueue_call(connection: RpcConnection) -> Callable[[], Awaitable[Any]]:
        return functools.partial(
            connection.service.enqueue,
            recipientKey=RECIPIENT,
            payload=payload,
            channelId=b"",
            version=1,
            auth=auth,
            idempotencyKey=b"",
        )

    return await drive_rpc(port, fingerprint, "quic", load, pid, enqueue_call)


async def rust_client_load(port: int, load: Load, pid: int) -> dict[str, Any]:
    """The spike's own Rust load generator: the server's ceiling without a Python client in the way."""
    server = ProcessWatch(pid)
    server.start()
    process = await asyncio.create_subprocess_exec(
        str(BINARY),
        "load",
        "--port",
        str(port),
        *load_options(load.connections, load.concurrency, load.payload_size, load.duration),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    figures: dict[str, Any] = json.loads(out)
    figures["server"] = server.stop()
    return figures


def _summary(name: str, figures: dict[str, Any]) -> dict[str, Any]:
    calls = max(int(figures.get("calls", 0)), 1)
    server = figures.get("server", {})
    client = figures.get("client", {})
    row: dict[str, Any] = {
        "front end": name,
        "calls": figures.get("calls"),
        "calls_per_s": figures.get("calls_per_s"),
        "errors": figures.get("errors"),
        "p50_ms": (figures.get("latency_ms") or {}).get("p50"),
    }
    if server:
        row["server_cpu_us_per_call"] = round(1e6 * (server["cpu_user_s"] + server["cpu_sys_s"]) / calls, 1)
        row["server_cpu_percent"] = server["cpu_percent_of_one_core"]
        row["server_sys_us_per_call"] = round(1e6 * server["cpu_sys_s"] / calls, 1)
    if client:
        row["client_cpu_us_per_call"] = round(1e6 * (client["cpu_user_s"] + client["cpu_sys_s"]) / calls, 1)
    if "machine_busy_percent_of_all_cores" in figures:
        row["machine_busy_percent"] = figures["machine_busy_percent_of_all_cores"]
    return row


def _add_datagrams(row: dict[str, Any], note: str) -> None:
    """Datagrams per call each way, from what a Rust front end reports on its stderr when it stops (over whole
    connections: their handshakes and closes too)."""
    try:
        reported = json.loads(note.splitlines()[-1])
    except ValueError:
        return
    calls = row.get("calls") or 0
    if isinstance(reported, dict) and "datagrams_received" in reported and calls:
        row["datagrams_in_per_call"] = round(reported["datagrams_received"] / calls, 2)
        row["datagrams_out_per_call"] = round(reported["datagrams_sent"] / calls, 2)


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    load = Load(args.connections, args.concurrency, args.payload_size, args.duration, None)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="front-end-spike-") as tmp:
        data_dir = Path(tmp)
        fingerprint = load_or_create_identity(data_dir)[0].fingerprint
        only = set(args.only.split("|")) if args.only else None
        clients = set(args.clients.split(","))

        async def served(name: str, command: list[str], drive: Callable[[Server], Awaitable[dict[str, Any]]]) -> None:
            if only is not None and name not in only:
                return
            server = await start_server(*command)
            try:
                await asyncio.sleep(0.5)
                row = _summary(name, await drive(server))
            finally:
                note = await server.stop()
            if note:
                row["server_note"] = note[-300:]
                _add_datagrams(row, note)
            row["round"] = round_index
            rows.append(row)
            print(json.dumps(row), flush=True)

        for round_index in range(1, args.rounds + 1):
            if only is None or {"bare aioquic echo", "pycapnp echo"} & only:
                echoes = await start_echo_process(data_dir / "echo")
                try:
                    for name, run in (("bare aioquic echo", bare_echo), ("pycapnp echo", capnp_echo)):
                        if only is None or name in only:
                            row = _summary(name, await run(echoes.servers, "quic", load, echoes.pid))
                            row["round"] = round_index
                            rows.append(row)
                            print(json.dumps(row), flush=True)
                finally:
                    await echoes.close()
            servers = [("rust echo", [str(BINARY), "serve", "--data-dir", str(data_dir)])]
            for store in [False, True] if args.store else [False]:
                suffix, flags = (" (store)", ["--store"]) if store else ("", [])
                servers.append(
                    (f"rust + Python hand-off{suffix}", [*THIS_SCRIPT, "serve-handoff", str(data_dir), *flags])
                )
                servers.append(
                    (f"pycapnp + Python handler{suffix}", [*THIS_SCRIPT, "serve-pycapnp", str(data_dir), *flags])
                )
            for name, command in servers:
                if "python" in clients:
                    await served(
                        f"{name}, Python client",
                        command,
                        lambda server: node_enqueue_load(server.port, fingerprint, load, server.pid),
                    )
                if "rust" in clients:
                    await served(
                        f"{name}, Rust client", command, lambda server: rust_client_load(server.port, load, server.pid)
                    )
    return rows


async def interop() -> None:
    """The client library's own path (pycapnp over aioquic, pinning) against the Rust front end."""
    with tempfile.TemporaryDirectory(prefix="front-end-spike-") as tmp:
        data_dir = Path(tmp)
        fingerprint = load_or_create_identity(data_dir)[0].fingerprint
        for name, command in (
            ("rust echo", [str(BINARY), "serve", "--data-dir", str(data_dir)]),
            ("rust + Python hand-off", [*THIS_SCRIPT, "serve-handoff", str(data_dir)]),
        ):
            server = await start_server(*command)
            await kj_loop.acquire()
            try:
                connection = await open_quic("127.0.0.1", server.port, pinned(fingerprint))
                status = (await connection.service.health()).status
                auth = {"version": AUTH_VERSION, "accessToken": TOKEN}
                params = {"recipientKey": RECIPIENT, "channelId": b"", "auth": auth, "idempotencyKey": b""}
                seqs = [(await connection.service.enqueue(payload=b"x", version=1, **params)).seq for _ in range(3)]
                try:
                    await connection.service.enqueue(payload=b"x", version=2, **params)
                    refused = "not refused"
                except Exception as error:
                    refused = repr(error_from_reason(getattr(error, "description", str(error))))
                try:
                    await connection.service.fetch(recipientKey=RECIPIENT, channelId=b"", version=1, auth=auth, limit=0)
                    unserved = "answered"
                except Exception as error:
                    unserved = getattr(error, "description", str(error))
                await connection.close()
            finally:
                await kj_loop.release()
                await server.stop()
            print(
                json.dumps(
                    {"front end": name, "health": status, "seqs": seqs, "version 2": refused, "fetch": unserved}
                ),
                flush=True,
            )


def decode_cost(count: int) -> dict[str, float]:
    """What a generic hand-off would add per call: the raw parameters of an `enqueue` (as the bench sends them)
    decoded by pycapnp in Python, instead of in Rust; CPU microseconds per decode."""
    params = capnp_lib._StructModule(node_schema().NodeService.schema.methods["enqueue"].param_type, "EnqueueParams")
    data = params.new_message(
        recipientKey=RECIPIENT,
        payload=b"\xa5" * 256,
        channelId=b"",
        version=1,
        auth={"version": 1, "accessToken": TOKEN},
    ).to_bytes()
    started = time.process_time()
    for _ in range(count):
        with params.from_bytes(data) as call:
            auth = call.auth
            (
                bytes(call.recipientKey),
                bytes(call.payload),
                bytes(call.channelId),
                int(call.version),
                (int(auth.version), bytes(auth.accessToken), bytes(auth.deviceId)),
                bytes(call.idempotencyKey),
            )
    return {"message_bytes": len(data), "cpu_us_per_decode": round(1e6 * (time.process_time() - started) / count, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("serve-handoff", "serve-pycapnp"):
        serve = commands.add_parser(name)
        serve.add_argument("data_dir", type=Path)
        serve.add_argument("--store", action="store_true", help="enqueue into the node's SQLite store")
    run = commands.add_parser("measure")
    run.add_argument("--rounds", type=int, default=2)
    run.add_argument("--duration", type=float, default=5.0)
    run.add_argument("--connections", type=int, default=4)
    run.add_argument("--concurrency", type=int, default=64)
    run.add_argument("--payload-size", type=int, default=256)
    run.add_argument("--store", action="store_true", help="also the hand-off and pycapnp servers with the store")
    run.add_argument("--only", help="front end names (as printed), separated by |")
    run.add_argument("--clients", default="python,rust", help="load generators: python (open_quic), rust, or both")
    run.add_argument("--json", type=Path, help="write every row here")
    commands.add_parser("interop")
    decode = commands.add_parser("decode-cost")
    decode.add_argument("--count", type=int, default=20000)
    args = parser.parse_args(argv)
    if args.command == "serve-handoff":
        run_on_loop("uvloop", serve_handoff(args.data_dir, args.store))
    elif args.command == "serve-pycapnp":
        run_on_loop("uvloop", serve_pycapnp(args.data_dir, args.store))
    elif args.command == "interop":
        asyncio.run(interop())
    elif args.command == "decode-cost":
        print(json.dumps(decode_cost(args.count)))
    else:
        rows = asyncio.run(measure(args))
        if args.json is not None:
            args.json.write_text(json.dumps({"command": sys.argv, "rows": rows}, indent=1))
        with contextlib.suppress(BrokenPipeError):
            print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
