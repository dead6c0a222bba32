"""Upstream timeouts (issue #18 item 3): connect, response head and idle body, a default in the
settings and an application's own, against real origins that hang.

- the model: ``upstream_timeouts`` and an application's ``timeouts`` parse, bad values are
  refused naming the object and the field;
- a real ``zerogate server`` before origins that accept and never answer, answer a head and
  stall, or never accept: 504 (or a cut-off response) within the configured time, the
  application's value beats the default, the origin's connection is closed, and the edge
  worker's file descriptors come back to where they were after a burst of hung requests;
- the aiohttp path (an HTTPS origin that completes TLS, then hangs) in process;
- the tunnel listener with a test connector whose origin hangs: 504, the stream reset, the
  application's value beating the listener's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import trustme

from edge_harness import http_request, raw_request
from harness import free_port, wait_for
from zerogate.edge.proxy import OriginProxy
from zerogate.edge.tunnel import TunnelListener, server_ssl_context
from zerogate.model.loader import ConfigError, load_file
from zerogate.net.upstream import Outbound, Timeouts
from zerogate.policy import compile_snapshot, compile_timeouts
from zerogate.tunnel import certs
from zg_harness import TunnelRequest, TunnelTestConnector, Zerogate, wait_ready, worker_pids

# ---------------------------------------------------------------------------- hanging origins


class HangingOrigin:
    """A TCP origin on its own thread that reads requests and then, by ``mode``:

    - ``"silent"``: never answers;
    - ``"stall"``: sends a head announcing 1000 bytes and 5 of them, then nothing.

    ``open`` is the number of connections it holds; ``closed`` how many the peer closed.
    """

    def __init__(self, mode: str, *, tls: ssl.SSLContext | None = None) -> None:
        self.mode = mode
        self.tls = tls
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1024)
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.accepted = 0
        self.closed = 0
        self.requests = 0
        self._conns: dict[socket.socket, bytes] = {}
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def open(self) -> int:
        with self._lock:
            return len(self._conns)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        while not self._stop:
            for key, _ in sel.select(0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.listener:
                    with contextlib.suppress(BlockingIOError):
                        conn, _ = self.listener.accept()
                        if self.tls is not None:
                            conn.settimeout(5)
                            try:
                                conn = self.tls.wrap_socket(conn, server_side=True)
                            except (OSError, ssl.SSLError):
                                conn.close()
                                continue
                        conn.setblocking(False)
                        with self._lock:
                            self._conns[conn] = b""
                            self.accepted += 1
                        sel.register(conn, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, ssl.SSLWantReadError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(sock)
                    sock.close()
                    with self._lock:
                        self._conns.pop(sock, None)
                        self.closed += 1
                    continue
                with self._lock:
                    seen = self._conns[sock] + data
                    self._conns[sock] = seen
                if b"\r\n\r\n" in seen and not seen.startswith(b"!"):
                    with self._lock:
                        self._conns[sock] = b"!"  # answered (or ignored) once
                        self.requests += 1
                    if self.mode == "stall":
                        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nhello")
        for conn in list(self._conns):
            conn.close()
        self.listener.close()

    def stop(self) -> None:
        self._stop = True
        self._thread.join(5)


class UnacceptingOrigin:
    """A port whose accept queue is full: a new connection's SYN is dropped, connect hangs."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port: int = self.listener.getsockname()[1]
        self.fillers: list[socket.socket] = []
        # fill the queue (backlog 0 still queues one or two) until a connect no longer completes
        for _ in range(8):
            filler = socket.socket()
            filler.settimeout(0.3)
            try:
                filler.connect(("127.0.0.1", self.port))
            except OSError:
                filler.close()
                break
            self.fillers.append(filler)

    def stop(self) -> None:
        for sock in self.fillers:
            sock.close()
        self.listener.close()


@pytest.fixture(scope="module")
def silent() -> Iterator[HangingOrigin]:
    origin = HangingOrigin("silent")
    yield origin
    origin.stop()


@pytest.fixture(scope="module")
def stall() -> Iterator[HangingOrigin]:
    origin = HangingOrigin("stall")
    yield origin
    origin.stop()


@pytest.fixture(scope="module")
def unaccepting() -> Iterator[UnacceptingOrigin]:
    origin = UnacceptingOrigin()
    yield origin
    origin.stop()


