"""zerogate's Prometheus metrics: one ``CollectorRegistry`` per process, rendered at ``/metrics``.

``Metrics()`` owns a private registry (never prometheus-client's global one, so tests and
several servers in one process do not collide) holding:

====================================  =========  ==================================================
name                                  type       meaning
====================================  =========  ==================================================
zerogate_requests_total               counter    requests through the edge, by ``app`` and
                                                 ``decision`` (allow, block, bypass, authenticate,
                                                 ...); ``app=""`` when no application matched
zerogate_request_duration_seconds     histogram  time the edge itself spends on a request (routing,
                                                 identity, policy, headers), upstream time excluded
zerogate_upstream_errors_total        counter    failures reaching an origin, by ``app`` and
                                                 ``kind`` (connect, timeout, reset, tunnel, ...)
zerogate_access_log_dropped_total     counter    access events not written (queue full, or sink
                                                 still failing at shutdown)
zerogate_access_log_pending           gauge      access events queued, not yet written
zerogate_logins_total                 counter    logins by ``method`` (onetimepin, oidc, ...) and
                                                 ``outcome`` (ok, wrong, expired, denied, ...)
zerogate_pins_sent_total              counter    one-time PIN emails handed to the SMTP server
zerogate_config_version               gauge      configuration version of the live snapshot
zerogate_snapshot_swaps_total         counter    compiled snapshots swapped in
====================================  =========  ==================================================

plus the standard ``process_*`` and ``python_info`` collectors. The two access-log metrics are
read from the writer when scraped (``watch_access_log``), so ``zerogate.accesslog`` does not
know about metrics.

Label values must stay few: application names and fixed words, never emails, IPs or paths.

Several edges (docs/cluster.md, "Metrics"): each process counts what it handled, once, and
Prometheus scrapes each edge as its own target (the ``instance`` label names it): sum counters
over instances; ``zerogate_config_version`` is the same gauge on every edge (min/max, never
sum). An edge that only forwards a request for another must not count it in
``zerogate_requests_total`` again.

Several workers (``--workers N``): each process has its own registry, so a scrape sees only the
worker that answered it. Aggregating across workers needs prometheus-client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR`` set before the first import, a ``MultiProcessCollector`` on
scrape, ``mark_process_dead`` on worker exit, and a gauge mode per gauge; callback-based
collectors such as the access-log ones do not work there). That is a later concern; until then,
run one worker per port, or scrape each worker.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder, generate_latest
from prometheus_client.registry import Collector

__all__ = ["AccessLogStats", "Metrics"]

#: edge overhead is sub-millisecond when things are well; the top buckets catch trouble
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class AccessLogStats(Protocol):
    """What the metrics read from the access-log writer (``AccessLogWriter`` fits)."""

    @property
    def dropped(self) -> int: ...

    @property
    def pending(self) -> int: ...


class _AccessLogCollector(Collector):
    def __init__(self) -> None:
        self.source: AccessLogStats | None = None

    def _families(self, dropped: int, pending: int) -> list[Metric]:
        return [
            CounterMetricFamily(
                "zerogate_access_log_dropped",
                "Access events not written (queue full, or sink failing at shutdown).",
                value=dropped,
            ),
            GaugeMetricFamily(
                "zerogate_access_log_pending",
                "Access events queued and not yet written.",
                value=pending,
            ),
        ]

    def describe(self) -> Iterable[Metric]:
        return self._families(0, 0)

    def collect(self) -> Iterable[Metric]:
        source = self.source
        if source is None:
            return self._families(0, 0)
        return self._families(source.dropped, source.pending)


class Metrics:
    """The process's metrics; pass one instance to the parts that count things."""

    def __init__(self, *, process_collectors: bool = True) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "zerogate_requests",
            "Requests through the edge, by application and decision.",
            ["app", "decision"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "zerogate_request_duration_seconds",
            "Time the edge spends on a request, upstream time excluded.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.upstream_errors = Counter(
            "zerogate_upstream_errors",
            "Failures reaching an origin, by application and kind.",
            ["app", "kind"],
            registry=registry,
        )
        self.logins = Counter(
            "zerogate_logins",
            "Logins by method and outcome.",
            ["method", "outcome"],
            registry=registry,
        )
        self.pins_sent = Counter(
            "zerogate_pins_sent",
            "One-time PIN emails handed to the SMTP server.",
            registry=registry,
        )
        self.config_version = Gauge(
            "zerogate_config_version",
            "Configuration version of the live snapshot.",
            registry=registry,
        )
        self.snapshot_swaps = Counter(
            "zerogate_snapshot_swaps",
            "Compiled snapshots swapped in.",
            registry=registry,
        )
        self._swaps_seen = 0
        self._access_log = _AccessLogCollector()
        registry.register(self._access_log)
        if process_collectors:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)

    def observe_runtime(self, config_version: int, swaps: int) -> None:
        """At a scrape: the live configuration version and the runtime's count of snapshots
        swapped in so far (the counter catches up; it never goes down)."""
        self.config_version.set(config_version)
        if swaps > self._swaps_seen:
            self.snapshot_swaps.inc(swaps - self._swaps_seen)
            self._swaps_seen = swaps

    def watch_access_log(self, source: AccessLogStats) -> None:
        """Report ``source.dropped`` and ``source.pending`` at every scrape."""
        self._access_log.source = source

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition body and its content type.

        ``accept`` is the scraper's Accept header: OpenMetrics when it asks for it, else the
        classic Prometheus text format.
        """
        if not accept:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
