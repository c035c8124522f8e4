"""`qpc-bench hostile`: the attacks of tests/hostile run one after another against a node with its default
limits, while a normal client calls health and enqueue and measures its latency. For each attack the report
gives the node's RSS (before, peak, after) and the normal client's p99, plus what the attack achieved."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from aioquic._buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicPacketType, pull_quic_header

from quicnprotochat.bench.metrics import Latencies
from quicnprotochat.bench.rawrpc import RawRpc, auth, rpc, text, wire
from quicnprotochat.client import NodeClient
from quicnprotochat.common.schema import ALPN

MIB = 1 << 20
STRANGER = "127.0.0.2"
HANDSHAKE_FLOODER = "127.0.0.3"  # its own address: the Bootstrap flood before it spends STRANGER's bucket

Attack = Callable[[tuple[str, int], dict[str, Any], threading.Event], dict[str, Any]]


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _reasons(answers: list[str | None]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reason in answers:
        code = "ok" if reason is None else reason.removeprefix("message = ").split(":", 1)[0]
        counts[code] = counts.get(code, 0) + 1
    return counts


def _closed_by_node(sock: socket.socket) -> bool:
    """Whether the node has closed this connection (what it sent before is read and dropped)."""
    sock.settimeout(0.01)
    try:
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except OSError:  # reset
        return True


# -- the attacks: blocking, each in its own thread, until `stop` is set ----------------------------------------


def peek_unread(address: tuple[str, int], who: dict[str, Any], stop: threading.Event) -> dict[str, Any]:
    raw = RawRpc(*address)
    raw.sock.settimeout(0.5)
    params = wire.ReadInbox.new_message(
        recipientKey=who["attacker_key"], channelId=b"", version=1, auth=auth(who["attacker_token"]), limit=0
    )
    sent = 0
    try:
        while not stop.is_set():
            try:
                raw.send(raw.call_frame("peek", params)[1])
                sent += 1
            except TimeoutError:
                pass  # the node stopped reading us
    finally:
        raw.close()
    return {"peeks_sent_never_read": sent}


def idle_tls(address: tuple[str, int], who: dict[str, Any], stop: threading.Event) -> dict[str, Any]:
    opened: list[RawRpc] = []
    refused = 0
    for _ in range(600):
        if stop.is_set():
            break
        try:
            raw = RawRpc(*address)
            if raw.ask("health", wire.Empty.new_message()).reason is None:
                opened.append(raw)
                continue
        except (OSError, ConnectionError):
            pass
        refused += 1
    stop.wait()
    for raw in opened:
        raw.close()
    return {"idle_tls_connections_held": len(opened), "refused": refused}


def tcp_without_tls(address: tuple[str, int], who: dict[str, Any], stop: threading.Event) -> dict[str, Any]:
    sockets = [socket.create_connection(address) for _ in range(300)]
    stop.wait()
    closed = sum(_closed_by_node(sock) for sock in sockets)
    for sock in sockets:
        sock.close()
    return {"tcp_connections": len(sockets), "closed_by_node": closed}


def login_lockout(address: tuple[str, int], who: dict[str, Any], stop: threading.Event) -> dict[str, Any]:
    raw = RawRpc(*address, source=STRANGER)
    answers = []
    try:
        while not stop.is_set():
            params = wire.UsernameFinish.new_message(
                username=text(who["normal_name"]),
                message=os.urandom(64),
                identityKey=os.urandom(32),
                identitySig=os.urandom(64),
            )
            answers.append(raw.ask("opaqueLoginFinish", params).reason)
            time.sleep(0.05)
    finally:
        raw.close()
    return {"bad_login_finishes_for_the_normal_user": _reasons(answers)}


def malformed(address: tuple[str, int], who: dict[str, Any], stop: threading.Event) -> dict[str, Any]:
    raw = RawRpc(*address)
    answers = []
    params = wire.UsernameRequest.new_message(username=b"ali\xffce\x00", request=b"r")
    try:
        while not stop.is_set():
            answers.append(raw.ask("opaqueLoginStart", params).reason)
    finally:
        raw.close()
    return {"bad_utf8_login_starts": _reasons(answers)}


def bootstrap_flood(address: tuple[str, int], who: dict[str, Any], stop: threading.Event) -> dict[str, Any]:
    """Bootstrap messages as fast as they go, 20,000 per connection, from another address (a new connection when
    the node closes one; attempts the node refuses at once are counted)."""
    sent = connections = closed_by_node = refused = 0
    while not stop.is_set():
        try:
            raw = RawRpc(*address, source=STRANGER)
        except OSError:  # past the node's rate of new connections per address
            refused += 1
            continue
        connections += 1
        try:
            for question in range(1, 20_001):
                message = rpc.Message.new_message()
                message.init("bootstrap").questionId = question
                raw.send(bytes(message.to_bytes()))
                sent += 1
        except (OSError, ConnectionError):
            closed_by_node += 1
        raw.close()
    return {
        "bootstrap_messages": sent,
        "connections": connections,
        "closed_by_node": closed_by_node,
        "connections_refused": refused,
    }


def half_frames(address: tuple[str, int], who: dict[str, Any], stop: threading.Event) -> dict[str, Any]:
    """20 connections, each announcing a 16 MiB message and sending 15 MiB of it, held open."""
    half = struct.pack("<II", 0, 2 * MIB) + bytes(15 * MIB - 8)
    opened: list[RawRpc] = []
    refused = 0
    for _ in range(20):
        if stop.is_set():
            break
        try:
            raw = RawRpc(*address)
            opened.append(raw)
            raw.send(half)
        except (OSError, ConnectionError):
            refused += 1
    stop.wait()
    closed = sum(_closed_by_node(raw.sock) for raw in opened)
    for raw in opened:
        raw.close()
    return {"connections": len(opened), "closed_by_node": closed + refused}


def quic_attempt(
    address: tuple[str, int], source: str = STRANGER, token: bytes | None = None, timeout_s: float = 10.0
) -> dict[str, Any]:
    """One QUIC client's first flight from `source` (through a Retry when the node asks for one), and what the
    node's first other answer did to it: its close (error code, reason) if any, and its TLS state. A node that
    does not answer within `timeout_s`: TimeoutError. A port per attempt: no stray answers."""
    client = QuicConnection(
        configuration=QuicConfiguration(is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE)
    )
    retries = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((source, 0))
        udp.settimeout(timeout_s)
        client.connect(address, now=time.time())
        if token is not None:  # a forged token: aioquic's server refuses it with INVALID_TOKEN
            client._peer_token = token
        for _ in range(2):
            for datagram, _address in client.datagrams_to_send(now=time.time()):
                udp.sendto(datagram, address)
            data, _sender = udp.recvfrom(65536)
            retry = pull_quic_header(Buffer(data=data), host_cid_length=8).packet_type == QuicPacketType.RETRY
            client.receive_datagram(data, address, now=time.time())
            if not retry:
                break
            retries += 1
    close = client._close_event
    return {
        "closed": None if close is None else (close.error_code, close.reason_phrase),
        "tls": client.tls.state,
        "retries": retries,
    }


def quic_handshake_flood(address: tuple[str, int], who: dict[str, Any], stop: threading.Event) -> dict[str, Any]:
    """New QUIC connections from a third address, one after another as fast as the node answers, each left
    half-open after the node's first answer (the node holds it until its handshake timeout): what a handshake
    flooder costs the node. Counts the handshakes the node started (it sent its ServerHello) and the Initials it
    refused."""
    target = who.get("quic_address")
    if target is None:
        return {"skipped": "the node has no QUIC listener"}
    started = refused = unanswered = 0
    while not stop.is_set():
        try:
            attempt = quic_attempt(target, HANDSHAKE_FLOODER, timeout_s=1.0)
        except TimeoutError:
            unanswered += 1
            continue
        if attempt["closed"] is not None:  # the node closed it in its first answer: refused
            refused += 1
        else:
            started += 1
    return {"handshakes_started_by_node": started, "initials_refused": refused, "unanswered": unanswered}


ATTACKS: dict[str, Attack] = {
    "peek_unread": peek_unread,
    "idle_tls": idle_tls,
    "tcp_without_tls": tcp_without_tls,
    "login_lockout": login_lockout,
    "malformed": malformed,
    "bootstrap_flood": bootstrap_flood,
    "half_frames": half_frames,
    "quic_handshake_flood": quic_handshake_flood,
}


async def _normal_client(client: NodeClient, recipient: bytes, stop: asyncio.Event) -> tuple[Latencies, int]:
    latencies, failures = Latencies(), 0
    while not stop.is_set():
        started = time.perf_counter_ns()
        try:
            await client.health()
            await client.enqueue(recipient, b"normal traffic")
        except Exception:
            failures += 1
        latencies.add_ns(time.perf_counter_ns() - started)
        await asyncio.sleep(0.02)
    return latencies, failures


async def run_attacks(
    address: tuple[str, int],
    pid: int,
    normal: NodeClient,
    recipient: bytes,
    who: dict[str, Any],
    seconds: float,
    progress: Callable[[str], None] = lambda _name: None,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, attack in ATTACKS.items():
        progress(name)
        await asyncio.sleep(1.0)
        before = _rss(pid)
        peak = before
        stop_attack, stop_normal = threading.Event(), asyncio.Event()
        normal_task = asyncio.ensure_future(_normal_client(normal, recipient, stop_normal))
        attack_task = asyncio.ensure_future(asyncio.to_thread(attack, address, who, stop_attack))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not attack_task.done():
            peak = max(peak, _rss(pid))
            await asyncio.sleep(0.25)
        stop_attack.set()
        try:
            detail = await attack_task
        except Exception as error:
            detail = {"attack_error": f"{type(error).__name__}: {error}"}
        stop_normal.set()
        latencies, failures = await normal_task
        await asyncio.sleep(1.0)
        summary = latencies.summary()
        results[name] = {
            "node_rss_before_mb": round(before / MIB, 1),
            "node_rss_peak_mb": round(max(peak, _rss(pid)) / MIB, 1),
            "node_rss_after_mb": round(_rss(pid) / MIB, 1),
            "normal_client_calls": summary.get("count", 0),
            "normal_client_failures": failures,
            "normal_client_p50_ms": summary.get("p50"),
            "normal_client_p99_ms": summary.get("p99"),
            **detail,
        }
    return results
