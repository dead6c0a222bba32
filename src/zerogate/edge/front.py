"""The HTTP/1.1 front of a worker (``listen.fast_path: true``; issue #12).

One asyncio protocol per client connection, requests parsed with httptools (llhttp), no
per-request task and no ASGI messages. The front answers only what it is sure of, and hands
everything else, unchanged in meaning, to the ordinary ASGI application (granian, listening
on a private Unix socket):

fast path
    an HTTP/1.1 request (not HEAD, OPTIONS, CONNECT) for an application host, without
    ``Upgrade``, ``Expect`` or ``Transfer-Encoding``, with a ``Content-Length`` of at most
    :data:`MAX_FAST_BODY` (or none), whose application has a plain ``http://`` origin and which
    the SAME pipeline functions (``describe_request``, ``Snapshot.route``, ``session_claims``,
    ``service_token``, ``Snapshot.decide``) allow or bypass. Its headers are rebuilt with the
    same rules (``upstream_request_headers``, ``strip_zerogate_cookies``, ``request_head``), it
    is sent over one keep-alive origin connection owned by this client connection, and the
    response (``downstream_response_headers``) streams back with backpressure both ways.

relay
    every other request — the portal host, ``/admin``, ``/api``, ``/.zerogate/*``, logins,
    blocks, unknown hosts, bad paths, WebSocket upgrades, chunked bodies, HTTP/1.0 — switches
    the connection, from that request on, to a relay to the ASGI application: each request
    head is written again from what llhttp parsed (so the application sees exactly one framing)
    plus :data:`CLIENT_HEADER` carrying this process's secret and the client's address (the
    application trusts it only with the secret, and strips it; a client's own copy is dropped
    here), bodies are re-framed, responses are piped back as bytes; after an upgrade both
    directions are piped as bytes.

Framing errors (llhttp refuses CL+TE, two lengths, bad chunk sizes, bad header bytes) end the
connection with a 400 when nothing is in flight, else by half-closing the relay (the
application then answers the incomplete body with its 400). Limits, as ``listen`` says: a head
not complete within ``header_timeout`` (also the wait for the first byte), a connection idle
between requests for ``idle_timeout``, at most ``max_connections`` per process (when full, the
longest-quiet idle connection makes room; with none idle the newcomer is closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httptools

from zerogate.edge import pipeline
from zerogate.edge.proxy import _error_page, _parse_origin
from zerogate.identity import Claims, TokenError, TokenVerifier
from zerogate.model.paths import PathError, normalise_path
from zerogate.net import http
from zerogate.net.asgi import Headers
from zerogate.net.headers import (
    ResolvedClient,
    downstream_response_headers,
    resolve_client,
    upstream_request_headers,
    wants_json,
)
from zerogate.net.http import request_target
from zerogate.net.pool import FieldBlock, OriginAddress, field_block, finish_head
from zerogate.net.upstream import DEFAULT_TIMEOUTS, Timeouts
from zerogate.policy import CompiledApp, Context, Identity
from zerogate.runtime import cookies
from zerogate.runtime.request import Request, check_host, client_scheme, describe_request
from zerogate.runtime.services import Services

log = logging.getLogger("zerogate.edge.front")

#: the header the front adds to every relayed request: ``<secret> <ip> <port>``
CLIENT_HEADER = b"zerogate-front-client"
#: a request body the fast path buffers whole; a longer one is relayed (streamed)
MAX_FAST_BODY = 64 * 1024
#: at most this many complete requests wait behind the one in flight before reading pauses
MAX_QUEUED = 8
#: a relay buffer (bytes waiting for the application's socket) above this pauses reading
MAX_RELAY_BUFFER = 256 * 1024
#: a timeout left unset (none is, once merged over ``DEFAULT_TIMEOUTS``)
NO_LIMIT = 86400.0 * 365
#: how long a relay waits for the application's socket to accept (start, worker restart)
RELAY_CONNECT_TIMEOUT = 10.0
#: at most this many entries in each of the front's caches (cleared whole when full)
MAX_KEPT = 10_000
#: above this share of ``max_connections``, connections idle this long are closed
PRESSURE = 0.8
PRESSURE_QUIET = 1.0

_FAST_METHODS = frozenset({b"GET", b"POST", b"PUT", b"PATCH", b"DELETE"})
_TOKEN_HEADERS = frozenset({b"zerogate-client-id", b"zerogate-client-secret"})
#: the request headers ``_plain_head`` looks at (the rest go through as they are)
_SCANNED = frozenset(
    {b"host", b"cookie", b"content-length", b"transfer-encoding", b"expect", b"upgrade"}
    | _TOKEN_HEADERS
    | {CLIENT_HEADER}
)
_NO_BODY_STATUS = (204, 304)


@dataclass(frozen=True, slots=True)
class FrontSettings:
    uds: str  # the ASGI application's Unix socket
    secret: bytes  # proves a relayed request came from this server's front
    header_timeout: float
    idle_timeout: float
    max_connections: int
    #: the settings' ``upstream_timeouts`` (an application's own ``timeouts`` win)
    timeouts: Timeouts = DEFAULT_TIMEOUTS
    #: False: relay every request (the front only terminates TLS: ``listen.tls.acme``
    #: without ``listen.fast_path``)
    fast: bool = True


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        line = b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode("latin-1"))
        if len(_STATUS_LINES) < 1000:
            _STATUS_LINES[status] = line
    return line


_STATUS_LINES: dict[int, bytes] = {}


def _simple_response(status: int, headers: Headers, *, close: bool) -> bytes:
    content_type, body = _error_page(status, wants_json(headers))
    return (
        _status_line(status)
        + b"content-type: "
        + content_type
        + b"\r\ncontent-length: %d\r\ncache-control: no-store\r\n" % len(body)
        + (b"connection: close\r\n" if close else b"")
        + b"\r\n"
        + body
    )


_BAD = b"bad request: the request is malformed\n"
BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
    b"connection: close\r\n\r\n%b" % (len(_BAD), _BAD)
)


class Front:
    """The front of one worker: its listening socket, connections and timers."""

    def __init__(self, svc: Services, settings: FrontSettings) -> None:
        self.svc = svc
        self.settings = settings
        self.conns: set[ClientConnection] = set()
        self.server: asyncio.AbstractServer | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._origins: dict[str, OriginAddress | None] = {}
        # kept per snapshot (cleared when the runtime loads another): see ``fresh``
        self._snapshot: object = None
        self._routes: dict[tuple[str, str], CompiledApp | None] = {}
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._verifier: TokenVerifier | None = None
        self._settings: object = None
        self._counters: dict[tuple[str, str], Any] = {}
        # pure functions of their key, kept whatever the snapshot
        self._hosts: dict[bytes, tuple[str, str] | None] = {}

    def fresh(self) -> None:
        """Forget what was kept for another snapshot (applications, policies, routes)."""
        snapshot = self.svc.runtime.snapshot
        if snapshot is not self._snapshot:
            self._snapshot = snapshot
            self._routes.clear()
            self._sessions.clear()

    def host(self, value: bytes) -> tuple[str, str] | None:
        """``runtime.request.check_host`` of a Host header, kept; None: not a host name."""
        try:
            return self._hosts[value]
        except KeyError:
            pass
        try:
            found: tuple[str, str] | None = check_host(value)
        except http.BadRequest:
            found = None
        if len(self._hosts) > MAX_KEPT:
            self._hosts.clear()
        self._hosts[value] = found
        return found

    def route(self, host: str, raw_path: str) -> CompiledApp | None:
        """The application a fast request may go to: routed, not a reserved path (else None:
        relayed, and the application answers). Kept per snapshot (call ``fresh`` first)."""
        key = (host, raw_path)
        try:
            return self._routes[key]
        except KeyError:
            pass
        app: CompiledApp | None = None
        try:
            app = self.svc.runtime.snapshot.route(host, raw_path)
            if app is not None and pipeline.is_reserved(normalise_path(raw_path)):
                app = None
        except PathError:
            app = None
        if len(self._routes) > MAX_KEPT:
            self._routes.clear()
        self._routes[key] = app
        return app

    def session(self, app: CompiledApp, token: str | None) -> _Session | None:
        """``pipeline.token_claims`` of ``token`` (the application's cookie), with the identity
        and the identity headers the origin gets. The first request of a token goes through
        the pipeline's own check (``TokenVerifier.verify``: signature, through the
        verified-token cache); later ones are re-checked with ``TokenVerifier.recheck`` (the
        key still verifies, issuer, type, audience, expiry: what a verified-cache hit is
        checked against) and ``Runtime.rejects`` (logout everywhere, an ended session), by the
        same verifier (a new key set or issuer makes a new one, and the kept sessions of the old
        one count for nothing)."""
        if not token:
            return None
        rt = self.svc.runtime
        verifier = self._verifier
        # the issuer is a function of the settings: the same settings, the same issuer
        if (
            verifier is None
            or verifier.keyset is not rt.keyset
            or self._settings is not rt.settings
        ):
            verifier = self._verifier = rt.verifier("app")
            self._settings = rt.settings
            self._sessions.clear()
        key = (app.name, token)
        kept = self._sessions.get(key)
        if kept is not None:
            claims = kept[0]
            try:
                verifier.recheck(claims, kept[3], time.time())
            except TokenError:
                del self._sessions[key]
                return None
            return None if rt.rejects(claims) else kept
        audience = app.audience
        try:
            claims = verifier.verify(token, audience, now=time.time())
        except TokenError:
            return None
        if rt.rejects(claims):  # logged out everywhere, or its session ended
            return None
        identity = Identity.of(claims.email, claims.idp, claims.groups or (), claims.amr or ())
        inject = pipeline.session_headers(token, claims)
        if len(self._sessions) > MAX_KEPT:
            self._sessions.clear()
        made = self._sessions[key] = (claims, identity, inject, audience)
        return made

    def count(self, app: str, decision: str) -> None:
        """``zerogate_requests_total{app, decision}`` + 1 (the labelled child kept)."""
        child = self._counters.get((app, decision))
        if child is None:
            if len(self._counters) > MAX_KEPT:
                self._counters.clear()
            child = self._counters[(app, decision)] = self.svc.metrics.requests.labels(
                app, decision
            )
        child.inc()

    async def start(self, sock: socket.socket, tls: ssl.SSLContext | None = None) -> None:
        """Serve ``sock``; with ``tls``, TLS is terminated here (its SNI callback may pick a
        certificate per hostname: ``autotls``), the handshake bounded by ``header_timeout``."""
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        backlog = max(1024, self.settings.max_connections)
        self.server = await loop.create_server(
            lambda: ClientConnection(self),
            sock=sock,
            backlog=backlog,
            ssl=tls,
            ssl_handshake_timeout=self.settings.header_timeout if tls is not None else None,
        )
        self._ticker = loop.create_task(self._tick())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self.server is not None:
            self.server.close()
        for conn in list(self.conns):
            conn.close()

    def origin_address(self, origin: str) -> OriginAddress | None:
        """The pool address of a plain ``http://`` origin (TCP), else None (relayed)."""
        try:
            return self._origins[origin]
        except KeyError:
            pass
        address: OriginAddress | None = None
        if origin.startswith("http://"):
            with contextlib.suppress(ValueError):
                address = _parse_origin(origin).address
        if len(self._origins) > 10_000:
            self._origins.clear()
        self._origins[origin] = address
        return address

    # -------------------------------------------------------------- connection limits

    def admit(self, conn: ClientConnection) -> bool:
        """Room for ``conn``? When full, the longest-quiet idle connection is closed."""
        if len(self.conns) < self.settings.max_connections:
            self.conns.add(conn)
            return True
        idle = [c for c in self.conns if c.idle]
        if not idle:
            return False
        min(idle, key=lambda c: c.last_activity).close()
        self.conns.add(conn)
        return True

    async def _tick(self) -> None:
        period = min(0.5, self.settings.header_timeout / 4)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            pressure = len(self.conns) >= PRESSURE * self.settings.max_connections
            for conn in list(self.conns):
                if conn.deadline and now >= conn.deadline:
                    conn.expired()
                elif pressure and conn.idle and now - conn.last_activity >= PRESSURE_QUIET:
                    conn.close()


