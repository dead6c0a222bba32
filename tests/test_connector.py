"""The connector against a test edge (``tunnel_testedge``) and real local origins (aiohttp).

Covers registration, edge certificate trust (pin, CA, wrong CA), ingress dispatch (status,
TCP and Unix-socket origins, unreachable origin), streaming of large bodies with bounded
memory, unbuffered server-sent events, WebSocket echo, redial with backoff, PING liveness,
``/ready`` and ``/metrics``, and the SIGTERM drain of the real CLI in a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import structlog
import trustme
from aiohttp import web
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, TextMessage

from harness import wait_for
from tunnel_testedge import NoConnection, TestEdge, header, running_edge
from zerogate import __version__
from zerogate.connector import Connector, ConnectorConfig, ingress
from zerogate.connector.backoff import Backoff
from zerogate.connector.connection import EdgeConnection, Liveness, Outcome
from zerogate.connector.metrics import ConnectorMetrics
from zerogate.connector.origin import Dispatcher
from zerogate.connector.stream import TunnelStream
from zerogate.connector.tls import EdgeAddress, EdgeTrust, parse_edge, parse_edges
from zerogate.tunnel import protocol as tunnel_protocol
from zerogate.tunnel.protocol import PROTOCOL_H2, PROTOCOL_MUX, RefusalReason, Registration

MiB = 1024 * 1024


# ------------------------------------------------------------------------------- origins


class Origin:
    """Local origins: one app served on TCP and on a Unix socket."""

    def __init__(self, tmp: Path) -> None:
        self.sock = str(tmp / "origin.sock")
        self.sse_second = asyncio.Event()
        self.slow_started = asyncio.Event()
        self.seen_hosts: list[str] = []
        self.port = 0
        self.https_port = 0
        self.ca_file = str(tmp / "origin-ca.pem")
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=1024**3)
        app.router.add_get("/hello", self.hello)
        app.router.add_post("/count", self.count)
        app.router.add_post("/echo", self.echo)
        app.router.add_post("/early", self.early)
        app.router.add_get("/big", self.big)
        app.router.add_get("/sse", self.sse)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/ws", self.ws)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        tcp = web.TCPSite(self.runner, "127.0.0.1", 0)
        await tcp.start()
        self.port = tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        await web.UnixSite(self.runner, self.sock).start()
        ca = trustme.CA()
        ca.cert_pem.write_to_path(self.ca_file)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
        tls = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ctx)
        await tls.start()
        self.https_port = tls._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def hello(self, request: web.Request) -> web.Response:
        self.seen_hosts.append(request.headers.get("Host", ""))
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if isinstance(sockname, tuple):
            where = "tls" if sockname[1] == self.https_port else "tcp"
        else:
            where = "unix"
        return web.Response(text=f"hello from {where} {request.path_qs}")

    async def count(self, request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.Response(text=str(total))

    async def early(self, request: web.Request) -> web.Response:
        return web.Response(status=204)  # without reading the body

    async def echo(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        async for chunk in request.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response

    async def big(self, request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        response = web.StreamResponse()
        response.content_length = size
        await response.prepare(request)
        block = b"x" * (256 * 1024)
        sent = 0
        while sent < size:
            piece = block[: size - sent]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def sse(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: one\n\n")
        await self.sse_second.wait()
        await response.write(b"data: two\n\n")
        await response.write_eof()
        return response

    async def slow(self, request: web.Request) -> web.Response:
        self.slow_started.set()
        await asyncio.sleep(float(request.query.get("t", "1")))
        return web.Response(text="slow done")

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("chat",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str("echo: " + msg.data)
        return ws


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[Origin]:
    o = Origin(tmp_path)
    await o.start()
    yield o
    await o.stop()


@pytest.fixture
async def edge() -> AsyncIterator[TestEdge]:
    async with running_edge() as e:
        yield e


def rules_for(origin: Origin, closed_port: int = 1) -> list[ingress.Rule]:
    return ingress.load_text(
        f"""
