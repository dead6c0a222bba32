"""A small test edge for the connector's tests: ``EdgeSide`` in an asyncio TLS server.

A test double of the real edge listener (being written separately): it accepts TLS
connections with a trustme certificate, checks the registration's token against the one it was
given (or refuses with a chosen reason), and lets a test send requests over the registered
connections and read the responses with the core's ack-driven flow control. It can drop
connections, stop reading from one (to play a dead path) and refuse TCP connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field

import trustme

from zerogate.tunnel.protocol import (
    BodyChunk,
    ConnectionReady,
    ConnectionTerminated,
    EdgeSide,
    Event,
    GoAwayReceived,
    Header,
    RefusalReason,
    Registration,
    RegistrationReceived,
    ResponseStarted,
    StreamEnded,
    StreamReset,
    WindowOpened,
)
from zerogate.tunnel.token import TunnelToken, new_secret, new_tunnel_id


class NoConnection(Exception):
    """No registered connection may take a new stream."""


class StreamWasReset(Exception):
    pass


@dataclass
class EdgeStream:
    """The edge's view of one stream: the response and a byte pipe for WebSockets."""

    conn: EdgeConnection
    stream_id: int
    head: asyncio.Future[tuple[int, list[Header]]]
    chunks: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    window: asyncio.Event = field(default_factory=asyncio.Event)
    reset_code: int | None = None
    ended: bool = False
    _taken: int = 0

    async def response(self) -> tuple[int, list[Header]]:
        return await self.head

    async def read(self) -> bytes:
        """The next body chunk (b"" at the end); acknowledges the previous one."""
        if self._taken:
            self.conn.core.ack(self.stream_id, self._taken)
            self.conn.flush()
            self._taken = 0
        chunk = await self.chunks.get()
        if chunk is None:
            if self.reset_code is not None:
                raise StreamWasReset(self.reset_code)
            return b""
        self._taken = len(chunk)
        return chunk

    async def body(self) -> bytes:
        parts = []
        while chunk := await self.read():
            parts.append(chunk)
        return b"".join(parts)

    async def write(self, data: bytes, *, end: bool = False) -> None:
        core = self.conn.core
        view = memoryview(data)
        while view:
            room = core.send_capacity(self.stream_id)
            if room == 0:
                if self.reset_code is not None:
                    raise StreamWasReset(self.reset_code)
                self.window.clear()
                if core.send_capacity(self.stream_id) == 0:
                    await self.window.wait()
                continue
            piece, view = view[:room], view[room:]
            core.send_body(self.stream_id, piece, end_stream=end and not view)
            self.conn.flush()
        if end and not data:
            core.send_body(self.stream_id, b"", end_stream=True)
            self.conn.flush()
        await self.conn.writer.drain()