#: a verified session: its claims, identity, the identity headers and the audience checked
_Session = tuple[Claims, Identity, Headers, str]

#: what ``ClientConnection._routed`` finds: the request's description, its application, the
#: origin, the origin-form target and the application's session-cookie name (None: relay)
_Routed = tuple[Request, CompiledApp, OriginAddress, str, str] | None


@dataclass(slots=True)
class _Fast:
    """A fast-path request between its head and the end of its body."""

    method: bytes
    address: OriginAddress
    headers: Headers
    fields: FieldBlock  # ``net.pool.field_block(headers)``
    target: str
    body: list[bytes]
    size: int
    timeouts: Timeouts
    #: the access-log record of an allowed request (``Services.log``'s keywords), written
    #: when its response ended, with the status and the time since the decision
    record: dict[str, Any] | None = None
    started: float = 0.0


class ClientConnection(asyncio.Protocol):
    """One client connection (see the module docstring)."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.svc = front.svc
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.peer: tuple[str, int] = ("", 0)
        self.closed = False
        # the request being parsed
        self.url = b""
        self.headers: Headers = []
        self.fast: _Fast | None = None
        self.chunked = False
        self.in_head = False
        # fast requests: complete ones waiting, and the one in flight
        self.queue: deque[tuple[_Fast, bytes, bool]] = deque()
        self.inflight = False
        self.current: _Fast | None = None  # the one in flight
        self.close_after = False
        self.upstream: OriginConnection | None = None
        # kept between requests of this connection (see ``_describe``, ``_upstream_headers``)
        self.client: ResolvedClient | None = None
        self.head_kept: tuple[object, Headers, FieldBlock] | None = None
        self.cookies_kept: tuple[tuple[bytes, ...], dict[str, str]] | None = None
        self.route_kept: tuple[object, object, _Routed] | None = None
        self.contexts: dict[tuple[str, str | None], Context] = {}
        # relay to the ASGI application (sticky once begun)
        self.relay: RelayConnection | None = None
        self.relaying = False
        self.relay_buffer: list[bytes] = []
        self.relay_buffered = 0
        self.relay_eof = False
        self.relay_quiet = True  # no byte came back since the last relayed head
        self.broken = False
        self.piping = False  # after an upgrade: raw bytes both ways
        self.reading_paused = False
        self.writing_paused = False
        # timers (checked by Front._tick)
        self.deadline = 0.0
        self.idle_limit = NO_LIMIT  # of the origin's response in flight
        self.connect_limit = NO_LIMIT
        self.last_activity = 0.0

    # -------------------------------------------------------------- state

    @property
    def idle(self) -> bool:
        """No request running: waiting for the first byte or for the next request."""
        return not (self.in_head or self.inflight or self.queue or self.relaying)

    def expired(self) -> None:
        if self.in_head or not (self.inflight or self.relaying):
            self.close()  # header timeout, or idle
        elif self.inflight and self.upstream is not None and not self.upstream.started:
            self.upstream.fail(504)
        elif self.inflight and self.upstream is not None:
            if self.writing_paused:  # the client is slow, not the origin: keep waiting
                self.deadline = self.loop.time() + self.idle_limit
                return
            log.warning("origin %s: response cut off (idle)", self.upstream.address)
            self.upstream.fail(504)  # started: the client's connection is cut

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.front.conns.discard(self)
        if self.inflight:
            self._record(None)  # the client went away before the response ended
        if self.transport is not None:
            self.transport.close()
        if self.upstream is not None:
            self.upstream.close()
        if self.relay is not None:
            self.relay.close()

    # -------------------------------------------------------------- asyncio

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = (str(peer[0]), int(peer[1]))
        now = self.loop.time()
        self.last_activity = now
        if not self.front.admit(self):
            self.closed = True
            transport.close()
            return
        self.deadline = now + self.front.settings.header_timeout

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        if self.broken:
            return  # after a framing error nothing more is read
        if self.piping:
            self._relay_write(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            self.piping = True
            self.deadline = 0.0
            rest = data[offset:]
            if rest:
                self._relay_write(rest)
        except httptools.HttpParserError:
            self._malformed()

    def eof_received(self) -> bool | None:
        if self.relay is not None and self.relay.transport is not None and self.relaying:
            with contextlib.suppress(OSError, RuntimeError):
                self.relay.transport.write_eof()
            return True
        if self.inflight or self.queue:
            return True  # answer what was asked, then close
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.upstream is not None:
            self.upstream.pause_reading()
        if self.relay is not None and self.relay.transport is not None:
            self.relay.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.upstream is not None:
            self.upstream.resume_reading()
        if self.relay is not None and self.relay.transport is not None:
            self.relay.transport.resume_reading()

    def _pause_reading(self) -> None:
        if not self.reading_paused and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def _malformed(self) -> None:
        """llhttp refused the bytes: 400 when nothing is in flight, else end the relay."""
        self.broken = True
        if self.relaying and self.relay_quiet and not self.inflight:
            # nothing came back for the relayed request yet: cut the application's side
            # (it stops forwarding, as for a client that went away) and answer 400 here
            if self.relay is not None:
                self.relay.abort()
            self.transport.write(BAD_REQUEST)
            self.close()
            return
        if self.relaying:
            # make the application see bad framing too, so it answers as it always has (a
            # bad chunk size: its 400 for a malformed body; else a request line it refuses)
            self._relay_write(b"zz\r\n\r\n" if self.chunked else b"BAD\x00 / HTTP/1.1\r\n\r\n")
            self.relay_eof = True
            self._flush_relay()
            self._pause_reading()
            return
        if not (self.inflight or self.queue):
            self.transport.write(BAD_REQUEST)
            self.close()
            return
        self.close_after = True
        self.queue.clear()
        self._pause_reading()

    # -------------------------------------------------------------- httptools callbacks

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.fast = None
        self.chunked = False
        self.in_head = True
        self.deadline = self.loop.time() + self.front.settings.header_timeout

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:
            self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.deadline = 0.0
        if not self.relaying:
            fast = self._classify()
            if fast is not None:
                self.fast = fast
                return
            self._begin_relay()
        self._relay_head()

    def on_body(self, body: bytes) -> None:
        fast = self.fast
        if fast is not None:
            fast.body.append(body)
            fast.size += len(body)
            return
        if self.chunked:
            self._relay_write(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            self._relay_write(body)

    def on_message_complete(self) -> None:
        fast = self.fast
        if fast is None:
            if self.chunked:
                self._relay_write(b"0\r\n\r\n")
            return
        self.fast = None
        keep_alive = self.parser.should_keep_alive()
        body = b"".join(fast.body) if fast.body else b""
        try:
            head, _ = finish_head(
                fast.method.decode("ascii"),
                fast.target,
                fast.fields,
                body,
                host_header=fast.address.host_header,
            )
        except ValueError:
            head = b""
        self.queue.append((fast, head + body if head else b"", keep_alive))
        if len(self.queue) >= MAX_QUEUED:
            self._pause_reading()
        if not self.inflight:
            self._next()

    # -------------------------------------------------------------- fast path

    def _classify(self) -> _Fast | None:
        """The fast-path plan for the request whose head just ended, or None (relay)."""
        if not self.front.settings.fast:
            return None
        scan = self._plain_head()
        if scan is None:
            return None
        host_value, has_cookie, has_token = scan
        front = self.front
        front.fresh()
        svc = self.svc
        rt = svc.runtime
        routed = self._routed(host_value)
        if routed is None:
            return None
        req, app, address, target, cookie_name = routed
        # the pipeline's identify step (``pipeline.session_claims`` / ``service_token``) on
        # what this head holds; no cookie, no session; no token header, no token
        session = None
        jar: dict[str, str] = {}
        if has_cookie:
            jar = self._cookies()
            session = front.session(app, jar.get(cookie_name))
            if session is not None:  # last seen: a mark in memory, written later
                rt.seen(session[0], req.client.ip, time.time())
        token_name = None
        if has_token:
            token_name = pipeline.service_token({"headers": self.headers}, rt)
        ctx = self._context(req.client.ip, token_name)
        verdict = rt.snapshot.decide(app, session[1] if session is not None else None, ctx)
        decision = verdict.decision
        if decision not in ("allow", "bypass"):
            return None  # the application answers (login, block) and counts it
        front.count(app.name, decision)
        inject: Headers = []
        record = None
        if decision == "allow":
            claims = session[0] if session is not None else None
            record = {
                "app": app.name,
                "email": claims.email if claims is not None else token_name,
                "idp": claims.idp if claims is not None else "service_token",
                "ip": req.client.ip,
                "country": ctx.country,
                "decision": decision,
                "policy": verdict.policy,
                "method": self.parser.get_method().decode("ascii"),
                "host": req.host,
                "path": req.raw_path,
            }
            if session is not None:
                inject = session[2]
            else:
                assert token_name is not None
                inject = pipeline.service_headers(rt, app, token_name)
        headers, fields = self._upstream_headers(req, inject, jar if has_cookie else None)
        default = self.front.settings.timeouts
        timeouts = default if app.timeouts is None else app.timeouts.over(default)
        method = self.parser.get_method()
        return _Fast(
            method, address, headers, fields, target, [], 0, timeouts, record, self.loop.time()
        )

    def _routed(self, host_value: bytes | None) -> _Routed:
        """The request's description, application, plain-HTTP origin, origin-form target and
        the name of the application's session cookie; None when any of them is not for the
        fast path (the portal, a reserved or unsafe path, a tunnel or an https origin). Kept
        for the next request of this connection with the same Host and URL, under the same
        snapshot (without trusted proxies: with them, other headers count too)."""
        rt = self.svc.runtime
        snapshot = rt.snapshot
        key = (host_value, self.url)
        kept = self.route_kept
        if kept is not None and kept[0] == key and kept[1] is snapshot:
            return kept[2]
        found = self._route(host_value)
        if not rt.trusted:
            self.route_kept = (key, snapshot, found)
        return found

    def _route(self, host_value: bytes | None) -> _Routed:
        rt = self.svc.runtime
        req = self._describe(host_value)
        if req is None or req.host == rt.portal_host:
            return None
        app = self.front.route(req.host, req.raw_path)
        if app is None:
            return None
        origin = app.model.origin
        address = self.front.origin_address(origin) if origin else None
        if address is None:
            return None
        query = req.query
        target = request_target(req.raw_path + ("?" + query if query else ""))
        if target is None:
            return None
        # ``secure_cookies``: the request's public scheme
        name = cookies.cookie_name(pipeline.app_cookie(app), secure=req.scheme == "https")
        return req, app, address, target, name

    def _context(self, ip: str, token_name: str | None) -> Context:
        """The policy context of a request from ``ip``; kept per address and token."""
        key = (ip, token_name)
        ctx = self.contexts.get(key)
        if ctx is None:
            if len(self.contexts) > 16:
                self.contexts.clear()
            rt = self.svc.runtime
            ctx = Context(ip=ip, country=rt.country(ip), service_token=token_name)
            self.contexts[key] = ctx
        return ctx

    def _upstream_headers(
        self, req: Request, inject: Headers, jar: dict[str, str] | None
    ) -> tuple[Headers, FieldBlock]:
        """``upstream_request_headers`` minus zerogate's cookies, and its field block: pure
        functions of the head and of what is added, so kept for the next request of this
        connection when that sends the same head (a keep-alive client mostly does)."""
        client = req.client
        key = (
            tuple(self.headers),
            tuple(inject),
            client.ip,
            client.forwarded_for,
            req.scheme,
            req.host_header,
        )
        kept = self.head_kept
        if kept is not None and kept[0] == key:
            return kept[1], kept[2]
        headers = upstream_request_headers(
            self.headers,
            client_ip=client.ip,
            proto=req.scheme,
            host=req.host_header,
            inject=inject,
            upgrade=False,
            forwarded_for=client.forwarded_for,
        )
        if jar is not None:
            headers = [(k, v) for k, v in headers if k != b"cookie"]
            headers += pipeline.strip_zerogate_cookies(self.headers)
        fields = field_block(headers)
        self.head_kept = (key, headers, fields)
        return headers, fields

    def _cookies(self) -> dict[str, str]:
        """``http.cookies`` of this head, kept while the connection sends the same ``Cookie``."""
        values = tuple(v for n, v in self.headers if n == b"cookie")
        kept = self.cookies_kept
        if kept is not None and kept[0] == values:
            return kept[1]
        jar = http.cookies({"headers": self.headers})
        self.cookies_kept = (values, jar)
        return jar

    def _plain_head(self) -> tuple[bytes | None, bool, bool] | None:
        """None unless HTTP/1.1, a fast method, no upgrade / expect / chunked body, at most one
        plain Content-Length no longer than ``MAX_FAST_BODY``, no relay header of a client's,
        at most one Host. Else the Host header (None: none), whether a ``Cookie`` and whether a
        service-token header came."""
        parser = self.parser
        if parser.get_http_version() != "1.1" or parser.should_upgrade():
            return None
        if parser.get_method() not in _FAST_METHODS:
            return None
        seen_length = False
        host: bytes | None = None
        has_cookie = has_token = False
        for name, value in self.headers:
            if name in _SCANNED:
                if name == b"host":
                    if host is not None:
                        return None  # two: describe_request's BadRequest (the app answers)
                    host = value
                elif name == b"cookie":
                    has_cookie = True
                elif name == b"content-length":
                    if not value.isdigit() or int(value) > MAX_FAST_BODY or seen_length:
                        return None
                    seen_length = True
                elif name in _TOKEN_HEADERS:
                    has_token = True
                else:
                    return None  # transfer-encoding, expect, upgrade, the relay header
        return host, has_cookie, has_token

    def _describe(self, host_value: bytes | None) -> Request | None:
        """``describe_request`` of this head (None where it raises ``BadRequest``). Without
        trusted proxies nothing but the Host header and the socket peer count, so the Host's
        reading is kept per value and the client per connection."""
        rt = self.svc.runtime
        path, _, query = self.url.partition(b"?")
        if rt.trusted or not path:
            scope: dict[str, Any] = {
                "type": "http",
                "headers": self.headers,
                "client": self.peer,
                "raw_path": path,
                "query_string": query,
            }
            try:
                return describe_request(scope, self.svc)
            except http.BadRequest:
                return None
        if host_value is None:
            return None
        host = self.front.host(host_value)
        if host is None:
            return None
        client = self.client
        if client is None:
            client = self.client = resolve_client(self.peer[0], [], ())
        return Request(
            host_header=host[0],
            host=host[1],
            raw_path=path.decode("latin-1"),
            query=query.decode("latin-1"),
            client=client,
            scheme=client_scheme(rt, client),
        )

    def _next(self) -> None:
        """Send the next queued fast request, or hand over to the relay, or go idle."""
        while self.queue and not self.closed:
            fast, message, keep_alive = self.queue.popleft()
            self.current = fast
            self.close_after = self.close_after or not keep_alive
            if not message:
                self._record(400)
                self.transport.write(_simple_response(400, fast.headers, close=True))
                self.close()
                return
            self.inflight = True
            timeouts = fast.timeouts
            self.idle_limit = timeouts.idle or NO_LIMIT
            # the response head is due ``response`` after the request went out (after a
            # connect, if one is needed; ``expired`` answers 504)
            self.deadline = self.loop.time() + (timeouts.response or NO_LIMIT)
            up = self.upstream
            if up is not None and (up.address != fast.address or up.closed):
                up.close()
                up = None
            if up is None:
                up = self.upstream = OriginConnection(self, fast.address)
                self.connect_limit = timeouts.connect or NO_LIMIT
                self.deadline += self.connect_limit
                up.connect(self.connect_limit)
            up.send(message, fast.headers, retryable=fast.method == b"GET")
            return
        self.inflight = False
        if self.close_after:
            self.close()
            return
        if self.relaying:
            self._flush_relay()
            return
        self.deadline = self.loop.time() + self.front.settings.idle_timeout
        self._resume_reading()

    def _record(self, status: int | None) -> None:
        """Write the access-log record of the request in flight (once), if it has one."""
        fast = self.current
        self.current = None
        if fast is not None and fast.record is not None:
            duration = (self.loop.time() - fast.started) * 1000.0
            self.svc.log("request", status=status, duration_ms=duration, **fast.record)

    def response_done(self, keep_alive: bool, status: int | None = None) -> None:
        """The origin's response to the request in flight is complete (``status``: what the
        client got)."""
        self._record(status)
        if not keep_alive and self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        self.inflight = False
        self._next()

    # -------------------------------------------------------------- relay

    def _begin_relay(self) -> None:
        self.relaying = True
        self.relay = RelayConnection(self)
        self.loop.create_task(self.relay.connect(self.front.settings.uds))

    def _relay_head(self) -> None:
        parser = self.parser
        version = parser.get_http_version().encode("ascii")
        self.chunked = False
        parts = [parser.get_method(), b" ", self.url, b" HTTP/", version, b"\r\n"]
        for name, value in self.headers:
            if name == CLIENT_HEADER:
                continue
            if name == b"transfer-encoding":
                self.chunked = True
            parts += (name, b": ", value, b"\r\n")
        ip, port = self.peer
        secret = self.front.settings.secret
        parts += (CLIENT_HEADER, b": ", secret, b" ", ip.encode(), b" %d\r\n\r\n" % port)
        self.relay_quiet = True
        self._relay_write(b"".join(parts))

    def _relay_write(self, data: bytes) -> None:
        relay = self.relay
        if relay is not None and relay.transport is not None and not self.inflight:
            relay.transport.write(data)
            return
        self.relay_buffer.append(data)
        self.relay_buffered += len(data)
        if self.relay_buffered > MAX_RELAY_BUFFER:
            self._pause_reading()

    def _flush_relay(self) -> None:
        relay = self.relay
        if relay is None or relay.transport is None or self.inflight:
            return
        if self.relay_buffer:
            relay.transport.write(b"".join(self.relay_buffer))
            self.relay_buffer = []
            self.relay_buffered = 0
        if self.relay_eof:
            with contextlib.suppress(OSError, RuntimeError):
                relay.transport.write_eof()
            return
        self._resume_reading()

    def relay_pause(self) -> None:
        self._pause_reading()

    def relay_resume(self) -> None:
        self._resume_reading()


class OriginConnection(asyncio.Protocol):
    """The keep-alive origin connection of one client connection; parses responses."""

    def __init__(self, client: ClientConnection, address: OriginAddress) -> None:
        self.client = client
        self.address = address
        self.transport: Any = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.pending: bytes | None = None
        self.sent: bytes | None = None
        self.request_headers: Headers = []
        self.retryable = False
        self.used = False  # a response came back on it before (a reused connection)
        self.started = False  # the response head went to the client
        self.chunked = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.paused = False
        #: bytes for the client, written by ``flush`` once the parser is done with a read
        self.out: list[bytes] = []
        self.head_kept: tuple[object, bytes, bool, bool] | None = None

    def connect(self, timeout: float) -> None:
        loop = self.client.loop
        if self.address.unix_path is not None:
            coro = loop.create_unix_connection(lambda: self, self.address.unix_path)
        else:
            coro = loop.create_connection(lambda: self, self.address.host, self.address.port)
        task = loop.create_task(asyncio.wait_for(coro, timeout))
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            exc = None if task.cancelled() else task.exception()
            log.warning("origin %s: cannot connect (%r)", self.address, exc)
            self.closed = True
            self.fail(504 if isinstance(exc, TimeoutError) else 502)

    def send(self, message: bytes, headers: Headers, *, retryable: bool) -> None:
        self.started = False
        self.request_headers = headers
        self.retryable = retryable
        self.sent = message
        if self.transport is None:
            self.pending = message
        else:
            self.transport.write(message)

    def fail(self, status: int) -> None:
        """No response can come: answer the client ourselves (or cut it off mid-response)."""
        self.flush()
        client = self.client
        if client.upstream is self:
            client.upstream = None
        self.close()
        if client.closed or not client.inflight:
            return
        if self.started:
            client.close()  # truncated: never a complete-looking response
            return
        client.transport.write(
            _simple_response(status, self.request_headers, close=client.close_after)
        )
        client.response_done(keep_alive=True, status=status)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            self.transport.resume_reading()

    # asyncio
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.closed:
            transport.close()
            return
        if self.client.writing_paused:
            self.pause_reading()
        if self.pending is not None:
            transport.write(self.pending)
            self.pending = None

    def data_received(self, data: bytes) -> None:
        if self.started:  # a byte of the body: the idle timer starts over
            client = self.client
            client.deadline = client.loop.time() + client.idle_limit
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            log.warning("origin %s: malformed response", self.address)
            self.fail(502)
            return
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        was_closed = self.closed
        self.closed = True
        client = self.client
        if client.upstream is not self or was_closed or not client.inflight:
            return
        if self.started and self.status and self._until_close:
            # a response delimited by the connection's end: that end completes it
            self.flush()
            client.transport.write(b"0\r\n\r\n")
            client.upstream = None
            client.response_done(keep_alive=False, status=self.status)
            return
        if not self.started and self.used and self.retryable and self.sent is not None:
            # a reused keep-alive connection the origin closed before answering: once more
            client.upstream = again = OriginConnection(client, self.address)
            again.connect(client.connect_limit)
            again.send(self.sent, self.request_headers, retryable=False)
            return
        self.fail(502)

    # httptools
    def on_message_begin(self) -> None:
        self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.status = status
        if status < 200:
            if status == 101:
                self.fail(502)
            return  # 1xx: informational, not forwarded
        client = self.client
        # the head sent back is a pure function of these: kept while the origin repeats them
        key = (status, tuple(self.headers), client.close_after)
        kept = self.head_kept
        if kept is not None and kept[0] == key:
            _, head, self.chunked, self._until_close = kept
        else:
            head, self.chunked, self._until_close = self._response_head(status)
            self.head_kept = (key, head, self.chunked, self._until_close)
        self.started = True
        client.deadline = client.loop.time() + client.idle_limit  # from now on: idle
        self.out.append(head)

    def _response_head(self, status: int) -> tuple[bytes, bool, bool]:
        """The head to send the client, whether the body goes out chunked, and whether the
        origin's response ends only with its connection."""
        out = downstream_response_headers(self.headers)
        length = None
        for name, value in self.headers:
            if name.lower() == b"content-length":
                length = value
        chunked = until_close = False
        lines = [_status_line(status)]
        for name, value in out:
            if name.lower() != b"content-length":
                lines += (name, b": ", value, b"\r\n")
        if status in _NO_BODY_STATUS:
            pass
        elif length is not None and not self._chunked_upstream():
            lines += (b"content-length: ", length.strip(), b"\r\n")
        else:
            chunked = True
            until_close = not self._chunked_upstream()
            lines.append(b"transfer-encoding: chunked\r\n")
        if self.client.close_after:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        return b"".join(lines), chunked, until_close

    def _chunked_upstream(self) -> bool:
        return any(n.lower() == b"transfer-encoding" for n, _ in self.headers)

    def on_body(self, body: bytes) -> None:
        if self.status < 200:
            return
        if self.chunked:
            self.out.append(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            self.out.append(body)

    def on_message_complete(self) -> None:
        if self.status < 200:
            return
        if self.chunked and not self._until_close:
            self.out.append(b"0\r\n\r\n")
        elif self._until_close:
            return  # the connection's end completes it
        self.flush()
        self.used = True
        self.sent = None
        self.started = False
        self.client.response_done(keep_alive=self.parser.should_keep_alive(), status=self.status)

    def flush(self) -> None:
        """Write what the parser produced for the client, in one write (the head and the
        body of a small response together; a long one streams on, one write per read)."""
        out = self.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            if not self.client.closed:
                self.client.transport.write(data)

    _until_close = False


class RelayConnection(asyncio.Protocol):
    """The client connection's line to the ASGI application: bytes back as they come."""

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.transport: Any = None

    async def connect(self, path: str) -> None:
        loop = self.client.loop
        deadline = loop.time() + RELAY_CONNECT_TIMEOUT
        try:
            while True:
                try:
                    await loop.create_unix_connection(lambda: self, path)
                    return
                except (ConnectionRefusedError, FileNotFoundError):
                    # granian serves the socket only once its worker runs (at start, and
                    # while a worker restarts): wait a little, as a client in a queue would
                    if loop.time() >= deadline or self.client.closed:
                        raise
                    await asyncio.sleep(0.05)
        except OSError as exc:
            log.error("the front cannot reach the application socket: %s", exc)
            client = self.client
            if not client.closed:
                if not client.inflight:
                    client.transport.write(_simple_response(502, client.headers, close=True))
                client.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.aborted = True
        if self.transport is not None:
            self.transport.abort()

    aborted = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.client.closed or self.aborted:
            transport.close()
            return
        if self.client.writing_paused:
            transport.pause_reading()
        self.client._flush_relay()

    def data_received(self, data: bytes) -> None:
        self.client.last_activity = self.client.loop.time()
        self.client.relay_quiet = False
        self.client.transport.write(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()

    def pause_writing(self) -> None:
        self.client.relay_pause()

    def resume_writing(self) -> None:
        self.client.relay_resume()
