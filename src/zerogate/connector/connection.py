"""One connection from the connector to an edge: dial, verify, register, serve streams, watch.

:class:`EdgeConnection` is the asyncio shell around one
:class:`~zerogate.tunnel.protocol.ConnectorSide`: it opens TCP + TLS to the edge, checks the
edge's certificate (:mod:`zerogate.connector.tls`), writes the registration, reads the answer,
then feeds every byte from the edge to the core and dispatches the events: each new stream gets
a :class:`~zerogate.connector.stream.TunnelStream` and a task running the request handler.

Liveness: a watchdog PINGs the edge every ``ping_interval`` seconds; when nothing at all (no PING
answer, no byte) has come from the edge for ``dead_after`` seconds the transport is aborted, so
a dead path is noticed within ``dead_after`` seconds even when TCP would wait for minutes. The
same watchdog bounds the registration (``register_timeout``).

A stream whose response is complete while its request body is still arriving (the origin
answered early) has the rest of that body read and discarded, as an HTTP/1.1 origin would, so
the client's upload is not cut off.

``run()`` returns an :class:`Outcome` when the connection is over; redialling is the
supervisor's business (:mod:`zerogate.connector.supervisor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from zerogate.connector.metrics import ConnectorMetrics
from zerogate.connector.stream import StreamGone, TunnelStream
from zerogate.connector.tls import EdgeAddress, EdgeTrust, EdgeTrustError
from zerogate.net import chunks
from zerogate.tunnel.protocol import (
    EAGER_WRITE,
    BodyChunk,
    ConnectionTerminated,
    ConnectorSide,
    ErrorCodes,
    Event,
    GoAwayReceived,
    InvalidHeaders,
    PingAcked,
    RefusalReason,
    Registration,
    RegistrationAccepted,
    RegistrationRefused,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TunnelSettings,
    WindowOpened,
)

log = structlog.get_logger("zerogate.connector")

Handler = Callable[[TunnelStream], Awaitable[None]]

READ_SIZE = 256 * 1024


@dataclass(frozen=True, slots=True)
class Liveness:
    """Timers of one connection, in seconds."""

    ping_interval: float = 2.0
    dead_after: float = 10.0
    connect_timeout: float = 10.0
    register_timeout: float = 15.0
    tick: float = 0.25


@dataclass(slots=True)
class Outcome:
    """How a connection ended: what the supervisor needs to pick the next delay."""

    registered: bool = False
    healthy_for: float = 0.0
    refused: RefusalReason | None = None
    message: str = ""


class EdgeConnection:
    """One connection to one edge; see the module docstring."""

    def __init__(
        self,
        edge: EdgeAddress,
        registration: Registration,
        trust: EdgeTrust,
        handler: Handler,
        metrics: ConnectorMetrics,
        *,
        settings: TunnelSettings | None = None,
        liveness: Liveness | None = None,
    ) -> None:
        self.edge = edge
        self.index = registration.connection_index
        self.registration = registration
        self.trust = trust
        self.handler = handler
        self.metrics = metrics
        self.settings = settings
        self.liveness = liveness or Liveness()
        self.core = ConnectorSide(registration, settings)
        self.outcome = Outcome()
        self.connection_id = ""
        self.registered = asyncio.Event()
        self.edge_goaway = asyncio.Event()  # the edge is draining: dial a replacement
        self.streams: dict[int, TunnelStream] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._flush_due = False
        self._loop = asyncio.get_running_loop()
        self._last_rx = self._loop.time()
        self._registered_at: float | None = None
        self._abort_reason: str | None = None
        self._draining = False

    # -- used by streams ------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what the core produced, once per event-loop turn (one TLS record and one
        system call for every stream answered in the turn); close the transport once the core
        is closed (at once)."""
        if self.core.closed:
            self._flush_now()
        elif not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_due = False
        writer = self._writer
        if writer is None:
            return
        data = self.core.data_to_send()
        if data and not writer.is_closing():
            writer.write(data)
        if self.core.closed and not writer.is_closing():
            writer.close()

    async def drain(self) -> None:
        if self._flush_due and self.core.unsent_bytes >= EAGER_WRITE:
            # a large output counts against the transport's buffer now; a small one (a short
            # answer) waits for the turn's end, with the others of the turn
            self._flush_now()
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        try:
            await writer.drain()
        except (ConnectionError, OSError):
            return  # the read loop sees the loss and resets every stream

    def ack(self, stream_id: int, size: int) -> None:
        self.core.ack(stream_id, size)
        self.flush()

    # -- control from the supervisor ------------------------------------------------------------

    def go_away(self, message: str = "connector shutting down") -> None:
        """Drain: in-flight streams finish, the edge opens no new ones on this connection."""
        self._draining = True
        if self._writer is None:
            return  # still dialling: run() ends the connection once it is up
        self.core.go_away(message)
        self.flush()

    def close(self, message: str = "") -> None:
        """End now: a final GOAWAY, open streams abandoned."""
        self.core.close(ErrorCodes.NO_ERROR, message)
        self.flush()
        self.abort(message or "closed")

    def abort(self, reason: str) -> None:
        self._abort_reason = self._abort_reason or reason
        if self._writer is not None:
            self._writer.transport.abort()

    @property
    def open_streams(self) -> int:
        return len(self.tasks)

    # -- the connection -------------------------------------------------------------------------

    async def run(self) -> Outcome:
        """Dial, register and serve until the connection ends; never raises for network trouble."""
        bound = log.bind(edge=str(self.edge), conn=self.index)
        try:
            await self._dial()
        except EdgeTrustError as exc:
            bound.error("edge certificate refused", error=str(exc))
            self.outcome.message = str(exc)
            return self.outcome
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            text = str(exc) or type(exc).__name__
            bound.warning("cannot connect to the edge", error=text)
            self.outcome.message = text
            return self.outcome
        if self._draining:  # shutdown began while dialling: register no more
            self.core.close()
            self.flush()
        watchdog = asyncio.create_task(self._watchdog())
        try:
            await self._serve(bound)
        finally:
            watchdog.cancel()
            await self._finish(bound)
        return self.outcome

    async def _dial(self) -> None:
        lv = self.liveness
        edge = self.edge
        ctx = self.trust.context()
        async with asyncio.timeout(lv.connect_timeout):
            reader, writer = await chunks.open_connection(
                edge.host,
                edge.port,
                ssl=ctx,
                server_hostname=edge.tls_name,
                ssl_handshake_timeout=lv.connect_timeout,
                limit=READ_SIZE,
            )
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            self.trust.check(ssl_object.getpeercert(binary_form=True) if ssl_object else None)
        except EdgeTrustError:
            writer.transport.abort()
            raise
        self._reader = reader
        self._writer = writer
        self._last_rx = self._loop.time()
        self.flush()  # the registration

    async def _serve(self, bound: structlog.typing.FilteringBoundLogger) -> None:
        reader, core = self._reader, self.core
        while not core.closed:
            try:
                data = await reader.read(READ_SIZE)
            except (ConnectionError, OSError, ssl.SSLError) as exc:
                data = b""
                self._abort_reason = self._abort_reason or (str(exc) or type(exc).__name__)
            if data:
                self._last_rx = self._loop.time()
                events = core.receive_data(data)
            else:
                events = core.connection_lost(
                    self._abort_reason or "the edge closed the connection"
                )
            for event in events:
                self._dispatch(event, bound)
            self.flush()

    def _dispatch(self, event: Event, bound: structlog.typing.FilteringBoundLogger) -> None:
        if isinstance(event, BodyChunk):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.feed(event.data)
            else:
                self.core.ack(event.stream_id, len(event.data))
        elif isinstance(event, RequestReceived):
            stream = TunnelStream(self, event)
            self.streams[event.stream_id] = stream
            self.tasks[event.stream_id] = asyncio.create_task(self._handle(stream))
        elif isinstance(event, StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.feed_end()
        elif isinstance(event, WindowOpened):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.window_opened()
        elif isinstance(event, StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.gone()
                task = self.tasks.get(event.stream_id)
                if task is not None and not stream.finished:
                    task.cancel()
        elif isinstance(event, PingAcked):
            rtt = self._loop.time() - event.sent_at
            self.metrics.ping_rtt.labels(str(self.index)).set(rtt)
        elif isinstance(event, RegistrationAccepted):
            self.connection_id = event.connection_id
            self.outcome.registered = True
            self._registered_at = self._loop.time()
            self.metrics.connection_up()
            self.registered.set()
            bound.info(
                "connection registered",
                tunnel=event.tunnel_id,
                connection=event.connection_id,
            )
        elif isinstance(event, RegistrationRefused):
            self.outcome.refused = event.reason
            self.outcome.message = event.message
            if event.reason.permanent:
                bound.error(
                    "the edge REFUSED this connector",
                    reason=event.reason.value,
                    message=event.message,
                )
            else:
                bound.warning("the edge cannot register us now", message=event.message)
        elif isinstance(event, GoAwayReceived):
            self.edge_goaway.set()
            bound.info("the edge is draining this connection", message=event.message)
        elif isinstance(event, ConnectionTerminated):
            self.outcome.message = self.outcome.message or event.reason
            bound.info("connection ended", reason=event.reason)

    async def _handle(self, stream: TunnelStream) -> None:
        self.metrics.active += 1
        try:
            await self.handler(stream)
            if not stream.finished and not stream.is_gone:
                stream.reset(ErrorCodes.INTERNAL_ERROR)  # a handler that forgot to answer
            elif not stream.is_gone and not stream.body_complete and not stream.request.protocol:
                # The origin answered before reading the whole request body (nginx's
                # ``return 204``, an early 413): read and discard the rest, as the origin
                # does, so the client's upload completes instead of being cut off.
                while await stream.read():
                    pass
        except (StreamGone, asyncio.CancelledError):
            if not stream.is_gone:
                stream.reset(ErrorCodes.CANCEL)
        except InvalidHeaders as exc:
            log.warning("response cannot be carried", stream=stream.stream_id, error=str(exc))
            stream.reset(ErrorCodes.INTERNAL_ERROR)
        except Exception:
            log.exception("request handler failed", stream=stream.stream_id)
            stream.reset(ErrorCodes.INTERNAL_ERROR)
        finally:
            self.metrics.active -= 1
            self.metrics.request_done(
                stream.status if stream.finished else 0, stream.bytes_in, stream.bytes_out
            )
            if not stream.is_gone and not stream.body_complete:
                stream.reset(ErrorCodes.NO_ERROR)  # cancelled while draining: stop the upload
            stream.release()
            self.streams.pop(stream.stream_id, None)
            self.tasks.pop(stream.stream_id, None)

    async def _watchdog(self) -> None:
        lv = self.liveness
        last_ping = 0.0
        started = self._loop.time()
        while True:
            await asyncio.sleep(lv.tick)
            now = self._loop.time()
            if self._registered_at is None:
                if now - started > lv.register_timeout:
                    self.abort(f"no answer to the registration within {lv.register_timeout:g} s")
                    return
                continue
            if now - self._last_rx >= lv.dead_after - lv.tick:  # so dead within dead_after
                self.abort(f"nothing from the edge for {lv.dead_after:g} s (PING unanswered)")
                return
            if now - last_ping >= lv.ping_interval:
                last_ping = now
                self.core.ping(now)
                self.flush()

    async def _finish(self, bound: structlog.typing.FilteringBoundLogger) -> None:
        for stream in list(self.streams.values()):
            stream.gone()
        tasks = [t for t in self.tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._registered_at is not None:
            self.outcome.healthy_for = self._loop.time() - self._registered_at
            self.metrics.connection_down()
            with contextlib.suppress(KeyError):
                self.metrics.ping_rtt.remove(str(self.index))
        writer = self._writer
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)
        if self._abort_reason:
            bound.warning("connection lost", reason=self._abort_reason)
