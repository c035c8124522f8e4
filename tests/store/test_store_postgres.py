"""What only the PostgreSQL backend has: several nodes on one database, LISTEN/NOTIFY, its migrations and URL."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]
import pytest
import pytest_asyncio

from quicnprotochat.server.store import (
    LimitExceeded,
    OutcomeUnknown,
    SchemaTooNew,
    StoreError,
    StoreLimits,
    StoreUnavailable,
    fetch_wait,
    open_store,
    postgres_writer,
)
from quicnprotochat.server.store.groups import GroupLimits
from quicnprotochat.server.store.postgres import PostgresStore, parse_url, redacted
from quicnprotochat.server.store.postgres.engine import transaction
from quicnprotochat.server.store.postgres_migrations import LATEST_VERSION, POSTGRES_MIGRATIONS
from quicnprotochat.server.store.postgres_wakeups import MAX_PAYLOAD, decode_payload, encode_payloads

from .store_testlib import ENQUEUE_FOREVER, FakeClock, key, new_group_message

R1, R2 = key(1), key(2)


class Nodes:
    """Stores opened on one database, as several nodes of a cluster would."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.clock = FakeClock()
        self.opened: list[PostgresStore] = []

    async def open(self, limits: StoreLimits | None = None, options: str = "") -> PostgresStore:
        store = await open_store(self.url + options, limits, clock=self.clock)
        assert isinstance(store, PostgresStore)
        self.opened.append(store)
        return store

    async def close(self) -> None:
        for store in self.opened:
            await store.close()


@pytest_asyncio.fixture
async def nodes(pg_url: str) -> AsyncIterator[Nodes]:
    cluster = Nodes(pg_url)
    try:
        yield cluster
    finally:
        await cluster.close()


async def test_an_enqueue_on_one_node_wakes_a_waiter_on_another(nodes: Nodes) -> None:
    a, b = await nodes.open(), await nodes.open()
    waiting = asyncio.create_task(fetch_wait(b, R1, b"", 0, 10))
    await asyncio.sleep(0.05)  # parked: registered and found the inbox empty
    assert b.wakeups.waiter_count() == 1
    started = time.monotonic()
    await a.enqueue(R1, b"", b"across", None)
    messages = await waiting
    woken_after = time.monotonic() - started
    assert [m.payload for m in messages] == [b"across"]
    # A notification, not a poll: well under any polling interval worth having.
    assert woken_after < 0.5, woken_after
    assert b.wakeups.waiter_count() == 0


async def test_a_notification_for_another_inbox_does_not_wake(nodes: Nodes) -> None:
    a, b = await nodes.open(), await nodes.open()
    async with b.wakeups.waiter(R1, b"") as waiter:
        await a.enqueue(R2, b"", b"x", None)
        await a.enqueue(R1, b"chan", b"x", None)
        assert not await waiter.wait(0.2)
        await a.batch_enqueue([R2, R1], b"", b"x", None)
        assert await waiter.wait(5)


async def test_seqs_stay_gap_free_with_enqueuers_on_two_nodes(nodes: Nodes) -> None:
    a, b = await nodes.open(), await nodes.open()
    per_worker, workers = 25, 8

    async def worker(store: PostgresStore, w: int) -> list[int]:
        return [await store.enqueue(R1, b"", b"%d:%d" % (w, i), None) for i in range(per_worker)]

    results = await asyncio.gather(*(worker(a if w % 2 else b, w) for w in range(workers)))
    total = per_worker * workers
    assert sorted(s for seqs in results for s in seqs) == list(range(1, total + 1))
    assert all(seqs == sorted(seqs) for seqs in results)
    queued = await a.peek(R1, b"", 0)
    assert [m.seq for m in queued] == list(range(1, total + 1))
    # Both nodes batched their own enqueues.
    for store in (a, b):
        metrics = store.metrics()
        assert metrics.commits < metrics.write_ops


