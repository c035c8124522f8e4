"""Prometheus metrics of a node: calls by method and code, their latency, and the node's state read at scrape time.

Each node has its own registry (several nodes can share a process, as in tests). Calls are counted by wrapping
the NodeService class once (`instrument`); everything else (connections, parked waiters, the store's commits,
batch sizes and failures, free disk) is read when scraped. `metrics_http` serves it on a loopback port.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from quicnprotochat.common.errors import RpcError
from quicnprotochat.common.schema import node_service_methods
from quicnprotochat.server.services.errors import rpc_error
from quicnprotochat.server.store import StoreError

if TYPE_CHECKING:
    from quicnprotochat.server.health import HealthReport
    from quicnprotochat.server.node_state import NodeState

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds; long-polls (fetchWait, peekWait) land in the top buckets by design."""

S = TypeVar("S")


class NodeMetrics:
    def __init__(self, state: NodeState) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._calls = Counter(
            "qpc_rpc_calls",
            "RPC calls answered, by method and by code (ok, or the error code the caller got)",
            ["method", "code"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "qpc_rpc_call_duration_seconds",
            "Time from a call's arrival to its answer, by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Bounded: methods are the schema's, codes the wire's.
        self._call_series: dict[tuple[str, str], Counter] = {}
        self._latency_series: dict[str, Histogram] = {}
        self._store_errors = Counter(
            "qpc_store_errors",
            "Calls that failed in the store, by the code the caller got (unavailable, unknown_outcome, ...)",
            ["code"],
            registry=self.registry,
        )
        self._state_collector = _StateCollector(state)
        self.registry.register(self._state_collector)

    def observe(self, method: str, code: str, seconds: float) -> None:
        # Every call passes here: `labels()` (a lock, the label values checked and joined) cost 6 us a call, so
        # each method's and code's series is looked up once and kept.
        calls = self._call_series.get((method, code))
        if calls is None:
            calls = self._call_series[method, code] = self._calls.labels(method, code)
        latency = self._latency_series.get(method)
        if latency is None:
            latency = self._latency_series[method] = self._latency.labels(method)
        calls.inc()
        latency.observe(seconds)

    def store_error(self, code: str) -> None:
        self._store_errors.labels(code).inc()

    def health_seen(self, report: HealthReport) -> None:
        """The health report the next scrape shows (the endpoint probes just before it collects)."""
        self._state_collector.report = report


def instrument(service_class: type[S], metrics: NodeMetrics) -> type[S]:
    """A subclass of the NodeService implementation whose every method counts and times its calls.

    Store errors that escaped a service become their wire code here (as `rpc_errors.render_error` would), so that
    the count shows the code the caller got."""
    methods: dict[str, Any] = {}
    for name in node_service_methods():
        original = getattr(service_class, name, None)
        if original is not None:
            methods[name] = _timed(name, original, metrics)
    return type(service_class.__name__, (service_class,), methods)


def _timed(name: str, original: Callable[..., Awaitable[Any]], metrics: NodeMetrics) -> Callable[..., Any]:
    async def call(self: Any, **params: Any) -> Any:
        started = time.perf_counter()
        code = "ok"
        try:
            return await original(self, **params)
        except StoreError as exc:
            error = rpc_error(exc)
            code = error.code
            metrics.store_error(code)
            raise error from None
        except RpcError as exc:
            code = exc.code
            raise
        except Exception:
            code = "internal"
            raise
        except BaseException:
            code = "cancelled"
            raise
        finally:
            metrics.observe(name, code, time.perf_counter() - started)

    call.__name__ = call.__qualname__ = name
    return call


class _StateCollector(Collector):
    def __init__(self, state: NodeState) -> None:
        self._state = state
        self.report: HealthReport | None = None

    def collect(self) -> Iterable[Metric]:
        state = self._state
        store = state.store.metrics()
        yield _gauge("qpc_connections", "Open RPC connections (QUIC and TLS)", state.connections())
        yield _gauge(
            "qpc_parked_waiters", "fetchWait/peekWait calls waiting for a message", state.store.wakeups.waiter_count()
        )
        counters = state.counters
        by_transport = GaugeMetricFamily(
            "qpc_connections_by_transport", "Open RPC connections by transport", labels=["transport"]
        )
        for transport in ("quic", "tcp"):
            by_transport.add_metric([transport], counters.connections.get(transport, 0))
        yield by_transport
        yield _gauge(
            "qpc_unauthenticated_connections",
            "Open connections on which no call has authenticated yet",
            counters.unauthenticated_connections,
        )
        yield _gauge(
            "qpc_incoming_bytes_in_progress",
            "Bytes of incoming messages not yet complete, and received bytes not yet read, over all connections",
            counters.incoming_bytes_in_progress,
        )
        refused = CounterMetricFamily(
            "qpc_refused", "Calls refused or connections closed by a limit, by its setting name", labels=["limit"]
        )
        for limit, count in sorted(counters.refused.items()):
            refused.add_metric([limit], count)
        yield refused
        yield _counter("qpc_store_commits", "Write transactions committed", store.commits)
        yield _counter("qpc_store_write_ops", "Write operations committed (enqueues, acks, ...)", store.write_ops)
        batches = HistogramMetricFamily("qpc_store_batch_size", "Operations per committed write transaction")
        if store.batch_sizes:
            buckets = [(str(bound), float(count)) for bound, count in store.batch_sizes]
            buckets.append(("+Inf", float(store.batch_sizes[-1][1])))
            batches.add_metric([], buckets, float(store.batch_size_sum))
        yield batches
        yield _gauge(
            "qpc_quic_connections", "QUIC connections held, with or without an RPC stream", state.quic_connections()
        )
        yield _gauge(
            "qpc_quic_connection_ids",
            "Connection ids the QUIC listener routes datagrams by (about nine per connection)",
            state.quic_connection_ids(),
        )
        yield _gauge(
            "qpc_connection_rate_addresses",
            "Source addresses whose new-connection bucket the node holds (bounded by connection_rate_max_addresses)",
            state.connection_rate_addresses(),
        )
        if state.retry is not None:
            yield _counter("qpc_quic_retries_sent", "QUIC Retry packets sent", state.retry.retries_sent)
            yield _counter("qpc_quic_retry_tokens_accepted", "Initials with a valid token", state.retry.tokens_accepted)
            yield _counter("qpc_quic_retry_tokens_refused", "Initials with a bad token", state.retry.tokens_refused)
        submissions = CounterMetricFamily(
            "qpc_group_submissions", "submitCommit calls answered, by kind and outcome", labels=["kind", "outcome"]
        )
        for (kind, outcome), count in sorted(state.groups.outcomes.items()):
            submissions.add_metric([kind, outcome], count)
        yield submissions
        yield _gauge("qpc_free_disk_bytes", "Free space where the node keeps its data", state.disk.free_bytes())
        yield _gauge(
            "qpc_min_free_disk_bytes", "Free space under which new messages are refused", state.disk.floor_bytes
        )
        if self.report is not None:
            health = self.report.store
            yield _gauge("qpc_store_up", "1 if the store answered the last probe", int(health.reachable))
            yield _gauge("qpc_store_writer_up", "1 if the store's writer runs", int(health.writer_alive))
            yield _gauge("qpc_store_write_queue_depth", "Writes waiting for the writer", health.queue_depth)
            yield _counter(
                "qpc_store_failed_batches", "Write transactions that failed as a whole", health.failed_batches
            )
            yield _counter(
                "qpc_store_writer_restarts", "Times the writer ended and was restarted", health.writer_restarts
            )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)