# ---------------------------------------------------------------------------- the model


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "zerogate.yaml"
    path.write_text(body)
    return path


APP = """
applications:
  - name: wiki
    domain: wiki.example.com
    origin: http://127.0.0.1:9
    {timeouts}
    policies:
      - {{name: all, decision: bypass, include: [{{ip: [127.0.0.0/8]}}]}}
"""


def test_timeouts_parse_and_the_application_overrides_key_by_key(tmp_path: Path) -> None:
    body = "upstream_timeouts: {connect: 2s, response: 30s}\n" + APP.format(
        timeouts="timeouts: {response: 500ms, idle: 2m}"
    )
    config = load_file(_write(tmp_path, body)).config
    default = compile_timeouts(config.settings().upstream_timeouts)
    assert default == Timeouts(connect=2.0, response=30.0, idle=None)
    app = compile_snapshot(config.objects()).apps["wiki"]
    assert app.timeouts == Timeouts(connect=None, response=0.5, idle=120.0)
    assert app.timeouts is not None and default is not None
    assert app.timeouts.over(default) == Timeouts(connect=2.0, response=0.5, idle=120.0)
    plain = load_file(_write(tmp_path, APP.format(timeouts=""))).config
    assert compile_snapshot(plain.objects()).apps["wiki"].timeouts is None


