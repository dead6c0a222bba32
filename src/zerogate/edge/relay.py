"""Edge-to-edge relay: a tunnelled request that reaches an edge (or worker) holding no
connection to its tunnel is carried to a node that holds one (issue #14; Teleport's proxy
peering, its RFD 0069, is the model).

- The edge the user reached decides: route, identity, policy, the headers the application
  gets (``Zerogate-Jwt-Assertion`` …) are all done before the request leaves it, exactly as for
  a local tunnel. The holding edge only forwards: it hands the request to its own
  :class:`~zerogate.edge.tunnel.TunnelListener` and never relays it further (no loops).
- :class:`RelayUpstream` is the third :class:`~zerogate.net.upstream.Upstream` (beside the
  origin proxy and the tunnel listener); :class:`ClusterTunnels` is what the pipeline gets as
  the tunnels' upstream: the local listener when this process holds a ready connection of the
  tunnel (or no other node does), else the relay.
- The channel is HTTP/1.1 over mutual TLS (aiohttp on both ends, keep-alive connections): the
  listener (:class:`RelayListener`) requires a client certificate issued by the cluster CA kept
  in the store (``zerogate.tunnel.peers``), the client checks that the peer's certificate names
  the node it dialled. A plain client, a TLS client without a certificate, or one with a
  certificate of any other CA never gets an HTTP byte through; the public HTTP port never reads
  a relay header (the pipeline drops every client ``Zerogate-*`` header).
- Bodies stream both ways with bounded memory (aiohttp's flow control on the relay hop, the
  tunnel's windows after it); server-sent events pass chunk by chunk; a WebSocket is a
  WebSocket on the relay hop too (aiohttp's client and server), relayed message by message.
- Which node holds what comes from :class:`Peers`, the in-memory copy of the store's presence
  view that the server refreshes every second (no database round trip per request). A node
  that refuses the connection (killed, restarting) is skipped for :data:`DOWN_SECONDS` and the
  request goes to the next holder, as long as nothing of it was lost: the request body is
  replayable while at most :data:`REPLAY_LIMIT` bytes were read. A holding node that no longer
  holds the tunnel answers ``Zerogate-Relay: miss`` and the next holder is tried the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web
from yarl import URL

from zerogate.edge.proxy import WS_MAX_MESSAGE, reject_websocket, send_error
from zerogate.edge.tunnel import TunnelListener, TunnelRequestRefused, TunnelUnavailable
from zerogate.net import websocket
from zerogate.net.asgi import Headers, Message, Receive, Scope, Send
from zerogate.net.client import proxy_session
from zerogate.net.headers import HOP_BY_HOP, downstream_response_headers
from zerogate.net.http import request_target
from zerogate.net.upstream import (
    DEFAULT_TIMEOUTS,
    Outbound,
    Timeouts,
    UpstreamRefused,
    UpstreamUnavailable,
)
from zerogate.store import ClusterNode, ClusterView
from zerogate.tunnel.peers import CertPair, issue_node, node_name

__all__ = [
    "DOWN_SECONDS",
    "REPLAY_LIMIT",
    "ClusterTunnels",
    "PeerTLS",
    "Peers",
    "RelayListener",
    "RelayUpstream",
]

log = logging.getLogger("zerogate.relay")

DOWN_SECONDS: Final = 5.0
"""A node whose relay listener refused a connection is not tried again for this long."""
REPLAY_LIMIT: Final = 256 * 1024
"""Request-body bytes kept so that a request can go to another holder."""
CLIENT_CLOSED: Final = 499
CONNECT_SECONDS: Final = 3.0
"""At most this long to connect to a node's relay listener (then the next holder is tried):
the nodes of a cluster are near each other, and a silent one should not hold a request for the
application's whole connect timeout."""
RENEW_AFTER: Final = 24 * 3600.0
"""A node renews its certificate this many seconds after issuing it (it is valid twice as long)."""

# the relay's own headers (request: A → B; response: B → A), never passed on either way
H_TUNNEL: Final = "zerogate-relay-tunnel"
H_AUTHORITY: Final = "zerogate-relay-authority"
H_SCHEME: Final = "zerogate-relay-scheme"
H_TIMEOUTS: Final = "zerogate-relay-timeouts"
H_RESULT: Final = "zerogate-relay"
_PREFIX: Final = b"zerogate-relay"
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_SAFE_WS_DROP: Final = frozenset(
    {b"connection", b"upgrade", b"sec-websocket-key", b"sec-websocket-version"}
)