ingress:
  - hostname: gone.example.com
    service: http_status:410
  - hostname: unix.example.com
    service: unix:{origin.sock}
  - hostname: app.example.com
    path: /status
    service: http_status:204
  - hostname: down.example.com
    service: http://127.0.0.1:{closed_port}
    origin: {{connect_timeout: 2s}}
  - hostname: renamed.example.com
    service: http://127.0.0.1:{origin.port}
    origin: {{host_header: internal.local}}
  - hostname: tls.example.com
    service: https://127.0.0.1:{origin.https_port}
    origin: {{ca_file: {origin.ca_file}}}
  - hostname: insecure.example.com
    service: https://127.0.0.1:{origin.https_port}
    origin: {{no_tls_verify: true}}
  - hostname: strict.example.com
    service: https://127.0.0.1:{origin.https_port}
  - hostname: "*.example.com"
    service: http://127.0.0.1:{origin.port}
  - service: http_status:404
"""
    )


def make_config(edge: TestEdge, rules: list[ingress.Rule], **kw: object) -> ConnectorConfig:
    base: dict[str, object] = {
        "token": edge.token,
        "tunnel": edge.tunnel,
        "edges": [EdgeAddress("127.0.0.1", edge.port)],
        "rules": rules,
        "trust": EdgeTrust(fingerprint=edge.fingerprint),
        "ha_connections": 2,
        "metrics_address": "127.0.0.1:0",
        "grace_period": 5.0,
    }
    base.update(kw)
    return ConnectorConfig(**base)  # type: ignore[arg-type]


class Running:
    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self.task = asyncio.create_task(connector.run(signals=False))

    async def stop(self) -> int:
        self.connector.shutdown()
        async with asyncio.timeout(10):
            return await self.task


@pytest.fixture
async def running(edge: TestEdge, origin: Origin) -> AsyncIterator[Running]:
    r = Running(Connector(make_config(edge, rules_for(origin))))
    await edge.wait_connections(2)
    yield r
    if not r.task.done():
        await r.stop()


# ------------------------------------------------------------------------------- pure parts


def test_parse_edges() -> None:
    assert parse_edge("edge.example.com:7844") == EdgeAddress("edge.example.com", 7844)
    assert parse_edge("[::1]:7844") == EdgeAddress("::1", 7844)
    assert [str(e) for e in parse_edges("a:1, [::1]:2")] == ["a:1", "[::1]:2"]
    for bad in ("nohost", "a:0", "a:x", "[::1]7844", ":80"):
        with pytest.raises(ValueError):
            parse_edge(bad)


def test_backoff_grows_jittered_and_resets() -> None:
    import random

    b = Backoff(rng=random.Random(1))
    ceilings = []
    for _ in range(8):
        ceilings.append(b.ceiling())
        delay = b.next()
        assert 0 < delay <= ceilings[-1]
    assert ceilings == [0.5, 1, 2, 4, 8, 16, 30, 30]
    b.reset()
    assert b.ceiling() == 0.5
    b.failures = 10_000
    assert b.next() <= 30


# ------------------------------------------------------------------------ registration and trust


async def test_registers_with_the_token(running: Running, edge: TestEdge) -> None:
    regs = edge.registrations
    assert len(regs) == 2
    assert {r.connection_index for r in regs} == {0, 1}
    for r in regs:
        assert r.token == edge.token
        assert r.connector_id == running.connector.connector_id
        assert r.version == __version__
        assert "websocket" in r.features
    assert running.connector.registered_connections == 2


def _registration(edge: TestEdge) -> Registration:
    return Registration(token=edge.token, connector_id="test-conn", version="t")


async def _one_dial(
    edge: TestEdge, trust: EdgeTrust, host: str = "127.0.0.1", port: int | None = None
) -> tuple[bool, Outcome]:
    async def never(stream: TunnelStream) -> None:  # pragma: no cover - no stream here
        raise AssertionError

    conn = EdgeConnection(
        EdgeAddress(host, port or edge.port),
        _registration(edge),
        trust,
        never,
        ConnectorMetrics(),
    )
    task = asyncio.create_task(conn.run())
    await asyncio.wait(
        {task, asyncio.create_task(conn.registered.wait())},
        timeout=5,
        return_when=asyncio.FIRST_COMPLETED,
    )
    registered = conn.registered.is_set()
    conn.close()
    outcome = await asyncio.wait_for(task, 5)
    return registered, outcome


async def test_pinned_fingerprint_is_enforced(edge: TestEdge) -> None:
    ok, _ = await _one_dial(edge, EdgeTrust(fingerprint=edge.fingerprint))
    assert ok
    wrong = "0" * 64
    ok, outcome = await _one_dial(edge, EdgeTrust(fingerprint=wrong))
    assert not ok and not outcome.registered
    assert "pins" in outcome.message
    assert len(edge.registrations) == 1  # the token never reached the impostor


async def test_ca_verification(edge: TestEdge, tmp_path: Path) -> None:
    good = tmp_path / "ca.pem"
    edge.ca.cert_pem.write_to_path(str(good))
    ok, _ = await _one_dial(edge, EdgeTrust(ca_file=good, fingerprint="0" * 64), host="localhost")
    assert ok  # --ca wins over the token's pin
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    ok, outcome = await _one_dial(edge, EdgeTrust(ca_file=other), host="localhost")
    assert not ok
    assert "certificate verify failed" in outcome.message
    assert len(edge.registrations) == 1


async def test_ca_verification_checks_the_edge_name(edge: TestEdge, tmp_path: Path) -> None:
    """--ca verifies the chain *and* the name dialled: a certificate the CA issued for another
    host (here: the edge's, which names localhost and 127.0.0.1, served on 127.0.0.2) is refused
    before the token is sent."""
    good = tmp_path / "ca.pem"
    edge.ca.cert_pem.write_to_path(str(good))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    edge.cert.configure_cert(ctx)

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    impostor = await asyncio.start_server(hang_up, "127.0.0.2", 0, ssl=ctx)
    try:
        port = impostor.sockets[0].getsockname()[1]
        ok, outcome = await _one_dial(edge, EdgeTrust(ca_file=good), host="127.0.0.2", port=port)
    finally:
        impostor.close()
    assert not ok
    assert "certificate verify failed" in outcome.message, outcome.message
    assert "127.0.0.2" in outcome.message
    assert edge.registrations == []


# ------------------------------------------------------------------------------- dispatch


async def test_ingress_dispatch(running: Running, edge: TestEdge, origin: Origin) -> None:
    status, _, body = await edge.request("GET", "wiki.example.com", "/hello?x=1")
    assert (status, body) == (200, b"hello from tcp /hello?x=1")
    assert origin.seen_hosts[-1] == "wiki.example.com"
    status, _, body = await edge.request("GET", "unix.example.com", "/hello")
    assert (status, body) == (200, b"hello from unix /hello")
    status, _, body = await edge.request("GET", "gone.example.com", "/anything")
    assert (status, body) == (410, b"")
    status, _, _ = await edge.request("GET", "app.example.com", "/STATUS/x")
    assert status == 204
    status, _, _ = await edge.request("GET", "app.example.com", "/statusx")
    assert status == 404  # /statusx is not under /status; the origin has no such route
    status, _, _ = await edge.request("GET", "other.org", "/hello")
    assert status == 404  # the catch-all
    await edge.request("GET", "renamed.example.com", "/hello")
    assert origin.seen_hosts[-1] == "internal.local"
    status, headers, body = await edge.request("GET", "down.example.com", "/")
    assert status == 502
    assert header(headers, b"content-type") == b"text/plain; charset=utf-8"
    assert b"could not be reached" in body and b"127.0.0.1" not in body
    status, _, _ = await edge.request("GET", "wiki.example.com", "/a%2Fb")
    assert status == 400
    status, _, body = await edge.request("POST", "wiki.example.com", "/echo", body=b"ping" * 1000)
    assert (status, body) == (200, b"ping" * 1000)


async def test_early_response_drains_the_upload(running: Running, edge: TestEdge) -> None:
    async def upload() -> AsyncIterator[bytes]:
        for _ in range(192):  # 48 MiB: beyond one stream window, so acks are needed
            yield b"e" * (256 * 1024)

    # the origin answers before reading; the upload still completes, the stream is not reset
    status, _, body = await edge.request("POST", "x.example.com", "/early", body=upload())
    assert (status, body) == (204, b"")
    status, _, _ = await edge.request("GET", "x.example.com", "/hello")
    assert status == 200


async def test_https_origins(running: Running, edge: TestEdge, origin: Origin) -> None:
    status, _, body = await edge.request("GET", "tls.example.com", "/hello")
    assert (status, body) == (200, b"hello from tls /hello")  # verified with the rule's ca_file
    assert origin.seen_hosts[-1] == "tls.example.com"
    status, _, body = await edge.request("GET", "insecure.example.com", "/hello")
    assert (status, body) == (200, b"hello from tls /hello")
    status, _, body = await edge.request("GET", "strict.example.com", "/hello")
    assert status == 502  # the system trust store does not know the test CA
    status, _, body = await edge.request("POST", "tls.example.com", "/echo", body=b"z" * 300_000)
    assert (status, body) == (200, b"z" * 300_000)


# ------------------------------------------------------------------------------- streaming


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_large_bodies_stream_with_bounded_memory(
    running: Running, edge: TestEdge, origin: Origin
) -> None:
    size = 96 * MiB
    connector = running.connector
    peak = {"buffered": 0, "rss": 0}
    base_rss = _rss()

    async def sample() -> None:
        while True:
            for conn in connector.connections:
                held = conn.core.buffered_bytes + sum(
                    len(c) for s in conn.streams.values() for c in s._chunks
                )
                peak["buffered"] = max(peak["buffered"], held)
            peak["rss"] = max(peak["rss"], _rss() - base_rss)
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def upload() -> AsyncIterator[bytes]:
            block = b"u" * (256 * 1024)
            for _ in range(size // len(block)):
                yield block

        status, _, body = await edge.request("POST", "x.example.com", "/count", body=upload())
        up_time = loop.time() - start
        assert (status, int(body)) == (200, size)

        start = loop.time()
        stream = edge.open("GET", "x.example.com", f"/big?size={size}")
        status, _ = await stream.response()
        received = 0
        while chunk := await stream.read():
            received += len(chunk)
        down_time = loop.time() - start
        assert (status, received) == (200, size)
    finally:
        sampler.cancel()
    window = 16 * MiB + 512 * 1024
    assert peak["buffered"] <= window, peak
    assert peak["rss"] < 80 * MiB, peak
    print(f"upload {size / MiB / up_time:.0f} MB/s, download {size / MiB / down_time:.0f} MB/s")


async def test_server_sent_events_are_not_buffered(
    running: Running, edge: TestEdge, origin: Origin
) -> None:
    stream = edge.open("GET", "x.example.com", "/sse")
    status, headers = await stream.response()
    assert status == 200 and header(headers, b"content-type") == b"text/event-stream"
    async with asyncio.timeout(5):
        first = await stream.read()
    assert first == b"data: one\n\n"
    assert not origin.sse_second.is_set()  # the first event came before the origin sent more
    origin.sse_second.set()
    assert await stream.body() == b"data: two\n\n"


async def test_websocket_echo(running: Running, edge: TestEdge) -> None:
    stream = edge.open(
        "CONNECT",
        "chat.example.com",
        "/ws",
        [(b"sec-websocket-version", b"13"), (b"sec-websocket-protocol", b"chat, other")],
        end_stream=False,
        protocol="websocket",
    )
    status, headers = await stream.response()
    assert status == 200
    assert header(headers, b"sec-websocket-protocol") == b"chat"
    ws = Connection(ConnectionType.CLIENT)
    await stream.write(ws.send(TextMessage("hi there")))
    got: list[str] = []
    async with asyncio.timeout(5):
        while not got:
            ws.receive_data(await stream.read())
            got += [e.data for e in ws.events() if isinstance(e, TextMessage)]
    assert got == ["echo: hi there"]
    await stream.write(ws.send(CloseConnection(code=1000)))
    closed: list[int] = []
    async with asyncio.timeout(5):
        while not closed and (chunk := await stream.read()):
            ws.receive_data(chunk)
            closed += [e.code for e in ws.events() if isinstance(e, CloseConnection)]
    assert closed == [1000]


async def test_websocket_refused_by_origin(running: Running, edge: TestEdge) -> None:
    stream = edge.open(
        "CONNECT",
        "x.example.com",
        "/hello",
        [(b"sec-websocket-version", b"13")],
        end_stream=False,
        protocol="websocket",
    )
    status, _ = await stream.response()
    assert status == 502  # the origin answered 200 to an upgrade: not a WebSocket


# ------------------------------------------------------------------------------- connection life


async def test_redial_after_drop_with_backoff(running: Running, edge: TestEdge) -> None:
    before = len(edge.registrations)
    edge.refuse_tcp = True
    edge.drop_all()
    await wait_for(lambda: running.connector.registered_connections == 0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.sleep(2)
    dials = [t for t in edge.dials if t >= start]
    # full-jitter backoff from 0.5 s doubling: a handful of dials per connection, not hundreds
    assert 1 <= len(dials) <= 12, len(dials)
    edge.refuse_tcp = False
    await edge.wait_connections(2, limit=20)
    assert len(edge.registrations) >= before + 2
    status, _, _ = await edge.request("GET", "x.example.com", "/hello")
    assert status == 200
    assert running.connector.metrics.reconnects._value.get() >= 2


async def test_a_short_edge_outage_ends_before_the_backoff_does(
    edge: TestEdge, origin: Origin
) -> None:
    """Every backoff wait here is 30 s; the edge is down for a moment and comes back on
    the same port: the connections are back within a few seconds (the slots notice the
    edge answering again), not after the 30 s the backoff alone would take."""
    thirty = Backoff(base=30.0, factor=2.0, cap=30.0, floor=30.0)
    r = Running(Connector(make_config(edge, rules_for(origin), backoff=thirty)))
    try:
        await edge.wait_connections(2)
        await edge.stop_listening()
        edge.drop_all()
        await wait_for(lambda: r.connector.registered_connections == 0)
        await asyncio.sleep(1.5)  # the slots are in their 30 s wait; probes were refused
        assert r.connector.registered_connections == 0
        await edge.listen_again()
        await edge.wait_connections(2, limit=8)
        status, _, _ = await edge.request("GET", "x.example.com", "/hello")
        assert status == 200
    finally:
        await r.stop()


async def test_permanent_refusal_is_not_a_hot_loop(edge: TestEdge, origin: Origin) -> None:
    edge.refuse_with = RefusalReason.BAD_TOKEN
    r = Running(Connector(make_config(edge, rules_for(origin))))
    await asyncio.sleep(2)
    assert 2 <= len(edge.registrations) <= 4  # one attempt per slot, then a long wait
    assert await r.stop() == 0


async def test_an_edge_older_than_protocol_2_gets_protocol_1_at_once(
    edge: TestEdge, origin: Origin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connectors may be upgraded before their edges: an edge that refuses protocol 2 as
    unsupported is redialled at once with protocol 1 (HTTP/2), unless --wire pinned it."""
    monkeypatch.setattr(tunnel_protocol, "SUPPORTED_PROTOCOLS", frozenset({PROTOCOL_H2}))
    r = Running(Connector(make_config(edge, rules_for(origin))))
    await edge.wait_connections(2, limit=2)  # no refused-registration backoff (2.5 s and up)
    assert [reg.protocol for reg in edge.registrations] == [PROTOCOL_H2, PROTOCOL_H2]
    status, _, body = await edge.request("GET", "wiki.example.com", "/hello")
    assert (status, body) == (200, b"hello from tcp /hello")
    assert await r.stop() == 0
    # pinned to protocol 2: the refusal stands (logged, retried slowly), no fallback
    edge.registrations.clear()
    pinned = Running(Connector(make_config(edge, rules_for(origin), protocol=PROTOCOL_MUX)))
    await asyncio.sleep(1.5)
    assert edge.registrations == [] and pinned.connector.registered_connections == 0
    assert await pinned.stop() == 0


async def test_dead_connection_detected_by_ping(running: Running, edge: TestEdge) -> None:
    victim = edge.live()[0]
    loop = asyncio.get_running_loop()
    edge.pause(victim)
    start = loop.time()
    await wait_for(lambda: running.connector.registered_connections == 1, timeout=12)
    assert loop.time() - start <= 10.5
    # the other connection kept serving meanwhile, and the dead one is redialled
    await edge.wait_connections(2, limit=10)
    status, _, _ = await edge.request("GET", "x.example.com", "/hello")
    assert status == 200


async def test_ready_and_metrics(running: Running, edge: TestEdge) -> None:
    port = running.connector.metrics_server.port
    for _ in range(3):
        await edge.request("GET", "x.example.com", "/hello")
    await edge.request("GET", "gone.example.com", "/")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/ready") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ready", "connections": 2}
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
        assert "zerogate_connector_connections 2.0" in text
        assert 'zerogate_connector_requests_total{status="2xx"} 3.0' in text
        assert 'zerogate_connector_requests_total{status="4xx"} 1.0' in text
        assert "zerogate_connector_active_streams 0.0" in text
        assert re.search(r'zerogate_connector_bytes_total\{direction="response"\} [1-9]', text)
        assert "zerogate_connector_reconnects_total 0.0" in text
        edge.refuse_tcp = True
        edge.drop_all()
        await wait_for(lambda: running.connector.registered_connections == 0)
        async with http.get(f"http://127.0.0.1:{port}/ready") as resp:
            assert resp.status == 503
            assert await resp.json() == {"status": "not ready", "connections": 0}


