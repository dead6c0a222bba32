"""Pooled keep-alive HTTP/1.1 connections to plain-HTTP origins (TCP or a Unix socket).

This is the edge's upstream client for ``http://`` and ``unix:`` origins, the part of a Python
proxy where the time goes. Requests are written as HTTP/1.1 bytes directly; responses are
parsed by ``httptools`` (llhttp, strict mode) on an :class:`asyncio.Protocol`. HTTPS origins
and WebSockets stay with aiohttp (see :mod:`zerogate.edge.proxy`).

Per origin (host and port, or socket path) the pool keeps idle connections, reused last in,
first out, at most ``max_idle`` of them, each for at most ``idle_timeout`` seconds (less when
the origin announces ``Keep-Alive: timeout=N``). At most ``limit`` exchanges run per origin at
once; more wait for a free slot within the connect timeout.

A connection goes back to the pool only when its response was read to the end, the request
was written to the end, the origin did not ask to close (``Connection: close``, HTTP/1.0
without keep-alive, a body delimited by closing) and no byte followed the response. Anything
the origin sends that breaks HTTP/1.1 framing closes the connection for good and fails the
exchange (the caller answers 502 when nothing was sent to its client yet):

- a status line that is not ``HTTP/1.0`` or ``HTTP/1.1``; ``101`` on a request that asked for
  no upgrade; a head larger than :data:`MAX_HEAD`;
- what llhttp refuses in strict mode: both ``Content-Length`` and ``Transfer-Encoding``, two
  ``Content-Length`` headers, a bad chunk size, a bare CR or LF, obs-fold, invalid characters;
- bytes after the end of a response (response splitting), or bytes while no request is out.

Interim ``1xx`` responses are skipped. HEAD responses, ``204`` and ``304`` have no body,
whatever their ``Content-Length`` says (httptools cannot be told a request was HEAD, so
heads are cut out of the byte stream here and fed to the parser on their own).

Bodies stream both ways with bounded memory: the origin's transport stops being read while
more than :data:`BUFFER_HIGH` bytes wait for the caller; an upload waits for the transport
to drain (``pause_writing``/``resume_writing``). A request body given as bytes goes out with a
``Content-Length``; one given as an async iterable goes out with the caller's
``Content-Length`` (exactly that many bytes, else the connection is dropped) or chunked.

A pooled connection the origin closed while it was idle is dropped when the close is seen
(before use where the event loop has seen it); one that fails before any response byte is
retried once on a fresh connection when the request is safe (GET, HEAD, OPTIONS) and has no
body. Connect and read timeouts raise :class:`UpstreamTimeoutError` (a ``TimeoutError``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import AsyncIterable
from typing import Any, Final, NamedTuple, cast

import httptools

__all__ = [
    "BUFFER_HIGH",
    "MAX_HEAD",
    "OriginAddress",
    "RequestBodyError",
    "UpstreamClosedError",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeoutError",
]

_log = logging.getLogger(__name__)

MAX_HEAD: Final = 256 * 1024
"""Largest response head (status line and header fields) accepted from an origin."""

BUFFER_HIGH: Final = 64 * 1024
"""Response bytes held for a slow caller before the origin's transport stops being read."""

Body = bytes | AsyncIterable[bytes]

_SAFE_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS"})
# Methods whose request has a meaning for content: an empty one still says Content-Length: 0.
_CONTENT_METHODS: Final = frozenset({b"POST", b"PUT", b"PATCH"})
# Request headers the pool writes itself (framing) or never sends (this connection's business).
_OWN_HEADERS: Final = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"upgrade",
        b"te",
        b"trailer",
    }
)
_TCHAR = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_TOKEN = re.compile(_TCHAR + rb"+")
_FIELD_LINES = re.compile(rb"(?:" + _TCHAR + rb"+: [^\x00\r\n]*\r\n)*")
_UNSAFE_TARGET = re.compile(rb"[\x00-\x20\x7f#]")
_KEEP_ALIVE_TIMEOUT = re.compile(rb"(?i)(?:^|[,;\s])timeout\s*=\s*(\d{1,6})")
_HTTP1: Final = b"HTTP/1."


class _Unset:
    """The type of :data:`_UNSET`: an argument not given (``None`` means no limit)."""


_UNSET: Final = _Unset()

