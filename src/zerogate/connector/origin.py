"""What the connector does with one stream: pick the ingress rule, answer or forward to the origin.

:class:`Dispatcher` is the handler of every :class:`~zerogate.connector.stream.TunnelStream`:

- ``http_status:N`` rules are answered directly (empty body);
- ``http://`` and ``unix:`` origins go through the edge's own keep-alive pool
  (:class:`zerogate.net.pool.UpstreamPool`, HTTP/1.1 parsed by httptools; one pool per
  distinct set of per-rule origin options), ``https://`` origins through an aiohttp session per
  rule options (certificate checks per ``no_tls_verify`` / ``ca_file``);
- bodies stream both ways: the request body is read from the stream as the origin takes it
  (each chunk acknowledged once written, so the edge's window bounds memory), the response is
  written chunk by chunk as it arrives (server-sent events are never held back) and waits for
  the edge's window;
- a WebSocket (an extended CONNECT stream, ``:protocol websocket``) dials the origin itself,
  sends an HTTP/1.1 ``Upgrade: websocket`` handshake with a fresh ``Sec-WebSocket-Key`` and the
  client's ``Sec-WebSocket-Protocol`` / ``-Extensions``; on ``101`` (with the right
  ``Sec-WebSocket-Accept``) it answers 200 carrying the origin's negotiated
  ``sec-websocket-protocol`` / ``-extensions`` and then pipes raw bytes (the WebSocket frames)
  both ways; otherwise it answers the origin's status (a 2xx that is not an upgrade: 502).

An origin that cannot be reached gets the edge a 502 (504 when it did not answer in time) with
a one-line text body naming the problem; a failure after the response head was sent resets the
stream, so the client sees a cut transfer rather than a complete-looking one. The ``Host`` sent
to the origin is the request's ``:authority`` unless the rule sets ``origin.host_header``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import ssl
from collections.abc import AsyncIterator, Sequence

import aiohttp
import httptools
import structlog
from multidict import CIMultiDict
from yarl import URL

from zerogate.connector.ingress import OriginOptions, Rule, Service, match
from zerogate.connector.stream import StreamGone, TunnelStream
from zerogate.model.paths import PathError
from zerogate.net.client import proxy_session
from zerogate.net.pool import (
    OriginAddress,
    UpstreamError,
    UpstreamPool,
    UpstreamTimeoutError,
)
from zerogate.tunnel.protocol import ErrorCodes, Header, InvalidHeaders

log = structlog.get_logger("zerogate.connector")

__all__ = ["Dispatcher", "origin_ssl_context"]

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEAD = 64 * 1024
_ROUTE_CACHE = 4096
_ROUTE_KEY_MAX = 512
READ_TIMEOUT = 300.0
"""Longest wait for the origin's next bytes (response head, then each body chunk)."""

# Request headers never sent to an origin: the connection's own, and what the connector sets.
_NOT_FORWARDED = frozenset(
    {
        b"host",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
        b"trailer",
    }
)
_NOT_FORWARDED_WS = _NOT_FORWARDED | {
    b"content-length",
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-accept",
}
_WS_NEGOTIATED = (b"sec-websocket-protocol", b"sec-websocket-extensions")


def origin_ssl_context(options: OriginOptions) -> ssl.SSLContext:
    """The client context for an ``https://`` origin (raises ``OSError`` for a bad CA file)."""
    if options.no_tls_verify:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if options.ca_file is not None:
        return ssl.create_default_context(cafile=options.ca_file)
    return ssl.create_default_context()


def _plain(status: int, text: str) -> tuple[list[Header], bytes]:
    body = f"{status} {text}\n".encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    return headers, body


async def _answer(stream: TunnelStream, status: int, text: str) -> None:
    """A small response of the connector's own (errors), unless a head was already sent."""
    if stream.status:
        stream.reset(ErrorCodes.INTERNAL_ERROR)
        return
    headers, body = _plain(status, text)
    if stream.request.method == "HEAD":
        stream.respond(status, headers, end=True)
        return
    stream.respond(status, headers)
    await stream.write(body, end=True)


def _failure(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, (TimeoutError, UpstreamTimeoutError)):
        return 504, "Gateway Timeout: the origin did not answer in time"
    reason = ""
    if isinstance(exc, ConnectionRefusedError) or "refused" in str(exc).lower():
        reason = " (connection refused)"
    elif isinstance(exc, FileNotFoundError) or "No such file" in str(exc):
        reason = " (no such socket)"
    return 502, f"Bad Gateway: the origin could not be reached{reason}"


async def _request_body(stream: TunnelStream) -> AsyncIterator[bytes]:
    while chunk := await stream.read():
        if stream.finished:
            return  # the origin answered already: the connection drains the rest
        yield chunk