async def test_drain_lets_in_flight_finish(
    running: Running, edge: TestEdge, origin: Origin
) -> None:
    stream = edge.open("GET", "x.example.com", "/slow?t=0.5")
    await asyncio.wait_for(origin.slow_started.wait(), 5)
    running.connector.shutdown()
    await wait_for(lambda: all(c.goaway.is_set() for c in edge.connections if c.registration))
    with pytest.raises(NoConnection):
        edge.open("GET", "x.example.com", "/hello")
    status, _ = await stream.response()
    assert (status, await stream.body()) == (200, b"slow done")
    assert await asyncio.wait_for(running.task, 10) == 0


# ------------------------------------------------------------------------------- the CLI


async def test_sigterm_drains_the_cli_process(edge: TestEdge, origin: Origin) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "zerogate",
        "connector",
        "run",
        "--url",
        f"http://127.0.0.1:{origin.port}",
        "--ha-connections",
        "1",
        "--metrics",
        "127.0.0.1:0",
        "--grace-period",
        "10s",
        env={**os.environ, "ZEROGATE_TUNNEL_TOKEN": edge.token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    log: list[str] = []

    async def collect() -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            log.append(line.decode())

    collector = asyncio.create_task(collect())
    try:
        await edge.wait_connections(1, limit=20)
        await wait_for(lambda: any("metrics server listening" in line for line in log))
        port = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", "".join(log))
        assert port is not None
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port.group(1)}/ready") as resp,
        ):
            assert resp.status == 200
        stream = edge.open("GET", "x.example.com", "/slow?t=1")
        await asyncio.wait_for(origin.slow_started.wait(), 5)
        proc.send_signal(signal.SIGTERM)
        await wait_for(lambda: edge.connections[-1].goaway.is_set())
        with pytest.raises(NoConnection):
            edge.open("GET", "x.example.com", "/hello")
        status, _ = await stream.response()
        assert (status, await stream.body()) == (200, b"slow done")
        assert await asyncio.wait_for(proc.wait(), 10) == 0, "".join(log)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await collector


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--token", "nope", "--url", "http://x"], "--token"),
        (["--url", "http://x"], "token is required"),
        (["--token", "{token}", "--url", "ftp://x"], "--url"),
        (["--token", "{token}", "--config", "{bad}"], "ingress rule #1"),
        (["--token", "{token}"], "exactly one of --url"),
        (["--token", "{token}", "--url", "http://x", "--edge", "nope"], "--edge"),
    ],
)
def test_cli_user_errors(tmp_path: Path, args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from zerogate.cli.main import app
    from zerogate.tunnel.token import TunnelToken, new_secret, new_tunnel_id

    token = TunnelToken(new_tunnel_id(), new_secret(), ("127.0.0.1:1",)).encode()
    bad = tmp_path / "ingress.yaml"
    bad.write_text("ingress:\n  - service: http_status:404\n  - service: http://x\n")
    argv = [a.format(token=token, bad=bad) for a in args]
    env = {"ZEROGATE_TUNNEL_TOKEN": ""}
    result = CliRunner().invoke(app, ["connector", "run", *argv], env=env)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_cli_metrics_port_in_use() -> None:
    import socket

    from typer.testing import CliRunner

    from zerogate.cli.main import app
    from zerogate.tunnel.token import TunnelToken, new_secret, new_tunnel_id

    token = TunnelToken(new_tunnel_id(), new_secret(), ("127.0.0.1:1",)).encode()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["connector", "run", "--token", token, "--url", "http://x", "--metrics"]
        try:
            result = CliRunner().invoke(app, [*args, f"127.0.0.1:{port}"])
        finally:
            structlog.reset_defaults()  # the command configured logging for its process
    assert result.exit_code == 2, result.output
    assert "cannot listen on" in result.output


def test_dispatcher_refuses_a_missing_ca_file(tmp_path: Path) -> None:
    rules = ingress.from_url("https://127.0.0.1:1")
    rule = rules[0].model_copy(
        update={"origin": ingress.OriginOptions(ca_file=str(tmp_path / "none.pem"))}
    )
    with pytest.raises(OSError):
        Dispatcher([rule])


def test_liveness_defaults() -> None:
    lv = Liveness()
    assert lv.dead_after == 10 and lv.ping_interval < lv.dead_after / 2