async def test_crossing_batch_enqueues_on_two_nodes_all_land(nodes: Nodes) -> None:
    """Multi-recipient batches in opposite orders on two nodes: locks are taken in one order, nothing is lost."""
    a, b = await nodes.open(), await nodes.open()
    recipients = [key(n) for n in range(8)]
    rng = random.Random(7)

    async def sender(store: PostgresStore, n: int) -> None:
        for _ in range(n):
            chosen = rng.sample(recipients, 4)
            await store.batch_enqueue(chosen, b"", b"m", None)

    await asyncio.gather(*(sender(a if i % 2 else b, 10) for i in range(8)))
    total = 0
    for r in recipients:
        seqs = [m.seq for m in await a.peek(r, b"", 0)]
        assert seqs == list(range(1, len(seqs) + 1))
        total += len(seqs)
    assert total == 8 * 10 * 4


async def test_a_key_package_is_never_handed_out_twice_across_nodes(nodes: Nodes) -> None:
    a, b = await nodes.open(), await nodes.open()
    packages = [b"kp %d" % n for n in range(30)]
    for n, data in enumerate(packages):
        await (a if n % 2 else b).add_key_package(R1, data, hashlib.sha256(data).digest())
    await a.add_key_package(R1, b"last resort", b"lr", last_resort=True)
    taken = await asyncio.gather(*(((a, b)[i % 2]).take_key_package(R1) for i in range(50)))
    ordinary = [t.package for t in taken if t is not None and not t.last_resort]
    assert sorted(ordinary) == sorted(packages)
    assert sum(1 for t in taken if t is not None and t.last_resort) == 20


