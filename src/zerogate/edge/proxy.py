"""Forwarding an allowed request to its origin: the half of the edge after the policy decision.

:class:`OriginProxy` (the :class:`~zerogate.net.upstream.Upstream` of ``origin:``
applications) owns the upstream connections of one event loop and relays an ASGI HTTP
exchange or WebSocket to an origin. Plain HTTP to ``http://`` and ``unix:`` origins goes through
zerogate's own keep-alive pool (:mod:`zerogate.net.pool`: HTTP/1.1 written directly,
responses parsed by httptools); HTTPS origins and WebSockets go through aiohttp client sessions
(one for TCP, one per Unix-socket origin). Either way:

- bodies stream both ways with bounded memory: the request body is an async generator fed by
  ``receive()``, the response is sent chunk by chunk as it arrives (server-sent events are
  never held back), bytes pass untouched (no decompression, no cookie jar, no redirects, no
  proxy environment variables);
- the origin's status and headers are kept, minus hop-by-hop headers;
- a client that goes away stops the exchange: the origin connection is closed, not drained;
- an origin that cannot be reached gets the client a small 502 page, one that does not answer
  in time a 504 (HTML, or JSON when the request asked for it) — never a traceback. When the
  origin fails after the response has started, the response is left unfinished so the server
  cuts the connection: the client sees a truncated transfer, never a complete-looking one.

The caller (the edge pipeline) has already decided the request may pass and built the headers
to send with :func:`zerogate.net.headers.upstream_request_headers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from zerogate.net import websocket
from zerogate.net.asgi import Headers, Receive, Scope, Send
from zerogate.net.client import proxy_session
from zerogate.net.headers import downstream_response_headers, wants_json
from zerogate.net.http import request_target
from zerogate.net.pool import (
    OriginAddress,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
)
from zerogate.net.upstream import DEFAULT_TIMEOUTS, Outbound, Timeouts
from zerogate.runtime.services import templates

__all__ = [
    "CLIENT_CLOSED",
    "WATCH_AFTER",
    "WS_MAX_MESSAGE",
    "OriginProxy",
    "reject_websocket",
    "request_target",
    "send_error",
]

_log = logging.getLogger(__name__)

CLIENT_CLOSED: Final = 499
"""What :meth:`OriginProxy.forward_http` returns when the client left before a response started."""

WS_MAX_MESSAGE: Final = 16 * 1024 * 1024
"""Largest WebSocket message accepted from an origin (aiohttp buffers whole messages)."""

_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
WATCH_AFTER: Final = 0.1
"""An exchange still running this many seconds later (up to twice as many) gets a task that
watches for its client to disconnect.

Most exchanges end sooner, and then no watcher (one more ``receive()`` and a cancellation per
request) is ever created; a client that leaves a slow or streaming exchange is noticed that
much later."""
_NOT_FORWARDED_TO_WS: Final = frozenset(
    {b"connection", b"upgrade", b"sec-websocket-key", b"sec-websocket-version"}
)
_WS_NEGOTIATED_PREFIX: Final = b"sec-websocket-"
_REASONS: Final = {
    400: ("Bad Request", "The request target cannot be forwarded."),
    502: ("Bad Gateway", "The application's origin could not be reached. Try again shortly."),
    504: ("Gateway Timeout", "The application's origin did not answer in time."),
}
_ORIGIN_REFUSED: Final = "The application's origin refused the connection."


class _ClientGoneError(Exception):
    """The client disconnected while its request body was being forwarded."""


@dataclass(frozen=True, slots=True)
class _Origin:
    socket: str | None  # Unix socket path, or None for TCP
    http_base: str
    ws_base: str
    address: OriginAddress | None  # plain HTTP (TCP or Unix socket): served by the pool


def _parse_origin(origin: str) -> _Origin:
    if origin.startswith("unix:"):
        path = origin[len("unix:") :]
        if not path:
            raise ValueError(f"origin {origin!r}: a Unix socket origin needs a path")
        return _Origin(path, "http://localhost", "ws://localhost", OriginAddress.unix(path))
    url = URL(origin)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"origin {origin!r}: expected http://host[:port], https://… or unix:/path")
    if url.raw_path not in ("", "/") or url.raw_query_string or url.raw_fragment:
        raise ValueError(f"origin {origin!r}: an origin is a scheme, host and port only")
    base = str(url.origin())
    ws_base = ("wss" if url.scheme == "https" else "ws") + base[len(url.scheme) :]
    address = None
    if url.scheme == "http" and url.raw_host and url.port is not None:
        address = OriginAddress.tcp(url.raw_host, url.port)
    return _Origin(None, base, ws_base, address)


def _client_headers(headers: Headers, *, websocket: bool = False) -> CIMultiDict[str]:
    """ASGI byte headers as the ``str`` multidict aiohttp takes.

    aiohttp writes header text as UTF-8, so values are decoded as UTF-8 to travel byte-exact;
    a value that is not UTF-8 cannot, and is dropped rather than silently altered.
    """
    if websocket:
        headers = [
            (name, value)
            for name, value in headers
            if name.lower() not in _NOT_FORWARDED_TO_WS
            and not name.lower().startswith(_WS_NEGOTIATED_PREFIX)
        ]
    try:
        return CIMultiDict([(name.decode("latin-1"), value.decode()) for name, value in headers])
    except UnicodeDecodeError:
        out: CIMultiDict[str] = CIMultiDict()
        for name, value in headers:
            try:
                out.add(name.decode("latin-1"), value.decode())
            except UnicodeDecodeError:
                _log.debug("dropped request header %r: value is not UTF-8", name)
        return out


def _error_page(status: int, as_json: bool) -> tuple[bytes, bytes]:
    """``(content type, body)`` of the edge's own error page for ``status``."""
    reason, text = _REASONS.get(status, (_phrase(status), _ORIGIN_REFUSED))
    if as_json:
        code = reason.lower().replace(" ", "_").replace("-", "_")
        payload = {"error": code, "status": status, "message": text}
        return b"application/json", json.dumps(payload).encode()
    return b"text/html; charset=utf-8", _styled_page(status, reason, text)