@pytest.mark.parametrize(
    ("body", "where", "why"),
    [
        (
            APP.format(timeouts="timeouts: {response: 5ms}"),
            "application 'wiki' › timeouts.response",
            "at least 10ms",
        ),
        (
            APP.format(timeouts="timeouts: {idle: soon}"),
            "application 'wiki' › timeouts.idle",
            "not a duration",
        ),
        (
            APP.format(timeouts="timeouts: {read: 5s}"),
            "application 'wiki' › timeouts.read",
            "unknown key",
        ),
        ("upstream_timeouts: {connect: 30d}\n", "upstream_timeouts.connect", "at most 7d"),
    ],
)
def test_bad_timeouts_are_refused_naming_object_and_field(
    tmp_path: Path, body: str, where: str, why: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_file(_write(tmp_path, body))
    text = str(caught.value)
    assert where in text, text
    assert why in text, text


# ---------------------------------------------------------------------------- a real server

CONFIG = """
upstream_timeouts: {{connect: 1s, response: 4s, idle: 1s}}
applications:
  - name: silent
    domain: silent.localhost
    origin: http://127.0.0.1:{silent}
    policies: [{{name: all, decision: bypass, include: [{{ip: [127.0.0.0/8]}}]}}]
  - name: silent-quick
    domain: quick.localhost
    origin: http://127.0.0.1:{silent}
    timeouts: {{response: 500ms}}
    policies: [{{name: all, decision: bypass, include: [{{ip: [127.0.0.0/8]}}]}}]
  - name: stall
    domain: stall.localhost
    origin: http://127.0.0.1:{stall}
    policies: [{{name: all, decision: bypass, include: [{{ip: [127.0.0.0/8]}}]}}]
  - name: unaccepting
    domain: unaccepting.localhost
    origin: http://127.0.0.1:{unaccepting}
    policies: [{{name: all, decision: bypass, include: [{{ip: [127.0.0.0/8]}}]}}]
"""


@pytest.fixture(scope="module")
def zg(
    tmp_path_factory: pytest.TempPathFactory,
    silent: HangingOrigin,
    stall: HangingOrigin,
    unaccepting: UnacceptingOrigin,
) -> Iterator[Zerogate]:
    server = Zerogate(tmp_path_factory.mktemp("timeouts"), free_port(), free_port())
    server.apply(CONFIG.format(silent=silent.port, stall=stall.port, unaccepting=unaccepting.port))
    server.start()
    try:
        wait_ready(server)
        yield server
    finally:
        server.stop()


async def _timed_get(zg: Zerogate, host: str, within: float = 30) -> tuple[int, bytes, float]:
    started = time.monotonic()
    reply = await raw_request(zg.port, http_request("GET", "/", host), within=within)
    return reply.status, reply.body, time.monotonic() - started


@pytest.mark.e2e
async def test_a_silent_origin_gets_504_in_time_and_the_application_value_wins(
    zg: Zerogate, silent: HangingOrigin
) -> None:
    closed = silent.closed
    (default_status, _, default_took), (quick_status, body, quick_took) = await asyncio.gather(
        _timed_get(zg, "silent.localhost"), _timed_get(zg, "quick.localhost")
    )
    assert quick_status == 504, body
    assert b"did not answer in time" in body
    assert 0.5 <= quick_took < 3.0, quick_took  # the application's 500ms, not the default 4s
    assert default_status == 504
    assert 4.0 <= default_took < 8.0, default_took  # the settings' 4s
    # both origin connections were closed, not kept for another request
    await wait_for(lambda: silent.closed >= closed + 2, timeout=5, what="origin closes")


@pytest.mark.e2e
async def test_an_origin_stalling_mid_body_is_cut_off_after_the_idle_timeout(
    zg: Zerogate, stall: HangingOrigin
) -> None:
    closed = stall.closed
    started = time.monotonic()
    reply = await raw_request(zg.port, http_request("GET", "/", "stall.localhost"), within=15)
    took = time.monotonic() - started
    assert reply.status == 200
    assert reply.header("content-length") == "1000"
    assert reply.body == b"hello"  # a truncated transfer, never a complete-looking one
    assert 1.0 <= took < 5.0, took
    await wait_for(lambda: stall.closed > closed, timeout=5, what="origin close")


@pytest.mark.e2e
async def test_an_origin_that_never_accepts_gets_504_after_the_connect_timeout(
    zg: Zerogate, unaccepting: UnacceptingOrigin
) -> None:
    status, body, took = await _timed_get(zg, "unaccepting.localhost")
    assert status == 504, body
    assert 1.0 <= took < 5.0, took


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.e2e
async def test_a_burst_of_hung_requests_gives_back_every_file_descriptor(
    zg: Zerogate, silent: HangingOrigin
) -> None:
    (worker,) = worker_pids(zg)
    # warm up (the pool and the application's first request), then take the baseline
    assert (await _timed_get(zg, "quick.localhost"))[0] == 504
    await wait_for(lambda: silent.open == 0, timeout=5, what="no origin connection open")
    baseline = _fds(worker)
    burst = 150
    accepted = silent.accepted
    requests = [asyncio.ensure_future(_timed_get(zg, "quick.localhost")) for _ in range(burst)]
    # while they hang, the worker holds a client and an origin socket for each
    await wait_for(lambda: silent.accepted >= accepted + burst, timeout=10, what="all reached")
    assert _fds(worker) >= baseline + burst
    results = await asyncio.gather(*requests)
    assert [status for status, _, _ in results] == [504] * burst
    assert max(took for _, _, took in results) < 6.0
    await wait_for(lambda: _fds(worker) <= baseline, timeout=10, what="fds back to baseline")
    await wait_for(lambda: silent.open == 0, timeout=5, what="origin connections closed")


# ---------------------------------------------------------------------------- aiohttp (HTTPS)


class _Client:
    """A hand-made ASGI client side for one exchange."""

    def __init__(self) -> None:
        self.status = 0
        self.body: list[bytes] = []
        self.complete = False
        self.gone = asyncio.Event()
        self.sent_request = False

    async def receive(self) -> dict[str, Any]:
        if not self.sent_request:
            self.sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            self.body.append(message.get("body", b""))
            self.complete = not message.get("more_body", False)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_proxy(ca: trustme.CA) -> AsyncIterator[OriginProxy]:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    proxy = OriginProxy(timeouts=Timeouts(connect=2, response=3, idle=3), ssl_context=context)
    try:
        yield proxy
    finally:
        await proxy.close()


def _tls_origin(ca: trustme.CA, mode: str) -> HangingOrigin:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return HangingOrigin(mode, tls=context)


def _scope() -> dict[str, Any]:
    return {"type": "http", "method": "GET", "headers": [(b"host", b"app.test")]}


async def test_https_origin_silent_after_tls_gets_504_per_the_application(
    ca: trustme.CA, tls_proxy: OriginProxy
) -> None:
    origin = _tls_origin(ca, "silent")
    try:
        client = _Client()
        out = Outbound(
            f"https://127.0.0.1:{origin.port}",
            "/",
            [(b"host", b"app.test")],
            timeouts=Timeouts(response=0.5),
        )
        started = time.monotonic()
        status = await tls_proxy.forward_http(_scope(), client.receive, client.send, out)
        took = time.monotonic() - started
        assert status == 504
        assert client.status == 504 and client.complete
        assert 0.5 <= took < 2.5, took  # the application's 500ms beat the proxy's 3s
        await wait_for(lambda: origin.closed >= 1, timeout=5, what="origin connection closed")
    finally:
        origin.stop()


async def test_https_origin_stalling_mid_body_is_cut_after_idle(
    ca: trustme.CA, tls_proxy: OriginProxy
) -> None:
    origin = _tls_origin(ca, "stall")
    try:
        client = _Client()
        out = Outbound(
            f"https://127.0.0.1:{origin.port}",
            "/",
            [(b"host", b"app.test")],
            timeouts=Timeouts(idle=0.5),
        )
        started = time.monotonic()
        status = await tls_proxy.forward_http(_scope(), client.receive, client.send, out)
        took = time.monotonic() - started
        assert status == 200
        assert b"".join(client.body) == b"hello"
        assert not client.complete  # left unfinished: the server cuts the client's connection
        assert 0.5 <= took < 2.5, took
        await wait_for(lambda: origin.closed >= 1, timeout=5, what="origin connection closed")
    finally:
        origin.stop()


async def test_websocket_handshake_to_a_silent_origin_is_refused_in_time(
    silent: HangingOrigin,
) -> None:
    proxy = OriginProxy(timeouts=Timeouts(connect=0.3, response=0.5))
    sent: list[MutableMapping[str, Any]] = []
    first = True

    async def receive() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "websocket.connect"}
        await asyncio.Event().wait()
        raise AssertionError

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "headers": [], "extensions": {"websocket.http.response": {}}}
    try:
        started = time.monotonic()
        async with asyncio.timeout(10):
            await proxy.forward_websocket(
                scope, receive, send, Outbound(f"http://127.0.0.1:{silent.port}", "/ws", [])
            )
        took = time.monotonic() - started
    finally:
        await proxy.close()
    assert sent[0]["type"] == "websocket.http.response.start"
    assert sent[0]["status"] == 504
    assert took < 3.0, took