async def test_key_package_cap_holds_across_nodes(nodes: Nodes) -> None:
    limits = StoreLimits(max_key_packages_per_identity=5)
    a, b = await nodes.open(limits), await nodes.open(limits)
    results = await asyncio.gather(
        *(((a, b)[n % 2]).add_key_package(R1, b"%d" % n, b"fp%d" % n) for n in range(20)),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 5
    assert await a.count_key_packages(R1) == 5


async def test_get_or_create_and_registration_race_across_nodes(nodes: Nodes) -> None:
    a, b = await nodes.open(), await nodes.open()
    ids = await asyncio.gather(*(((a, b)[i % 2]).get_or_create_channel(R1, R2) for i in range(20)))
    assert len(set(ids)) == 1
    results = await asyncio.gather(
        *(((a, b)[i % 2]).create_account("dave", b"file", key(100 + i)) for i in range(10)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1


async def test_listener_reconnects_and_wakes_waiters_after_its_connection_is_killed(nodes: Nodes) -> None:
    a, b = await nodes.open(), await nodes.open()
    listener = b.pg_wakeups
    old_pid = listener.listener_pid
    assert old_pid is not None and listener.listening
    async with b.wakeups.waiter(R1, b"") as waiter:
        await a._with_conn(lambda conn: conn.execute("SELECT pg_terminate_backend($1)", old_pid))
        # Whatever was committed while the connection was down is unknown: reconnecting wakes every waiter.
        assert await waiter.wait(10)
        await asyncio.wait_for(listener.wait_listening(), 10)
        assert listener.reconnects == 1
        assert listener.listener_pid not in (None, old_pid)
        # And notifications flow again.
        assert not await waiter.wait(0.05)
        await a.enqueue(R1, b"", b"after the reconnect", None)
        assert await waiter.wait(5)
    assert [m.payload for m in await b.fetch(R1, b"")] == [b"after the reconnect"]


async def test_fetch_wait_survives_a_listener_outage(nodes: Nodes) -> None:
    a, b = await nodes.open(), await nodes.open()
    waiting = asyncio.create_task(fetch_wait(b, R1, b"", 0, 10))
    await asyncio.sleep(0.05)
    pid = b.pg_wakeups.listener_pid
    await a._with_conn(lambda conn: conn.execute("SELECT pg_terminate_backend($1)", pid))
    await a.enqueue(R1, b"", b"sent during the gap", None)
    assert [m.payload for m in await waiting] == [b"sent during the gap"]


async def test_own_notifications_are_not_delivered_twice(nodes: Nodes) -> None:
    a = await nodes.open()
    async with a.wakeups.waiter(R1, b"") as waiter:
        await a.enqueue(R1, b"", b"x", None)
        assert await waiter.wait(1)
        # The echo of our own NOTIFY arrives over the listener and is ignored.
        assert not await waiter.wait(0.2)


async def test_migrations_are_versioned_and_applied_once(nodes: Nodes) -> None:
    # Two nodes opening one new database at once: the advisory lock lets one migrate, the other waits.
    a, b = await asyncio.gather(nodes.open(), nodes.open())
    conn = await asyncpg.connect(nodes.url)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_version ORDER BY version")
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [(m.version, m.name) for m in POSTGRES_MIGRATIONS]
    assert await a.enqueue(R1, b"", b"x", None) == 1
    assert await b.enqueue(R1, b"", b"y", None) == 2


async def test_newer_schema_version_is_refused(nodes: Nodes) -> None:
    await (await nodes.open()).close()
    conn = await asyncpg.connect(nodes.url)
    try:
        await conn.execute(
            "INSERT INTO schema_version (version, name, applied_at) VALUES ($1, 'from the future', 0)",
            LATEST_VERSION + 1,
        )
    finally:
        await conn.close()
    with pytest.raises(SchemaTooNew) as refused:
        await open_store(nodes.url)
    assert refused.value.on_disk == LATEST_VERSION + 1 and refused.value.known == LATEST_VERSION


async def test_enqueues_without_group_commit_are_equivalent(nodes: Nodes) -> None:
    a = await nodes.open(StoreLimits(max_inbox_depth=30), "?group_commit=off&pool_max_size=4")
    assert not a.options.group_commit and a.options.pool_max_size == 4
    results = await asyncio.gather(*(a.enqueue(R1, b"", b"%d" % i, None) for i in range(40)), return_exceptions=True)
    seqs = sorted(r for r in results if isinstance(r, int))
    assert seqs == list(range(1, 31))
    assert sum(isinstance(r, StoreError) for r in results) == 10
    metrics = a.metrics()
    assert metrics.commits == metrics.write_ops  # one transaction each


async def test_url_options_and_errors() -> None:
    dsn, options = parse_url(
        "postgresql://u:secret@db.example:5433/qpc?sslmode=require&pool_min_size=1&pool_max_size=3"
    )
    assert dsn == "postgresql://u:secret@db.example:5433/qpc?sslmode=require"
    assert (options.pool_min_size, options.pool_max_size, options.group_commit) == (1, 3, True)
    assert redacted(dsn) == "postgresql://db.example:5433/qpc"
    for bad in ("?pool_max_size=x", "?pool_min_size=5&pool_max_size=2", "?group_commit=maybe"):
        with pytest.raises(ValueError):
            parse_url("postgresql://localhost/qpc" + bad)
    # Nothing listens on port 1: a clear StoreError that does not show the password.
    with pytest.raises(StoreError) as refused:
        await open_store("postgresql://u:hunter2@127.0.0.1:1/qpc")
    assert "hunter2" not in str(refused.value) and "127.0.0.1:1/qpc" in str(refused.value)


def test_notification_payloads_stay_under_the_limit() -> None:
    inboxes = [(key(n), bytes(16)) for n in range(500)]
    payloads = encode_payloads("0123456789abcdef", inboxes)
    assert len(payloads) > 1
    assert all(len(p.encode()) < min(MAX_PAYLOAD + 1, 8000) for p in payloads)
    decoded = [inbox for p in payloads for inbox in decode_payload(p)[1]]
    assert sorted(decoded) == sorted(inboxes)
    assert decode_payload(encode_payloads("n", [(R1, b"")])[0]) == ("n", [(R1, b"")])
    for junk in ("", "node;", "no separator", "n;zz.00"):
        with pytest.raises(ValueError):
            decode_payload(junk)


async def test_acknowledged_enqueues_survive_a_killed_node(pg_url: str) -> None:
    """The SQLite SIGKILL test's node, on PostgreSQL: what a killed node acknowledged is in the database."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", ENQUEUE_FOREVER, pg_url, stdout=asyncio.subprocess.PIPE
    )
    acknowledged: list[int] = []
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            while len(acknowledged) < 1000 and (line := await proc.stdout.readline()):
                acknowledged.append(int(line))
        proc.send_signal(signal.SIGKILL)
        acknowledged.extend(int(line) for line in (await proc.stdout.read()).split())
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    # 255 is asyncio's report for a child whose exit status something else in this process collected first
    # (its child watcher then cannot see it); the data checks below are what this test is about.
    assert proc.returncode in (-signal.SIGKILL, 255), proc.returncode
    assert len(acknowledged) >= 1000, "the child did not get going"
    store = await open_store(pg_url)
    try:
        messages: list[int] = []
        while batch := await store.fetch(bytes(32), b""):
            messages.extend(m.seq for m in batch)
    finally:
        await store.close()
    assert set(acknowledged) <= set(messages)
    assert sorted(messages) == list(range(1, max(messages) + 1))


@pytest.mark.parametrize("sync", [True, False])
async def test_a_transaction_commits_or_rolls_back_and_sets_its_commit_mode_alone(pg_url: str, sync: bool) -> None:
    """`sync=False` (removals) turns synchronous_commit off for that transaction alone; either way the block's
    writes commit when it ends, roll back when it raises, and leave the connection outside any transaction."""
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("CREATE TABLE t (n int)")
        async with transaction(conn, sync=sync):
            await conn.execute("INSERT INTO t VALUES (1)")
            assert await conn.fetchval("SHOW synchronous_commit") == ("on" if sync else "off")
        with pytest.raises(asyncpg.UniqueViolationError):
            async with transaction(conn, sync=sync):
                await conn.execute("INSERT INTO t VALUES (2)")
                await conn.execute("CREATE UNIQUE INDEX ON t (n)")
                await conn.execute("INSERT INTO t VALUES (2)")
        with pytest.raises(LookupError):
            async with transaction(conn, sync=sync):
                await conn.execute("INSERT INTO t VALUES (3)")
                raise LookupError
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        assert [row[0] for row in await conn.fetch("SELECT n FROM t")] == [1]
    finally:
        await conn.close()


class CountingProxy:
    """Forwards TCP to PostgreSQL and counts, per connection, what the client sent in separate reads: a client
    waiting for each answer before its next request sends one read's worth per round trip."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.sends: list[int] = []  # per connection, in accept order
        self.startups: list[bytes] = []  # the first bytes each client sent: names its application
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def pooled_sends(self) -> int:
        """Sends on the pool's connections (not the wake-up listener's, which checks its liveness on a timer)."""
        return sum(n for n, start in zip(self.sends, self.startups, strict=True) if b"-listen" not in start)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        self._writers += [client_writer, server_writer]
        index = len(self.sends)
        self.sends.append(0)
        self.startups.append(b"")

        async def upstream() -> None:
            while data := await client_reader.read(65536):
                self.sends[index] += 1
                if len(self.startups[index]) < 1024:
                    self.startups[index] += data
                server_writer.write(data)
                await server_writer.drain()
            server_writer.close()

        async def downstream() -> None:
            while data := await server_reader.read(65536):
                client_writer.write(data)
                await client_writer.drain()
            client_writer.close()

        with contextlib.suppress(OSError):
            await asyncio.gather(upstream(), downstream())

    async def close(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_fetch_ack_peek_depth_read_enqueue_and_fetch_wait_are_one_round_trip_each(pg_url: str) -> None:
    """The hot path's calls cost one round trip each: a fetch, an ack or a group-commit batch of enqueues is one
    statement (locks, limits, removal or insertion, notifications and commit mode inside the database's
    functions), and a connection handed back to the pool is not reset. An enqueue refused as a whole goes on from
    its failed statement to the exact check, without running that statement again."""
    parts = urlsplit(pg_url)
    proxy = CountingProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    port = await proxy.start()
    user = parts.netloc.rpartition("@")[0]
    url = urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}")) + "?pool_min_size=1&pool_max_size=1"
    store = await open_store(url, StoreLimits(max_inbox_depth=10), clock=FakeClock())
    try:
        for n in range(8):
            await store.enqueue(R1, b"", b"m%d" % n, None)

        async def round_trips(call: Callable[[], Awaitable[object]]) -> int:
            await call()  # the first use of a statement on a connection also prepares it
            before = proxy.pooled_sends()
            await call()
            return proxy.pooled_sends() - before

        assert await round_trips(lambda: store.peek(R1, b"", 1)) == 1
        assert await round_trips(lambda: store.inbox_stats(R1, b"")) == 1
        assert await round_trips(lambda: store.fetch(R1, b"", 1)) == 1
        assert await round_trips(lambda: store.ack(R1, b"", 4)) == 1
        assert [m.seq for m in await store.peek(R1, b"", 0)] == [5, 6, 7, 8]
        # An enqueue (a group-commit batch of one here) with its notification and its synchronous commit.
        assert await round_trips(lambda: store.batch_enqueue([R1, R2], b"", b"e", None)) == 1
        assert [m.seq for m in await store.peek(R1, b"", 0)] == [5, 6, 7, 8, 9, 10]
        # fetchWait's first look is its fetch: finding the inbox empty is a read here, no depth read first.
        assert await round_trips(lambda: fetch_wait(store, R1, b"", 1, 0)) == 1
        assert await round_trips(lambda: fetch_wait(store, key(3), b"", 1, 0)) == 1
        assert [m.seq for m in await store.peek(R1, b"", 0)] == [7, 8, 9, 10]
        # A refused enqueue, alone in its batch: the merged statement, then the transaction's BEGIN and savepoint,
        # the locked depth read, the clean-up of expired messages (none here), the rollback to the savepoint and the
        # commit; not the merged statement again as the savepoint's first try (8 round trips then).
        full = key(4)
        for n in range(10):
            await store.enqueue(full, b"", b"f%d" % n, None)

        async def refused() -> None:
            with pytest.raises(LimitExceeded):
                await store.enqueue(full, b"", b"one too many", None)

        assert await round_trips(refused) == 6
        assert (await store.inbox_stats(full, b"")).depth == 10
    finally:
        await store.close()
        await proxy.close()


@pytest.mark.parametrize("database_isolation", [None, "serializable"])
async def test_two_nodes_fetching_one_inbox_at_once_get_disjoint_runs_in_seq_order(
    nodes: Nodes, database_isolation: str | None
) -> None:
    """Every fetch takes the inbox's first messages as they are once it holds the inbox: the two nodes' runs are
    disjoint, each in seq order, together everything, and no fetch comes back empty while messages are queued.

    Also on a database whose sessions start in SERIALIZABLE (the store's functions need READ COMMITTED's snapshot
    per statement, and the store asks for it whatever the database's default)."""
    if database_isolation is not None:
        admin = await asyncpg.connect(nodes.url)
        try:
            database = urlsplit(nodes.url).path.lstrip("/")
            await admin.execute(
                f"ALTER DATABASE \"{database}\" SET default_transaction_isolation = '{database_isolation}'"
            )
        finally:
            await admin.close()
        plain = await asyncpg.connect(nodes.url)
        try:
            assert await plain.fetchval("SHOW default_transaction_isolation") == database_isolation
        finally:
            await plain.close()
    a, b = await nodes.open(), await nodes.open()
    total = 300
    await asyncio.gather(*(a.batch_enqueue([R1], b"", b"%d" % n, None) for n in range(total)))
    runs: list[list[int]] = []
    emptied = False  # a fetch came back empty: no message is left (nothing is enqueued meanwhile)

    async def drain(store: PostgresStore) -> list[int]:
        nonlocal emptied
        taken: list[int] = []
        while True:
            late = emptied
            batch = await store.fetch(R1, b"", 3)
            if not batch:
                emptied = True
                return taken
            assert not late, "a fetch came back empty while messages were queued"
            runs.append([m.seq for m in batch])
            taken += runs[-1]

    taken = await asyncio.gather(*(drain(store) for store in (a, b, a, b)))
    assert (await a.inbox_stats(R1, b"")).depth == 0
    assert all(seqs == sorted(seqs) for seqs in taken)
    for run in runs:
        assert run == list(range(run[0], run[0] + len(run)))
    assert sorted(seq for run in runs for seq in run) == list(range(1, total + 1))


async def test_a_fetch_of_an_empty_inbox_neither_takes_nor_waits_for_its_lock(nodes: Nodes) -> None:
    """Finding an inbox empty is a read, as cheap as a look at its depth (fetchWait's first look on arrival)."""
    store = await nodes.open()
    await store.enqueue(R1, b"", b"m", None)
    assert [m.seq for m in await store.fetch(R1, b"", 0)] == [1]
    holder = await asyncpg.connect(nodes.url)
    try:
        async with holder.transaction():
            await holder.execute("SELECT FROM inboxes WHERE recipient = $1 FOR UPDATE", R1)
            assert await asyncio.wait_for(store.fetch(R1, b"", 0), 5) == []
    finally:
        await holder.close()
    await store.enqueue(R1, b"", b"n", None)
    assert [m.seq for m in await store.fetch(R1, b"", 0)] == [2]


async def _waiting_for_a_lock(conn: asyncpg.Connection) -> int:
    """The process id of the session of the database that waits for a lock (polled until there is one)."""
    for _ in range(1000):
        await conn.execute("SELECT pg_stat_clear_snapshot()")  # a transaction sees the view as it first read it
        pid: int | None = await conn.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if pid is not None:
            return pid
        await asyncio.sleep(0.01)
    raise AssertionError("no session waits for a lock")


async def _store_sessions(conn: asyncpg.Connection) -> set[int]:
    """The process ids of the stores' pooled sessions on this database (their LISTEN sessions are named apart)."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'quicnprotochat'"
    )
    return {row["pid"] for row in rows}


async def test_a_lone_statement_the_server_cancels_stored_nothing_and_answers_unavailable(
    nodes: Nodes, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An enqueue batch, a fetch and an ack are each one statement outside a transaction. One the server answers
    with an error (here 57014, its statement_timeout while another session holds the inbox's lock; class 53, a
    full disk, is answered the same way) was rolled back whole: the caller hears "not stored, retry", not "outcome
    unknown", and nothing was stored or removed. Only one cut off with no answer leaves the outcome unknown.

    An answered error also leaves the session usable: the pool keeps every connection and the writer does not back
    off. A session killed under a statement still costs the pool all its connections (the server may have
    restarted)."""
    # A backoff long enough that a write after one cannot finish within the test's wait.
    for bound in ("MIN_BACKOFF_S", "MAX_BACKOFF_S"):
        monkeypatch.setattr(postgres_writer, bound, 60.0)
    plain = await nodes.open()  # migrates the database without the timeout
    await plain.enqueue(R1, b"", b"first", None)
    holder = await asyncpg.connect(nodes.url)
    plains = await _store_sessions(holder)
    hasty = await nodes.open(options="?statement_timeout=300")
    # A group message is no merge's: the writer runs it in a transaction, where the cancel aborts that transaction.
    group_message = new_group_message(R2, R1, b"to the group")
    try:
        async with holder.transaction():
            await holder.execute("SELECT FROM inboxes WHERE recipient = $1 FOR UPDATE", R1)
            sessions = await _store_sessions(holder)
            calls: list[Callable[[], Awaitable[object]]] = [
                lambda: hasty.enqueue(R1, b"", b"second", None),
                lambda: hasty.fetch(R1, b"", 0),
                lambda: hasty.ack(R1, b"", 1),
                lambda: hasty.write_group_submission(group_message, GroupLimits()),
            ]
            for call in calls:
                with pytest.raises(StoreUnavailable) as refused:
                    await asyncio.wait_for(call(), 10)
                assert isinstance(refused.value.__cause__, asyncpg.QueryCanceledError)
            # The next calls go at once, on the same sessions (one at a time: the pool need not grow).
            for _ in range(2):
                await asyncio.wait_for(hasty.enqueue(R2, b"", b"at once", None), 5)
                await asyncio.wait_for(hasty.fetch(R2, b"", 0), 5)
            assert await _store_sessions(holder) == sessions
            # The writer rolled back the transaction the cancel aborted before handing its connection back (else
            # asyncpg's reset does, and reports "Resetting connection with an active transaction" as an error).
            assert not [r.getMessage() for r in caplog.records if r.name == "asyncio"]
            # The same statements cut off with no answer (their session killed while they wait) stay unknown.
            cut_offs: list[Callable[[], Awaitable[object]]] = [
                lambda: plain.enqueue(R1, b"", b"second", None),
                lambda: plain.fetch(R1, b"", 0),
            ]
            for cut_off in cut_offs:
                waiting = asyncio.ensure_future(cut_off())
                await holder.execute("SELECT pg_terminate_backend($1)", await _waiting_for_a_lock(holder))
                with pytest.raises(OutcomeUnknown):
                    await asyncio.wait_for(waiting, 10)
    finally:
        await holder.close()
    assert [(m.seq, m.payload) for m in await plain.peek(R1, b"", 0)] == [(1, b"first")]
    assert await hasty.load_group(group_message.group_id, group_message.digest) == (None, None)
    assert [m.seq for m in await hasty.fetch(R1, b"", 0)] == [1]  # the store serves on
    # The killed sessions cost the plain store its other pooled connections too: each is replaced when next used
    # (and the one replaced is closed in the background, so its session may linger a moment).
    assert plains
    watcher = await asyncpg.connect(nodes.url)
    try:
        for _ in range(100):
            await plain.peek(R1, b"", 0)
            if not plains & await _store_sessions(watcher):
                break
            await asyncio.sleep(0.02)
        assert not plains & await _store_sessions(watcher)
    finally:
        await watcher.close()


async def test_a_write_the_database_aborts_to_break_a_deadlock_is_run_again(nodes: Nodes) -> None:
    """A transaction PostgreSQL aborts as a deadlock's victim did nothing, so the store runs it again (here an
    expiry sweep, which locks its inboxes in order, against a session locking the same two the other way round)."""
    store = await nodes.open()
    for r in (R1, R2):
        await store.enqueue(r, b"", b"expired", nodes.clock.now - 1)
    holder = await asyncpg.connect(nodes.url)
    try:
        async with holder.transaction():
            await holder.execute("SELECT FROM inboxes WHERE recipient = $1 FOR UPDATE", R2)
            sweeping = asyncio.ensure_future(store.sweep_expired())
            await _waiting_for_a_lock(holder)  # the sweep holds R1's row and waits for R2's
            # Closing the cycle well after the sweep began to wait: its session's deadlock_timeout ends first, so
            # it is the one that finds the cycle and is aborted; then this lock is granted and the holder commits.
            await asyncio.sleep(0.3)
            await holder.execute("SELECT FROM inboxes WHERE recipient = $1 FOR UPDATE", R1)
        assert await asyncio.wait_for(sweeping, 10) == 2
    finally:
        await holder.close()
    assert [(await store.inbox_stats(r, b"")).depth for r in (R1, R2)] == [0, 0]


async def test_a_senders_share_holds_against_batches_racing_on_two_nodes(nodes: Nodes) -> None:
    """Enqueues from one sender to one default inbox through two nodes at once: exactly the share gets in (each
    batch counts the sender's messages after its lock is granted, other nodes' commits included), the rest is
    refused, and the seqs stay gap-free."""
    limits = StoreLimits(max_inbox_share_per_sender=10, max_inbox_depth=100)
    a, b = await nodes.open(limits), await nodes.open(limits)
    mallory = key(7)

    async def send(store: PostgresStore, n: int) -> int | None:
        try:
            return await store.enqueue(R1, b"", b"m%d" % n, None, sender=mallory)
        except LimitExceeded:
            return None

    seqs = await asyncio.gather(*(send((a, b)[n % 2], n) for n in range(40)))
    assert sorted(s for s in seqs if s is not None) == list(range(1, 11))
    assert (await a.inbox_stats(R1, b"")).depth == 10
    # Others are not held to mallory's share.
    assert await b.enqueue(R1, b"", b"from bob", None, sender=key(8)) == 11