class EdgeConnection:
    def __init__(self, edge: TestEdge, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.edge = edge
        self.reader = reader
        self.writer = writer
        self.core = EdgeSide()
        self.registration: Registration | None = None
        self.ready = asyncio.Event()
        self.closed = asyncio.Event()
        self.goaway = asyncio.Event()
        self.paused = False
        self.streams: dict[int, EdgeStream] = {}

    def flush(self) -> None:
        data = self.core.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)
        if self.core.closed and not self.writer.is_closing():
            self.writer.close()

    async def run(self) -> None:
        try:
            while not self.core.closed:
                if self.paused:
                    await self.edge.stopping.wait()  # reads nothing more: a dead path
                try:
                    data = await self.reader.read(256 * 1024)
                except (ConnectionError, OSError, ssl.SSLError):
                    data = b""
                events = self.core.receive_data(data) if data else self.core.connection_lost()
                for event in events:
                    self._dispatch(event)
                self.flush()
        finally:
            for stream in self.streams.values():
                if stream.ended or stream.reset_code is not None:
                    continue
                if not stream.head.done():
                    stream.head.set_exception(StreamWasReset(-1))
                stream.reset_code = -1
                stream.chunks.put_nowait(None)
                stream.window.set()
            self.closed.set()
            self.writer.close()

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, RegistrationReceived):
            self.registration = event.registration
            self.edge.registrations.append(event.registration)
            if self.edge.refuse_with is not None:
                self.core.refuse(self.edge.refuse_with, "test edge refuses")
            elif event.registration.token != self.edge.token:
                self.core.refuse(RefusalReason.BAD_TOKEN, "unknown token")
            else:
                self.edge.conn_seq += 1
                self.core.accept(self.edge.tunnel.tunnel_id, f"c{self.edge.conn_seq}")
        elif isinstance(event, ConnectionReady):
            self.ready.set()
            self.edge.ready_changed()
        elif isinstance(event, ResponseStarted):
            stream = self.streams.get(event.stream_id)
            if stream is not None and not stream.head.done():
                stream.head.set_result((event.status, event.headers))
        elif isinstance(event, BodyChunk):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self.core.ack(event.stream_id, len(event.data))
            else:
                stream.chunks.put_nowait(event.data)
        elif isinstance(event, StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.ended = True
                stream.chunks.put_nowait(None)
        elif isinstance(event, StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.reset_code = event.error_code
                if not stream.head.done():
                    stream.head.set_exception(StreamWasReset(event.error_code))
                stream.chunks.put_nowait(None)
                stream.window.set()
        elif isinstance(event, WindowOpened):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.window.set()
        elif isinstance(event, GoAwayReceived):
            self.goaway.set()
        elif isinstance(event, ConnectionTerminated):
            pass

    def open(
        self,
        method: str,
        host: str,
        path: str,
        headers: list[Header],
        *,
        end_stream: bool,
        protocol: str | None = None,
    ) -> EdgeStream:
        sid = self.core.send_request(
            method, host, path, headers, protocol=protocol, end_stream=end_stream
        )
        stream = EdgeStream(self, sid, asyncio.get_running_loop().create_future())
        self.streams[sid] = stream
        self.flush()
        return stream


class TestEdge:
    """The test edge; ``token`` is the connector token that it accepts."""

    __test__ = False

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert("localhost", "127.0.0.1")
        der = ssl.PEM_cert_to_DER_cert(self.cert.cert_chain_pems[0].bytes().decode())
        self.fingerprint = hashlib.sha256(der).hexdigest()
        self.tunnel = TunnelToken(new_tunnel_id(), new_secret(), (), self.fingerprint)
        self.token = ""
        self.port = 0
        self.connections: list[EdgeConnection] = []
        self.registrations: list[Registration] = []
        self.dials: list[float] = []
        self.refuse_with: RefusalReason | None = None
        self.refuse_tcp = False
        self.conn_seq = 0
        self._next = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready_changed = asyncio.Event()
        self.stopping = asyncio.Event()

    async def start(self) -> None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(ctx)
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        self.tunnel = TunnelToken(
            self.tunnel.tunnel_id, self.tunnel.secret, (f"127.0.0.1:{self.port}",), self.fingerprint
        )
        self.token = self.tunnel.encode()

    async def stop_listening(self) -> None:
        """The edge is down: nothing accepts on its port (existing connections stay)."""
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def listen_again(self) -> None:
        """The edge is back on the same port."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(ctx)
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, ssl=ctx, reuse_address=True
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.stopping.set()
        for conn in self.connections:
            conn.writer.transport.abort()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def ready_changed(self) -> None:
        self._ready_changed.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.dials.append(asyncio.get_running_loop().time())
        if self.refuse_tcp:
            writer.transport.abort()
            return
        conn = EdgeConnection(self, reader, writer)
        self.connections.append(conn)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await conn.run()
        finally:
            self._tasks.discard(task)
            self.ready_changed()

    # -- for tests ------------------------------------------------------------------------------

    def live(self) -> list[EdgeConnection]:
        return [
            c
            for c in self.connections
            if c.core.can_open_stream and not c.closed.is_set() and not c.paused
        ]

    async def wait_connections(self, n: int, limit: float = 10) -> list[EdgeConnection]:
        async with asyncio.timeout(limit):
            while len(self.live()) < n:
                self._ready_changed.clear()
                if len(self.live()) >= n:
                    break
                await self._ready_changed.wait()
        return self.live()

    def pause(self, conn: EdgeConnection) -> None:
        """Stop reading from ``conn`` (and so answering its PINGs): a dead path."""
        conn.paused = True
        transport = conn.writer.transport
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()

    def drop_all(self) -> None:
        for conn in self.live():
            conn.writer.transport.abort()

    def open(
        self,
        method: str,
        host: str,
        path: str,
        headers: list[Header] | None = None,
        *,
        end_stream: bool = True,
        protocol: str | None = None,
    ) -> EdgeStream:
        live = self.live()
        if not live:
            raise NoConnection
        conn = live[self._next % len(live)]
        self._next += 1
        return conn.open(
            method, host, path, headers or [], end_stream=end_stream, protocol=protocol
        )

    async def request(
        self,
        method: str,
        host: str,
        path: str,
        headers: list[Header] | None = None,
        body: bytes | AsyncIterable[bytes] = b"",
    ) -> tuple[int, list[Header], bytes]:
        async with asyncio.timeout(60):
            stream = self.open(method, host, path, headers, end_stream=body == b"")
            if body != b"":
                await send_body(stream, body)
            status, response_headers = await stream.response()
            return status, response_headers, await stream.body()


async def send_body(stream: EdgeStream, body: bytes | AsyncIterable[bytes]) -> None:
    if isinstance(body, bytes):
        await stream.write(body, end=True)
        return
    async for chunk in body:
        await stream.write(chunk)
    await stream.write(b"", end=True)


def header(headers: list[Header], name: bytes) -> bytes | None:
    return next((v for k, v in headers if k == name), None)


@contextlib.asynccontextmanager
async def running_edge() -> AsyncIterator[TestEdge]:
    edge = TestEdge()
    await edge.start()
    try:
        yield edge
    finally:
        await edge.stop()