class Dispatcher:
    """The request handler: ingress match, then answer or forward (see the module docstring)."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        # what each rule resolves to, computed once (a rule's parsed target is a pydantic
        # private attribute, slow to read per request): by id, the rules never change
        self._targets: dict[int, tuple[Service, OriginAddress | None]] = {}
        for rule in self.rules:
            service = rule.target
            address = None
            if service.kind == "unix":
                address = OriginAddress.unix(service.path)
            elif service.kind == "http":
                address = OriginAddress.tcp(service.host, service.port)
            self._targets[id(rule)] = (service, address)
        # (authority, path) → rule for paths seen before: the match normalises the path and
        # walks the rules; bounded, cleared when full
        self._routes: dict[tuple[str, str], Rule] = {}
        self._pools: dict[tuple[float, int, float], UpstreamPool] = {}
        self._sessions: dict[OriginOptions, aiohttp.ClientSession] = {}
        self._ssl: dict[OriginOptions, ssl.SSLContext] = {}
        for rule in self.rules:  # fail at start, not at the first request, on a bad CA file
            if rule.target.kind == "https" and rule.origin not in self._ssl:
                self._ssl[rule.origin] = origin_ssl_context(rule.origin)

    async def close(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.close()
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()

    async def __call__(self, stream: TunnelStream) -> None:
        try:
            await self._dispatch(stream)
        except InvalidHeaders as exc:
            log.warning("origin response cannot be carried", error=str(exc))
            await _answer(stream, 502, "Bad Gateway: the origin's response cannot be forwarded")

    def _match(self, authority: str, path: str) -> Rule:
        key = (authority, path)
        rule = self._routes.get(key)
        if rule is None:
            rule = match(self.rules, authority, path)  # PathError: not cached
            if len(authority) + len(path) <= _ROUTE_KEY_MAX:  # bounded memory
                if len(self._routes) >= _ROUTE_CACHE:
                    self._routes.clear()
                self._routes[key] = rule
        return rule

    async def _dispatch(self, stream: TunnelStream) -> None:
        request = stream.request
        try:
            rule = self._match(request.authority, request.path)
        except PathError as exc:
            await _answer(stream, 400, f"Bad Request: {exc}")
            return
        service, address = self._targets[id(rule)]
        if request.protocol is not None:
            if request.protocol.lower() != "websocket" or service.kind == "status":
                status = service.status if service.kind == "status" else 501
                stream.respond(status, [(b"content-length", b"0")], end=True)
                return
            await self._websocket(stream, rule, service)
        elif service.kind == "status":
            stream.respond(service.status, [(b"content-length", b"0")], end=True)
        elif service.kind == "https":
            await self._via_aiohttp(stream, rule, service)
        else:
            assert address is not None
            await self._via_pool(stream, rule, address)

    # -- plain HTTP over the keep-alive pool ----------------------------------------------------

    def _pool(self, options: OriginOptions) -> UpstreamPool:
        key = (options.connect_timeout, options.keep_alive_connections, options.keep_alive_timeout)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = UpstreamPool(
                connect_timeout=options.connect_timeout,
                read_timeout=READ_TIMEOUT,
                limit=0,
                max_idle=options.keep_alive_connections,
                idle_timeout=options.keep_alive_timeout,
            )
        return pool

    @staticmethod
    def _headers(stream: TunnelStream, rule: Rule, *, exclude: frozenset[bytes]) -> list[Header]:
        host = rule.origin.host_header or stream.request.authority
        headers: list[Header] = [(b"host", host.encode("latin-1", "replace"))]
        headers += [(k, v) for k, v in stream.request.headers if k not in exclude]
        return headers

    async def _via_pool(self, stream: TunnelStream, rule: Rule, address: OriginAddress) -> None:
        headers = self._headers(stream, rule, exclude=_NOT_FORWARDED)
        body: bytes | AsyncIterator[bytes]
        if stream.body_complete:
            parts = []
            while chunk := await stream.read():
                parts.append(chunk)
            body = b"".join(parts)
        else:
            body = _request_body(stream)
        method = stream.request.method
        try:
            response = await self._pool(rule.origin).request(
                address, method, stream.request.path, headers, body
            )
        except (UpstreamError, OSError, ValueError) as exc:
            if stream.is_gone:
                raise StreamGone from None
            status, text = _failure(exc)
            log.warning("origin failed", origin=str(address), error=str(exc), answered=status)
            await _answer(stream, status, text)
            return
        try:
            if response.at_eof:
                stream.respond(response.status, response.headers, end=True)
                return
            stream.respond(response.status, response.headers)
            chunk = await response.read()
            while True:
                if response.at_eof:
                    await stream.write(chunk, end=True)
                    return
                if chunk:
                    await stream.write(chunk)
                chunk = await response.read()
        except UpstreamError as exc:
            log.warning("origin response cut off", origin=str(address), error=str(exc))
            stream.reset(ErrorCodes.INTERNAL_ERROR)
        finally:
            response.close()

    # -- HTTPS over aiohttp ---------------------------------------------------------------------

    def _session(self, options: OriginOptions) -> aiohttp.ClientSession:
        session = self._sessions.get(options)
        if session is None:
            ctx = self._ssl.get(options) or origin_ssl_context(options)
            connector = aiohttp.TCPConnector(
                limit=0,
                ssl=ctx,
                keepalive_timeout=options.keep_alive_timeout,
            )
            session = self._sessions[options] = proxy_session(
                connector,
                aiohttp.ClientTimeout(
                    total=None, connect=options.connect_timeout, sock_read=READ_TIMEOUT
                ),
            )
        return session

    async def _via_aiohttp(self, stream: TunnelStream, rule: Rule, service: Service) -> None:
        headers = CIMultiDict(
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in self._headers(stream, rule, exclude=_NOT_FORWARDED)
        )
        data: bytes | AsyncIterator[bytes] | None
        if stream.body_complete:
            parts = []
            while chunk := await stream.read():
                parts.append(chunk)
            data = b"".join(parts) or None
        else:
            data = _request_body(stream)
        url = URL(service.origin + stream.request.path, encoded=True)
        session = self._session(rule.origin)
        try:
            response = await session.request(
                stream.request.method, url, headers=headers, data=data, allow_redirects=False
            )
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            if stream.is_gone:
                raise StreamGone from None
            status, text = _failure(exc)
            log.warning("origin failed", origin=service.origin, error=str(exc), answered=status)
            await _answer(stream, status, text)
            return
        try:
            content = response.content
            if content.at_eof():
                stream.respond(response.status, response.raw_headers, end=True)
                return
            stream.respond(response.status, response.raw_headers)
            while True:
                chunk = await content.readany()
                if not chunk:
                    stream.end()
                    return
                await stream.write(chunk)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("origin response cut off", origin=service.origin, error=str(exc))
            stream.reset(ErrorCodes.INTERNAL_ERROR)
        finally:
            response.release() if response.content.at_eof() else response.close()

    # -- WebSocket ------------------------------------------------------------------------------

    async def _websocket(self, stream: TunnelStream, rule: Rule, service: Service) -> None:
        options = rule.origin
        try:
            async with asyncio.timeout(options.connect_timeout):
                if service.kind == "unix":
                    reader, writer = await asyncio.open_unix_connection(
                        service.path, limit=_MAX_HEAD
                    )
                else:
                    ctx = self._ssl.get(options) if service.kind == "https" else None
                    if service.kind == "https" and ctx is None:
                        ctx = self._ssl[options] = origin_ssl_context(options)
                    reader, writer = await asyncio.open_connection(
                        service.host,
                        service.port,
                        ssl=ctx,
                        server_hostname=service.host if ctx is not None else None,
                        limit=_MAX_HEAD,
                    )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            status, text = _failure(exc)
            log.warning("origin failed (WebSocket)", origin=service.origin, error=str(exc))
            await _answer(stream, status, text)
            return
        try:
            await self._websocket_session(stream, rule, service, reader, writer)
        finally:
            writer.transport.abort()

    async def _websocket_session(
        self,
        stream: TunnelStream,
        rule: Rule,
        service: Service,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        key = base64.b64encode(os.urandom(16))
        head = [f"GET {stream.request.path} HTTP/1.1\r\n".encode("latin-1")]
        for name, value in self._headers(stream, rule, exclude=_NOT_FORWARDED_WS):
            head.append(name + b": " + value + b"\r\n")
        head.append(
            b"upgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-version: 13\r\n"
            b"sec-websocket-key: " + key + b"\r\n\r\n"
        )
        writer.write(b"".join(head))
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                raw = await reader.readuntil(b"\r\n\r\n")
            status, headers = _parse_head(raw)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            status, text = _failure(exc)
            log.warning("origin failed (WebSocket)", origin=service.origin, error=str(exc))
            await _answer(stream, status, text)
            return
        expected = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())  # noqa: S324 - RFC 6455
        accept = next((v for k, v in headers if k == b"sec-websocket-accept"), None)
        if status != 101 or accept != expected:
            if status == 101:
                log.warning("origin WebSocket handshake is invalid", origin=service.origin)
            code = status if 300 <= status <= 599 else 502
            await _answer(stream, code, "the origin did not accept the WebSocket")
            return
        stream.respond(200, [(k, v) for k, v in headers if k in _WS_NEGOTIATED])
        await _pipe(stream, reader, writer)


def _parse_head(raw: bytes) -> tuple[int, list[Header]]:
    headers: list[Header] = []

    class _Callbacks:
        def on_header(self, name: bytes, value: bytes) -> None:
            headers.append((name.lower(), value))

    parser = httptools.HttpResponseParser(_Callbacks())
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError as exc:
        raise ValueError(f"malformed response head: {exc}") from None
    return parser.get_status_code(), headers


async def _pipe(
    stream: TunnelStream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Bytes both ways until the origin closes (or the stream is reset)."""

    async def upstream() -> None:
        while chunk := await stream.read():
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    up = asyncio.create_task(upstream())
    try:
        while True:
            data = await reader.read(64 * 1024)
            if not data:
                break
            await stream.write(data)
            if up.done() and up.exception() is not None:
                break
        stream.end()
        with contextlib.suppress(asyncio.TimeoutError):
            # the edge usually half-closes right after the origin did
            await asyncio.wait_for(asyncio.shield(up), 1)
    except (ConnectionError, OSError):
        stream.reset(ErrorCodes.CANCEL)
    finally:
        up.cancel()
        await asyncio.gather(up, return_exceptions=True)
