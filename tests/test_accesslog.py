"""The access log's bounded queue and batched writer, with fake sinks; and its metrics."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import pytest

from zerogate.accesslog import AccessLogWriter
from zerogate.metrics import Metrics
from zerogate.store import AccessEvent


def event(i: int) -> AccessEvent:
    return AccessEvent(
        at=datetime.now(UTC),
        kind="request",
        app="wiki",
        email="alice@example.com",
        idp="onetimepin",
        ip="192.0.2.7",
        country="NL",
        decision="allow",
        policy="staff",
        method="GET",
        host="wiki.example.com",
        path=f"/{i}",
    )


def numbers(events: Sequence[AccessEvent]) -> list[int]:
    return [int((e.path or "/-1")[1:]) for e in events]


class ListSink:
    """Keeps every batch; fails the first ``failures`` calls; can be held shut by ``gate``."""

    def __init__(self, failures: int = 0) -> None:
        self.batches: list[list[AccessEvent]] = []
        self.entered = 0
        self.calls = 0
        self.failures = failures
        self.gate = asyncio.Event()
        self.gate.set()
        self._changed = asyncio.Condition()

    async def __call__(self, events: Sequence[AccessEvent]) -> None:
        async with self._changed:
            self.entered += 1
            self._changed.notify_all()
        await self.gate.wait()
        async with self._changed:
            self.calls += 1
            self._changed.notify_all()
            if self.calls <= self.failures:
                raise ConnectionError(f"database away (call {self.calls})")
            self.batches.append(list(events))
            self._changed.notify_all()

    @property
    def events(self) -> list[AccessEvent]:
        return [e for batch in self.batches for e in batch]

    async def _wait(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(5), self._changed:
            await self._changed.wait_for(done)

    async def wait_for_events(self, count: int) -> None:
        await self._wait(lambda: len(self.events) >= count)

    async def wait_for_entered(self, count: int) -> None:
        await self._wait(lambda: self.entered >= count)

    async def wait_for_calls(self, count: int) -> None:
        await self._wait(lambda: self.calls >= count)


async def test_events_reach_the_sink_in_order_after_the_interval() -> None:
    sink = ListSink()
    writer = AccessLogWriter(sink, interval=0.05)
    await writer.start()
    started = time.monotonic()
    for i in range(10):
        assert writer.record(event(i))
    assert writer.pending == 10
    await sink.wait_for_events(10)
    assert time.monotonic() - started < 1
    assert numbers(sink.events) == list(range(10))
    assert writer.written == 10 and writer.pending == 0 and writer.dropped == 0
    await writer.stop()
    assert sink.calls == 1


async def test_a_burst_is_written_in_full_batches() -> None:
    sink = ListSink()
    async with AccessLogWriter(sink, batch=500, interval=10) as writer:
        for i in range(2000):
            writer.record(event(i))
        await sink.wait_for_events(2000)  # full batches go at once, not after the interval
    assert sink.calls == 4
    assert all(len(batch) <= 500 for batch in sink.batches)
    assert numbers(sink.events) == list(range(2000))
    assert writer.written == 2000


async def test_stop_flushes_every_accepted_event_at_once() -> None:
    sink = ListSink()
    writer = AccessLogWriter(sink, batch=500, interval=60)
    await writer.start()
    for i in range(1234):
        assert writer.record(event(i))
    started = time.monotonic()
    await writer.stop()
    assert time.monotonic() - started < 1  # does not wait for the interval
    assert numbers(sink.events) == list(range(1234))
    assert writer.written == 1234 and writer.pending == 0
    assert not writer.running


async def test_stop_without_start_still_flushes() -> None:
    sink = ListSink()
    writer = AccessLogWriter(sink, batch=3)
    for i in range(7):
        writer.record(event(i))
    await writer.stop()
    assert [len(b) for b in sink.batches] == [3, 3, 1]
    assert numbers(sink.events) == list(range(7))


async def test_record_after_stop_is_refused_and_counted() -> None:
    writer = AccessLogWriter(ListSink())
    await writer.start()
    await writer.stop()
    assert writer.record(event(0)) is False
    assert writer.dropped == 1
    with pytest.raises(RuntimeError):
        await writer.start()


async def test_full_queue_drops_and_record_never_blocks() -> None:
    assert not inspect.iscoroutinefunction(AccessLogWriter.record)
    sink = ListSink()
    sink.gate.clear()  # the sink hangs: the database is slow
    writer = AccessLogWriter(sink, capacity=100, batch=10, interval=0.01)
    await writer.start()
    for i in range(10):
        assert writer.record(event(i))
    await sink.wait_for_entered(1)  # the writer now waits on the sink, events 0..9 in flight
    started = time.monotonic()
    accepted = [writer.record(event(i)) for i in range(10, 160)]
    assert time.monotonic() - started < 0.5
    assert accepted == [True] * 90 + [False] * 60
    assert writer.dropped == 60
    assert writer.pending == 100  # the in-flight batch still counts: it is not written yet
    sink.gate.set()
    await writer.stop()
    assert numbers(sink.events) == list(range(100))
    assert writer.written == 100 and writer.dropped == 60


async def test_failing_sink_is_retried_and_loses_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="zerogate.accesslog")
    sink = ListSink(failures=3)
    writer = AccessLogWriter(sink, batch=50, interval=0.01, retry_delay=0.01)
    await writer.start()
    for i in range(20):
        assert writer.record(event(i))
    await sink.wait_for_calls(2)  # failing now; events recorded meanwhile are kept
    for i in range(20, 40):
        assert writer.record(event(i))
    await sink.wait_for_events(40)
    await writer.stop()
    assert numbers(sink.events) == list(range(40))  # each once, in order
    assert sink.calls >= 4
    assert writer.written == 40 and writer.dropped == 0
    failures = [r for r in caplog.records if "sink failed" in r.getMessage()]
    assert len(failures) == 3
    assert "database away" in failures[0].getMessage()


async def test_stop_gives_up_on_a_dead_sink_and_counts_the_loss(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = ListSink(failures=1_000_000)
    writer = AccessLogWriter(sink, batch=10, retry_delay=0.01, stop_retries=3)
    await writer.start()
    for i in range(25):
        writer.record(event(i))
    started = time.monotonic()
    await writer.stop()
    assert time.monotonic() - started < 2
    assert sink.calls == 3
    assert writer.written == 0 and writer.pending == 0 and writer.dropped == 25
    assert any("25 events not written" in r.getMessage() for r in caplog.records)


async def test_stop_cuts_a_long_backoff_short() -> None:
    sink = ListSink(failures=1)
    writer = AccessLogWriter(sink, interval=0.01, retry_delay=30, max_retry_delay=30)
    await writer.start()
    writer.record(event(0))
    await sink.wait_for_calls(1)  # failed once; the writer now backs off for 30 s
    started = time.monotonic()
    await writer.stop()
    assert time.monotonic() - started < 1
    assert numbers(sink.events) == [0]


def test_rejects_nonsense_settings() -> None:
    sink = ListSink()
    with pytest.raises(ValueError):
        AccessLogWriter(sink, capacity=0)
    with pytest.raises(ValueError):
        AccessLogWriter(sink, interval=0)


# -- metrics ----------------------------------------------------------------------------------


async def test_metrics_read_the_access_log_and_render() -> None:
    sink = ListSink()
    sink.gate.clear()
    writer = AccessLogWriter(sink, capacity=5)
    for i in range(8):
        writer.record(event(i))
    metrics = Metrics()
    metrics.watch_access_log(writer)
    metrics.requests.labels(app="wiki", decision="allow").inc()
    metrics.request_duration.observe(0.0007)
    metrics.upstream_errors.labels(app="wiki", kind="connect").inc()
    metrics.logins.labels(method="onetimepin", outcome="ok").inc()
    metrics.pins_sent.inc()
    metrics.config_version.set(7)
    metrics.snapshot_swaps.inc()

    body, content_type = metrics.render()
    text = body.decode()
    assert content_type.startswith("text/plain")
    for line in (
        "zerogate_access_log_dropped_total 3.0",
        "zerogate_access_log_pending 5.0",
        'zerogate_requests_total{app="wiki",decision="allow"} 1.0',
        'zerogate_request_duration_seconds_bucket{le="0.001"} 1.0',
        'zerogate_upstream_errors_total{app="wiki",kind="connect"} 1.0',
        'zerogate_logins_total{method="onetimepin",outcome="ok"} 1.0',
        "zerogate_pins_sent_total 1.0",
        "zerogate_config_version 7.0",
        "zerogate_snapshot_swaps_total 1.0",
    ):
        assert line in text.splitlines(), line

    body, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")

    # a registry per instance: two servers in one process do not collide
    assert "zerogate_pins_sent_total 0.0" in Metrics().render()[0].decode()
    sink.gate.set()
    await writer.stop()