# --------------------------------------------------------------------------------------------
# Who holds what, and the certificates
# --------------------------------------------------------------------------------------------


class Peers:
    """This node's in-memory view of the cluster: which other nodes hold which tunnel."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.view = ClusterView((), ())
        self._down: dict[str, float] = {}
        self._turn = 0

    def update(self, view: ClusterView) -> None:
        self.view = view

    def holders(self, tunnel: str) -> list[ClusterNode]:
        """Other live nodes holding a connection of ``tunnel`` (most connections first)."""
        return [n for n in self.view.holders(tunnel) if n.node_id != self.node_id]

    def pick(self, tunnel: str, tried: set[str]) -> ClusterNode | None:
        """The next holder to try: not tried yet, preferring one not recently down; turns
        between holders so that the load spreads."""
        candidates = [n for n in self.holders(tunnel) if n.node_id not in tried]
        if not candidates:
            return None
        now = asyncio.get_running_loop().time()
        up = [n for n in candidates if self._down.get(n.node_id, 0.0) <= now]
        pool = up or candidates
        self._turn = (self._turn + 1) % len(pool)
        return pool[self._turn]

    def mark_down(self, node_id: str) -> None:
        self._down[node_id] = asyncio.get_running_loop().time() + DOWN_SECONDS


def _load_chain(context: ssl.SSLContext, pair: CertPair) -> None:
    with tempfile.TemporaryDirectory(prefix="zerogate-relay-") as folder:
        cert_path, key_path = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert_path.write_text(pair.cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(pair.key_pem)
        context.load_cert_chain(cert_path, key_path)


class PeerTLS:
    """The mutual-TLS contexts of one node: its own certificate (issued from the cluster CA
    and renewed in place, so connections made later get the new one) and the CA as the only
    trust anchor on both ends."""

    def __init__(self, ca: CertPair, node_id: str) -> None:
        self.ca = ca
        self.node_id = node_id
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cadata=ca.cert_pem)
        server.minimum_version = ssl.TLSVersion.TLSv1_3
        server.verify_mode = ssl.CERT_REQUIRED
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca.cert_pem)
        client.minimum_version = ssl.TLSVersion.TLSv1_3
        client.check_hostname = True
        self.server = server
        self.client = client
        self.issued_at = 0.0
        self.renew()

    def renew(self) -> None:
        pair = issue_node(self.ca, self.node_id)
        _load_chain(self.server, pair)
        _load_chain(self.client, pair)
        self.issued_at = time.monotonic()

    def renew_if_due(self) -> None:
        if time.monotonic() - self.issued_at > RENEW_AFTER:
            self.renew()


# --------------------------------------------------------------------------------------------
# The client side: an Upstream that carries a request to the node holding its tunnel
# --------------------------------------------------------------------------------------------


class _Body:
    """The client's request body, read once, kept (up to :data:`REPLAY_LIMIT`) for a retry."""

    def __init__(self, receive: Receive, first: Message) -> None:
        self.receive = receive
        self.first_body: bytes = first.get("body", b"")
        self.more = bool(first.get("more_body", False))
        self.recorded: list[bytes] | None = [self.first_body] if self.first_body else []
        self.size = len(self.first_body)
        self.client_gone = False
        self.started = 0  # how many attempts began to read the body

    @property
    def replayable(self) -> bool:
        return self.recorded is not None and not self.client_gone

    def data(self) -> bytes | AsyncIterator[bytes] | None:
        if not self.more:
            return self.first_body or None
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        self.started += 1
        for chunk in list(self.recorded or []):
            yield chunk
        if self.recorded is None and self.started > 1:  # cannot happen: not replayable
            raise RuntimeError("the request body was not kept")
        while self.more:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.client_gone = True
                raise ConnectionResetError("the client went away")
            chunk = message.get("body", b"")
            self.more = bool(message.get("more_body", False))
            self.size += len(chunk)
            if self.recorded is not None:
                if self.size > REPLAY_LIMIT:
                    self.recorded = None
                elif chunk:
                    self.recorded.append(chunk)
            if chunk:
                yield chunk


def _relay_headers(out: Outbound, tunnel: str, timeouts: Timeouts) -> list[tuple[str, str]]:
    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:g}"

    return [
        (H_TUNNEL, tunnel),
        (H_AUTHORITY, out.authority),
        (H_SCHEME, out.scheme),
        (H_TIMEOUTS, f"{num(timeouts.response)},{num(timeouts.idle)}"),
    ]