# ---------------------------------------------------------------------------- the tunnel


class _Table:
    def __init__(self) -> None:
        from zerogate.identity.secret_hash import SecretKind, hash_secret
        from zerogate.tunnel.token import new_secret, new_tunnel_id

        self.tunnel_id = new_tunnel_id()
        self.secret = new_secret()

        class Cred:
            name = "office"
            secret_hash = hash_secret(SecretKind.TUNNEL, self.secret)

        self.tunnel_credentials = {self.tunnel_id: Cred()}

    def tunnel_for_token(self, tunnel_id: str, secret: str) -> str | None:
        return "office" if (tunnel_id, secret) == (self.tunnel_id, self.secret) else None


async def _hang(req: TunnelRequest) -> None:
    """The connector's origin: ``/stall`` answers a head and 5 bytes, anything else nothing."""
    if req.path == "/stall":
        req.respond(200, [(b"content-length", b"1000")])
        await req.write(b"hello")
    await asyncio.Event().wait()


@pytest.fixture
async def tunnel() -> AsyncIterator[tuple[TunnelListener, TunnelTestConnector]]:
    from zerogate.tunnel.token import TunnelToken

    generated = certs.generate(["127.0.0.1"])
    table = _Table()
    listener = TunnelListener(table, timeouts=Timeouts(response=3, idle=3))
    port = free_port()
    context = server_ssl_context(cert_pem=generated.cert_pem, key_pem=generated.key_pem)
    await listener.start("127.0.0.1", port, context)
    token = TunnelToken(
        table.tunnel_id, table.secret, (f"127.0.0.1:{port}",), generated.fingerprint
    ).encode()
    connector = TunnelTestConnector(token, handler=_hang)
    await connector.connect()
    await wait_for(lambda: listener.connected("office"), timeout=5, what="connector ready")
    try:
        yield listener, connector
    finally:
        await connector.close()
        await listener.stop(grace=0.2)


async def _tunnel_call(
    listener: TunnelListener, path: str, timeouts: Timeouts | None
) -> tuple[_Client, int, float]:
    client = _Client()
    started = time.monotonic()
    out = Outbound("office", path, [], authority="app.test", scheme="https", timeouts=timeouts)
    try:
        async with asyncio.timeout(15):
            status = await listener.forward_http(_scope(), client.receive, client.send, out)
    finally:
        client.gone.set()
    return client, status, time.monotonic() - started


