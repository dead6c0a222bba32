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
zerogate_relay_served_total           counter    requests other nodes relayed to this one's
                                                 tunnel connections (counted, once, by the edge
                                                 the client reached)
====================================  =========  ==================================================

plus the standard ``process_*`` and ``python_info`` collectors. The two access-log metrics are
copied from the writer (``watch_access_log``) at a scrape and, with several workers, every
second, so ``zerogate.accesslog`` does not know about metrics.

Label values must stay few: application names and fixed words, never emails, IPs or paths.

Several edges (docs/cluster.md, "Metrics"): each process counts what it handled, once, and
Prometheus scrapes each edge as its own target (the ``instance`` label names it): sum counters
over instances; ``zerogate_config_version`` is the same gauge on every edge (min/max, never
sum). An edge that only forwards a request for another must not count it in
``zerogate_requests_total`` again.

Several workers (``--workers N``, docs/cluster.md "Metrics"): ``zerogate server`` gives the
workers one private folder in ``PROMETHEUS_MULTIPROC_DIR`` (:data:`MULTIPROC_ENV`), made empty
for each server start and removed when it ends, and prometheus-client's multiprocess mode keeps
every worker's values in memory-mapped files there (a few files per worker process). A scrape,
whichever worker answers it, renders every worker's files merged (``MultiProcessCollector``):
counters and the histogram summed (a worker that died keeps its counts, so totals never go
down), ``zerogate_access_log_pending`` summed over live workers, ``zerogate_config_version`` the
lowest any live worker runs. Each worker copies its runtime and access-log figures into its
files every second (:meth:`Metrics.observe_runtime`, :meth:`Metrics.observe_access_log`, run by
the server) and at a scrape it answers; so does it with its ``process_*`` figures, which the
scrape sums (memory, open files, CPU time; a dead worker's CPU time stays) or takes the lowest of
(start time). With one worker (or in tests) values live in the process, as before.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Final, Literal, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    multiprocess,
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder, generate_latest

__all__ = ["MULTIPROC_ENV", "AccessLogStats", "Metrics", "multiproc_dir", "process_alive"]

#: edge overhead is sub-millisecond when things are well; the top buckets catch trouble
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
"""The variable prometheus-client reads; ``zerogate server --workers N`` sets it (N > 1)."""

#: ``process_*`` gauges of a worker of several, and how a scrape merges the workers' values
_PROCESS_GAUGES: Final[tuple[tuple[str, str, Literal["livesum", "livemin"]], ...]] = (
    ("process_resident_memory_bytes", "Resident memory of the workers.", "livesum"),
    ("process_virtual_memory_bytes", "Virtual memory of the workers.", "livesum"),
    ("process_open_fds", "Open file descriptors of the workers.", "livesum"),
    ("process_start_time_seconds", "Start of the oldest live worker.", "livemin"),
)

#: the files of the gauges that only count while their process lives (``gauge_live*_PID.db``)
_LIVE_GAUGE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def multiproc_dir() -> str | None:
    """The workers' shared metrics folder, or None for a process of its own."""
    return os.environ.get(MULTIPROC_ENV) or None


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (of any user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_workers(folder: str) -> None:
    """Drop the live gauges of workers that are gone (killed, crashed: they never said so), so
    a respawned worker's predecessor does not linger in ``zerogate_access_log_pending`` or
    ``zerogate_config_version``. Their counters stay: totals never go down."""
    with contextlib.suppress(OSError):
        for entry in Path(folder).iterdir():
            found = _LIVE_GAUGE.match(entry.name)
            if found is not None and not process_alive(int(found.group(1))):
                multiprocess.mark_process_dead(int(found.group(1)), folder)  # type: ignore[no-untyped-call]


class AccessLogStats(Protocol):
    """What the metrics read from the access-log writer (``AccessLogWriter`` fits)."""

    @property
    def dropped(self) -> int: ...

    @property
    def pending(self) -> int: ...


class Metrics:
    """The process's metrics; pass one instance to the parts that count things.

    In a worker of several (:func:`multiproc_dir` set) the values go to the shared folder and
    :meth:`render` merges every worker's."""

    def __init__(self, *, process_collectors: bool = True) -> None:
        self.folder = multiproc_dir()
        if self.folder is not None and not getattr(values.ValueClass, "_multiprocess", False):
            # prometheus-client chose its value class when first imported; make sure this
            # worker writes to the shared folder even if it was imported before the variable
            values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
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
            multiprocess_mode="livemin",
        )
        self.snapshot_swaps = Counter(
            "zerogate_snapshot_swaps",
            "Compiled snapshots swapped in.",
            registry=registry,
        )
        self.relay_served = Counter(
            "zerogate_relay_served",
            "Requests other nodes relayed to this one's tunnel connections.",
            registry=registry,
        )
        self.access_log_dropped = Counter(
            "zerogate_access_log_dropped",
            "Access events not written (queue full, or sink failing at shutdown).",
            registry=registry,
        )
        self.access_log_pending = Gauge(
            "zerogate_access_log_pending",
            "Access events queued and not yet written.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._swaps_seen = 0
        self._dropped_seen = 0
        self._access_log: AccessLogStats | None = None
        self._process: ProcessCollector | None = None
        self._cpu_seen = 0.0
        if self.folder is not None:
            # process_* of the edge: each worker's own, summed (start time: the oldest live)
            self._process = ProcessCollector(registry=None)
            self._process_gauges = {
                name: Gauge(name, help_text, registry=registry, multiprocess_mode=mode)
                for name, help_text, mode in _PROCESS_GAUGES
            }
            self._process_cpu = Counter(
                "process_cpu_seconds", "CPU time of the workers.", registry=registry
            )
            # what a scrape renders: every worker's files, and what is the same in all of them
            self.registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.registry, path=self.folder)  # type: ignore[no-untyped-call]
            if process_collectors:
                PlatformCollector(registry=self.registry)
        elif process_collectors:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)

    def observe_runtime(self, config_version: int, swaps: int) -> None:
        """The live configuration version and the runtime's count of snapshots swapped in so
        far (the counter catches up; it never goes down). At a scrape, and every second in a
        worker of several."""
        self.config_version.set(config_version)
        if swaps > self._swaps_seen:
            self.snapshot_swaps.inc(swaps - self._swaps_seen)
            self._swaps_seen = swaps

    def observe_process(self) -> None:
        """A worker of several: copy its ``process_*`` figures in (every second)."""
        if self._process is None:
            return
        for family in self._process.collect():
            for sample in family.samples:
                gauge = self._process_gauges.get(sample.name)
                if gauge is not None:
                    gauge.set(sample.value)
                elif sample.name == "process_cpu_seconds_total" and sample.value > self._cpu_seen:
                    self._process_cpu.inc(sample.value - self._cpu_seen)
                    self._cpu_seen = sample.value

    def watch_access_log(self, source: AccessLogStats) -> None:
        """Report ``source.dropped`` and ``source.pending`` (see :meth:`observe_access_log`)."""
        self._access_log = source
        self.observe_access_log()

    def observe_access_log(self) -> None:
        """Copy the access-log writer's figures in: at a scrape, and every second in a worker
        of several."""
        source = self._access_log
        if source is None:
            return
        self.access_log_pending.set(source.pending)
        dropped = source.dropped
        if dropped > self._dropped_seen:
            self.access_log_dropped.inc(dropped - self._dropped_seen)
            self._dropped_seen = dropped

    def close(self) -> None:
        """At a worker's orderly exit: its live gauges stop counting (its counters stay)."""
        if self.folder is not None:
            multiprocess.mark_process_dead(os.getpid(), self.folder)  # type: ignore[no-untyped-call]

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition body and its content type.

        ``accept`` is the scraper's Accept header: OpenMetrics when it asks for it, else the
        classic Prometheus text format.
        """
        self.observe_access_log()
        if self.folder is not None:
            forget_dead_workers(self.folder)
        if not accept:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
