"""The edge's side of the tunnel: the TLS listener connectors dial, and forwarding through it.

:class:`TunnelListener` is the asyncio shell around :class:`~zerogate.tunnel.protocol.EdgeSide`
(one per connector connection). It

- accepts TLS connections on ``listen.tunnel`` and gives each one :data:`REGISTRATION_SECONDS`
  to present its registration (the core bounds its size); the token is decoded and checked
  against the credentials an :class:`Authority` holds (the server's ``Runtime``), and the
  connection is accepted for *that token's tunnel only* or refused with the reason the
  protocol defines (``bad_token``: no tunnel has this id or the text is not a token;
  ``revoked``: the tunnel exists but its token was rotated; ``malformed`` /
  ``version_unsupported`` come from the core);
- closes every connection whose tunnel id or secret hash stopped matching the stored
  credential (:meth:`TunnelListener.revalidate`, called after each credential reload): a rotated
  or deleted token loses its connections within a second;
- pings every connection every :data:`PING_SECONDS` and drops one that leaves a PING
  unanswered for :data:`PING_TIMEOUT`;
- forwards an ASGI HTTP exchange (:meth:`TunnelListener.forward_http`) or WebSocket
  (:meth:`TunnelListener.forward_websocket`) as one stream on the healthy connection of the
  tunnel with the fewest open streams (ties: round robin). Request and response bodies stream
  with end-to-end flow control: a received chunk is acknowledged to the core only after it was
  handed to the client, and request bytes go out only as the windows allow, so a 1 GB body in
  either direction holds at most a window's worth of memory. A request the connector never
  processed (a refused stream, one that crossed a GOAWAY) is sent again on another connection
  when its body is still replayable (at most :data:`REPLAY_LIMIT` bytes were read from the
  client); nothing else is retried.

WebSockets ride RFC 8441 extended CONNECT streams carrying raw RFC 6455 frames, so the connector
pipes bytes to the origin unchanged: the edge plays the WebSocket *client* towards the origin
with a :class:`wsproto.connection.Connection` in client role (frames it sends are masked; no
handshake: the connector made it with the origin). No extension is negotiated through the
tunnel (``Sec-WebSocket-Extensions`` is not forwarded), so frames are plain.

What the edge pipeline passes in is already decided and filtered: the tunnel's name (after the
policy check), the original Host as ``authority``, the request target and the headers built by
``zerogate.net.headers.upstream_request_headers``. Errors before anything was sent to the client
are raised (:class:`TunnelUnavailable` → the pipeline's 502 page, :class:`TunnelRequestRefused`
→ 400/431); a failure after the response started leaves it unfinished so the server cuts the
connection, as the origin proxy does. Timeouts (the application's, else the listener's): no
response head ``response`` seconds after the request was sent → the stream is reset and the
client gets the origin proxy's 504 page; no byte either way for ``idle`` seconds → the stream
is reset (an unfinished response is cut off).

Only ``net``, the tunnel core and the origin proxy's error pages are imported (the
architecture rule): credentials come
through the :class:`Authority` protocol, statuses leave as plain dataclasses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import socket
import ssl
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionState as WsState
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from zerogate.edge.proxy import reject_websocket, send_error
from zerogate.identity.secret_hash import SecretKind, hash_secret
from zerogate.net import chunks, websocket
from zerogate.net.asgi import Headers, Receive, Scope, Send
from zerogate.net.asgi import Message as AsgiMessage
from zerogate.net.headers import is_zerogate_cookie
from zerogate.net.http import request_target
from zerogate.net.upstream import (
    DEFAULT_TIMEOUTS,
    Outbound,
    Timeouts,
    UpstreamRefused,
    UpstreamUnavailable,
)
from zerogate.tunnel.protocol import (
    EAGER_WRITE,
    MAX_CONTROL_FRAME,
    BodyChunk,
    ConnectionReady,
    EdgeSide,
    ErrorCodes,
    Event,
    GoAwayReceived,
    Header,
    InvalidHeaders,
    PingAcked,
    RefusalReason,
    Registration,
    RegistrationReceived,
    ResponseStarted,
    State,
    StreamEnded,
    StreamReset,
    TunnelSettings,
    UsageError,
    WindowOpened,
)
from zerogate.tunnel.token import TokenError, decode

__all__ = [
    "PING_SECONDS",
    "PING_TIMEOUT",
    "REGISTRATION_SECONDS",
    "REPLAY_LIMIT",
    "Authority",
    "ConnectionStatus",
    "TunnelListener",
    "TunnelRequestRefused",
    "TunnelStatus",
    "TunnelUnavailable",
    "server_ssl_context",
]

log = logging.getLogger("zerogate.tunnel")


REGISTRATION_SECONDS: Final = 10.0
"""How long a new connection has for the TLS handshake, then again for its registration."""
PING_SECONDS: Final = 5.0
"""How often the edge pings each connection."""
PING_TIMEOUT: Final = 10.0
"""A connection whose oldest unanswered PING is older than this is dropped."""
REPLAY_LIMIT: Final = 256 * 1024
"""Request-body bytes kept so a refused stream can be sent again on another connection."""
READY_WAIT: Final = 2.0
"""How long a request waits for a connection that is connecting or reconnecting."""
WS_MAX_MESSAGE: Final = 16 * 1024 * 1024
"""Largest WebSocket message accepted from an origin (as the origin proxy's limit)."""
CLIENT_CLOSED: Final = 499
WATCH_AFTER: Final = 0.1
"""A body-less exchange still running this many seconds later (up to twice as many) gets a
task that watches for its client to disconnect, and its response-head deadline."""
MAX_PENDING_PER_ADDRESS: Final = 16
"""Connections one address may have waiting to register; more are refused (``unavailable``)."""
MAX_PENDING: Final = 512
"""Connections all addresses together may have waiting to register."""
MAX_CONNECTIONS_PER_TUNNEL: Final = 64
"""Registered connections one tunnel may hold (16 connectors with the default 4 each); more
are refused (``unavailable``), so one token cannot take all of the worker's sockets."""
_READ_SIZE = 256 * 1024
_RELAY_JOIN = 1024 * 1024
"""Response frames already received are joined into one ASGI message up to this size."""
_FEATURES = frozenset({"websocket"})
_RESPONSE_DROPPED = frozenset({b"te", b"trailer", b"proxy-authenticate", b"proxy-authorization"})
_WS_NOT_FORWARDED = frozenset({b"sec-websocket-key", b"sec-websocket-extensions"})


# --------------------------------------------------------------------------------------------
# What the listener needs and reports
# --------------------------------------------------------------------------------------------


class Credential(Protocol):
    """A stored tunnel credential (``zerogate.store.TunnelCredential`` fits)."""

    @property
    def name(self) -> str: ...

    @property
    def secret_hash(self) -> str: ...


class Authority(Protocol):
    """Who may connect (``zerogate.runtime.Runtime`` fits): credentials by tunnel id."""

    @property
    def tunnel_credentials(self) -> Mapping[str, Credential]: ...

    def tunnel_for_token(self, tunnel_id: str, secret: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class ConnectionStatus:
    """One connector connection held by this process."""

    tunnel: str
    tunnel_id: str
    connection_id: str
    connector_id: str
    version: str
    address: str
    connection_index: int
    since: datetime
    state: str  # "starting" (accepted, HTTP/2 settings pending), "ready" or "draining"
    open_streams: int
    rtt_ms: float | None
    features: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TunnelStatus:
    """The connections this process holds for one tunnel."""

    name: str
    tunnel_id: str
    connections: tuple[ConnectionStatus, ...]

    @property
    def ready(self) -> int:
        return sum(1 for c in self.connections if c.state == "ready")


class TunnelUnavailable(UpstreamUnavailable):
    """Nothing was sent to the client: no connector, or the request could not be delivered."""


class TunnelRequestRefused(UpstreamRefused):
    """The request cannot be carried (bad header, header block too large); nothing was sent."""


class _StreamGone(Exception):
    """The stream was reset or its connection ended."""


class _ClientGone(Exception):
    """The client disconnected."""


# --------------------------------------------------------------------------------------------
# What goes into a stream
# --------------------------------------------------------------------------------------------


def _outbound(out: Outbound, scope: Scope) -> tuple[str, str, str, str, Headers]:
    """``(tunnel, authority, scheme, path, headers)`` of a request for a stream; a target that
    cannot be forwarded is refused (400)."""
    path = request_target(out.path_qs)
    if path is None:
        raise TunnelRequestRefused(400, "the request target cannot be forwarded")
    ws = scope["type"] == "websocket"
    headers = tunnel_content_length(out.headers, scope["headers"], websocket=ws)
    return out.to, out.authority, out.scheme, path, headers


def tunnel_content_length(headers: Headers, client: Headers, *, websocket: bool) -> Headers:
    """The request headers for a tunnel stream with at most one plain ``content-length``.

    HTTP/2 holds a stream's DATA to its ``content-length``: a value it cannot parse (``5, 5``),
    two different ones, or one the body does not match is a *connection* error at the
    connector, which would end every other request on that connection. So the length goes only
    when it is the body's framing: one decimal value (repeats of it allowed), not on a
    WebSocket (its frames follow the upgrade) and not next to a ``Transfer-Encoding`` (the
    server framed the body by chunks). Without it the connector streams the body chunked.
    """
    values = [
        part.strip()
        for key, value in headers
        if key == b"content-length"
        for part in value.split(b",")
    ]
    if not values:
        return headers
    rest = [(k, v) for k, v in headers if k != b"content-length"]
    chunked = any(k.lower() == b"transfer-encoding" for k, _ in client)
    if (
        websocket
        or chunked
        or not all(v.isdigit() for v in values)
        or len(set(map(int, values))) != 1
    ):
        return rest
    return [*rest, (b"content-length", str(int(values[0])).encode())]


# --------------------------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------------------------


def server_ssl_context(
    *,
    cert_pem: str | None = None,
    key_pem: str | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> ssl.SSLContext:
    """A TLS server context from PEM text (the generated certificate) or files (``listen.tls``)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None and key_file is not None:
        context.load_cert_chain(cert_file, key_file)
        return context
    if cert_pem is None or key_pem is None:
        raise ValueError("give cert_pem and key_pem, or cert_file and key_file")
    with tempfile.TemporaryDirectory(prefix="zerogate-tls-") as folder:
        cert_path, key_path = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert_path.write_text(cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key_pem)
        context.load_cert_chain(cert_path, key_path)
    return context


# --------------------------------------------------------------------------------------------
# One stream, one connection
# --------------------------------------------------------------------------------------------


class _Stream:
    """One stream at the edge: its response head, the received items, a window waiter.

    ``items`` holds bytes (a body chunk, acknowledged once consumed), ``None`` (the end) or a
    :class:`StreamReset` (gone); unbounded, but it only ever holds what the flow-control
    windows let in. A deque and one future per wait, not an ``asyncio.Queue`` and an
    ``Event``: a small request creates and waits on as few asyncio objects as possible.
    """

    __slots__ = (
        "conn",
        "head",
        "items",
        "local_ended",
        "remote_ended",
        "reset",
        "sid",
        "waiter",
        "window_waiter",
    )

    def __init__(self, conn: _Connection, sid: int, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.sid = sid
        self.head: asyncio.Future[ResponseStarted] = loop.create_future()
        self.items: deque[bytes | StreamReset | None] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.window_waiter: asyncio.Future[None] | None = None
        self.reset: StreamReset | None = None
        self.local_ended = False
        self.remote_ended = False

    def put(self, item: bytes | StreamReset | None) -> None:
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> bytes | StreamReset | None:
        """The next item, waiting for one."""
        while not self.items:
            waiter = self.waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self.waiter = None
        return self.items.popleft()

    async def wait_window(self) -> None:
        waiter = self.window_waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self.window_waiter = None

    def window_opened(self) -> None:
        waiter = self.window_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, reset: StreamReset) -> None:
        if self.reset is not None:
            return
        self.reset = reset
        if not self.head.done():
            self.head.set_exception(_StreamGone())
            self.head.exception()  # retrieved: nobody may be waiting any more
        self.put(reset)
        self.window_opened()


#: the refusal of a well-formed token that no tunnel here accepts, whatever the reason
REFUSAL_NOT_ACCEPTED = (
    "no tunnel here accepts this token (rotated, or the tunnel deleted?): "
    "run the connector with the tunnel's current token"
)


class _Connection:
    """One connector connection: the core, the socket, its streams."""

    def __init__(
        self,
        listener: TunnelListener,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.listener = listener
        self.reader = reader
        self.writer = writer
        self.core = EdgeSide(listener.tunnel_settings)
        peer = writer.get_extra_info("peername")
        self.address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        self.connection_id = secrets.token_hex(8)
        self.since = datetime.now(UTC)
        self.tunnel = ""
        self.tunnel_id = ""
        self.secret_hash = ""
        self.registration: Registration | None = None
        self.streams: dict[int, _Stream] = {}
        self.ready = False
        self.finished = False
        self._flush_due = False
        self.rtt: float | None = None
        self.loop = asyncio.get_running_loop()

    # -- state ------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self.ready and not self.finished and self.core.can_open_stream

    @property
    def state(self) -> str:
        if not self.ready:
            return "starting"
        return "ready" if self.core.state is State.OPEN else "draining"

    def status(self) -> ConnectionStatus:
        reg = self.registration
        assert reg is not None
        return ConnectionStatus(
            tunnel=self.tunnel,
            tunnel_id=self.tunnel_id,
            connection_id=self.connection_id,
            connector_id=reg.connector_id,
            version=reg.version,
            address=self.address,
            connection_index=reg.connection_index,
            since=self.since,
            state=self.state,
            open_streams=self.core.open_streams,
            rtt_ms=None if self.rtt is None else round(self.rtt * 1000, 2),
            features=tuple(sorted(reg.features)),
        )

    # -- output -----------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what the core produced, once per event-loop turn (one TLS record and one
        system call for every stream served in the turn); close the socket once the core is
        closed (at once)."""
        if self.core.closed:
            self._flush_now()
        elif not self._flush_due:
            self._flush_due = True
            self.loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_due = False
        data = self.core.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)
        if self.core.closed:
            self._finish()

    async def drain(self) -> None:
        if self.finished:
            raise _StreamGone
        if self._flush_due and self.core.unsent_bytes >= EAGER_WRITE:
            # a large output counts against the transport's buffer now; a small one (a short
            # answer) waits for the turn's end, with the others of the turn
            self._flush_now()
        try:
            await self.writer.drain()
        except (ConnectionError, OSError, RuntimeError) as exc:
            raise _StreamGone from exc

    def abort(self, reason: str, code: int = ErrorCodes.CANCEL) -> None:
        """End the connection now (every open stream fails)."""
        if self.finished:
            return
        log.info("tunnel %s: closing connection %s: %s", self.tunnel, self.connection_id, reason)
        self.core.close(code, reason)
        self.flush()
        self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        for st in list(self.streams.values()):
            st.fail(StreamReset(st.sid, int(ErrorCodes.CANCEL), remote=False))
        if not self.writer.is_closing():
            self.writer.close()
        self.listener._unregister(self)

    # -- streams ----------------------------------------------------------------------------

    def open(
        self,
        method: str,
        authority: str,
        path: str,
        headers: Iterable[Header],
        *,
        scheme: str,
        protocol: str | None = None,
        end_stream: bool = False,
    ) -> _Stream:
        sid = self.core.send_request(
            method,
            authority,
            path,
            headers,
            scheme=scheme,
            protocol=protocol,
            end_stream=end_stream,
        )
        st = _Stream(self, sid, self.loop)
        st.local_ended = end_stream
        self.streams[sid] = st
        self.flush()
        return st

    def ack(self, st: _Stream, size: int) -> None:
        if size and not self.finished:
            self.core.ack(st.sid, size)
            self.flush()

    def release(self, st: _Stream) -> None:
        """The exchange is over: hand back unconsumed bytes, reset the stream if it lives."""
        self.streams.pop(st.sid, None)
        leftover = sum(len(item) for item in st.items if isinstance(item, bytes))
        st.items.clear()
        if st.reset is not None:
            # whoever still waits on the stream (the relay, when the client left while the
            # response was quiet) must see the end now, not at its idle timeout
            st.put(st.reset)
        if self.finished:
            return
        if leftover and st.reset is None:
            self.core.ack(st.sid, leftover)
        # a reset of our own (the client left) has not reached the connector yet: send it, so
        # that it drops its origin request instead of holding it until its own timeout
        peer_knows = st.reset is not None and st.reset.remote
        if not peer_knows and not (st.local_ended and st.remote_ended):
            self.core.reset(st.sid, ErrorCodes.CANCEL)
        self.flush()

    async def write(self, st: _Stream, data: bytes, *, end: bool = False) -> None:
        """Send body bytes as the windows allow (waits for room; raises ``_StreamGone``)."""
        view = memoryview(data)
        while True:
            if st.reset is not None or self.finished:
                raise _StreamGone
            room = self.core.send_capacity(st.sid)
            if room == 0 and view:
                await st.wait_window()
                continue
            piece, view = view[:room], view[room:]
            last = end and not view
            self.core.send_body(st.sid, piece, end_stream=last)
            if last:
                st.local_ended = True
            self.flush()
            await self.drain()
            if not view:
                return

    # -- input ------------------------------------------------------------------------------

    def handle(self, events: Iterable[Event]) -> None:
        for ev in events:
            if isinstance(ev, BodyChunk):
                st = self.streams.get(ev.stream_id)
                if st is None or st.reset is not None:
                    self.core.ack(ev.stream_id, len(ev.data))
                else:
                    st.put(ev.data)
            elif isinstance(ev, ResponseStarted):
                st = self.streams.get(ev.stream_id)
                if st is not None and not st.head.done():
                    st.head.set_result(ev)
            elif isinstance(ev, StreamEnded):
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.remote_ended = True
                    if not st.head.done():  # ended without a response head
                        st.fail(StreamReset(ev.stream_id, int(ErrorCodes.PROTOCOL_ERROR), True))
                    else:
                        st.put(None)
            elif isinstance(ev, StreamReset):
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.fail(ev)
            elif isinstance(ev, WindowOpened):
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.window_opened()
            elif isinstance(ev, PingAcked):
                self.rtt = asyncio.get_running_loop().time() - ev.sent_at
            elif isinstance(ev, ConnectionReady):
                self.ready = True
                self.listener._changed()
            elif isinstance(ev, GoAwayReceived):
                log.info(
                    "tunnel %s: connector %s drains connection %s",
                    self.tunnel,
                    self.registration.connector_id if self.registration else "?",
                    self.connection_id,
                )
                self.listener._changed()

    # -- the connection's life ---------------------------------------------------------------

    async def run(self) -> None:
        try:
            if await self._register():
                while not self.core.closed and not self.finished:
                    data = await self.reader.read(_READ_SIZE)
                    if data:
                        events = self.core.receive_data(data)
                    else:
                        events = self.core.connection_lost("the connector closed the connection")
                    self.handle(events)
                    self.flush()
        except (ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            self.handle(self.core.connection_lost(f"connection lost: {exc}"))
        finally:
            self._finish()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 2)

    async def _register(self) -> bool:
        """Read the registration (bounded in time and size) and answer it."""
        try:
            async with asyncio.timeout(self.listener.registration_timeout):
                while True:
                    data = await self.reader.read(MAX_CONTROL_FRAME + 64)
                    if not data:
                        return False
                    for ev in self.core.receive_data(data):
                        if isinstance(ev, RegistrationReceived):
                            self._answer(ev.registration)
                            self.flush()
                            return not self.core.closed
                    if self.core.closed:  # malformed: the core queued its refusal
                        log.info("tunnel: refused a connection from %s: malformed", self.address)
                        self.flush()
                        return False
        except TimeoutError:
            if not self.core.closed:
                self.core.refuse(RefusalReason.UNAVAILABLE, "registration timed out")
            self.flush()
            log.info("tunnel: %s sent no registration in time", self.address)
            return False

    def _answer(self, reg: Registration) -> None:
        authority = self.listener.authority
        try:
            token = decode(reg.token)
        except TokenError as exc:
            self._refuse(reg, RefusalReason.BAD_TOKEN, f"this is not a connector token: {exc}")
            return
        name = authority.tunnel_for_token(token.tunnel_id, token.secret)
        if name is None:
            # one answer for an unknown id and for a known id with the wrong secret (a rotated
            # token, or a guess): otherwise a stranger learns which tunnel ids exist. The work
            # is the same too (``tunnel_for_token`` hashes either way).
            self._refuse(reg, RefusalReason.BAD_TOKEN, REFUSAL_NOT_ACCEPTED)
            return
        if len(self.listener._tunnels.get(name, {})) >= MAX_CONNECTIONS_PER_TUNNEL:
            self._refuse(
                reg,
                RefusalReason.UNAVAILABLE,
                f"tunnel {name} already has {MAX_CONNECTIONS_PER_TUNNEL} connections here",
            )
            return
        cred = authority.tunnel_credentials.get(token.tunnel_id)
        self.tunnel = name
        self.tunnel_id = token.tunnel_id
        self.secret_hash = (
            cred.secret_hash if cred is not None else hash_secret(SecretKind.TUNNEL, token.secret)
        )
        self.registration = reg
        self.core.accept(token.tunnel_id, self.connection_id, _FEATURES)
        self.listener._register(self)
        log.info(
            "tunnel %s: connector %s (%s, connection %d) connected from %s",
            name,
            reg.connector_id,
            reg.version,
            reg.connection_index,
            self.address,
        )

    def _refuse(self, reg: Registration, reason: RefusalReason, message: str) -> None:
        log.warning(
            "tunnel: refused connector %s from %s: %s", reg.connector_id, self.address, reason.value
        )
        self.core.refuse(reason, message)


# --------------------------------------------------------------------------------------------
# Request bodies
# --------------------------------------------------------------------------------------------


class _BodySource:
    """The client's request body, read once, remembered (up to a limit) for a retry."""

    __slots__ = (
        "client_gone",
        "consumed",
        "done",
        "first",
        "receive",
        "recorded",
        "watching",
    )

    def __init__(self, receive: Receive, first: AsgiMessage) -> None:
        self.receive = receive
        self.first: AsgiMessage | None = first
        self.done = False
        self.consumed = 0
        self.recorded: list[bytes] | None = []
        self.client_gone = False
        self.watching = False

    @property
    def empty(self) -> bool:
        """No body at all (known from the first message)."""
        first = self.first
        return (
            first is not None and not first.get("body", b"") and not first.get("more_body", False)
        )

    @property
    def replayable(self) -> bool:
        return self.recorded is not None and not self.client_gone

    async def next(self) -> tuple[bytes, bool]:
        message = self.first
        self.first = None
        if message is None:
            message = await self.receive()
        if message["type"] == "http.disconnect":
            self.client_gone = True
            raise _ClientGone
        chunk: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        self.consumed += len(chunk)
        if self.recorded is not None:
            if self.consumed > REPLAY_LIMIT:
                self.recorded = None
            elif chunk:
                self.recorded.append(chunk)
        if not more:
            self.done = True
        return chunk, more


class _HeadLate(Exception):
    """No response head within the response timeout."""


class _Watched:
    """A body-less exchange: it needs no pump task, only (if it lasts) a disconnect watcher and
    a response-head deadline, both started by :class:`_Watchers` after a tick."""

    __slots__ = ("conn", "deadline", "done", "response", "sent_at", "source", "st", "watcher")

    def __init__(
        self,
        conn: _Connection,
        st: _Stream,
        source: _BodySource,
        sent_at: float,
        response: float | None,
    ) -> None:
        self.conn = conn
        self.st = st
        self.source = source
        self.sent_at = sent_at
        self.response = response
        self.done = False
        self.watcher: asyncio.Task[None] | None = None
        self.deadline: asyncio.TimerHandle | None = None

    def promote(self, loop: asyncio.AbstractEventLoop) -> None:
        """The exchange outlived a tick: watch the client, arm the head's deadline."""
        if self.done:
            return
        self.watcher = loop.create_task(self._watch())
        if self.response is not None and not self.st.head.done():
            self.deadline = loop.call_at(self.sent_at + self.response, self._late)

    def _late(self) -> None:
        head = self.st.head
        if not head.done():
            head.set_exception(_HeadLate())

    async def _watch(self) -> None:
        while True:
            message = await self.source.receive()
            if message["type"] == "http.disconnect":
                self.source.client_gone = True
                self.st.fail(StreamReset(self.st.sid, int(ErrorCodes.CANCEL), remote=False))
                self.conn.release(self.st)
                return

    def finish(self, watchers: _Watchers) -> None:
        self.done = True
        watchers.discard(self)
        if self.watcher is not None:
            self.watcher.cancel()
        if self.deadline is not None:
            self.deadline.cancel()


class _Watchers:
    """Promotes body-less exchanges that outlive :data:`WATCH_AFTER` (see :class:`_Watched`).

    Two generations and one timer, ticking only while exchanges run: one added during a tick
    is promoted at the next one (after 0.1–0.2 s) unless it finished. Most small exchanges end
    sooner and never cost a task, a timer or one more ``receive()``; the origin proxy does the
    same for its disconnect watchers.
    """

    __slots__ = ("older", "recent", "ticker")

    def __init__(self) -> None:
        self.recent: set[_Watched] = set()
        self.older: set[_Watched] = set()
        self.ticker: asyncio.TimerHandle | None = None

    def add(self, exchange: _Watched, loop: asyncio.AbstractEventLoop) -> None:
        self.recent.add(exchange)
        if self.ticker is None:
            self.ticker = loop.call_later(WATCH_AFTER, self._tick, loop)

    def discard(self, exchange: _Watched) -> None:
        self.recent.discard(exchange)
        self.older.discard(exchange)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        due, self.older, self.recent = self.older, self.recent, set()
        for exchange in due:
            exchange.promote(loop)
        self.ticker = loop.call_later(WATCH_AFTER, self._tick, loop) if self.older else None

    def close(self) -> None:
        if self.ticker is not None:
            self.ticker.cancel()
            self.ticker = None


# --------------------------------------------------------------------------------------------
# The listener
# --------------------------------------------------------------------------------------------


class TunnelListener:
    """The tunnel endpoint of one server process; see the module docstring."""

    def __init__(
        self,
        authority: Authority,
        *,
        tunnel_settings: TunnelSettings | None = None,
        registration_timeout: float = REGISTRATION_SECONDS,
        ping_interval: float = PING_SECONDS,
        ping_timeout: float = PING_TIMEOUT,
        ready_wait: float = READY_WAIT,
        on_change: Callable[[], None] | None = None,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
    ) -> None:
        self.authority = authority
        #: ``response`` (head, once the request is sent) and ``idle`` (no byte either way)
        #: of a tunnelled exchange, unless its application sets its own; ``connect`` is the
        #: connector's business
        self.timeouts = timeouts.over(DEFAULT_TIMEOUTS)
        self.tunnel_settings = tunnel_settings or TunnelSettings()
        self.registration_timeout = registration_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.ready_wait = ready_wait
        self.on_change = on_change
        self.address: tuple[str, int] | None = None
        self._server: asyncio.Server | None = None
        self._tunnels: dict[str, dict[str, _Connection]] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        self._turn: dict[str, int] = {}
        self._change = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = False
        #: connections waiting to register, by peer address (bounded: a stranger's sockets)
        self._waiting: dict[str, set[_Connection]] = {}
        self._watchers = _Watchers()

    # -- life -------------------------------------------------------------------------------

    async def start(
        self, host: str, port: int, context: ssl.SSLContext, *, sock: socket.socket | None = None
    ) -> None:
        """Listen on ``host:port`` (TLS), or accept on ``sock`` (a listening socket the
        workers of one server share); raises ``OSError`` when the address is taken."""
        if sock is not None:
            self._server = await chunks.start_server(
                self._on_connect,
                sock=sock,
                ssl=context,
                ssl_handshake_timeout=self.registration_timeout,
                limit=_READ_SIZE,
            )
        else:
            self._server = await chunks.start_server(
                self._on_connect,
                host,
                port,
                ssl=context,
                ssl_handshake_timeout=self.registration_timeout,
                limit=_READ_SIZE,
                reuse_address=True,
            )
        name = self._server.sockets[0].getsockname()
        self.address = (str(name[0]), int(name[1]))
        self._ticker = asyncio.get_running_loop().create_task(self._tick())
        log.info("tunnel endpoint listening on %s:%d (TLS)", *self.address)

    async def stop(self, grace: float = 2.0) -> None:
        """Stop accepting; GOAWAY every connection, give streams ``grace`` seconds, close."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        if self._ticker is not None:
            self._ticker.cancel()
        self._watchers.close()
        conns = self._all()
        for conn in conns:
            if conn.ready and not conn.finished:
                conn.core.go_away("the edge is shutting down")
                conn.flush()
        deadline = asyncio.get_running_loop().time() + grace
        while any(not c.finished and c.streams for c in conns):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.05)
        for conn in conns:
            conn.abort("the edge is shutting down", ErrorCodes.NO_ERROR)
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.wait(handlers, timeout=2)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            if self._stopping:
                writer.close()
                return
            conn = _Connection(self, reader, writer)
            peer = conn.address.rpartition(":")[0]
            for group in self._waiting.values():  # registered or gone: no longer waiting
                group.difference_update([c for c in group if c.registration or c.finished])
            waiting = self._waiting.setdefault(peer, set())
            total = sum(len(group) for group in self._waiting.values())
            if len(waiting) >= MAX_PENDING_PER_ADDRESS or total >= MAX_PENDING:
                log.warning("tunnel: too many connections waiting to register from %s", peer)
                if not waiting:
                    del self._waiting[peer]
                conn.core.refuse(RefusalReason.UNAVAILABLE, "too many connections waiting")
                conn.flush()
                return
            waiting.add(conn)
            try:
                await conn.run()
            finally:
                waiting.discard(conn)
                if not waiting and self._waiting.get(peer) is waiting:
                    del self._waiting[peer]
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("tunnel connection failed")
        finally:
            if task is not None:
                self._handlers.discard(task)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.ping_interval)
            now = loop.time()
            for conn in self._all():
                if conn.finished:
                    continue
                if not conn.ready:  # registered, but its HTTP/2 never became ready
                    age = (datetime.now(UTC) - conn.since).total_seconds()
                    if age > self.registration_timeout:
                        conn.abort(f"not ready {self.registration_timeout:g} s after connecting")
                    continue
                since = conn.core.ping_outstanding_since
                if since is not None and now - since > self.ping_timeout:
                    conn.abort(f"no PING answer for {self.ping_timeout:g} s")
                    continue
                conn.core.ping(now)
                conn.flush()

    # -- registry ---------------------------------------------------------------------------

    def _all(self) -> list[_Connection]:
        return [c for conns in self._tunnels.values() for c in conns.values()]

    def _register(self, conn: _Connection) -> None:
        self._tunnels.setdefault(conn.tunnel, {})[conn.connection_id] = conn
        self._changed()

    def _unregister(self, conn: _Connection) -> None:
        conns = self._tunnels.get(conn.tunnel)
        if conns is not None and conns.pop(conn.connection_id, None) is not None:
            if not conns:
                del self._tunnels[conn.tunnel]
            log.info("tunnel %s: connection %s closed", conn.tunnel, conn.connection_id)
            self._changed()

    def _changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()
        if self.on_change is not None:
            self.on_change()

    def revalidate(self) -> int:
        """Close every connection whose token no longer matches its tunnel's stored credential
        (rotated or deleted); returns how many were closed. Call after credentials reload."""
        closed = 0
        credentials = self.authority.tunnel_credentials
        for conn in self._all():
            cred = credentials.get(conn.tunnel_id)
            if (
                cred is None
                or cred.name != conn.tunnel
                or not hmac.compare_digest(cred.secret_hash, conn.secret_hash)
            ):
                conn.abort("the tunnel's token was rotated or revoked")
                closed += 1
        return closed

    def status(self) -> list[TunnelStatus]:
        """Every tunnel this process holds connections for, with each connection."""
        result = []
        for name in sorted(self._tunnels):
            conns = sorted(
                (c.status() for c in self._tunnels[name].values() if c.registration is not None),
                key=lambda s: (s.connector_id, s.connection_index, s.connection_id),
            )
            if conns:
                result.append(TunnelStatus(name, conns[0].tunnel_id, tuple(conns)))
        return result

    def connections(self) -> list[ConnectionStatus]:
        return [c for tunnel in self.status() for c in tunnel.connections]

    def connected(self, tunnel: str) -> bool:
        return any(c.healthy for c in self._tunnels.get(tunnel, {}).values())

    # -- choosing a connection --------------------------------------------------------------

    def _pick(self, tunnel: str, exclude: set[_Connection]) -> _Connection | None:
        conns = self._tunnels.get(tunnel)
        if not conns:
            return None
        candidates = [c for c in conns.values() if c.healthy and c not in exclude]
        if not candidates:
            return None
        turn = self._turn[tunnel] = (self._turn.get(tunnel, -1) + 1) % len(candidates)
        # the fewest open streams; ties go round robin (the first from ``turn`` on)
        count = len(candidates)
        best = candidates[turn]
        fewest = best.core.open_streams
        for index in range(1, count):
            conn = candidates[(turn + index) % count]
            streams = conn.core.open_streams
            if streams < fewest:
                best, fewest = conn, streams
        return best

    async def _connection(self, tunnel: str, exclude: set[_Connection]) -> _Connection | None:
        """The healthy connection with the fewest open streams; waits up to ``ready_wait``
        while this tunnel has connections that may become ready (starting, or replacing one
        that drains), never when it has none at all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_wait
        while True:
            conn = self._pick(tunnel, exclude)
            if conn is not None:
                return conn
            waiting = not exclude and not self._tunnels.get(tunnel)
            left = deadline - loop.time()
            if waiting or left <= 0 or self._stopping:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._change.wait(), left)

    # -- forwarding -------------------------------------------------------------------------

    async def forward_http(self, scope: Scope, receive: Receive, send: Send, out: Outbound) -> int:
        """Relay one HTTP exchange through the tunnel ``out.to``; the status sent (499: the
        client left). The :class:`~zerogate.net.upstream.Upstream` of tunnelled applications.

        Raises :class:`TunnelUnavailable` or :class:`TunnelRequestRefused` when nothing was
        sent to the client.
        """
        tunnel, authority, scheme, path, headers = _outbound(out, scope)
        first = await receive()
        if first["type"] == "http.disconnect":
            return CLIENT_CLOSED
        method: str = scope.get("method", "GET")
        timeouts = out.timeouts_over(self.timeouts)
        source = _BodySource(receive, first)
        bodyless = source.empty
        loop = asyncio.get_running_loop()
        tried: set[_Connection] = set()
        while True:
            conn = self._pick(tunnel, tried) or await self._connection(tunnel, tried)
            if conn is None:
                if tried:
                    raise TunnelUnavailable(
                        "this application's tunnel could not take the request; try again"
                    )
                raise TunnelUnavailable("this application's tunnel has no connected connector")
            try:
                st = conn.open(method, authority, path, headers, scheme=scheme, end_stream=bodyless)
            except InvalidHeaders as exc:
                status = 431 if "exceeds" in str(exc) else 400
                raise TunnelRequestRefused(status, str(exc)) from None
            except UsageError:  # it stopped taking streams since we looked
                tried.add(conn)
                continue
            if bodyless:
                # the common case: the request went out whole; no pump task, and a watcher
                # and a deadline only if the exchange outlives a tick
                watched = _Watched(conn, st, source, loop.time(), timeouts.response)
                self._watchers.add(watched, loop)
                try:
                    head = await st.head
                except _HeadLate:
                    watched.finish(self._watchers)
                    conn.release(st)
                    log.warning(
                        "tunnel %s: no response head within %g s, answered 504",
                        tunnel,
                        timeouts.response,
                    )
                    return await send_error(scope, send, 504)
                except _StreamGone:
                    watched.finish(self._watchers)
                    conn.release(st)
                    if source.client_gone:
                        return CLIENT_CLOSED
                    reset = st.reset
                    if reset is not None and reset.retryable:
                        tried.add(conn)
                        continue
                    raise TunnelUnavailable(
                        "the connector dropped the request before answering"
                    ) from None
                except BaseException:
                    watched.finish(self._watchers)
                    conn.release(st)
                    raise
                try:
                    return await self._relay(conn, st, head, send, timeouts.idle)
                finally:
                    watched.finish(self._watchers)
                    conn.release(st)
            replay = list(source.recorded or [])  # taken now: the copy may be freed below
            sent: asyncio.Future[float] = loop.create_future()
            pump = loop.create_task(self._pump(conn, st, source, replay, sent, timeouts.idle))
            try:
                head = await _head_in_time(st, sent, timeouts.response)
            except TimeoutError as exc:
                pump.cancel()
                conn.release(st)  # the stream is reset: the connector drops its origin request
                if source.client_gone:
                    return CLIENT_CLOSED
                log.warning("tunnel %s: %s, answered 504", tunnel, exc)
                return await send_error(scope, send, 504)
            except _StreamGone:
                await self._end_pump(pump, source)
                conn.release(st)
                if source.client_gone:
                    return CLIENT_CLOSED
                reset = st.reset
                if reset is not None and reset.retryable and source.replayable:
                    tried.add(conn)
                    continue
                raise TunnelUnavailable(
                    "the connector dropped the request before answering"
                ) from None
            except BaseException:
                pump.cancel()
                conn.release(st)
                raise
            break
        source.recorded = None  # the answer has begun: no retry can follow, free the copy
        try:
            return await self._relay(conn, st, head, send, timeouts.idle)
        finally:
            pump.cancel()
            conn.release(st)

    async def _relay(
        self, conn: _Connection, st: _Stream, head: ResponseStarted, send: Send, idle: float | None
    ) -> int:
        # what no connector may make the client keep: hop-by-hop leftovers and Set-Cookie for
        # one of zerogate's own cookie names (the core passes lower-case names only; compared
        # lower-cased all the same, as the origin proxy does)
        response_headers = [
            (k, v)
            for k, v in head.headers
            if k not in _RESPONSE_DROPPED
            and not (k.lower() == b"set-cookie" and is_zerogate_cookie(v))
        ]
        await send(
            {"type": "http.response.start", "status": head.status, "headers": response_headers}
        )
        items = st.items
        while True:
            if items:
                item = items.popleft()
            else:
                try:
                    async with asyncio.timeout(idle):
                        item = await st.get()
                except TimeoutError:
                    log.warning("tunnel %s: response cut off (no byte for %g s)", conn.tunnel, idle)
                    return head.status  # unfinished; the caller resets the stream
            if item is None:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return head.status
            if isinstance(item, StreamReset):
                if not item.remote and item.error_code == ErrorCodes.CANCEL:
                    return head.status  # client left or connection lost: leave it unfinished
                log.warning(
                    "tunnel %s: response cut off (stream reset, %s)", conn.tunnel, item.error_code
                )
                return head.status
            size = len(item)
            if items and isinstance(items[0], bytes):
                # several frames arrived in one read: one message (one send) for all of them
                parts = [item]
                while items and isinstance(items[0], bytes) and size < _RELAY_JOIN:
                    part = items.popleft()
                    assert isinstance(part, bytes)
                    parts.append(part)
                    size += len(part)
                item = b"".join(parts)
            if items and items[0] is None:  # the last chunk: one message ends the body
                items.popleft()
                await send({"type": "http.response.body", "body": item, "more_body": False})
                conn.ack(st, size)
                return head.status
            await send({"type": "http.response.body", "body": item, "more_body": True})
            conn.ack(st, size)

    async def _pump(
        self,
        conn: _Connection,
        st: _Stream,
        source: _BodySource,
        replay: list[bytes],
        sent: asyncio.Future[float],
        idle: float | None,
    ) -> None:
        """Send the request body (replaying what a refused attempt already read), then watch
        for the client leaving. ``sent`` gets the time the request was sent in full, or a
        ``TimeoutError`` when the connector took no byte of it for ``idle`` seconds."""

        async def write(chunk: bytes, *, end: bool = False) -> None:
            try:
                async with asyncio.timeout(idle):
                    await conn.write(st, chunk, end=end)
            except TimeoutError:
                if not sent.done() and not st.head.done():
                    sent.set_exception(
                        TimeoutError(f"the connector took no request byte for {idle:g} s")
                    )
                raise _StreamGone from None

        try:
            if st.local_ended:
                pass
            else:
                for chunk in replay:
                    await write(chunk)
                while not source.done:
                    chunk, more = await source.next()
                    await write(chunk, end=not more)
                if not st.local_ended:
                    await write(b"", end=True)
            if not sent.done():
                sent.set_result(asyncio.get_running_loop().time())
            source.watching = True
            while True:
                message = await source.receive()
                if message["type"] == "http.disconnect":
                    source.client_gone = True
                    raise _ClientGone
        except _ClientGone:
            st.fail(StreamReset(st.sid, int(ErrorCodes.CANCEL), remote=False))
            conn.release(st)
        except _StreamGone:
            pass

    async def _end_pump(self, pump: asyncio.Task[None], source: _BodySource) -> None:
        """Stop the body pump of a failed attempt without losing a body chunk: one waiting
        in ``receive()`` for the body ends by itself once the chunk arrives (and is kept)."""
        if source.watching or source.done or pump.done():
            pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump

    def _ws_head_timeout(self, out: Outbound) -> float | None:
        return out.timeouts_over(self.timeouts).response

    async def forward_websocket(
        self, scope: Scope, receive: Receive, send: Send, out: Outbound
    ) -> None:
        """Relay one WebSocket session through the tunnel ``out.to`` as an extended CONNECT
        stream.

        Raises :class:`TunnelUnavailable` / :class:`TunnelRequestRefused` before the client was
        accepted (the caller closes it); the connector's refusal (its status) is passed on.
        """
        tunnel, authority, scheme, path, headers = _outbound(out, scope)
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        forwarded = [(k, v) for k, v in headers if k.lower() not in _WS_NOT_FORWARDED]
        tried: set[_Connection] = set()
        while True:
            conn = await self._connection(tunnel, tried)
            if conn is None:
                raise TunnelUnavailable("this application's tunnel has no connected connector")
            if not conn.core.extended_connect:
                tried.add(conn)
                continue
            try:
                st = conn.open(
                    "CONNECT", authority, path, forwarded, scheme=scheme, protocol="websocket"
                )
            except InvalidHeaders as exc:
                raise TunnelRequestRefused(400, str(exc)) from None
            except UsageError:
                tried.add(conn)
                continue
            try:
                async with asyncio.timeout(self._ws_head_timeout(out)):
                    head = await st.head
            except TimeoutError:
                conn.release(st)
                log.warning("tunnel %s: no answer to a WebSocket in time, answered 504", tunnel)
                await reject_websocket(scope, send, 504)
                return
            except _StreamGone:
                conn.release(st)
                if st.reset is not None and st.reset.retryable:
                    tried.add(conn)
                    continue
                raise TunnelUnavailable(
                    "the connector dropped the WebSocket before answering"
                ) from None
            except BaseException:
                conn.release(st)
                raise
            break
        try:
            if not 200 <= head.status <= 299:
                await _reject_websocket(scope, send, head.status)
                return
            protocol = next(
                (v.decode("latin-1") for k, v in head.headers if k == b"sec-websocket-protocol"),
                None,
            )
            await send({"type": "websocket.accept", "subprotocol": protocol})
            await _relay_websocket(conn, st, receive, send)
        finally:
            conn.release(st)


async def _head_in_time(
    st: _Stream, sent: asyncio.Future[float], response: float | None
) -> ResponseStarted:
    """The response head, due ``response`` seconds after the request was sent in full (the
    upload itself is paced by the idle timeout, in the pump); ``TimeoutError`` if late."""
    loop = asyncio.get_running_loop()
    head = st.head
    while not head.done():
        if sent.done():
            if sent.exception() is not None:
                raise TimeoutError(str(sent.exception()))
            if response is None:
                return await head
            left = sent.result() + response - loop.time()
            if left <= 0:
                raise TimeoutError(f"no response head within {response:g} s")
            await asyncio.wait((head,), timeout=left)
        else:
            await asyncio.wait((head, sent), return_when=asyncio.FIRST_COMPLETED)
    if sent.done() and not sent.cancelled() and sent.exception() is not None:
        raise TimeoutError(str(sent.exception()))
    return head.result()


async def _reject_websocket(scope: Scope, send: Send, status: int) -> None:
    body = f"{status}: the application refused the WebSocket\n".encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    await websocket.reject(scope, send, status, headers, body)


async def _relay_websocket(conn: _Connection, st: _Stream, receive: Receive, send: Send) -> None:
    ws = WsConnection(ConnectionType.CLIENT)

    async def client_to_origin() -> None:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                frame = (
                    ws.send(TextMessage(data=text))
                    if text is not None
                    else ws.send(BytesMessage(data=message.get("bytes") or b""))
                )
                await conn.write(st, frame)
            elif kind == "websocket.disconnect":
                code, reason = websocket.client_close(message)
                if ws.state is WsState.OPEN:
                    await conn.write(st, ws.send(CloseConnection(code, reason)), end=True)
                return

    async def origin_to_client() -> tuple[int, str]:
        parts: list[str | bytes | bytearray] = []
        size = 0
        while True:
            item = await st.get()
            if item is None or isinstance(item, StreamReset):
                return 1011, ""
            ws.receive_data(item)
            for event in ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    parts.append(event.data)
                    size += len(event.data)
                    if size > WS_MAX_MESSAGE:
                        if ws.state is WsState.OPEN:
                            await conn.write(st, ws.send(CloseConnection(1009, "too big")))
                        return 1009, "message too big"
                    if event.message_finished:
                        if isinstance(event, TextMessage):
                            text = "".join(p for p in parts if isinstance(p, str))
                            await send({"type": "websocket.send", "text": text})
                        else:
                            data = b"".join(p for p in parts if not isinstance(p, str))
                            await send({"type": "websocket.send", "bytes": data})
                        parts, size = [], 0
                elif isinstance(event, Ping):
                    await conn.write(st, ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if ws.state is WsState.REMOTE_CLOSING:
                        await conn.write(st, ws.send(event.response()), end=True)
                    return websocket.sendable_close_code(event.code, 1000), event.reason or ""
            conn.ack(st, len(item))

    client, origin = await websocket.both_ways(client_to_origin(), origin_to_client())
    if origin.ok and origin.value is not None:
        code, reason = origin.value
        await send({"type": "websocket.close", "code": code, "reason": reason})
    elif not client.ok:
        await send({"type": "websocket.close", "code": 1011, "reason": ""})