def _open_streams(listener: TunnelListener) -> int:
    return sum(c.open_streams for c in listener.connections())


async def test_tunnel_hung_origin_gets_504_and_its_stream_reset(
    tunnel: tuple[TunnelListener, TunnelTestConnector],
) -> None:
    listener, connector = tunnel
    (quick, quick_status, quick_took), (_, slow_status, slow_took) = await asyncio.gather(
        _tunnel_call(listener, "/hang", Timeouts(response=0.5)),
        _tunnel_call(listener, "/hang", None),
    )
    assert quick_status == quick.status == 504 and quick.complete
    assert b"did not answer in time" in b"".join(quick.body)
    assert 0.5 <= quick_took < 2.5, quick_took  # the application's value
    assert slow_status == 504
    assert 3.0 <= slow_took < 6.0, slow_took  # the listener's default
    # the connector was told to drop both requests (its origin connection goes with them)
    await wait_for(
        lambda: len(connector.seen) == 2 and all(r.reset for r in connector.seen),
        timeout=5,
        what="streams reset",
    )
    await wait_for(lambda: _open_streams(listener) == 0, timeout=5, what="no stream left open")


async def test_tunnel_response_stalling_mid_body_is_cut_after_idle(
    tunnel: tuple[TunnelListener, TunnelTestConnector],
) -> None:
    listener, connector = tunnel
    client, status, took = await _tunnel_call(listener, "/stall", Timeouts(idle=0.5))
    assert status == client.status == 200
    assert b"".join(client.body) == b"hello"
    assert not client.complete
    assert 0.5 <= took < 2.5, took
    await wait_for(lambda: all(r.reset for r in connector.seen), timeout=5, what="reset")
    await wait_for(lambda: _open_streams(listener) == 0, timeout=5, what="no stream left open")


def test_unaccepting_origin_really_does_not_accept(unaccepting: UnacceptingOrigin) -> None:
    """The premise of the connect-timeout test: a new connection to it does not complete."""
    probe = socket.socket()
    probe.settimeout(0.5)
    try:
        with pytest.raises(OSError):
            probe.connect(("127.0.0.1", unaccepting.port))
    finally:
        probe.close()


def test_an_application_saved_from_the_panel_keeps_its_timeouts() -> None:
    """The panel's form has no timeouts: saving it must not erase what the YAML or API set."""
    from zerogate.admin.panel_forms import application_spec

    stored = {"name": "wiki", "domain": "wiki.example.com", "timeouts": {"response": "5m"}}
    fields = {"name": ["wiki"], "domain": ["wiki.example.com"], "target": ["origin"]}
    spec = application_spec({**fields, "origin": ["http://127.0.0.1:8080"]}, stored)
    assert spec["timeouts"] == {"response": "5m"}


async def test_tunnel_client_leaving_a_hung_request_resets_its_stream(
    tunnel: tuple[TunnelListener, TunnelTestConnector],
) -> None:
    """Not a timeout, the same leak: the connector must learn the client left (its origin
    connection goes with the stream), not hold it until its own read timeout."""
    listener, connector = tunnel
    client = _Client()
    out = Outbound("office", "/hang", [], authority="app.test", scheme="https")
    call = asyncio.ensure_future(listener.forward_http(_scope(), client.receive, client.send, out))
    await wait_for(lambda: len(connector.seen) == 1, timeout=5, what="request at the connector")
    client.gone.set()
    async with asyncio.timeout(5):
        assert await call == 499
    await wait_for(lambda: connector.seen[0].reset, timeout=5, what="stream reset")
    await wait_for(lambda: _open_streams(listener) == 0, timeout=5, what="no stream left open")


async def test_tunnel_client_leaving_mid_body_resets_its_stream(
    tunnel: tuple[TunnelListener, TunnelTestConnector],
) -> None:
    """A body-less request has no watcher until it outlives a tick; once the response is
    streaming, a client that leaves must still reset the stream at the connector."""
    listener, connector = tunnel
    client = _Client()
    out = Outbound("office", "/stall", [], authority="app.test", scheme="https")
    call = asyncio.ensure_future(listener.forward_http(_scope(), client.receive, client.send, out))
    await wait_for(lambda: b"".join(client.body) == b"hello", timeout=5, what="the first bytes")
    client.gone.set()
    left = time.monotonic()
    async with asyncio.timeout(5):
        assert await call == 200  # the head went out: the status sent, the body left unfinished
    # noticed by the watcher, not by the idle timeout (3 s) that would end it anyway
    assert time.monotonic() - left < 2.0
    assert not client.complete
    await wait_for(lambda: connector.seen[0].reset, timeout=5, what="stream reset")
    await wait_for(lambda: _open_streams(listener) == 0, timeout=5, what="no stream left open")