def _as_text(headers: Headers, *, websocket: bool = False) -> list[tuple[str, str]]:
    """ASGI headers as aiohttp's text pairs (a value that is not UTF-8 is dropped; relay
    headers a caller put in are never passed)."""
    out: list[tuple[str, str]] = []
    for name, value in headers:
        key = name.lower()
        if key.startswith(_PREFIX) or (websocket and key in _SAFE_WS_DROP):
            continue
        if websocket and key.startswith(b"sec-websocket-"):
            continue
        try:
            out.append((key.decode("latin-1"), value.decode()))
        except UnicodeDecodeError:
            log.debug("dropped request header %r: value is not UTF-8", name)
    return out


class RelayUpstream:
    """Carries an allowed request to a node that holds its tunnel (see the module docstring).

    ``out.to`` is the tunnel's name; raises :class:`~zerogate.net.upstream.UpstreamUnavailable`
    when no holder could take the request before anything reached the client."""

    def __init__(self, peers: Peers, tls: PeerTLS, *, timeouts: Timeouts = DEFAULT_TIMEOUTS):
        self.peers = peers
        self.tls = tls
        self.timeouts = timeouts.over(DEFAULT_TIMEOUTS)
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ssl=self.tls.client)
            self._session = proxy_session(connector, aiohttp.ClientTimeout(total=None))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _url(self, node: ClusterNode, target: str, scheme: str = "https") -> URL:
        return URL(f"{scheme}://{node.relay_address}{target}", encoded=True)

    async def forward_http(self, scope: Scope, receive: Receive, send: Send, out: Outbound) -> int:
        target = request_target(out.path_qs)
        if target is None:
            raise UpstreamRefused(400, "the request target cannot be forwarded")
        tunnel = out.to
        first = await receive()
        if first["type"] == "http.disconnect":
            return CLIENT_CLOSED
        body = _Body(receive, first)
        timeouts = out.timeouts_over(self.timeouts)
        connect = min(timeouts.connect or CONNECT_SECONDS, CONNECT_SECONDS)
        client_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect, connect=None, sock_read=timeouts.response
        )
        headers = _as_text(out.headers) + _relay_headers(out, tunnel, timeouts)
        method: str = scope.get("method", "GET")
        tried: set[str] = set()
        while True:
            node = self.peers.pick(tunnel, tried)
            if node is None:
                raise TunnelUnavailable(
                    "this application's tunnel could not take the request; try again"
                    if tried
                    else "this application's tunnel has no connected connector"
                )
            tried.add(node.node_id)
            try:
                response = await self.session().request(
                    method,
                    self._url(node, target),
                    headers=headers,
                    data=body.data(),
                    allow_redirects=False,
                    timeout=client_timeout,
                    server_hostname=node_name(node.node_id),
                )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # no connection was made (refused, unreachable, TLS refused): nothing was sent
                if body.client_gone:
                    return CLIENT_CLOSED
                self.peers.mark_down(node.node_id)
                log.warning("relay to node %s: %s", node.node_id, exc)
                if body.replayable:
                    continue
                raise TunnelUnavailable(
                    "the edge holding this tunnel could not be reached"
                ) from None
            except TimeoutError:
                if body.client_gone:
                    return CLIENT_CLOSED
                log.warning("relay to node %s: no answer in time, answered 504", node.node_id)
                return await send_error(scope, send, 504)
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                if body.client_gone:
                    return CLIENT_CLOSED
                log.warning("relay to node %s: %s (%s)", node.node_id, type(exc).__name__, exc)
                if method in _SAFE_METHODS and not first.get("body") and not body.more:
                    continue  # a pooled connection the peer had just closed: safe to repeat
                return await send_error(scope, send, 502)
            result = response.headers.get(H_RESULT)
            if result in ("miss", "unavailable", "refused"):
                # the holding node could not carry it and said why; nothing reached the client
                try:
                    why = (await response.content.read(1024)).decode(errors="replace").strip()
                except (aiohttp.ClientError, OSError, TimeoutError):
                    why = ""
                response.close()
                if result == "miss" and body.replayable:
                    continue
                if result == "refused":
                    raise TunnelRequestRefused(response.status, why or "refused")
                raise TunnelUnavailable(why or "the edge holding this tunnel could not take it")
            try:
                return await self._relay_response(send, response, timeouts.idle)
            finally:
                if response.content.at_eof():
                    response.release()
                else:
                    response.close()

    async def _relay_response(
        self, send: Send, response: aiohttp.ClientResponse, idle: float | None
    ) -> int:
        connection = response.connection
        protocol = connection.protocol if connection is not None else None
        if protocol is not None and not response.content.is_eof():
            protocol.read_timeout = idle
            protocol.start_timeout()
        status = response.status
        headers = [
            (k, v)
            for k, v in downstream_response_headers(response.raw_headers)
            if not k.lower().startswith(_PREFIX)
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
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
            log.warning("relay: response cut off: %s (%s)", type(exc).__name__, exc)
            return status  # unfinished: the server drops the client's connection
        await send({"type": "http.response.body", "body": chunk, "more_body": False})
        return status

    async def forward_websocket(
        self, scope: Scope, receive: Receive, send: Send, out: Outbound
    ) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        target = request_target(out.path_qs)
        if target is None:
            raise UpstreamRefused(400, "the request target cannot be forwarded")
        tunnel = out.to
        timeouts = out.timeouts_over(self.timeouts)
        headers = _as_text(out.headers, websocket=True) + _relay_headers(out, tunnel, timeouts)
        handshake = None
        if timeouts.connect is not None and timeouts.response is not None:
            handshake = timeouts.connect + timeouts.response
        tried: set[str] = set()
        while True:
            node = self.peers.pick(tunnel, tried)
            if node is None:
                raise TunnelUnavailable("this application's tunnel has no connected connector")
            tried.add(node.node_id)
            try:
                async with asyncio.timeout(handshake):
                    ws = await self.session().ws_connect(
                        self._url(node, target, "wss"),
                        protocols=tuple(scope.get("subprotocols") or ()),
                        headers=headers,
                        autoclose=True,
                        autoping=True,
                        compress=0,
                        max_msg_size=WS_MAX_MESSAGE,
                        server_hostname=node_name(node.node_id),
                    )
            except aiohttp.WSServerHandshakeError as exc:
                miss = exc.headers is not None and exc.headers.get(H_RESULT) == "miss"
                if miss:
                    continue
                status = exc.status if 400 <= exc.status <= 599 else 502
                await reject_websocket(scope, send, status)
                return
            except (aiohttp.ClientConnectorError, aiohttp.ClientSSLError) as exc:
                self.peers.mark_down(node.node_id)
                log.warning("relay to node %s: %s", node.node_id, exc)
                continue
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                log.warning("relay to node %s: WebSocket: %s", node.node_id, exc)
                await reject_websocket(scope, send, 504 if isinstance(exc, TimeoutError) else 502)
                return
            break
        try:
            await send({"type": "websocket.accept", "subprotocol": ws.protocol})
            await websocket.relay_aiohttp(ws, receive, send)
        finally:
            await ws.close()


# --------------------------------------------------------------------------------------------
# What the pipeline gets: local when we hold the tunnel, the relay when another node does
# --------------------------------------------------------------------------------------------


class ClusterTunnels:
    """The upstream of tunnelled applications in a process that is a node of a cluster."""

    def __init__(self, local: TunnelListener, relay: RelayUpstream) -> None:
        self.local = local
        self.relay = relay

    def _upstream(self, tunnel: str) -> TunnelListener | RelayUpstream:
        if self.local.connected(tunnel) or not self.relay.peers.holders(tunnel):
            return self.local
        return self.relay

    async def forward_http(self, scope: Scope, receive: Receive, send: Send, out: Outbound) -> int:
        return await self._upstream(out.to).forward_http(scope, receive, send, out)

    async def forward_websocket(
        self, scope: Scope, receive: Receive, send: Send, out: Outbound
    ) -> None:
        await self._upstream(out.to).forward_websocket(scope, receive, send, out)


# --------------------------------------------------------------------------------------------
# The holding side: the relay listener
# --------------------------------------------------------------------------------------------


def _timeouts(text: str | None) -> Timeouts | None:
    if not text:
        return None
    parts = text.split(",")
    if len(parts) != 2:
        return None
    values: list[float | None] = []
    for part in parts:
        part = part.strip()
        if part == "-":
            values.append(None)
            continue
        try:
            value = float(part)
        except ValueError:
            return None
        if not 0 < value <= 86400:
            return None
        values.append(value)
    return Timeouts(response=values[0], idle=values[1])


def _inbound_headers(request: web.BaseRequest, *, ws: bool) -> Headers:
    """The relayed request's headers as the tunnel gets them: hop-by-hop and relay headers
    dropped (a WebSocket keeps its upgrade, as the pipeline writes it)."""
    out: Headers = []
    for name, value in request.raw_headers:
        key = name.lower()
        if key.startswith(_PREFIX) or key in HOP_BY_HOP:
            continue
        if ws and key in (b"sec-websocket-key", b"sec-websocket-extensions"):
            continue
        out.append((key, value))
    if ws:
        out.append((b"upgrade", b"websocket"))
        out.append((b"connection", b"upgrade"))
    return out


class RelayListener:
    """Serves the requests other nodes relay to the tunnels this process holds (mutual TLS:
    only a client with a certificate of the cluster CA gets in)."""

    def __init__(
        self, local: TunnelListener, tls: PeerTLS, *, served: Callable[[], None] | None = None
    ) -> None:
        self.local = local
        self.tls = tls
        #: called once per relayed request received (``zerogate_relay_served_total``); the edge
        #: the client reached counts the request itself, this node never does again
        self.served = served
        self.address: tuple[str, int] | None = None
        self._runner: web.ServerRunner | None = None

    async def start(self, host: str, port: int, *, tries: int = 1) -> None:
        """Listen on ``host:port`` (0: any free port; else the first free one of ``tries``
        ports from ``port``); ``OSError`` when none is free."""
        # no aiohttp access line per relayed request: the edge the client reached writes the
        # request's access event; at INFO these lines were one stderr write per request
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, handle_signals=False)
        await runner.setup()
        error: OSError | None = None
        for offset in range(max(1, tries) if port else 1):
            try:
                sock = socket.create_server(
                    (host, port + offset if port else 0),
                    family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                    reuse_port=False,
                )
            except OSError as exc:
                error = exc
                continue
            site = web.SockSite(runner, sock, ssl_context=self.tls.server, backlog=1024)
            await site.start()
            name = sock.getsockname()
            self.address = (str(name[0]), int(name[1]))
            self._runner = runner
            log.info("relay listening on %s:%d (mutual TLS)", *self.address)
            return
        await runner.cleanup()
        raise error or OSError("no port to listen on")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        peer_cert = request.transport.get_extra_info("peercert") if request.transport else None
        if not peer_cert:  # the TLS layer requires one; refuse outright if it is ever missing
            raise web.HTTPForbidden()
        tunnel = request.headers.get(H_TUNNEL, "")
        if not tunnel:
            return web.Response(status=400, text="not a relayed request\n")
        authority = request.headers.get(H_AUTHORITY, "")
        scheme = request.headers.get(H_SCHEME, "http")
        if scheme not in ("http", "https"):
            scheme = "http"
        is_ws = request.headers.get("upgrade", "").lower() == "websocket"
        headers = _inbound_headers(request, ws=is_ws)
        raw_path = request.raw_path
        out = Outbound(
            tunnel,
            raw_path.encode("latin-1"),
            headers,
            authority=authority,
            scheme=scheme,
            timeouts=_timeouts(request.headers.get(H_TIMEOUTS)),
        )
        if self.served is not None:
            self.served()
        peername = request.transport.get_extra_info("peername") if request.transport else None
        path, _, query = raw_path.partition("?")
        scope: dict[str, Any] = {
            "type": "websocket" if is_ws else "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": scheme,
            "path": request.path,
            "raw_path": path.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "headers": headers,
            "client": tuple(peername[:2]) if peername else None,
        }
        if is_ws:
            return await self._websocket(request, scope, out)
        return await self._http(request, scope, out)

    async def _http(
        self, request: web.BaseRequest, scope: Scope, out: Outbound
    ) -> web.StreamResponse:
        if not self.local.connected(out.to):
            # holding nothing (the relaying node's view is behind): say so before reading
            # anything, so that it may try another holder
            return web.Response(status=502, headers={H_RESULT: "miss"}, text="not held here\n")
        response: web.StreamResponse | None = None
        content = request.content
        body_done = False
        gone = asyncio.Event()

        async def receive() -> Message:
            nonlocal body_done
            if body_done:
                await gone.wait()  # the tunnel's pump watches for the client leaving
                return {"type": "http.disconnect"}
            chunk = await content.readany()
            if content.at_eof():
                body_done = True
            return {"type": "http.request", "body": chunk, "more_body": not body_done}

        async def send(message: Message) -> None:
            nonlocal response
            kind = message["type"]
            if kind == "http.response.start":
                response = web.StreamResponse(status=message["status"])
                for key, value in message.get("headers") or []:
                    name = key.decode("latin-1")
                    if key.lower().startswith(_PREFIX):
                        continue
                    response.headers.add(name, value.decode("latin-1"))
                response.headers[H_RESULT] = "ok"
                await response.prepare(request)
            elif kind == "http.response.body":
                assert response is not None
                body = message.get("body", b"")
                if body:
                    await response.write(body)
                if not message.get("more_body", False):
                    await response.write_eof()

        try:
            await self.local.forward_http(scope, receive, send, out)
        except UpstreamUnavailable as exc:
            return web.Response(status=502, headers={H_RESULT: "unavailable"}, text=f"{exc}\n")
        except UpstreamRefused as exc:
            return web.Response(status=exc.status, headers={H_RESULT: "refused"}, text=f"{exc}\n")
        finally:
            gone.set()
        if response is None:
            return web.Response(status=502, headers={H_RESULT: "unavailable"}, text="no answer\n")
        return response

    async def _websocket(
        self, request: web.BaseRequest, scope: Scope, out: Outbound
    ) -> web.StreamResponse:
        offered = request.headers.get("sec-websocket-protocol", "")
        scope = {
            **scope,
            "subprotocols": [p.strip() for p in offered.split(",") if p.strip()],
            "extensions": {"websocket.http.response": {}},
        }
        if not self.local.connected(out.to):
            return web.Response(status=502, headers={H_RESULT: "miss"}, text="not held here\n")
        ws: web.WebSocketResponse | None = None
        refused: web.StreamResponse | None = None
        connected = False

        async def receive() -> Message:
            nonlocal connected
            if not connected:
                connected = True
                return {"type": "websocket.connect"}
            if ws is None:
                await asyncio.Event().wait()
            assert ws is not None
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.TEXT:
                return {"type": "websocket.receive", "text": msg.data}
            if msg.type is aiohttp.WSMsgType.BINARY:
                return {"type": "websocket.receive", "bytes": msg.data}
            if msg.type is aiohttp.WSMsgType.CLOSE:
                return {"type": "websocket.disconnect", "code": msg.data, "reason": msg.extra}
            return {"type": "websocket.disconnect", "code": 1006}

        async def send(message: Message) -> None:
            nonlocal ws, refused
            kind = message["type"]
            if kind == "websocket.accept":
                sub = message.get("subprotocol")
                ws = web.WebSocketResponse(
                    protocols=(sub,) if sub else (),
                    autoping=True,
                    max_msg_size=WS_MAX_MESSAGE,
                    compress=False,
                )
                ws.headers[H_RESULT] = "ok"
                await ws.prepare(request)
            elif kind == "websocket.send" and ws is not None:
                text = message.get("text")
                if text is not None:
                    await ws.send_str(text)
                else:
                    await ws.send_bytes(message.get("bytes") or b"")
            elif kind == "websocket.close":
                if ws is not None:
                    await ws.close(
                        code=int(message.get("code", 1000)),
                        message=str(message.get("reason") or "").encode(),
                    )
                else:
                    refused = web.Response(status=403, headers={H_RESULT: "refused"})
            elif kind == "websocket.http.response.start":
                refused = web.StreamResponse(status=message["status"])
                for key, value in message.get("headers") or []:
                    refused.headers.add(key.decode("latin-1"), value.decode("latin-1"))
                refused.headers[H_RESULT] = "refused"
                await refused.prepare(request)
            elif kind == "websocket.http.response.body" and refused is not None:
                await refused.write(message.get("body", b""))
                if not message.get("more_body", False):
                    await refused.write_eof()

        try:
            await self.local.forward_websocket(scope, receive, send, out)
        except UpstreamUnavailable as exc:
            return web.Response(status=502, headers={H_RESULT: "unavailable"}, text=f"{exc}\n")
        except UpstreamRefused as exc:
            return web.Response(status=exc.status, headers={H_RESULT: "refused"}, text=f"{exc}\n")
        if ws is not None:
            if not ws.closed:
                await ws.close()
            return ws
        if refused is not None:
            return refused
        return web.Response(status=502, headers={H_RESULT: "unavailable"})


def relay_bind(listen_relay: str | None) -> tuple[str, int]:
    """``listen.relay`` as (host, port); unset: ``127.0.0.1`` on any free port."""
    if listen_relay is None:
        return "127.0.0.1", 0
    host, _, port = listen_relay.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - the operator's choice


def advertised(address: tuple[str, int], advertise: str | None) -> str:
    """What other nodes dial: ``advertise`` (else the bound address) with the bound port."""
    host = advertise or address[0]
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{address[1]}"