@functools.lru_cache(maxsize=16)
def _styled_page(status: int, reason: str, text: str) -> bytes:
    """The page, as the portal's other pages look (its ``message.html``), made once."""
    page = templates().get_template("message.html")
    return page.render(title=f"{status} {reason}", message=text, error=True).encode()


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _error_head(status: int, scope: Scope) -> tuple[Headers, bytes]:
    content_type, body = _error_page(status, wants_json(scope.get("headers") or []))
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    return headers, body


async def send_error(scope: Scope, send: Send, status: int) -> int:
    """Answer with the edge's own error page (HTML, or JSON when asked); the status."""
    headers, body = _error_head(status, scope)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if scope.get("method") == "HEAD":
        body = b""
    await send({"type": "http.response.body", "body": body, "more_body": False})
    return status


def _failure_status(exc: BaseException) -> int:
    return 504 if isinstance(exc, TimeoutError) else 502


class _Exchange:
    """One forwarded HTTP exchange: request body pump and client-disconnect watch."""

    __slots__ = (
        "body_done",
        "cancel_sent",
        "disconnected",
        "done",
        "receive",
        "status",
        "task",
        "watcher",
        "watchers",
    )

    def __init__(
        self, receive: Receive, task: asyncio.Task[object] | None, watchers: _Watchers
    ) -> None:
        self.receive = receive
        self.watchers = watchers
        self.task = task  # the task running forward_http, cancelled when the client leaves
        self.body_done = False
        self.disconnected = False
        self.cancel_sent = False
        self.done = False
        self.status = 0
        self.watcher: asyncio.Task[None] | None = None

    def client_gone(self) -> None:
        self.disconnected = True
        if not self.done and not self.cancel_sent and self.task is not None:
            self.cancel_sent = True
            self.task.cancel()

    def take_back_cancel(self) -> bool:
        """Withdraw our own cancellation; ``False`` if someone else cancelled the task too."""
        if not self.cancel_sent or self.task is None:
            return False
        self.cancel_sent = False
        return self.task.uncancel() == 0

    async def body(self, first: bytes) -> AsyncIterator[bytes]:
        """The request body, streamed from ``receive()`` as the origin takes it."""
        if first:
            yield first
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.client_gone()
                raise _ClientGoneError
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                break
        self.body_done = True
        self.watch()

    def watch(self) -> None:
        """Once the body is read, the next ``receive()`` only ever reports a disconnect.

        A watcher task calls it, started :data:`WATCH_AFTER` seconds or so from now unless the
        exchange is over by then.
        """
        if self.watcher is None and self.body_done and not self.done and self.task is not None:
            self.watchers.add(self)

    def start_watch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.watcher is None and not self.done:
            self.watcher = loop.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.client_gone()
                return

    def finish(self) -> None:
        self.done = True
        self.watchers.discard(self)
        if self.watcher is not None:
            self.watcher.cancel()


