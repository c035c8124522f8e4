"""What the load generator counts: stamped payloads, exactly-once delivery, latencies, errors, process CPU/RSS."""

from __future__ import annotations

import math
import os
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from quicnprotochat.common.errors import RpcError

# Every bench payload starts with: magic, the run's id, the message id, the monotonic send time in ns. The rest is
# padding up to --payload-size. The run id tells this run's messages from leftovers of an earlier run that
# reused the same accounts (their inboxes may still hold a few).
MAGIC = b"QPCB"
_HEADER = struct.Struct("<4s4sQQ")
MIN_PAYLOAD_BYTES = _HEADER.size
# A delivery is keyed by (message id, inbox index): one batchEnqueue is delivered once to each recipient.
_INBOX_BITS = 20


def delivery_key(message_id: int, inbox: int) -> int:
    return (message_id << _INBOX_BITS) | inbox


def now_ns() -> int:
    return time.monotonic_ns()


def stamp_payload(run_id: bytes, message_id: int, size: int, sent_ns: int | None = None) -> bytes:
    header = _HEADER.pack(MAGIC, run_id, message_id, now_ns() if sent_ns is None else sent_ns)
    return header + b"\xa5" * (size - len(header))


def read_stamp(payload: bytes) -> tuple[bytes, int, int] | None:
    """(run id, message id, send time in ns), or None for a payload the bench did not make."""
    if len(payload) < _HEADER.size or not payload.startswith(MAGIC):
        return None
    _magic, run_id, message_id, sent_ns = _HEADER.unpack_from(payload)
    return run_id, message_id, sent_ns


def error_code(error: BaseException) -> str:
    if isinstance(error, RpcError):
        return error.code
    if isinstance(error, TimeoutError):
        return "timeout"
    return type(error).__name__


P999_SAMPLES = 2000
"""Fewer samples than this and a 99.9th percentile is one or two samples: not given."""


class Latencies:
    """Samples in milliseconds; percentiles by nearest rank."""

    def __init__(self) -> None:
        self._samples: list[float] = []

    def add_ns(self, elapsed_ns: int) -> None:
        self._samples.append(elapsed_ns / 1e6)

    def add_ms(self, elapsed_ms: float) -> None:
        self._samples.append(elapsed_ms)

    def __len__(self) -> int:
        return len(self._samples)

    def summary(self) -> dict[str, float | int]:
        samples = sorted(self._samples)
        if not samples:
            return {"count": 0}

        def rank(p: float) -> float:
            return round(samples[min(len(samples) - 1, max(0, math.ceil(p * len(samples)) - 1))], 3)

        figures: dict[str, float | int] = {
            "count": len(samples),
            "p50": rank(0.50),
            "p90": rank(0.90),
            "p99": rank(0.99),
        }
        if len(samples) >= P999_SAMPLES:
            figures["p99.9"] = rank(0.999)
        figures["max"] = round(samples[-1], 3)
        figures["mean"] = round(sum(samples) / len(samples), 3)
        return figures


@dataclass
class DeliveryTracker:
    """Counts every message: sent (call issued), acknowledged (the node returned a seq), received, per key.

    At the end: lost = acknowledged and never received; duplicates = received more than once; unacknowledged
    receipts = received though the enqueue call failed (it may have landed before an error); stale = bench
    payloads of another run.
    """

    run_id: bytes = field(default_factory=lambda: os.urandom(4))
    latency: Latencies = field(default_factory=Latencies)
    _next_id: int = 0
    _acked: set[int] = field(default_factory=set)
    _failed: set[int] = field(default_factory=set)
    _received: Counter[int] = field(default_factory=Counter)
    sent: int = 0
    pending: int = 0  # acknowledged, not received yet
    stale: int = 0
    foreign: int = 0
    first_receipt_ns: int = 0
    last_receipt_ns: int = 0

    def new_message(self) -> int:
        self._next_id += 1
        return self._next_id

    def issued(self, count: int = 1) -> None:
        self.sent += count

    def acked(self, message_id: int, inboxes: list[int]) -> None:
        for inbox in inboxes:
            key = delivery_key(message_id, inbox)
            self._acked.add(key)
            # A consumer may receive a message before its enqueue call has returned.
            if key not in self._received:
                self.pending += 1

    def failed(self, message_id: int, inboxes: list[int]) -> None:
        for inbox in inboxes:
            self._failed.add(delivery_key(message_id, inbox))

    def received(self, payload: bytes, inbox: int, at_ns: int | None = None) -> int | None:
        """Records one receipt; returns the message id (None for a payload of another run or not ours)."""
        at_ns = now_ns() if at_ns is None else at_ns
        stamp = read_stamp(payload)
        if stamp is None:
            self.foreign += 1
            return None
        run_id, message_id, sent_ns = stamp
        if run_id != self.run_id:
            self.stale += 1
            return None
        key = delivery_key(message_id, inbox)
        self._received[key] += 1
        if self._received[key] == 1:
            if key in self._acked:
                self.pending -= 1
            self.latency.add_ns(at_ns - sent_ns)
            if not self.first_receipt_ns:
                self.first_receipt_ns = at_ns
            self.last_receipt_ns = at_ns
        return message_id

    @property
    def acknowledged(self) -> int:
        return len(self._acked)

    @property
    def delivered(self) -> int:
        """Distinct deliveries received (a duplicate counts once)."""
        return len(self._received)

    def report(self) -> dict[str, int]:
        duplicates = sum(count - 1 for count in self._received.values() if count > 1)
        unacked = sum(1 for key in self._received if key not in self._acked)
        return {
            "sent": self.sent,
            "acknowledged": len(self._acked),
            "failed": len(self._failed),
            "received": len(self._received),
            "lost": self.pending,
            "duplicates": duplicates,
            "received_unacknowledged": unacked,
            "stale": self.stale,
            "foreign": self.foreign,
        }


