"""One tunnel stream as a request handler sees it: read the request body, write the response.

A :class:`TunnelStream` wraps one stream of a :class:`~zerogate.tunnel.protocol.ConnectorSide`
owned by an :class:`~zerogate.connector.connection.EdgeConnection`. It turns the core's events
into awaitables and keeps the core's flow control honest:

- ``read()`` returns the next request body chunk (``b""`` at the end) and acknowledges the
  chunk the previous call returned — asking for more means the last one was consumed — so the
  edge can never have more than one HTTP/2 window of this stream in the connector's memory;
- ``write()`` hands the core no more than ``send_capacity`` allows, waits for
  :class:`~zerogate.tunnel.protocol.WindowOpened` when the edge's window is full, and then
  waits for the TLS transport to drain: a slow edge slows the origin down instead of growing a
  buffer.

Both raise :class:`StreamGone` once the edge reset the stream or the connection ended.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from zerogate.tunnel.protocol import ErrorCodes, Header, RequestReceived

if TYPE_CHECKING:
    from zerogate.connector.connection import EdgeConnection

__all__ = ["StreamGone", "TunnelStream"]


class StreamGone(Exception):
    """The edge reset the stream (the client left) or the connection to the edge ended."""


class TunnelStream:
    """One proxied request; see the module docstring."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_ended",
        "_gone",
        "_readable",
        "_taken",
        "_window",
        "bytes_in",
        "bytes_out",
        "finished",
        "request",
        "status",
        "stream_id",
    )

    def __init__(self, conn: EdgeConnection, request: RequestReceived) -> None:
        self._conn = conn
        self.request = request
        self.stream_id = request.stream_id
        self._chunks: deque[bytes] = deque()
        self._taken = 0  # returned by read(), not yet acknowledged
        self._ended = False
        self._gone = False
        # one future per wait, created only when a wait happens (most small requests never
        # wait for a body chunk or a window): cheaper than two asyncio.Event per stream
        self._readable: asyncio.Future[None] | None = None
        self._window: asyncio.Future[None] | None = None
        self.status = 0  # the status sent, 0 before the response head
        self.finished = False  # the response was ended (END_STREAM queued)
        self.bytes_in = 0
        self.bytes_out = 0

    # -- what the connection feeds in -----------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._wake_reader()

    def feed_end(self) -> None:
        self._ended = True
        self._wake_reader()

    def window_opened(self) -> None:
        waiter = self._window
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def gone(self) -> None:
        """The stream was reset or the connection ended; wake every waiter."""
        self._gone = True
        self._chunks.clear()
        self._wake_reader()
        self.window_opened()

    def _wake_reader(self) -> None:
        waiter = self._readable
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- request side ---------------------------------------------------------------------------

    @property
    def is_gone(self) -> bool:
        return self._gone

    @property
    def body_complete(self) -> bool:
        """The whole request body has arrived (``read`` will not wait any more)."""
        return self._ended

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.request.headers:
            if key == name:
                return value
        return None

    async def read(self) -> bytes:
        """The next request body chunk, ``b""`` at the end; acknowledges the previous one."""
        self._ack_taken()
        while not self._chunks:
            if self._gone:
                raise StreamGone
            if self._ended:
                return b""
            waiter = self._readable = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._readable = None
        chunk = self._chunks.popleft()
        self._taken = len(chunk)
        self.bytes_in += len(chunk)
        return chunk

    def _ack_taken(self) -> None:
        if self._taken:
            taken, self._taken = self._taken, 0
            self._conn.ack(self.stream_id, taken)

    def release(self) -> None:
        """Acknowledge everything received and not consumed (the handler is done)."""
        size = self._taken + sum(len(c) for c in self._chunks)
        self._taken = 0
        self._chunks.clear()
        if size:
            self._conn.ack(self.stream_id, size)

    # -- response side --------------------------------------------------------------------------

    def respond(self, status: int, headers: Iterable[Header] = (), *, end: bool = False) -> None:
        """Send the response head (raises ``InvalidHeaders`` for headers HTTP/2 cannot carry)."""
        if self._gone:
            raise StreamGone
        self._conn.core.send_response(self.stream_id, status, headers, end_stream=end)
        self.status = status
        self.finished = end
        self._conn.flush()

    async def write(self, data: bytes, *, end: bool = False) -> None:
        """Send body bytes as the edge's windows allow, then wait for the transport to drain."""
        core = self._conn.core
        view = memoryview(data)
        while view:
            room = core.send_capacity(self.stream_id)
            if room == 0:
                if self._gone:
                    raise StreamGone
                waiter = self._window = asyncio.get_running_loop().create_future()
                try:
                    await waiter
                finally:
                    self._window = None
                continue
            piece, view = view[:room], view[room:]
            core.send_body(self.stream_id, piece, end_stream=end and not view)
            self.bytes_out += len(piece)
            self._conn.flush()
        if self._gone:
            raise StreamGone
        if end:
            if not data:
                core.send_body(self.stream_id, b"", end_stream=True)
                self._conn.flush()
            self.finished = True
        await self._conn.drain()

    def end(self) -> None:
        """End the response body (END_STREAM)."""
        if not self._gone and not self.finished:
            self._conn.core.send_body(self.stream_id, b"", end_stream=True)
            self.finished = True
            self._conn.flush()

    def reset(self, error_code: int = ErrorCodes.CANCEL) -> None:
        """Abort the stream both ways (RST_STREAM)."""
        if not self._gone:
            self._conn.core.reset(self.stream_id, error_code)
            self.gone()
            self._conn.flush()