class _Watchers:
    """Starts disconnect watchers for exchanges that outlive :data:`WATCH_AFTER`.

    Two generations and one timer per event loop, ticking only while exchanges wait: an
    exchange added during one tick gets its watcher at the next one (after 0.1–0.2 s), unless
    it finished. Cheaper than a timer per request, which cost more than the watcher it saved.
    """

    __slots__ = ("older", "recent", "ticker")

    def __init__(self) -> None:
        self.recent: set[_Exchange] = set()
        self.older: set[_Exchange] = set()
        self.ticker: asyncio.TimerHandle | None = None

    def add(self, exchange: _Exchange) -> None:
        self.recent.add(exchange)
        if self.ticker is None:
            loop = asyncio.get_running_loop()
            self.ticker = loop.call_later(WATCH_AFTER, self._tick, loop)

    def discard(self, exchange: _Exchange) -> None:
        self.recent.discard(exchange)
        self.older.discard(exchange)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        due, self.older, self.recent = self.older, self.recent, set()
        for exchange in due:
            exchange.start_watch(loop)
        self.ticker = loop.call_later(WATCH_AFTER, self._tick, loop) if self.older else None


class OriginProxy:
    """Pooled connections to origins for one event loop (create one per loop, e.g. per worker).

    Plain HTTP (``http://``, ``unix:``) goes through an :class:`UpstreamPool`; HTTPS and every
    WebSocket through aiohttp client sessions (one for TCP origins, one per Unix-socket
    origin), all created on first use: keep-alive connections, at most ``limit`` exchanges at
    once per origin (``0``: no limit), no automatic decompression, no cookie jar, no redirects
    followed, no proxy taken from the environment.

    ``timeouts`` (each unset one: :data:`~zerogate.net.upstream.DEFAULT_TIMEOUTS`), unless the
    request's :class:`~zerogate.net.upstream.Outbound` brings its application's own:
    ``connect`` bounds waiting for a pooled connection plus connecting; ``response`` the wait
    for the response head once the request is sent (504 after it); ``idle`` each later wait
    for the origin's bytes, so a long stream lives as long as the origin keeps talking. A
    WebSocket handshake gets ``connect`` + ``response`` in all; once open, only its pings
    watch it. An exchange that times out closes its origin connection (never reused).
    ``ssl_context`` verifies HTTPS origins (default: the system's trust store).
    """

    def __init__(
        self,
        *,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        limit: int = 1000,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.timeouts = timeouts.over(DEFAULT_TIMEOUTS)
        # every limit is per request (below): the sessions themselves wait without one
        self._timeout = aiohttp.ClientTimeout(total=None)
        self._client_timeouts: dict[Timeouts, aiohttp.ClientTimeout] = {}
        self._pool: UpstreamPool | None = None
        self._watchers = _Watchers()
        self._limit = limit
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        self._sessions: dict[str | None, aiohttp.ClientSession] = {}
        self._origins: dict[str, _Origin] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def close(self) -> None:
        """Close every pooled connection; it cannot be used afterwards."""
        self._closed = True
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _origin(self, origin: str) -> _Origin:
        parsed = self._origins.get(origin)
        if parsed is None:
            parsed = self._origins[origin] = _parse_origin(origin)
        return parsed

    def _check_loop(self) -> None:
        if self._closed:
            raise RuntimeError("OriginProxy is closed")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError("an OriginProxy serves one event loop; create one per loop")

    def _upstream_pool(self) -> UpstreamPool:
        pool = self._pool
        if pool is None:
            self._check_loop()
            pool = self._pool = UpstreamPool(
                connect_timeout=self.timeouts.connect,
                read_timeout=self.timeouts.idle,
                limit=self._limit,
            )
        return pool

    def _session(self, socket: str | None) -> aiohttp.ClientSession:
        session = self._sessions.get(socket)
        if session is not None:
            return session
        self._check_loop()
        connector: aiohttp.BaseConnector
        if socket is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=self._limit, ssl=self._ssl)
        else:
            connector = aiohttp.UnixConnector(path=socket, limit=self._limit)
        session = proxy_session(connector, self._timeout)
        self._sessions[socket] = session
        return session

    async def forward_http(self, scope: Scope, receive: Receive, send: Send, out: Outbound) -> int:
        """Relay one HTTP exchange to the origin ``out.to``; return the status sent to the client.

        ``out.to``: ``http://host:port``, ``https://…`` or ``unix:/path.sock``. ``out.path_qs``:
        the target to send as is (best: ``scope["raw_path"]`` + ``b"?"`` + query, as bytes).
        ``out.headers``: what the origin receives (see ``upstream_request_headers``). Returns
        :data:`CLIENT_CLOSED` when the client left before any response was sent.
        """
        origin, path_qs, headers = out.to, out.path_qs, out.headers
        target = request_target(path_qs)
        if target is None:
            return await send_error(scope, send, 400)
        where = self._origin(origin)
        timeouts = out.timeouts_over(self.timeouts)
        exchange = _Exchange(receive, asyncio.current_task(), self._watchers)
        try:
            if where.address is not None:
                pool = self._upstream_pool()
                await self._pool_exchange(
                    scope, send, pool, where.address, target, headers, exchange, timeouts
                )
            else:
                session = self._session(where.socket)
                url = URL(where.http_base + target, encoded=True)
                await self._exchange(scope, send, session, url, headers, exchange, timeouts)
        except asyncio.CancelledError:
            exchange.finish()
            if not exchange.take_back_cancel():
                raise  # cancelled from outside, not (only) by the client leaving
            return exchange.status or CLIENT_CLOSED
        exchange.finish()
        if exchange.cancel_sent:
            # The client left just as the exchange ended: take our cancellation here rather
            # than let it land on the caller's next await.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)
            if not exchange.take_back_cancel():
                raise asyncio.CancelledError
        return exchange.status or CLIENT_CLOSED

    async def _pool_exchange(
        self,
        scope: Scope,
        send: Send,
        pool: UpstreamPool,
        address: OriginAddress,
        target: str,
        headers: Headers,
        exchange: _Exchange,
        timeouts: Timeouts,
    ) -> None:
        """One exchange over the keep-alive pool (plain HTTP origins)."""
        message = await exchange.receive()
        if message["type"] == "http.disconnect":
            exchange.status = CLIENT_CLOSED
            return
        body: bytes | AsyncIterator[bytes]
        if message.get("more_body", False):
            body = exchange.body(message.get("body", b""))
        else:
            body = message.get("body", b"")
            exchange.body_done = True
        exchange.watch()
        try:
            response = await pool.request(
                address,
                scope["method"],
                target,
                headers,
                body,
                connect_timeout=timeouts.connect,
                response_timeout=timeouts.response,
                read_timeout=timeouts.idle,
            )
        except (UpstreamError, OSError, ValueError) as exc:
            if exchange.disconnected:
                exchange.status = CLIENT_CLOSED
                return
            status = _failure_status(exc)
            _log.warning(
                "origin %s: %s (%s), answered %d", address, type(exc).__name__, exc, status
            )
            exchange.status = await send_error(scope, send, status)
            return
        try:
            await self._relay_pool_response(send, response, exchange, address)
        finally:
            response.close()  # unfinished: the connection is closed, never reused

    async def _relay_pool_response(
        self, send: Send, response: UpstreamResponse, exchange: _Exchange, address: OriginAddress
    ) -> None:
        status = response.status
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": downstream_response_headers(response.headers),
            }
        )
        exchange.status = status
        try:
            chunk = await response.read()
            while not response.at_eof:
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                chunk = await response.read()
        except (UpstreamError, OSError) as exc:
            if not exchange.disconnected:
                _log.warning(
                    "origin %s: response cut off: %s (%s)", address, type(exc).__name__, exc
                )
            return  # the response stays unfinished: the server drops the connection
        await send({"type": "http.response.body", "body": chunk, "more_body": False})

    async def _exchange(
        self,
        scope: Scope,
        send: Send,
        session: aiohttp.ClientSession,
        url: URL,
        headers: Headers,
        exchange: _Exchange,
        timeouts: Timeouts,
    ) -> None:
        method: str = scope["method"]
        timeout = self._client_timeout(timeouts)
        message = await exchange.receive()
        if message["type"] == "http.disconnect":
            exchange.status = CLIENT_CLOSED
            return
        data: bytes | AsyncIterator[bytes] | None
        if message.get("more_body", False):
            data = exchange.body(message.get("body", b""))
        else:
            data = message.get("body", b"") or None
            exchange.body_done = True
        exchange.watch()
        request_headers = _client_headers(headers)
        try:
            try:
                response = await session.request(
                    method,
                    url,
                    headers=request_headers,
                    data=data,
                    allow_redirects=False,
                    timeout=timeout,
                )
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionResetError):
                # A pooled keep-alive connection the origin had just closed: once, for a
                # request that is safe to repeat and has no body to replay.
                if data is not None or method not in _SAFE_METHODS:
                    raise
                response = await session.request(
                    method,
                    url,
                    headers=request_headers,
                    data=None,
                    allow_redirects=False,
                    timeout=timeout,
                )
        except _ClientGoneError:
            exchange.status = CLIENT_CLOSED
            return
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            if exchange.disconnected:
                exchange.status = CLIENT_CLOSED
                return
            status = _failure_status(exc)
            _log.warning(
                "origin %s: %s (%s), answered %d", url.origin(), type(exc).__name__, exc, status
            )
            exchange.status = await send_error(scope, send, status)
            return
        try:
            await self._relay_response(send, response, exchange, timeouts.idle)
        finally:
            if response.content.at_eof():
                response.release()  # back to the pool
            else:
                response.close()  # unread bytes: the connection cannot be reused

    def _client_timeout(self, timeouts: Timeouts) -> aiohttp.ClientTimeout:
        """aiohttp's form: ``connect``, and ``response`` as the read timeout until the head."""
        timeout = self._client_timeouts.get(timeouts)
        if timeout is None:
            if len(self._client_timeouts) > 1000:
                self._client_timeouts.clear()
            timeout = self._client_timeouts[timeouts] = aiohttp.ClientTimeout(
                total=None, connect=timeouts.connect, sock_read=timeouts.response
            )
        return timeout

    async def _relay_response(
        self,
        send: Send,
        response: aiohttp.ClientResponse,
        exchange: _Exchange,
        idle: float | None,
    ) -> None:
        connection = response.connection
        protocol = connection.protocol if connection is not None else None
        if protocol is not None and not response.content.is_eof():
            # the head is in: from now on ``idle`` bounds each wait for bytes, not ``response``
            protocol.read_timeout = idle
            protocol.start_timeout()
        status = response.status
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": downstream_response_headers(response.raw_headers),
            }
        )
        exchange.status = status
        content = response.content
        try:
            chunk = await content.readany()
            if not content.at_eof():
                while True:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    chunk = await content.readany()
                    if not chunk:
                        break
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if not exchange.disconnected:
                _log.warning(
                    "origin %s: response cut off: %s (%s)",
                    response.url.origin(),
                    type(exc).__name__,
                    exc,
                )
            return  # the response stays unfinished: the server drops the connection
        await send({"type": "http.response.body", "body": chunk, "more_body": False})

    async def forward_websocket(
        self, scope: Scope, receive: Receive, send: Send, out: Outbound
    ) -> None:
        """Relay one WebSocket session to ``origin`` (``ws://`` for http, ``wss://`` for https).

        The origin is dialled first with the client's subprotocols and ``headers`` (the
        handshake headers themselves are aiohttp's); the client is then accepted with the
        subprotocol the origin chose, and text and binary messages flow both ways until one
        side closes, whose close code (and reason) the other side receives. An origin that
        refuses gets the client an HTTP error (its status, 502, or 504 on a timeout) where the
        server supports ``websocket.http.response``, else a close with 1011.
        """
        origin, path_qs, headers = out.to, out.path_qs, out.headers
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        target = request_target(path_qs)
        if target is None:
            await reject_websocket(scope, send, 400)
            return
        where = self._origin(origin)
        session = self._session(where.socket)
        url = URL(where.ws_base + target, encoded=True)
        timeouts = out.timeouts_over(self.timeouts)
        handshake = None
        if timeouts.connect is not None and timeouts.response is not None:
            handshake = timeouts.connect + timeouts.response
        try:
            async with asyncio.timeout(handshake):
                ws = await session.ws_connect(
                    url,
                    protocols=tuple(scope.get("subprotocols") or ()),
                    headers=_client_headers(headers, websocket=True),
                    autoclose=True,
                    autoping=True,
                    compress=0,
                    max_msg_size=WS_MAX_MESSAGE,
                )
        except aiohttp.WSServerHandshakeError as exc:
            status = exc.status if 400 <= exc.status <= 599 else 502
            _log.warning("origin %s refused a WebSocket: %d", url.origin(), exc.status)
            await reject_websocket(scope, send, status)
            return
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            status = _failure_status(exc)
            _log.warning("origin %s: WebSocket: %s (%s)", url.origin(), type(exc).__name__, exc)
            await reject_websocket(scope, send, status)
            return
        try:
            await send({"type": "websocket.accept", "subprotocol": ws.protocol})
            await websocket.relay_aiohttp(ws, receive, send)
        finally:
            await ws.close()


async def reject_websocket(scope: Scope, send: Send, status: int) -> None:
    """Refuse a WebSocket not yet accepted with ``status`` and the edge's error page."""
    headers, body = _error_head(status, scope)
    await websocket.reject(scope, send, status, headers, body)