class ErrorCounts:
    def __init__(self) -> None:
        self.by_code: Counter[str] = Counter()
        self.first: dict[str, str] = {}

    def add(self, error: BaseException) -> None:
        code = error_code(error)
        self.by_code[code] += 1
        self.first.setdefault(code, str(error)[:200])

    def total(self) -> int:
        return sum(self.by_code.values())

    def report(self) -> dict[str, int]:
        return dict(sorted(self.by_code.items()))


# -- process CPU and memory (/proc) ----------------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ProcSample:
    at: float  # monotonic seconds
    user_s: float
    sys_s: float
    rss_bytes: int
    hwm_bytes: int  # peak RSS of the process so far


def sample_process(pid: int | None) -> ProcSample:
    """CPU and memory of a process from /proc (None: this process)."""
    target = "self" if pid is None else str(pid)
    with open(f"/proc/{target}/stat", "rb") as handle:
        # Fields after the command name (which may hold spaces) start after the last ')'.
        fields = handle.read().rsplit(b")", 1)[1].split()
    user, system = int(fields[11]) / _TICKS, int(fields[12]) / _TICKS
    rss = int(fields[21]) * _PAGE
    hwm = rss
    with open(f"/proc/{target}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
                break
    return ProcSample(time.monotonic(), user, system, rss, hwm)


def sample_process_tree(pid: int) -> ProcSample:
    """CPU of a process and its children (PostgreSQL: the postmaster and its backends) from /proc. A child that
    ended was reaped by the parent, so its CPU is in the parent's cutime/cstime: the sum only grows. RSS is the
    sum of the processes' RSS (shared memory counted once per process)."""
    user = system = 0.0
    rss = 0
    found = False
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        this = int(entry.name)
        if this != pid and int(fields[1]) != pid:
            continue
        found = found or this == pid
        # utime, stime, then cutime, cstime: the CPU of reaped children (backends that ended).
        user += (int(fields[11]) + int(fields[13])) / _TICKS
        system += (int(fields[12]) + int(fields[14])) / _TICKS
        rss += int(fields[21]) * _PAGE
    if not found:
        raise ProcessLookupError(pid)
    return ProcSample(time.monotonic(), user, system, rss, rss)


def cpu_between(before: ProcSample, after: ProcSample) -> dict[str, float]:
    wall = max(after.at - before.at, 1e-9)
    user, system = after.user_s - before.user_s, after.sys_s - before.sys_s
    return {
        "cpu_user_s": round(user, 3),
        "cpu_sys_s": round(system, 3),
        "cpu_percent_of_one_core": round(100 * (user + system) / wall, 1),
        "rss_bytes": after.rss_bytes,
        "rss_peak_bytes": after.hwm_bytes,
    }


class ProcessWatch:
    """CPU between start() and stop() of one process (with `tree`: and its children), and the largest RSS seen by
    periodic sample()s."""

    def __init__(self, pid: int | None, *, tree: bool = False) -> None:
        self.pid = pid
        self.tree = tree
        self._start: ProcSample | None = None
        self._end: ProcSample | None = None
        self.max_rss = 0

    def _sample(self) -> ProcSample:
        if self.tree and self.pid is not None:
            return sample_process_tree(self.pid)
        return sample_process(self.pid)

    def start(self) -> None:
        self._start = self._sample()
        self.max_rss = self._start.rss_bytes

    def sample(self) -> ProcSample:
        current = self._sample()
        self.max_rss = max(self.max_rss, current.rss_bytes)
        return current

    def stop(self) -> dict[str, Any]:
        assert self._start is not None
        self._end = self.sample()
        figures: dict[str, Any] = cpu_between(self._start, self._end)
        figures["rss_max_during_run_bytes"] = self.max_rss
        return figures


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (/proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / _TICKS, sum(fields) / _TICKS