_IDLE: Final = 0  # no exchange: bytes from the origin now are a violation
_HEAD: Final = 1  # waiting for (more of) the response head
_BODY: Final = 2  # the head was delivered; body bytes go to the response


# ---------------------------------------------------------------------------- errors


class UpstreamError(Exception):
    """An exchange with an origin failed; the connection was closed."""


class UpstreamConnectError(UpstreamError):
    """The origin could not be reached (refused, unreachable, name not found)."""


class UpstreamTimeoutError(UpstreamError, TimeoutError):
    """Connecting, or waiting for the origin's next bytes, took longer than allowed."""


class UpstreamProtocolError(UpstreamError):
    """The origin's bytes are not acceptable HTTP/1.1 (malformed, ambiguous or extra)."""


class UpstreamClosedError(UpstreamError):
    """The origin closed the connection before the response was complete.

    ``retryable``: the connection had served earlier requests and not one byte of this
    response arrived: most likely a keep-alive connection the origin had just closed.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class RequestBodyError(UpstreamError):
    """Reading the request body to upload failed; the cause is chained (``__cause__``)."""


class _Violation(Exception):
    """Raised inside a parser callback to stop parsing; becomes UpstreamProtocolError."""


# ---------------------------------------------------------------------------- addresses


class OriginAddress(NamedTuple):
    """Where an origin listens: ``host`` and ``port``, or ``unix_path`` (then host is "").

    ``host_header``: the ``Host`` value sent when the caller's headers have none.
    """

    host: str
    port: int
    unix_path: str | None
    host_header: bytes

    @classmethod
    def tcp(cls, host: str, port: int) -> OriginAddress:
        """``host``: a name (IDNA-encoded, as ``yarl.URL.raw_host`` gives it) or an address."""
        name = f"[{host}]" if ":" in host else host
        authority = name if port == 80 else f"{name}:{port}"
        return cls(host, port, None, authority.encode("ascii", "replace"))

    @classmethod
    def unix(cls, path: str) -> OriginAddress:
        return cls("", 0, path, b"localhost")

    def __str__(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        return f"http://{self.host_header.decode('ascii')}"


# ---------------------------------------------------------------------------- request head


def _field_block(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, bool, bytes | None]:
    """The header section to send (framing and connection headers left out).

    Returns the lines, whether a ``Host`` was among them, and the caller's ``Content-Length``
    (``None`` when absent). Lines that could change the message's framing (CR, LF or NUL in a
    value, a name that is not a token) are dropped, so no caller can smuggle a second request.
    """
    parts: list[bytes] = []
    has_host = False
    length: bytes | None = None
    for name, value in headers:
        key = name.lower()
        if key in _OWN_HEADERS:
            if key == b"content-length":
                length = value.strip() if length is None or length == value.strip() else b"x"
            continue
        if key == b"host":
            has_host = True
        parts += (name, b": ", value, b"\r\n")
    block = b"".join(parts)
    # One scan for the common case: every line is "token: value" and no value or name
    # added a line of its own (each header contributes exactly one LF).
    if _FIELD_LINES.fullmatch(block) is None or block.count(b"\n") != len(parts) // 4:
        block = b"".join(
            line for n in range(0, len(parts), 4) if _valid_line(line := b"".join(parts[n : n + 4]))
        )
    return block, has_host, length


def _valid_line(line: bytes) -> bool:
    name, sep, rest = line.partition(b": ")
    value = rest[:-2]
    ok = (
        bool(sep)
        and _TOKEN.fullmatch(name) is not None
        and b"\r" not in value
        and b"\n" not in value
        and b"\x00" not in value
    )
    if not ok:
        _log.warning("dropped request header %r: not a valid HTTP/1.1 field", name[:64])
    return ok


def request_head(
    method: str,
    target: str | bytes,
    headers: list[tuple[bytes, bytes]],
    body: Body,
    *,
    host_header: bytes,
) -> tuple[bytes, int | None]:
    """The request line and header section to write, and the body length to enforce.

    The length is ``None`` when a streamed body goes out chunked. Raises ``ValueError`` for a
    method that is not a token or a target with spaces, control characters or ``#``.
    """
    return finish_head(method, target, field_block(headers), body, host_header=host_header)


#: what :func:`field_block` returns: the lines, whether a ``Host`` was among them, and the
#: caller's ``Content-Length`` (``None`` when absent)
FieldBlock = tuple[bytes, bool, bytes | None]


def field_block(headers: list[tuple[bytes, bytes]]) -> FieldBlock:
    """The header section of :func:`request_head` alone: a pure function of ``headers``, so a
    caller sending the same headers again may keep it and call :func:`finish_head`."""
    return _field_block(headers)


def finish_head(
    method: str,
    target: str | bytes,
    fields: FieldBlock,
    body: Body,
    *,
    host_header: bytes,
) -> tuple[bytes, int | None]:
    """:func:`request_head` from a :func:`field_block` already made."""
    verb = method.encode("ascii", "replace")
    if _TOKEN.fullmatch(verb) is None:
        raise ValueError(f"invalid request method {method!r}")
    path = target.encode("ascii", "replace") if isinstance(target, str) else target
    if not path or _UNSAFE_TARGET.search(path) is not None:
        raise ValueError(f"invalid request target {target!r}")
    block, has_host, given = fields
    host = b"" if has_host else b"host: " + host_header + b"\r\n"
    length: int | None
    if isinstance(body, bytes):
        length = len(body)
        if length or given is not None or verb in _CONTENT_METHODS:
            framing = b"content-length: %d\r\n\r\n" % length
        else:
            framing = b"\r\n"
    elif given is not None and given.isdigit() and len(given) <= 18:
        length = int(given)
        framing = b"content-length: %d\r\n\r\n" % length
    else:
        length = None
        framing = b"transfer-encoding: chunked\r\n\r\n"
    return b"".join((verb, b" ", path, b" HTTP/1.1\r\n", block, host, framing)), length


# ---------------------------------------------------------------------------- response


class UpstreamResponse:
    """An origin's response: status and headers as received, the body read with :meth:`read`.

    ``headers`` is the origin's list of ``(name, value)`` bytes, hop-by-hop ones included
    (the caller filters them). Call :meth:`close` when done: a response not read to the end
    closes its connection.
    """

    __slots__ = ("_chunks", "_conn", "_done", "_error", "_size", "_waiter", "headers", "status")

    def __init__(self, conn: _Connection, status: int, headers: list[tuple[bytes, bytes]]):
        self.status = status
        self.headers = headers
        self._conn: _Connection | None = conn
        self._chunks: list[bytes] = []
        self._size = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def complete(self) -> bool:
        """Every body byte has arrived (some may still wait to be read)."""
        return self._done

    @property
    def at_eof(self) -> bool:
        """Every body byte has arrived and been read."""
        return self._done and not self._chunks

    async def read(self) -> bytes:
        """The body bytes that arrived since the last call (waiting for some); ``b""`` at the end.

        Raises :class:`UpstreamError` when the origin breaks off, misbehaves, or sends nothing
        for the read timeout; the bytes before that are returned first.
        """
        if self._chunks:
            return self._take()
        if self._done:
            return b""
        if self._error is None:
            conn = self._conn
            assert conn is not None
            waiter = self._waiter = conn.loop.create_future()
            waits = conn.waits
            waits.begin(waiter, conn, conn.read_timeout)
            try:
                await waiter
            finally:
                self._waiter = None
                waits.end(waiter)
            if self._chunks:
                return self._take()
            if self._done:
                return b""
        assert self._error is not None
        raise self._error

    def close(self) -> None:
        """Done with the response: an unfinished one closes its connection."""
        conn, self._conn = self._conn, None
        if conn is not None and not self._done:
            conn.abort()
        self._chunks.clear()

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        conn = self._conn
        if conn is not None and conn.read_paused:
            conn.resume_reading()
        return data

    def _push(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size > BUFFER_HIGH:
            conn = self._conn
            if conn is not None and not conn.read_paused:
                conn.pause_reading()
        self._wake()

    def _finish(self) -> None:
        self._done = True
        self._conn = None
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self._done and self._error is None:
            self._error = exc
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


# ---------------------------------------------------------------------------- connection


class _Connection(asyncio.Protocol):
    """One connection to an origin: the transport, the response parser, the exchange state."""

    def __init__(self, pool: _OriginPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.waits = pool.owner.waits
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.exchanges = 0
        self.idle_since = 0.0
        self.idle_limit = pool.owner.idle_timeout
        # the current exchange
        self.response_timeout: float | None = pool.owner.read_timeout
        self.read_timeout: float | None = pool.owner.read_timeout
        self.state = _IDLE
        self.busy = False  # holds one of the origin's slots
        self.parser: httptools.HttpResponseParser | None = None
        self.head_only = False
        self.pending: bytearray | None = None  # an incomplete response head
        self.pending_fed = 0  # how much of it the parser has seen
        self.got_bytes = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.collecting = True  # header callbacks belong to the head (not to trailers)
        self.interim = False
        self.keep_alive = False
        self.message_done = False
        self.extra = False
        self.response: UpstreamResponse | None = None
        self.head_waiter: asyncio.Future[UpstreamResponse] | None = None
        self.request_sent = False
        self.writer: asyncio.Task[None] | None = None
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.read_paused = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport; not always an asyncio.Transport subclass (uvloop's is its own)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == _BODY:
            self._feed_body(data)
        elif state == _HEAD:
            self.got_bytes = True
            self._feed_head(data)
        else:
            _log.info("origin %s sent %d bytes while no request was out", self.pool, len(data))
            self._close()

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.state == _IDLE:
            return
        if self.state == _BODY and self.response is not None and self._ends_at_close():
            self.keep_alive = False
            self._complete()
            return
        if self.state == _HEAD and not self.got_bytes:
            message = "the origin closed the connection before responding"
            retryable = self.exchanges > 1
        else:
            message = "the origin closed the connection before the response was complete"
            retryable = False
        if exc is not None:
            message += f" ({type(exc).__name__}: {exc})"
        self.fail(UpstreamClosedError(message, retryable=retryable))

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        if self.message_done:
            self.extra = True
            raise _Violation("bytes after the end of the response")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.collecting:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                raise _Violation("101 Switching Protocols to a request that asked for none")
            self.interim = True
            return
        self.collecting = False
        self.keep_alive = parser.should_keep_alive()
        self.response = UpstreamResponse(self, status, self.headers)

    def on_body(self, body: bytes) -> None:
        response = self.response
        if response is not None:
            response._push(body)

    def on_message_complete(self) -> None:
        if self.interim:  # 1xx: the real response follows
            self.interim = False
            self.headers = []
            return
        self.message_done = True

    # -- the exchange

    async def exchange(
        self,
        head: bytes,
        body: Body,
        length: int | None,
        head_only: bool,
        timeouts: tuple[float | None, float | None] | None = None,
    ) -> UpstreamResponse:
        """Write the request, return the response once its head has arrived.

        ``timeouts``: ``(response head, idle)`` for this exchange (default: the pool's).
        """
        transport = self.transport
        assert transport is not None and self.state == _IDLE
        if self.closed or transport.is_closing():
            self.pool.done_unused(self)
            raise UpstreamClosedError(
                "the origin closed the connection before the request", retryable=self.exchanges > 0
            )
        self.exchanges += 1
        if timeouts is None:
            self.response_timeout = self.read_timeout = self.pool.owner.read_timeout
        else:
            self.response_timeout, self.read_timeout = timeouts
        self.busy = True
        self.state = _HEAD
        self.parser = httptools.HttpResponseParser(self)
        self.head_only = head_only
        self.pending = None
        self.got_bytes = False
        self.headers = []
        self.collecting = True
        self.interim = self.keep_alive = self.message_done = self.extra = False
        self.response = None
        waiter: asyncio.Future[UpstreamResponse] = self.loop.create_future()
        self.head_waiter = waiter
        if isinstance(body, bytes):
            transport.write(head + body if body else head)
            self.request_sent = True
            self.waits.begin(waiter, self, self.response_timeout)
        else:
            self.request_sent = False
            transport.write(head)
            writer = self.writer = self.loop.create_task(self._write_body(body, length))
            writer.add_done_callback(self._writer_done)
        try:
            return await waiter
        except asyncio.CancelledError:
            # The caller gave up. The connection may already serve another exchange (this one
            # completed just before): touch it only through what is still ours.
            if waiter.cancelled():
                if self.head_waiter is waiter:
                    self.abort()
            elif waiter.exception() is None:
                waiter.result().close()
            raise

    def _resolve_head(
        self, response: UpstreamResponse | None, exc: BaseException | None = None
    ) -> None:
        """Hand the response (or the failure) to the caller waiting for the head."""
        waiter, self.head_waiter = self.head_waiter, None
        if waiter is None:
            return
        self.waits.end(waiter)
        if not waiter.done():
            if exc is not None:
                waiter.set_exception(exc)
            elif response is not None:
                waiter.set_result(response)

    async def _write_body(self, body: AsyncIterable[bytes], length: int | None) -> None:
        transport = self.transport
        assert transport is not None
        sent = 0
        try:
            async for chunk in body:
                if not chunk:
                    continue
                if self.closed:
                    return
                if length is None:
                    transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                else:
                    sent += len(chunk)
                    if sent > length:
                        raise RequestBodyError("the request body is longer than its Content-Length")
                    transport.write(chunk)
                if self.write_paused:
                    await self._drain()
        except (UpstreamError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise RequestBodyError(f"reading the request body failed: {exc!r}") from exc
        if self.closed:
            return
        if length is None:
            transport.write(b"0\r\n\r\n")
        elif sent != length:
            raise RequestBodyError("the request body is shorter than its Content-Length")
        self.request_sent = True
        if self.head_waiter is not None:  # from now on the origin owes us a response
            self.waits.begin(self.head_waiter, self, self.response_timeout)

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        if self.writer is task:
            self.writer = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.fail(exc)

    async def _drain(self) -> None:
        waiter = self.drain_waiter = self.loop.create_future()
        self.waits.begin(waiter, self, self.read_timeout)
        try:
            await waiter
        finally:
            if self.drain_waiter is waiter:
                self.drain_waiter = None
            self.waits.end(waiter)

    def _feed_head(self, chunk: bytes) -> None:
        """Cut response heads out of the byte stream; feed each to the parser on its own.

        llhttp (strict) cannot finish a head before its blank line, so the bytes of an
        incomplete head are fed as they come (a malformed one fails at once) and the head ends
        exactly where the first CRLFCRLF is. What follows the final head is body, or — after a
        HEAD request, 204 or 304 — a violation.
        """
        data: bytes | bytearray = chunk
        start = fed = 0
        pending = self.pending
        if pending is not None:  # a head in several pieces: append, search only the new part
            self.pending = None
            fed = self.pending_fed
            start = max(len(pending) - 3, 0)
            pending += chunk
            data = pending
        parser = self.parser
        assert parser is not None
        while True:
            end = data.find(b"\r\n\r\n", start)
            if end < 0 or end > MAX_HEAD:
                if len(data) > MAX_HEAD:
                    self._violation(f"a response head over {MAX_HEAD} bytes")
                elif data[:7] != _HTTP1[: len(data)]:
                    self._violation("a status line that is not HTTP/1.x")
                elif data:
                    if len(data) >= len(_HTTP1):  # the parser checks the rest as it comes
                        if self._feed(parser, data[fed:]):
                            return
                        fed = len(data)
                    self.pending = data if isinstance(data, bytearray) else bytearray(data)
                    self.pending_fed = fed
                return
            end += 4
            if not data.startswith(_HTTP1):
                self._violation("a status line that is not HTTP/1.x")
                return
            if self._feed(parser, data[fed:end]):
                return
            data = data[end:]
            start = fed = 0
            if self.response is not None:
                break
            # an interim (1xx) response: the real one follows
        response = self.response
        if self.head_only or self.message_done:
            if data:
                self._violation("bytes after the end of a response without a body")
                return
            self.message_done = True
        else:
            self.state = _BODY
            if data and self._feed(parser, data):
                return
        if self.message_done:
            self._complete()
        self._resolve_head(response)

    def _feed(self, parser: httptools.HttpResponseParser, data: bytes | bytearray) -> bool:
        """Feed ``data``; ``True`` when the parser refused it (the exchange has failed)."""
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parser_error(exc)
            return True
        return False

    def _feed_body(self, data: bytes) -> None:
        parser = self.parser
        assert parser is not None
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parser_error(exc)
            return
        if self.message_done:
            self._complete()

    def _parser_error(self, exc: Exception) -> None:
        if isinstance(exc, httptools.HttpParserUpgrade):
            what = "an upgrade the request did not ask for"
        elif self.extra or self.message_done:
            what = "bytes after the end of the response"
        elif isinstance(exc.__context__, _Violation):
            what = str(exc.__context__)
        else:
            what = f"a malformed response ({exc})"
        self._violation(what)

    def _violation(self, what: str) -> None:
        _log.warning("origin %s: %s; connection closed", self.pool, what)
        self.fail(UpstreamProtocolError(f"the origin sent {what}"))

    def _ends_at_close(self) -> bool:
        """Whether the response's body is delimited by the connection closing."""
        if self.head_only or self.message_done:
            return False
        chunked = False
        for name, value in self.headers:
            key = name.lower()
            if key == b"content-length":
                return False
            if key == b"transfer-encoding":
                chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        return not chunked

    def _complete(self) -> None:
        """The response arrived in full: finish it, and pool or close the connection."""
        response = self.response
        self.state = _IDLE
        self.parser = None
        self.response = None
        if response is not None:
            response._finish()
        if self.read_paused:
            self.resume_reading()
        if self.writer is not None:  # the origin answered before the upload ended
            self.writer.cancel()
            self.writer = None
            self.request_sent = False
        if self.busy:
            self.busy = False
            reusable = self.keep_alive and self.request_sent and not self.closed and not self.extra
            if reusable and self.exchanges == 1:  # an origin's keep-alive policy is fixed
                self._keep_alive_limit(response)
            self.pool.done(self, reusable)

    def _keep_alive_limit(self, response: UpstreamResponse | None) -> None:
        if response is None:
            return
        for name, value in response.headers:
            if len(name) == 10 and name.lower() == b"keep-alive":
                match = _KEEP_ALIVE_TIMEOUT.search(value)
                if match is not None:
                    announced = int(match.group(1))
                    # leave a margin: the origin's clock started when it sent the response
                    self.idle_limit = min(self.pool.owner.idle_timeout, max(announced - 1, 0))

    def fail(self, exc: BaseException) -> None:
        """The exchange failed: close the connection, hand ``exc`` to whoever waits."""
        self._close()
        self.state = _IDLE
        if self.head_waiter is not None:
            self._resolve_head(None, exc)
        elif self.response is not None:
            self.response._fail(exc)
        self.response = None
        self.parser = None
        drain = self.drain_waiter
        if drain is not None and not drain.done():
            drain.set_exception(exc)
        if self.writer is not None and not self.writer.done():
            self.writer.cancel()
        self.writer = None
        if self.busy:
            self.busy = False
            self.pool.done(self, False)

    def abort(self) -> None:
        """Stop the exchange (its caller went away): the connection is closed."""
        if self.busy or self.state != _IDLE:
            self.fail(UpstreamClosedError("the exchange was abandoned"))
        else:
            self._close()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.read_paused = True

    def resume_reading(self) -> None:
        self.read_paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self.pool.forget(self)


# ---------------------------------------------------------------------------- read timeout


class _Waits:
    """Every wait for an origin's bytes, and one sweep that fails those over their timeout.

    A wait (for a response head, for more body, for an upload to drain) is keyed by its future
    and carries its own timeout (the exchange's response or idle timeout). One timer, running
    only while something waits, ticks every ``min(1 s, shortest timeout / 4)``; a wait fails
    between its timeout and its timeout + a tick. This costs a dict insert per wait where a
    timer per wait (asyncio's heap of Python ``TimerHandle`` objects) cost a sixth of a small
    request's CPU.
    """

    def __init__(self) -> None:
        self.tick = 1.0
        self.waiting: dict[asyncio.Future[Any], tuple[float, float, _Connection]] = {}
        self.sweeper: asyncio.TimerHandle | None = None

    def begin(self, waiter: asyncio.Future[Any], conn: _Connection, timeout: float | None) -> None:
        if timeout is None:
            return
        loop = conn.loop
        self.waiting[waiter] = (loop.time() + timeout, timeout, conn)
        tick = max(0.01, min(1.0, timeout / 4))
        if self.sweeper is None:
            self.tick = tick
            self.sweeper = loop.call_later(tick, self._sweep, loop)
        elif tick < self.tick:
            self.tick = tick
            self.sweeper.cancel()
            self.sweeper = loop.call_later(tick, self._sweep, loop)

    def end(self, waiter: asyncio.Future[Any]) -> None:
        self.waiting.pop(waiter, None)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self.sweeper = None
        now = loop.time()
        expired = [(w, t, c) for w, (due, t, c) in self.waiting.items() if due <= now]
        for waiter, timeout, conn in expired:
            del self.waiting[waiter]
            if not waiter.done():
                conn.fail(UpstreamTimeoutError(f"no bytes from the origin in {timeout:g} s"))
        if self.waiting:
            self.tick = max(0.01, min(1.0, min(t for _, t, _ in self.waiting.values()) / 4))
            self.sweeper = loop.call_later(self.tick, self._sweep, loop)

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        self.waiting.clear()


# ---------------------------------------------------------------------------- per origin


class _OriginPool:
    """The connections of one origin: idle ones (a LIFO stack), all open ones, the slots."""

    def __init__(self, owner: UpstreamPool, address: OriginAddress) -> None:
        self.owner = owner
        self.address = address
        self.loop = owner.loop
        self.idle: list[_Connection] = []
        self.open: set[_Connection] = set()
        self.busy = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.sweeper: asyncio.TimerHandle | None = None

    def __str__(self) -> str:
        return str(self.address)

    def try_slot(self) -> bool:
        limit = self.owner.limit
        if limit and self.busy >= limit:
            return False
        self.busy += 1
        return True

    async def wait_slot(self) -> None:
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release_slot()  # handed a slot just as we gave up: pass it on
            raise

    def done_unused(self, conn: _Connection) -> None:
        """``conn`` was handed out with a slot but never carried a request."""
        conn._close()
        self.release_slot()

    def release_slot(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to the waiter as it is
                return
        self.busy -= 1

    def pop_idle(self) -> _Connection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if conn.closed or transport is None or transport.is_closing():
                conn._close()
                continue
            if self.loop.time() - conn.idle_since >= conn.idle_limit:
                conn._close()
                continue
            return conn
        return None

    def done(self, conn: _Connection, reusable: bool) -> None:
        """``conn``'s exchange ended: free its slot; keep it for the next request or close it."""
        self.release_slot()
        if not reusable or self.owner.closed or conn.idle_limit <= 0:
            conn._close()
            return
        idle = self.idle
        if len(idle) >= self.owner.max_idle:
            idle.pop(0)._close()
        conn.idle_since = self.loop.time()
        idle.append(conn)
        if self.sweeper is None:
            self.sweeper = self.loop.call_later(self.owner.idle_timeout, self._sweep)

    def forget(self, conn: _Connection) -> None:
        self.open.discard(conn)
        if conn.state == _IDLE and not conn.busy:
            with contextlib.suppress(ValueError):
                self.idle.remove(conn)

    def _sweep(self) -> None:
        self.sweeper = None
        now = self.loop.time()
        for conn in [c for c in self.idle if now - c.idle_since >= c.idle_limit]:
            conn._close()
        if self.idle:
            self.sweeper = self.loop.call_later(self.owner.idle_timeout / 2, self._sweep)

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        for conn in list(self.open):
            if conn.busy:
                conn.fail(UpstreamClosedError("the upstream pool was closed"))
            else:
                conn._close()
        self.idle.clear()
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(UpstreamClosedError("the upstream pool was closed"))
        self.waiters.clear()


# ---------------------------------------------------------------------------- the pool


class UpstreamPool:
    """Keep-alive HTTP/1.1 connections to plain-HTTP origins, for one event loop.

    ``connect_timeout`` bounds waiting for a slot plus connecting; ``read_timeout`` (``None``:
    no limit) bounds each wait for the origin's bytes — the response head once the request is
    written, then every body read — and each wait for an upload to drain. ``limit``: exchanges
    at once per origin (``0``: no limit). ``max_idle`` / ``idle_timeout``: idle connections
    kept per origin, and for how long.
    """

    def __init__(
        self,
        *,
        connect_timeout: float | None = 10,
        read_timeout: float | None = 300,
        limit: int = 1000,
        max_idle: int = 256,
        idle_timeout: float = 4,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.limit = limit
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.closed = False
        self.waits = _Waits()
        self._origins: dict[OriginAddress, _OriginPool] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def stats(self, address: OriginAddress) -> tuple[int, int, int]:
        """``(open, idle, busy)`` connection counts for ``address`` (for tests and metrics)."""
        pool = self._origins.get(address)
        if pool is None:
            return (0, 0, 0)
        return (len(pool.open), len(pool.idle), pool.busy)

    async def close(self) -> None:
        """Close every connection; requests fail afterwards."""
        self.closed = True
        origins, self._origins = list(self._origins.values()), {}
        for pool in origins:
            pool.close()
        self.waits.close()

    async def request(
        self,
        address: OriginAddress,
        method: str,
        target: str | bytes,
        headers: list[tuple[bytes, bytes]],
        body: Body = b"",
        *,
        connect_timeout: float | _Unset | None = _UNSET,
        response_timeout: float | _Unset | None = _UNSET,
        read_timeout: float | _Unset | None = _UNSET,
    ) -> UpstreamResponse:
        """Send one request to ``address``; return the response once its head has arrived.

        ``connect_timeout`` / ``response_timeout`` (the response head once the request was
        written) / ``read_timeout`` (each later wait: body reads, upload drains): this
        exchange's, instead of the pool's (``None``: no limit). One that expires raises
        :class:`UpstreamTimeoutError` and closes the connection.

        ``target``: the request target exactly as it goes on the request line. ``headers``:
        the fields to send; framing and connection headers among them are replaced by the
        pool's own, a missing ``Host`` is added. ``body``: bytes, or an async iterable of
        bytes streamed as the origin takes them (exceptions it raises fail the exchange as
        :class:`RequestBodyError`). Raises :class:`UpstreamError` (``ValueError`` for an
        invalid method or target).
        """
        if self.closed:
            raise RuntimeError("the upstream pool is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("an UpstreamPool serves one event loop; create one per loop")
        head, length = request_head(method, target, headers, body, host_header=address.host_header)
        head_only = method == "HEAD"
        pool = self._origins.get(address)
        if pool is None:
            pool = self._origins[address] = _OriginPool(self, address)
        replayable = isinstance(body, bytes) and not body and method.encode() in _SAFE_METHODS
        connect = self.connect_timeout if isinstance(connect_timeout, _Unset) else connect_timeout
        reads = (
            self.read_timeout if isinstance(response_timeout, _Unset) else response_timeout,
            self.read_timeout if isinstance(read_timeout, _Unset) else read_timeout,
        )
        for attempt in (1, 2):
            conn = await self._connection(pool, connect, fresh=attempt > 1)
            try:
                return await conn.exchange(head, body, length, head_only, reads)
            except UpstreamClosedError as exc:
                if attempt > 1 or not (exc.retryable and replayable):
                    raise
                _log.debug("origin %s: stale keep-alive connection, retrying once", pool)
        raise AssertionError("unreachable")

    async def _connection(
        self, pool: _OriginPool, connect_timeout: float | None, *, fresh: bool
    ) -> _Connection:
        """A connection holding one of ``pool``'s slots: an idle one, else a new one."""
        if pool.try_slot():
            conn = None if fresh else pool.pop_idle()
            if conn is not None:
                return conn  # the hot path: no timer, no await
            waited = False
        else:
            waited = True
        try:
            async with asyncio.timeout(connect_timeout):
                if waited:
                    await pool.wait_slot()
                    conn = None if fresh else pool.pop_idle()
                    if conn is not None:
                        return conn
                try:
                    return await self._connect(pool)
                except BaseException:
                    pool.release_slot()
                    raise
        except TimeoutError as exc:
            if isinstance(exc, UpstreamTimeoutError):
                raise
            what = "a free connection" if waited else "a connection"
            raise UpstreamTimeoutError(
                f"origin {pool}: no {what} within {connect_timeout:g} s"
            ) from None

    async def _connect(self, pool: _OriginPool) -> _Connection:
        address = pool.address
        loop = pool.loop
        try:
            if address.unix_path is not None:
                _, conn = await loop.create_unix_connection(
                    lambda: _Connection(pool), address.unix_path
                )
            else:
                _, conn = await loop.create_connection(
                    lambda: _Connection(pool), address.host, address.port
                )
        except OSError as exc:
            raise UpstreamConnectError(f"origin {address}: {exc.strerror or exc}") from exc
        if self.closed:
            conn._close()
            raise UpstreamClosedError("the upstream pool was closed")
        pool.open.add(conn)
        return conn