# ---------------------------------------------------------------------------- tunnel, end to end

TUNNEL_CONFIG = """
upstream_timeouts: {{response: 30s}}
applications:
  - name: lab
    domain: lab.localhost
    tunnel: lab
    timeouts: {{response: 1s}}
    policies: [{{name: all, decision: bypass, include: [{{ip: [127.0.0.0/8]}}]}}]
tunnels:
  - {{name: lab, routes: [lab.localhost]}}
"""


@pytest.mark.e2e
async def test_tunnel_burst_to_a_hung_origin_frees_the_connectors_descriptors(
    tmp_path: Path, silent: HangingOrigin
) -> None:
    """Through a real connector: the edge's 504 resets each stream, the connector drops its
    origin request, and its process gets every file descriptor back."""
    from harness import wait_for_port
    from test_tunnel_e2e import start_connector

    zg = Zerogate(tmp_path, free_port(), free_port())
    tunnel_port = free_port()
    zg.tunnel_listen = f"127.0.0.1:{tunnel_port}"
    zg.apply(TUNNEL_CONFIG.format())
    zg.start()
    connector = None
    try:
        wait_ready(zg)
        made = zg.cli("tunnel", "token", "lab", "--rotate", "--json", "-c", str(zg.config))
        assert made.returncode == 0, made.stderr
        token = json.loads(made.stdout)["token"]
        wait_for_port(tunnel_port, zg.proc, timeout=10)
        url = f"http://127.0.0.1:{silent.port}"
        connector = start_connector(tmp_path, token, tunnel_port, url, name="lab", ha=1)
        ready = connector
        await wait_for(
            lambda: (ready.ready() or {}).get("connections") == 1, timeout=20, what="connected"
        )
        await wait_for(lambda: silent.open == 0, timeout=10, what="no origin connection open")
        baseline = _fds(connector.proc.pid)
        burst = 60
        accepted = silent.accepted
        requests = [asyncio.ensure_future(_timed_get(zg, "lab.localhost")) for _ in range(burst)]
        await wait_for(lambda: silent.accepted >= accepted + burst, timeout=10, what="reached")
        # the premise: the burst really holds the connector's origin connections (a few of
        # the baseline's descriptors may be transient, so not exactly one per request)
        assert _fds(connector.proc.pid) >= baseline + burst * 9 // 10
        results = await asyncio.gather(*requests)
        assert [status for status, _, _ in results] == [504] * burst
        assert max(took for _, _, took in results) < 5.0  # the application's 1s, not 30s
        pid = connector.proc.pid
        await wait_for(lambda: _fds(pid) <= baseline, timeout=10, what="connector fds back")
        await wait_for(lambda: silent.open == 0, timeout=5, what="origin connections closed")
    finally:
        if connector is not None:
            connector.stop()
        zg.stop()


async def test_tunnel_websocket_unanswered_is_refused_after_the_response_timeout(
    tunnel: tuple[TunnelListener, TunnelTestConnector],
) -> None:
    listener, connector = tunnel
    sent: list[MutableMapping[str, Any]] = []
    first = True

    async def receive() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "websocket.connect"}
        await asyncio.Event().wait()
        raise AssertionError

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "websocket", "headers": [], "extensions": {"websocket.http.response": {}}}
    out = Outbound(
        "office", "/ws", [], authority="app.test", scheme="https", timeouts=Timeouts(response=0.5)
    )
    started = time.monotonic()
    async with asyncio.timeout(10):
        await listener.forward_websocket(scope, receive, send, out)
    took = time.monotonic() - started
    assert sent[0]["type"] == "websocket.http.response.start"
    assert sent[0]["status"] == 504
    assert 0.5 <= took < 2.5, took
    await wait_for(lambda: connector.seen and connector.seen[0].reset, timeout=5, what="reset")
