"""`qpc-server run --workers N`: a supervisor and N node processes (workers) serving the same ports.

Each worker is a whole node of the one PostgreSQL database, as separate nodes of it are: enqueues through one wake
fetchWaits parked on another by LISTEN/NOTIFY (server/store/postgres_wakeups.py). The kernel spreads connections
over the workers by SO_REUSEPORT (server/listen_sockets.py).

The supervisor binds every worker's sockets and loads the root key once (a passphrase is asked once), then starts
the workers one at a time, each once the previous one listens: the first creates what the data dir and the
database still lack. It restarts a worker that dies, pausing longer each time one dies soon after it started, and
on SIGTERM or SIGINT it stops them all (each as a single node stops) and exits once they have.

Workers are forked, not spawned: a worker gets its sockets and the root key without them passing through a file,
an argument or the environment. The supervisor never runs an event loop nor starts a thread, so forking is safe;
it waits for signals with sigtimedwait, all of them blocked, and each worker unblocks them first.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import re
import select
import signal
import sys
import time
from dataclasses import dataclass

from quicnprotochat.native import RootKey
from quicnprotochat.server.at_rest import node_root_key
from quicnprotochat.server.config import ConfigError, NodeConfig, parse_listen
from quicnprotochat.server.event_loops import run_on_loop
from quicnprotochat.server.identity import IdentityError
from quicnprotochat.server.listen_sockets import ListenSockets, bind_shared
from quicnprotochat.server.node import Node, serve
from quicnprotochat.server.root_key import RootKeyError
from quicnprotochat.server.sealed_secrets import SealedDataError
from quicnprotochat.server.store import StoreError

log = logging.getLogger("quicnprotochat.server.workers")

# What the supervisor logs once every worker listens, and what scripts (tests, the bench) read the pids from.
SERVING_LINE = re.compile(r"(?P<count>\d+) workers serving \(pids (?P<pids>[\d, ]+)\)")

# A worker must listen within this long after it starts (opening the store includes migrating it).
START_TIMEOUT_S = 120.0
# How long the workers get to stop cleanly on SIGTERM before they are killed.
STOP_TIMEOUT_S = 30.0
# A worker that dies sooner than this after starting is restarted after a pause that doubles each time, up to
# MAX_RESTART_PAUSE_S; one that ran longer is restarted at once.
QUICK_DEATH_S = 10.0
MAX_RESTART_PAUSE_S = 30.0

_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
_PR_SET_PDEATHSIG = 1


@dataclass
class Worker:
    index: int
    sockets: ListenSockets
    pid: int = 0
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None


class Supervisor:
    def __init__(self, config: NodeConfig, root: RootKey | None, shares: list[ListenSockets]) -> None:
        self._config = config
        self._root = root
        self._workers = [Worker(index, share) for index, share in enumerate(shares)]
        self._signal_mask: set[int | signal.Signals] = set()

    def run(self) -> int:
        self._signal_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            for worker in self._workers:
                code = self._start(worker)
                if code is not None:
                    self._stop_all()
                    return code
            log.warning(
                "%d workers serving (pids %s); supervisor pid %d",
                len(self._workers),
                ", ".join(str(worker.pid) for worker in self._workers),
                os.getpid(),
            )
            return self._watch()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._signal_mask)

    def _watch(self) -> int:
        while True:
            due = [worker.restart_at for worker in self._workers if worker.restart_at is not None]
            timeout = max(0.0, min(due) - time.monotonic()) if due else None
            received = signal.sigtimedwait(_SIGNALS, timeout) if timeout is not None else signal.sigwaitinfo(_SIGNALS)
            if received is not None and received.si_signo in (signal.SIGTERM, signal.SIGINT):
                log.info("stopping %d workers", len(self._workers))
                return self._stop_all()
            if received is not None:
                self._reap()
            for worker in self._workers:
                if worker.restart_at is not None and worker.restart_at <= time.monotonic():
                    worker.restart_at = None
                    if self._start(worker) is None:
                        log.warning("worker %d restarted (pid %d)", worker.index, worker.pid)
                    else:
                        pause = self._schedule_restart(worker)
                        log.warning("restarting worker %d in %.1f s", worker.index, pause)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for worker in self._workers:
                if worker.pid == pid:
                    worker.pid = 0
                    pause = self._schedule_restart(worker)
                    ended = _how_it_ended(status)
                    log.warning("worker %d (pid %d) %s; restarting it in %.1f s", worker.index, pid, ended, pause)

    def _schedule_restart(self, worker: Worker) -> float:
        """Schedules the worker's restart; the pause before it, in seconds."""
        lived = time.monotonic() - worker.started_at
        worker.quick_deaths = worker.quick_deaths + 1 if lived < QUICK_DEATH_S else 0
        pause = 0.0 if worker.quick_deaths == 0 else min(0.5 * 2 ** (worker.quick_deaths - 1), MAX_RESTART_PAUSE_S)
        worker.restart_at = time.monotonic() + pause
        return pause

    def _start(self, worker: Worker) -> int | None:
        """Forks the worker and waits until it listens: None then, else the exit code it ended with."""
        ready_read, ready_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(ready_read)
            os._exit(self._worker_main(worker, ready_write))
        os.close(ready_write)
        worker.pid, worker.started_at = pid, time.monotonic()
        try:
            readable, _, _ = select.select([ready_read], [], [], START_TIMEOUT_S)
            if readable and os.read(ready_read, 1):
                return None
        finally:
            os.close(ready_read)
        # It ended before listening (its own error is on stderr), or hangs: it is killed either way.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        worker.pid = 0
        log.error("worker %d (pid %d) did not start: %s", worker.index, pid, _how_it_ended(status))
        return os.waitstatus_to_exitcode(status) or 1

    def _worker_main(self, worker: Worker, ready_write: int) -> int:
        try:
            for other in self._workers:
                if other is not worker:
                    other.sockets.close()
            _die_with(os.getppid())
            signal.pthread_sigmask(signal.SIG_SETMASK, self._signal_mask)
            _label_logs(worker.index)

            def ready() -> None:
                os.write(ready_write, b"1")
                os.close(ready_write)

            config = worker_config(self._config, worker.index)
            root = self._root
            node = Node(config, sockets=worker.sockets, root_key=lambda: root)
            run_on_loop(config.loop, serve(config, node, ready))
            return 0
        except (ConfigError, IdentityError, RootKeyError, SealedDataError, OSError, StoreError) as error:
            print(f"qpc-server: worker {worker.index}: {error}", file=sys.stderr)
            return 1 if isinstance(error, OSError | StoreError) else 2
        except BaseException:
            log.exception("worker %d failed", worker.index)
            return 1
        finally:
            logging.shutdown()

    def _stop_all(self) -> int:
        running = {worker.pid: worker for worker in self._workers if worker.pid}
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        failed = 0
        while running:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for pid, worker in running.items():
                    log.error("worker %d (pid %d) did not stop within %g s: killed", worker.index, pid, STOP_TIMEOUT_S)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                return 1
            signal.sigtimedwait({signal.SIGCHLD}, remaining)
            for pid in list(running):
                ended, status = os.waitpid(pid, os.WNOHANG)
                if ended:
                    running.pop(pid).pid = 0
                    failed += os.waitstatus_to_exitcode(status) != 0
        return 1 if failed else 0


def supervise(config: NodeConfig) -> int:
    """Runs config.workers node processes on the configured ports until SIGTERM or SIGINT; the exit code."""
    root = node_root_key(config)
    shares = bind_shared(config, config.workers)
    try:
        return Supervisor(config, root, shares).run()
    finally:
        for share in shares:
            share.close()


def worker_config(config: NodeConfig, index: int) -> NodeConfig:
    """Worker `index`'s settings: its own metrics port (metrics_listen's port + index) when one is set."""
    if not config.metrics_listen:
        return config
    host, port = parse_listen(config.metrics_listen, "metrics_listen")
    if port == 0:
        return config
    host = f"[{host}]" if ":" in host else host
    return dataclasses.replace(config, metrics_listen=f"{host}:{port + index}")


def _die_with(supervisor: int) -> None:
    """A worker ends (SIGTERM, a clean stop) when its supervisor does, even when the supervisor is killed."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _label_logs(index: int) -> None:
    """Each worker's log lines say which worker and process wrote them."""
    label = f"worker {index} (pid {os.getpid()})"
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {label} %(name)s: %(message)s"))


def _how_it_ended(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
