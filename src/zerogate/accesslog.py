"""The access log's bounded queue and batched writer (step 6, "record", of the request path).

The edge calls ``AccessLogWriter.record(event)`` for every login and every allowed or blocked
request (time, app, email, IdP, IP, country, decision, policy: what the admin log view shows).
``record`` never awaits and never blocks: it appends to an in-memory queue of at most ``capacity``
events, or, when the queue is full, counts the event as dropped and returns ``False``. A request is
never slowed down by the database.

One background task takes events off the queue and hands them to the *sink* (an async callable
taking a sequence of events, in practice one store transaction per call) in batches of at most
``batch`` events: as soon as a full batch is waiting, otherwise every ``interval`` seconds.
Batches are small (100 by default) because the per-row parameter work of a batch runs on the
event loop: measured here, 500 rows blocked the loop 2.5 ms idle and 10–15 ms under load, 100
rows under 1 ms idle (the write itself runs in the driver's thread).
Events reach the sink in the order they were recorded.

Guarantees, and their limits:

- An *acknowledged* event (``record`` returned ``True``) is written, or counted in ``dropped``
  and logged as an error; it is never lost silently.
- When the sink fails, the batch stays at the head of the queue and is retried with
  exponential backoff (``retry_delay`` doubling up to ``max_retry_delay``), indefinitely while
  running. Meanwhile new events queue up to ``capacity``; beyond that they are dropped (and
  counted) at ``record``, so memory stays bounded while the database is away.
- ``stop()`` refuses new events, then flushes everything acknowledged before it returns. If the
  sink keeps failing during ``stop``, each batch gets ``stop_retries`` more attempts; then the
  remaining events are counted as dropped and logged, so shutdown cannot hang on a dead database.
- Delivery is at least once: a sink that fails *after* writing part of a batch sees those events
  again, so a sink should write a batch in one transaction (all or nothing).

``record`` must be called from the event loop's thread (it touches an ``asyncio.Event``).
Counters (``written``, ``dropped``, ``pending``) are plain attributes for ``zerogate.metrics``.

``record_repeated(key, event)`` is for events a scan could send by the thousand (requests sent
to the login, per application and client address): the first of a key in a ``window`` (60 s)
is recorded at once, the rest of that window only counted, and when the window ends one more
row stands for them (``count`` = how many, the last one's request). At most
``REPEAT_KEYS`` keys are followed at a time; beyond that the key is widened to the application
alone, so memory stays bounded whatever the number of client addresses.

``also`` (optional) is called with every batch before the sink: the JSON-lines copy for a SIEM
(``AccessStream``). It sees each batch once, however often the sink is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zerogate.store import AccessEvent, Store

__all__ = ["AccessLogWriter", "AccessStream", "LogKeeper", "Sink"]

log = logging.getLogger(__name__)

Sink = Callable[[Sequence["AccessEvent"]], Awaitable[None]]

#: how many keys ``record_repeated`` follows at once (then per application only)
REPEAT_KEYS = 10000


@dataclasses.dataclass(slots=True)
class _Repeat:
    until: float
    count: int
    last: AccessEvent | None


class AccessLogWriter:
    """Bounded queue in front of a batched, retrying writer. See the module docstring."""

    def __init__(
        self,
        sink: Sink,
        *,
        capacity: int = 10000,
        batch: int = 100,
        interval: float = 0.5,
        retry_delay: float = 0.1,
        max_retry_delay: float = 5.0,
        stop_retries: int = 5,
        window: float = 60.0,
        also: Callable[[Sequence[AccessEvent]], None] | None = None,
    ) -> None:
        if capacity < 1 or batch < 1:
            raise ValueError("capacity and batch must be at least 1")
        if interval <= 0 or retry_delay <= 0 or max_retry_delay < retry_delay:
            raise ValueError("interval and retry delays must be positive")
        if stop_retries < 1:
            raise ValueError("stop_retries must be at least 1")
        self._sink = sink
        self._capacity = capacity
        self._batch = batch
        self._interval = interval
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._stop_retries = stop_retries
        self._queue: deque[AccessEvent] = deque()
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        #: events refused by ``record`` (queue full, or stopped) or abandoned at ``stop``
        self.dropped = 0
        #: events the sink accepted
        self.written = 0
        self._window = window
        self._repeats: dict[Hashable, _Repeat] = {}
        self._next_repeat_check = 0.0
        self._also = also
        self._also_seen: Sequence[AccessEvent] | None = None

    @property
    def pending(self) -> int:
        """Events accepted and not yet written."""
        return len(self._queue)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def record(self, event: AccessEvent) -> bool:
        """Queue ``event``; ``False`` (and ``dropped`` + 1) if the queue is full or stopped."""
        if self._closed or len(self._queue) >= self._capacity:
            self.dropped += 1
            return False
        self._queue.append(event)
        if len(self._queue) >= self._batch:
            self._wake.set()
        return True

    def record_repeated(self, key: Hashable, wide_key: Hashable, event: AccessEvent) -> bool:
        """Record ``event`` if it is the first of ``key`` in the current window, else count it
        (see the module docstring); ``wide_key`` replaces ``key`` when too many are followed."""
        now = time.monotonic()
        slot = self._repeats.get(key)
        if slot is None and len(self._repeats) >= REPEAT_KEYS:
            key = wide_key
            slot = self._repeats.get(key)
        if slot is not None and now >= slot.until:
            self._end_window(slot)
            slot = None
        if slot is None:
            if len(self._repeats) >= REPEAT_KEYS + 1000:  # wide keys too: sweep now
                self.flush_repeats(force=False, now=now)
            self._repeats[key] = _Repeat(now + self._window, 0, None)
            return self.record(event)
        slot.count += 1
        slot.last = event
        return True

    def flush_repeats(self, *, force: bool, now: float | None = None) -> None:
        """Record the counted events of every window that ended (``force``: of every one)."""
        now = time.monotonic() if now is None else now
        ended = [k for k, slot in self._repeats.items() if force or now >= slot.until]
        for key in ended:
            self._end_window(self._repeats.pop(key))

    def _end_window(self, slot: _Repeat) -> None:
        if slot.count and slot.last is not None:
            more = "time" if slot.count == 1 else "times"
            detail = f"repeated {slot.count} more {more} within {self._window:.0f}s"
            if slot.last.detail:
                detail = f"{slot.last.detail}; {detail}"
            self.record(dataclasses.replace(slot.last, count=slot.count, detail=detail))
        slot.count = 0
        slot.last = None

    async def start(self) -> None:
        """Start the writer task (events recorded before ``start`` are kept)."""
        if self._closed:
            raise RuntimeError("a stopped AccessLogWriter cannot be restarted")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="zerogate-access-log"
            )
            self._task.add_done_callback(_log_crash)

    async def stop(self) -> None:
        """Refuse new events, write every acknowledged one, and end the writer task."""
        self.flush_repeats(force=True)
        self._closed = True
        self._stop_requested.set()
        self._wake.set()
        if self._task is None or self._task.done():
            await self._run()  # never started (or crashed): flush what was recorded, inline
            return
        await asyncio.shield(self._task)

    async def __aenter__(self) -> AccessLogWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- the writer task -------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            stopping = self._stop_requested.is_set()
            interval_passed = False
            if not stopping and len(self._queue) < self._batch:
                try:
                    async with asyncio.timeout(self._interval):
                        await self._wake.wait()
                except TimeoutError:
                    interval_passed = True
            self._wake.clear()
            if self._repeats:
                now = time.monotonic()
                if now >= self._next_repeat_check:
                    self._next_repeat_check = now + 1.0
                    self.flush_repeats(force=False, now=now)
            stopping = self._stop_requested.is_set()
            # Full batches at once; a partial one when the interval is up or when stopping.
            while self._queue and (len(self._queue) >= self._batch or interval_passed or stopping):
                count = min(self._batch, len(self._queue))
                chunk = list(islice(self._queue, count))
                if await self._write(chunk):
                    for _ in range(count):
                        self._queue.popleft()
                    self.written += count
                else:
                    lost = len(self._queue)
                    self._queue.clear()
                    self.dropped += lost
                    log.error(
                        "access log: the sink still fails at shutdown; %d events not written",
                        lost,
                    )
                stopping = self._stop_requested.is_set()
            if stopping and not self._queue:
                return

    async def _write(self, chunk: Sequence[AccessEvent]) -> bool:
        """Hand ``chunk`` to the sink, retrying; ``False`` only when giving up during stop."""
        attempt = 0
        attempts_while_stopping = 0
        if self._also is not None and chunk is not self._also_seen:
            self._also_seen = chunk
            try:
                self._also(chunk)
            except Exception:
                log.exception("access log: the copy to the log stream failed")
        while True:
            try:
                await self._sink(chunk)
            except Exception as exc:
                attempt += 1
                if self._stop_requested.is_set():
                    attempts_while_stopping += 1
                    if attempts_while_stopping >= self._stop_retries:
                        log.error("access log: sink failed %d times: %r", attempt, exc)
                        return False
                    delay = self._backoff(attempts_while_stopping)
                else:
                    delay = self._backoff(attempt)
                log.warning(
                    "access log: sink failed (attempt %d; %d events pending); "
                    "retrying in %.2fs: %r",
                    attempt,
                    len(self._queue),
                    delay,
                    exc,
                )
                if self._stop_requested.is_set():
                    await asyncio.sleep(delay)
                else:
                    # a stop() during a long backoff switches to the short, bounded retries
                    try:
                        async with asyncio.timeout(delay):
                            await self._stop_requested.wait()
                    except TimeoutError:
                        pass
            else:
                if attempt:
                    log.info("access log: sink recovered after %d failed attempts", attempt)
                return True

    def _backoff(self, attempt: int) -> float:
        return float(min(self._max_retry_delay, self._retry_delay * 2 ** (attempt - 1)))


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("access log writer stopped unexpectedly", exc_info=task.exception())


#: rows per access-log transaction at most (``AccessLogWriter``'s ``batch``)
ACCESS_BATCH = 1000


class LogKeeper:
    """One process's bookkeeping around its ``AccessLogWriter`` (see ``zerogate.store.logs``):
    registers the writer in the store, moves its ``seen_at`` with every batch (same
    transaction) and every ``heartbeat`` seconds when idle, marks it stopped after a clean
    stop; every ``sweep`` seconds it records writers of other processes that vanished as gaps
    in the access log and trims rows older than the retention settings."""

    def __init__(
        self,
        store: Store,
        *,
        access_retention: timedelta | None,
        admin_retention: timedelta | None,
        heartbeat: float = 10.0,
        sweep: float = 60.0,
        trim_every: float = 600.0,
        stream: AccessStream | None = None,
        session_keep: Callable[[], timedelta] | None = None,
    ) -> None:
        self.store = store
        self.session_keep = session_keep
        self.stream = stream
        self.access_retention = access_retention
        self.admin_retention = admin_retention
        self.heartbeat = heartbeat
        self.sweep = sweep
        self.trim_every = trim_every
        self.id = f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(6)}"
        # a transaction costs far more than a row: under load, up to ACCESS_BATCH rows share one
        # (a quiet server still writes within the writer's interval)
        self.writer = AccessLogWriter(self._sink, batch=ACCESS_BATCH, also=stream)
        self.gaps_found = 0
        self.trimmed = 0
        self._task: asyncio.Task[None] | None = None

    async def _sink(self, events: Sequence[AccessEvent]) -> None:
        await self.store.write_access(events, writer=self.id, dropped=self.writer.dropped)

    async def start(self) -> None:
        await self.store.start_log_writer(self.id, socket.gethostname(), os.getpid())
        await self.writer.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="zerogate-logs")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.writer.stop()
        if self.stream is not None:
            self.stream.close()
        try:
            await self.store.end_log_writer(self.id, dropped=self.writer.dropped)
        except Exception:  # the database is away: the next sweep anywhere records a gap
            log.exception("access log: could not record a clean stop")

    async def sweep_once(self, *, trim: bool) -> None:
        """Record vanished writers as gaps; with ``trim``, delete rows past retention."""
        for lost in await self.store.find_lost_log_writers():
            self.gaps_found += 1
            log.warning(
                "access log: the writer of process %d on %s stopped without a clean stop; "
                "records after %s may be missing (recorded as a gap)",
                lost.pid,
                lost.host,
                lost.seen_at.isoformat(),
            )
        if trim:
            now = datetime.now(UTC)
            access, admin = await self.store.trim_logs(
                access_before=now - self.access_retention if self.access_retention else None,
                admin_before=now - self.admin_retention if self.admin_retention else None,
            )
            self.trimmed += access + admin
            if access or admin:
                log.info("logs trimmed: %d access rows, %d admin rows", access, admin)
            if self.session_keep is not None:
                gone = await self.store.trim_sessions(now - self.session_keep())
                self.trimmed += gone
                if gone:
                    log.info("sessions trimmed: %d expired sessions", gone)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # spread the processes' sweeps; the first soon after start (a crash before us)
        next_sweep = loop.time() + random.uniform(1.0, 5.0)
        next_trim = next_sweep
        while True:
            await asyncio.sleep(min(self.heartbeat, max(0.0, next_sweep - loop.time())))
            try:
                if loop.time() >= next_sweep:
                    trim = loop.time() >= next_trim
                    await self.sweep_once(trim=trim)
                    next_sweep = loop.time() + self.sweep * random.uniform(0.8, 1.2)
                    if trim:
                        next_trim = loop.time() + self.trim_every * random.uniform(0.8, 1.2)
                await self.store.write_access([], writer=self.id, dropped=self.writer.dropped)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("access log: housekeeping failed; retrying later")


_FACILITIES = {
    "user": 1,
    "daemon": 3,
    "auth": 4,
    "authpriv": 10,
    **{f"local{i}": 16 + i for i in range(8)},
}
#: syslog severity of an access-log line: informational, or warning for a block
_INFO, _WARNING = 6, 4
#: a syslog message over UDP is kept below a common path MTU's payload (RFC 5426 allows
#: more, but fragments get lost); longer rows lose their ``detail`` and ``path``, then are cut
SYSLOG_MAX_BYTES = 8192


class AccessStream:
    """A copy of the access log as JSON objects, one per row, as the writer takes batches:
    lines on standard output (``stdout``) and / or syslog messages (RFC 5424, ``MSGID``
    ``access``, the JSON object as the message) to a UDP ``host:port`` or a Unix datagram
    socket. Never blocks: a message the socket cannot take at once is counted in
    ``dropped``."""

    def __init__(
        self,
        *,
        stdout: bool = False,
        syslog_address: str | None = None,
        facility: str = "local0",
        out_fd: int = 1,
    ) -> None:
        self.stdout = stdout
        self.out_fd = out_fd
        self.facility = _FACILITIES[facility]
        self.hostname = socket.gethostname()[:255] or "-"
        self.pid = os.getpid()
        self.dropped = 0
        self.sent = 0
        self._socket: socket.socket | None = None
        self._to: str | tuple[str, int] | None = None
        if syslog_address is not None:
            self._socket, self._to = _syslog_socket(syslog_address)

    def __call__(self, events: Sequence[AccessEvent]) -> None:
        from zerogate.store import access_event_dict

        for event in events:
            line = json.dumps(access_event_dict(event), separators=(",", ":"))
            if self.stdout:
                data = line.encode() + b"\n"
                try:
                    os.write(self.out_fd, data)  # one write per line: lines never interleave
                except OSError:
                    self.dropped += 1
            if self._socket is not None:
                self._send(event, line)

    def _send(self, event: AccessEvent, line: str) -> None:
        assert self._socket is not None and self._to is not None
        severity = _WARNING if event.decision == "block" else _INFO
        at = event.at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        head = (
            f"<{self.facility * 8 + severity}>1 {at} {self.hostname} zerogate {self.pid} access - "
        )
        message = head.encode() + line.encode()
        if len(message) > SYSLOG_MAX_BYTES:
            from zerogate.store import access_event_dict

            row = access_event_dict(event)
            row["detail"] = None
            row["path"] = (row["path"] or "")[:200] or None
            message = (head + json.dumps(row, separators=(",", ":"))).encode()[:SYSLOG_MAX_BYTES]
        try:
            self._socket.sendto(message, self._to)
            self.sent += 1
        except OSError:  # full (BlockingIOError), unreachable, no listener on the socket
            self.dropped += 1

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _syslog_socket(address: str) -> tuple[socket.socket, str | tuple[str, int]]:
    """A non-blocking datagram socket for ``address`` (checked by the model: a path or
    ``host:port``) and where to send."""
    if address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        return sock, address
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    info = socket.getaddrinfo(host, int(port), type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(info[0], socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock, (str(info[4][0]), int(info[4][1]))
