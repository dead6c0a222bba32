"""The edge's tunnel side: the TLS listener, registration, forwarding through connector streams.

Two layers, both with real TLS sockets and the test connector of ``zg_harness`` (``ConnectorSide``
in asyncio, every move under the test's control):

- in process: a :class:`TunnelListener` with a small credential table, driven with hand-made
  ASGI calls (fast; short timeouts for registration and PING so the limits are tested quickly);
- end to end (``e2e``): a real ``zerogate server`` subprocess, tunnels made with the
  ``zerogate tunnel`` CLI, a client with a session cookie going through the edge's policy check.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, WSMsgType, WSServerHandshakeError

from harness import free_port, wait_for, wait_for_port, wait_until
from zerogate.edge.tunnel import (
    REPLAY_LIMIT,
    TunnelListener,
    TunnelUnavailable,
    server_ssl_context,
)
from zerogate.identity import issue_app_token
from zerogate.identity.secret_hash import SecretKind, hash_secret
from zerogate.net.upstream import Outbound
from zerogate.runtime import audience_tag, ensure_keyset
from zerogate.store import Store, storage_url
from zerogate.tunnel import certs
from zerogate.tunnel.protocol import PROTOCOL_H2, PROTOCOL_MUX, ErrorCodes
from zerogate.tunnel.token import TunnelToken, new_secret, new_tunnel_id
from zg_harness import ZEROGATE, TunnelRefused, TunnelRequest, TunnelTestConnector, Zerogate

MIB = 1024 * 1024


# ============================================================================ in process


@dataclass
class Cred:
    name: str
    secret_hash: str


class Table:
    """A credential table shaped like ``Runtime``'s (what the listener's ``Authority`` needs)."""

    def __init__(self) -> None:
        self.tunnel_credentials: dict[str, Cred] = {}

    def add(self, name: str, tunnel_id: str | None = None) -> tuple[str, str]:
        tunnel_id = tunnel_id or new_tunnel_id()
        secret = new_secret()
        self.tunnel_credentials[tunnel_id] = Cred(name, hash_secret(SecretKind.TUNNEL, secret))
        return tunnel_id, secret

    def tunnel_for_token(self, tunnel_id: str, secret: str) -> str | None:
        cred = self.tunnel_credentials.get(tunnel_id)
        if cred is None or cred.secret_hash != hash_secret(SecretKind.TUNNEL, secret):
            return None
        return cred.name


@dataclass
class Edge:
    listener: TunnelListener
    table: Table
    port: int
    fingerprint: str

    def token(self, name: str, tunnel_id: str | None = None) -> str:
        tunnel_id, secret = self.table.add(name, tunnel_id)
        return TunnelToken(
            tunnel_id, secret, (f"127.0.0.1:{self.port}",), self.fingerprint
        ).encode()


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    generated = certs.generate(["localhost", "127.0.0.1"])
    table = Table()
    listener = TunnelListener(
        table, registration_timeout=0.5, ping_interval=0.2, ping_timeout=0.6, ready_wait=1.0
    )
    port = free_port()
    context = server_ssl_context(cert_pem=generated.cert_pem, key_pem=generated.key_pem)
    await listener.start("127.0.0.1", port, context)
    try:
        yield Edge(listener, table, port, generated.fingerprint)
    finally:
        await listener.stop(grace=0.2)


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool


async def call(
    listener: TunnelListener,
    tunnel: str,
    path: str = "/",
    *,
    method: str = "GET",
    body: bytes | list[bytes] = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    slow_send: float = 0.0,
) -> Response:
    """One HTTP exchange through the listener, as the pipeline makes it (hand-made ASGI)."""
    chunks = body if isinstance(body, list) else [body]
    incoming: list[dict[str, Any]] = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    gone = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    got: dict[str, Any] = {"status": 0, "headers": [], "body": [], "complete": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            got["status"], got["headers"] = message["status"], message["headers"]
        else:
            got["body"].append(message.get("body", b""))
            if slow_send:
                await asyncio.sleep(slow_send)
            if not message.get("more_body", False):
                got["complete"] = True

    scope = {"type": "http", "method": method, "headers": headers or []}
    try:
        await listener.forward_http(
            scope,
            receive,
            send,
            Outbound(tunnel, path, headers or [], authority="app.example.test", scheme="https"),
        )
    finally:
        gone.set()
    return Response(got["status"], got["headers"], b"".join(got["body"]), got["complete"])


async def test_registration_is_accepted_for_the_tokens_tunnel_only(edge: Edge) -> None:
    office = TunnelTestConnector(edge.token("office"))
    lab = TunnelTestConnector(edge.token("lab"), connector_id="lab-connector")
    await office.connect(2)
    await lab.connect(1)
    try:
        status = {t.name: t for t in edge.listener.status()}
        assert {n: len(t.connections) for n, t in status.items()} == {"office": 2, "lab": 1}
        conn = status["office"].connections[0]
        assert conn.connector_id == "test-connector" and conn.version == "test-0.1"
        assert conn.state == "ready" and conn.address.startswith("127.0.0.1:")
        assert [c.connection_index for c in status["office"].connections] == [0, 1]
        # requests for "office" only ever reach office's connector
        for _ in range(6):
            reply = await call(edge.listener, "office", "/who")
            assert reply.status == 200
            assert json.loads(reply.body)["connector"] == "test-connector"
        assert not lab.seen
        # a tunnel nobody connected for: no connector, at once
        with pytest.raises(TunnelUnavailable, match="no connected connector"):
            await asyncio.wait_for(call(edge.listener, "nobody"), 0.5)
    finally:
        await office.close()
        await lab.close()


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda e: "zgt1_not-base64-json!", "bad_token"),
        (lambda e: "garbage", "bad_token"),
        (
            lambda e: TunnelToken(new_tunnel_id(), new_secret(), ("127.0.0.1:1",)).encode(),
            "bad_token",
        ),
    ],
)
async def test_bad_tokens_are_refused(edge: Edge, make_token: Any, reason: str) -> None:
    connector = TunnelTestConnector(make_token(edge), ("127.0.0.1", edge.port))
    with pytest.raises(TunnelRefused) as refused:
        await connector.connect()
    assert refused.value.reason == reason
    assert not edge.listener.status()


async def test_a_rotated_token_is_refused_and_its_connections_closed(
    edge: Edge,
) -> None:
    old = edge.token("office")
    connector = TunnelTestConnector(old)
    [conn] = await connector.connect()
    assert connector.decoded is not None
    tunnel_id = connector.decoded.tunnel_id
    new = edge.token("office", tunnel_id)  # same tunnel id, new secret: a rotation
    assert edge.listener.revalidate() == 1
    await asyncio.wait_for(conn.closed.wait(), 2)
    assert not edge.listener.status()
    with pytest.raises(TunnelRefused) as refused:
        await TunnelTestConnector(old).connect()
    # as a token nobody knows: no oracle of which tunnel ids exist
    assert refused.value.reason == "bad_token"
    fresh = TunnelTestConnector(new)
    await fresh.connect()
    assert (await call(edge.listener, "office")).status == 200
    # deleting the credential closes the new token's connections too
    del edge.table.tunnel_credentials[tunnel_id]
    assert edge.listener.revalidate() == 1
    await asyncio.wait_for(fresh.connections[0].closed.wait(), 2)
    await fresh.close()


async def test_garbage_and_silence_are_closed_within_the_timeout(edge: Edge) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # garbage after the TLS handshake: a "malformed" refusal, then the connection closes
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port, ssl=context)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 2)
    assert answer.startswith(b"ZGTN") and b"malformed" in answer
    writer.close()
    # TLS but no registration: refused "unavailable" after the registration timeout (0.5 s)
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port, ssl=context)
    answer = await asyncio.wait_for(reader.read(), 3)
    assert b"registration timed out" in answer
    assert time.monotonic() - started < 2
    writer.close()
    # not even TLS: the handshake timeout closes the socket
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    writer.write(b"\x16\x03")  # the start of a TLS record, then nothing
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 3) == b""
    assert time.monotonic() - started < 2
    writer.close()


async def test_a_connection_that_stops_answering_pings_is_dropped(edge: Edge) -> None:
    connector = TunnelTestConnector(edge.token("office"))
    first, _ = await connector.connect(2)
    first.paused = True  # reads nothing more: PINGs go unanswered
    await wait_for(lambda: len(edge.listener.status()[0].connections) == 1, timeout=5)
    assert edge.listener.status()[0].connections[0].connection_index == 1
    assert (await call(edge.listener, "office")).status == 200
    await connector.close()


async def test_requests_spread_over_the_connections_with_fewest_streams(edge: Edge) -> None:
    connector = TunnelTestConnector(edge.token("office"))
    conns = await connector.connect(4)
    replies = await asyncio.gather(
        *(call(edge.listener, "office", "/slow?ms=300") for _ in range(16))
    )
    assert all(r.status == 200 for r in replies)
    assert [c.served for c in conns] == [4, 4, 4, 4]
    # three long requests take three different connections; the next one takes the fourth
    before = [c.served for c in conns]
    busy = asyncio.gather(*(call(edge.listener, "office", "/slow?ms=800") for _ in range(3)))
    await wait_for(lambda: sum(c.open_streams for c in conns) == 3)
    assert sorted(c.open_streams for c in conns) == [0, 1, 1, 1]
    idle = next(c for c in conns if c.open_streams == 0)
    assert (await call(edge.listener, "office", "/x")).status == 200
    assert [c.served - b for c, b in zip(conns, before, strict=True)].count(1) == 4
    assert idle.served == 5
    await busy
    await connector.close()


async def test_only_requests_never_processed_are_retried(edge: Edge) -> None:
    refused: list[int] = []

    async def refusing(req: TunnelRequest) -> None:
        refused.append(req.stream_id)
        req.conn.core.reset(req.stream_id, ErrorCodes.REFUSED_STREAM)
        req.conn.flush()

    async def cancelling(req: TunnelRequest) -> None:
        req.conn.core.reset(req.stream_id, ErrorCodes.CANCEL)
        req.conn.flush()

    token = edge.token("office")
    bad = TunnelTestConnector(token, connector_id="refuses", handler=refusing)
    good = TunnelTestConnector(token, connector_id="serves")
    await bad.connect(1)
    await good.connect(1)
    # a refused stream (REFUSED_STREAM: never processed) is sent again elsewhere, body intact
    body = [b"a" * 1000, b"b" * 50_000, b"c"]
    for _ in range(4):
        reply = await call(edge.listener, "office", "/upload", method="POST", body=body)
        assert reply.status == 200
        assert json.loads(reply.body)["sha256"] == hashlib.sha256(b"".join(body)).hexdigest()
    assert refused, "the refusing connection never got a request"
    await bad.close()

    # a connector that reads the whole body before refusing: the edge consumed all of it
    async def refusing_late(req: TunnelRequest) -> None:
        await req.body()
        refused.append(req.stream_id)
        req.conn.core.reset(req.stream_id, ErrorCodes.REFUSED_STREAM)
        req.conn.flush()

    late = TunnelTestConnector(token, connector_id="refuses-late", handler=refusing_late)
    await late.connect(1)
    # within REPLAY_LIMIT the edge kept a copy: the refused request is sent again, intact
    small = [b"s" * 1000] * 4
    refused.clear()
    while not refused:
        reply = await call(edge.listener, "office", "/upload", method="POST", body=small)
        assert reply.status == 200
        assert json.loads(reply.body)["size"] == 4000
    # a body over REPLAY_LIMIT is not: 502 before anything was sent to the client (a limit
    # that let it through would have the good connection answer 200 after a refusal)
    big = [b"x" * 65536] * 8
    assert sum(map(len, big)) > REPLAY_LIMIT
    refused.clear()
    for _ in range(20):
        try:
            reply = await call(edge.listener, "office", "/upload", method="POST", body=big)
        except TunnelUnavailable as exc:
            assert "dropped the request" in str(exc)
            assert len(refused) == 1
            break
        assert reply.status == 200
        assert not refused, "a body over the replay limit was sent again after a refusal"
    else:
        pytest.fail("no request over the replay limit reached the refusing connection")
    # a stream reset after it may have been processed (CANCEL) is never retried
    await late.close()
    cancel = TunnelTestConnector(token, connector_id="cancels", handler=cancelling)
    await cancel.connect(1)
    served = len(good.seen)
    failures = 0
    for _ in range(6):
        try:
            await call(edge.listener, "office", "/x")
        except TunnelUnavailable:
            failures += 1
    assert failures == len(cancel.seen) > 0
    assert len(good.seen) == served + 6 - failures
    await cancel.close()
    await good.close()


@pytest.mark.parametrize("protocol", [PROTOCOL_H2, PROTOCOL_MUX], ids=["h2", "mux"])
async def test_losing_a_connection_under_load_fails_no_new_request(
    edge: Edge, protocol: int
) -> None:
    connector = TunnelTestConnector(edge.token("office"), protocol=protocol)
    conns = await connector.connect(4)
    results: list[tuple[float, int | str]] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                reply = await call(edge.listener, "office", "/slow?ms=20")
                results.append((started, reply.status if reply.complete else "cut"))
            except TunnelUnavailable as exc:
                results.append((started, str(exc)))

    clients = [asyncio.ensure_future(client()) for _ in range(12)]
    await wait_for(lambda: len(results) > 50)
    conns[0].abort()
    await wait_for(lambda: len(edge.listener.status()[0].connections) == 3)
    noticed = time.monotonic()
    # and a graceful drain (GOAWAY) of another: nothing fails at all, even in flight
    conns[1].go_away()
    await wait_for(lambda: len(results) > 300, timeout=20)
    stop.set()
    await asyncio.gather(*clients)
    after = [status for started, status in results if started > noticed]
    assert after and all(status == 200 for status in after), after
    await connector.close()


@pytest.mark.parametrize("protocol", [PROTOCOL_H2, PROTOCOL_MUX], ids=["h2", "mux"])
async def test_bodies_stream_both_ways_with_bounded_memory(edge: Edge, protocol: int) -> None:
    connector = TunnelTestConnector(edge.token("office"), protocol=protocol)
    await connector.connect(1)
    listener_conn = next(iter(edge.listener._tunnels["office"].values()))
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, listener_conn.core.buffered_bytes)
            await asyncio.sleep(0.005)

    watcher = asyncio.ensure_future(watch())
    # download 64 MiB to a slow client: the edge holds at most one stream window
    size = 64 * MIB
    reply = await call(edge.listener, "office", f"/download?size={size}", slow_send=0.0005)
    assert reply.status == 200 and reply.complete and len(reply.body) == size
    # upload 64 MiB in 1 MiB chunks
    chunk = os.urandom(MIB)
    reply = await call(edge.listener, "office", "/upload", method="POST", body=[chunk] * 64)
    assert json.loads(reply.body) == {
        "size": 64 * MIB,
        "sha256": hashlib.sha256(chunk * 64).hexdigest(),
    }
    watcher.cancel()
    window = edge.listener.tunnel_settings.stream_window
    assert 0 < peak <= window + 2 * edge.listener.tunnel_settings.send_buffer, peak
    await connector.close()


async def test_throughput_of_small_requests(edge: Edge) -> None:
    """Not a benchmark, a floor: small requests through 4 connections, 8 at a time."""
    connector = TunnelTestConnector(edge.token("office"))
    await connector.connect(4)
    count = 800
    sem = asyncio.Semaphore(8)

    async def one() -> int:
        async with sem:
            return (await call(edge.listener, "office", "/x")).status

    started = time.perf_counter()
    statuses = await asyncio.gather(*(one() for _ in range(count)))
    elapsed = time.perf_counter() - started
    assert statuses == [200] * count
    print(f"\n{count / elapsed:.0f} requests/s through the in-process tunnel (edge + connector)")
    assert count / elapsed > 100
    # body-less requests get a disconnect watcher only if they outlive a tick: none may be left
    # behind, and the listener's one timer stops once nothing runs
    watchers = edge.listener._watchers
    await wait_for(
        lambda: watchers.ticker is None and not watchers.recent and not watchers.older,
        timeout=2,
        what="the watchers idle",
    )
    assert all(c.open_streams == 0 for c in edge.listener.connections())
    await connector.close()


# ============================================================================ end to end

APP_BODY = """
identity_providers: [{{name: otp, type: onetimepin}}]
applications:
  - name: wiki
    domain: wiki.localhost
    tunnel: office
    policies:
      - {{name: staff, decision: allow, include: [{{email_domain: [example.com]}}]}}
  - name: lab
    domain: lab.localhost
    policies:
      - {{name: staff, decision: allow, include: [{{email_domain: [example.com]}}]}}
tunnels:
  - {{name: office, routes: [wiki.localhost]}}
  - {{name: lab, routes: [lab.localhost]}}
{extra}"""


class TunnelZerogate(Zerogate):
    """A server whose ``listen`` also names a tunnel port."""

    tunnel_port: int = 0

    def write(self, body: str) -> None:
        self.tunnel_listen = f"127.0.0.1:{self.tunnel_port}"
        super().write(body)

    def token(self, name: str, *, rotate: bool = True) -> str:
        args = ["tunnel", "token", name, "-c", str(self.config), "--json"]
        result = self.cli(*args, *(["--rotate"] if rotate else []))
        assert result.returncode == 0, result.stderr
        token: str = json.loads(result.stdout)["token"]
        # the server starts its tunnel endpoint once a tunnel has a token (within a second)
        wait_for_port(self.tunnel_port, self.proc, timeout=10)
        return token


async def connect_fresh(connector: TunnelTestConnector, count: int = 1) -> list[Any]:
    """Connect with a token made a moment ago: the server learns new credentials from its
    store poll (twice a second), so a refusal is retried for a few seconds."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return await connector.connect(count)
        except TunnelRefused:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
def zg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunnelZerogate]:
    server = TunnelZerogate(tmp_path_factory.mktemp("tunnel"), free_port(), free_port())
    server.tunnel_port = free_port()
    server.apply(APP_BODY.format(extra=""))
    server.start()
    yield server
    server.stop()


async def session_cookie(zg: Zerogate, app: str, email: str = "ann@example.com") -> str:
    store = await Store.open(storage_url("sqlite:///zerogate.db", base_dir=zg.workdir))
    try:
        keyset = await ensure_keyset(store)
    finally:
        await store.close()
    token = issue_app_token(
        keyset,
        issuer=f"https://{zg.portal}",
        audience=audience_tag(app),
        email=email,
        sub=email,
        idp="otp",
        ttl_seconds=600,
        now=time.time(),
    )
    return f"__zg_{audience_tag(app)[:16]}={token}"


@pytest.fixture(scope="module")
def office_token(zg: TunnelZerogate) -> str:
    return zg.token("office")


@pytest.mark.e2e
async def test_e2e_requests_stream_through_the_tunnel(
    zg: TunnelZerogate, office_token: str
) -> None:
    connector = TunnelTestConnector(office_token)
    gates = [asyncio.Event() for _ in range(3)]
    connector.sse_go = gates  # type: ignore[attr-defined]
    await connect_fresh(connector, 2)
    cookie = await session_cookie(zg, "wiki")
    host = f"wiki.localhost:{zg.port}"
    base = f"http://127.0.0.1:{zg.port}"
    try:
        async with ClientSession() as http:
            headers = {"Host": host, "Cookie": cookie}
            # without a session: the policy check happens before the tunnel
            async with http.get(
                f"{base}/x", headers={"Host": host, "Accept": "application/json"}
            ) as r:
                assert r.status == 401
            assert not connector.seen
            spoof = {
                **headers,
                "Zerogate-Authenticated-User-Email": "eve@evil.test",
                "X-Forwarded-For": "6.6.6.6",
            }
            async with http.get(f"{base}/hello?q=1", headers=spoof) as r:
                assert r.status == 200
                seen = await r.json()
            names = dict(seen["headers"])
            assert seen["authority"] == host and seen["path"] == "/hello?q=1"
            assert names["zerogate-authenticated-user-email"] == "ann@example.com"
            assert names["x-forwarded-for"] == "127.0.0.1"
            assert names["x-forwarded-host"] == host and names["x-forwarded-proto"] == "http"
            assert "zerogate-jwt-assertion" in names and "cookie" not in names
            # upload and download, 32 MiB each way
            data = os.urandom(MIB) * 32

            async def chunks() -> AsyncIterator[bytes]:
                for i in range(0, len(data), 256 * 1024):
                    yield data[i : i + 256 * 1024]

            async with http.post(f"{base}/upload", headers=headers, data=chunks()) as r:
                assert await r.json() == {
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            async with http.get(f"{base}/download?size={32 * MIB}", headers=headers) as r:
                total = 0
                async for piece in r.content.iter_chunked(MIB):
                    total += len(piece)
                assert total == 32 * MIB
            # server-sent events arrive one by one, as the origin writes them
            async with http.get(f"{base}/sse", headers=headers) as r:
                assert r.headers["Content-Type"] == "text/event-stream"
                for n in range(3):
                    gates[n].set()
                    line = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
                    assert line == f"data: event {n}\n\n".encode()
            # a WebSocket, end to end, with its subprotocol
            async with http.ws_connect(
                f"{base}/ws?room=1", headers=headers, protocols=("chat",)
            ) as ws:
                assert ws.protocol == "chat"
                first = await ws.receive(timeout=5)
                assert first.data == "hello /ws?room=1"
                await ws.send_str("hi")
                assert (await ws.receive(timeout=5)).data == "echo:hi"
                await ws.send_bytes(b"\x00\x01" * 40000)
                reply = await ws.receive(timeout=5)
                assert (
                    reply.type is WSMsgType.BINARY and reply.data == b"echo:" + b"\x00\x01" * 40000
                )
                await ws.close()
            ws_request = next(req for req in connector.seen if req.protocol == "websocket")
            assert ws_request.method == "CONNECT" and ws_request.header("sec-websocket-key") is None
            # the connector refuses a WebSocket (its origin answered 403): the client does not
            # get one, and the handshake fails with 403 (not a 101 then a close, not a 5xx)
            with pytest.raises(WSServerHandshakeError) as refused:
                async with http.ws_connect(f"{base}/ws-refuse", headers=headers):
                    pass
            assert refused.value.status == 403, refused.value.status
    finally:
        await connector.close()


@pytest.mark.e2e
async def test_e2e_no_connector_and_cross_tunnel_hosts(
    zg: TunnelZerogate, office_token: str
) -> None:
    lab = TunnelTestConnector(zg.token("lab"), connector_id="lab-connector")
    await connect_fresh(lab)
    base = f"http://127.0.0.1:{zg.port}"
    try:
        async with ClientSession() as http:
            # the office tunnel has no connector: a 502 page that says so, JSON for API clients;
            # lab's connector (another tunnel's token) never sees the request
            headers = {
                "Host": f"wiki.localhost:{zg.port}",
                "Cookie": await session_cookie(zg, "wiki"),
            }
            async with http.get(f"{base}/", headers=headers) as r:
                assert r.status == 502
                assert "text/html" in r.headers["Content-Type"]
                assert "no connected connector" in await r.text()
            async with http.get(f"{base}/", headers={**headers, "Accept": "application/json"}) as r:
                assert r.status == 502
                assert "no connected connector" in (await r.json())["detail"]
            # a cookie for wiki sent with lab's Host: lab's own policy needs lab's session
            lab_headers = {"Host": f"lab.localhost:{zg.port}", "Accept": "application/json"}
            async with http.get(
                f"{base}/", headers={**lab_headers, "Cookie": headers["Cookie"]}
            ) as r:
                assert r.status == 401
            assert not lab.seen
            # lab's own application (routed, neither origin nor tunnel) reaches lab's connector
            lab_headers["Cookie"] = await session_cookie(zg, "lab")
            async with http.get(f"{base}/mine", headers=lab_headers) as r:
                assert r.status == 200
                assert (await r.json())["authority"] == f"lab.localhost:{zg.port}"
            # an office connector present: office traffic goes there, never to lab's
            office = TunnelTestConnector(office_token)
            await office.connect(1)
            seen_by_lab = len(lab.seen)
            for _ in range(5):
                async with http.get(f"{base}/", headers=headers) as r:
                    assert r.status == 200
                    assert (await r.json())["connector"] == "test-connector"
            assert len(lab.seen) == seen_by_lab
            assert all(req.authority.startswith("lab.localhost") for req in lab.seen)
            await office.close()
    finally:
        await lab.close()


@pytest.mark.e2e
async def test_e2e_rotation_closes_old_connections_and_list_shows_connectors(
    zg: TunnelZerogate,
) -> None:
    old = zg.token("office")
    connector = TunnelTestConnector(old)
    conns = await connect_fresh(connector, 3)

    def listed() -> list[dict[str, Any]]:
        result = zg.cli("tunnel", "list", "-c", str(zg.config), "--json")
        office = next(t for t in json.loads(result.stdout)["tunnels"] if t["name"] == "office")
        return office["connectors"] if office["connections"] == 3 else []

    [entry] = await asyncio.to_thread(wait_until, listed, 15)
    assert entry["connector_id"] == "test-connector" and entry["connections"] == 3
    assert entry["version"] == "test-0.1" and entry["addresses"] == ["127.0.0.1"]
    new = zg.token("office")  # --rotate
    for conn in conns:
        await asyncio.wait_for(conn.closed.wait(), 5)
    with pytest.raises(TunnelRefused) as refused:
        await TunnelTestConnector(old).connect()
    # as a token nobody knows: no oracle of which tunnel ids exist
    assert refused.value.reason == "bad_token"
    fresh = TunnelTestConnector(new)
    await connect_fresh(fresh)
    async with ClientSession() as http:
        headers = {"Host": f"wiki.localhost:{zg.port}", "Cookie": await session_cookie(zg, "wiki")}
        async with http.get(f"http://127.0.0.1:{zg.port}/", headers=headers) as r:
            assert r.status == 200
    await fresh.close()
    await connector.close()


@pytest.mark.e2e
async def test_e2e_garbage_on_the_tunnel_port_is_refused(zg: TunnelZerogate) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", zg.tunnel_port, ssl=context)
    writer.write(b"\x16\x03\x01 hello")
    answer = await asyncio.wait_for(reader.read(), 5)
    assert b"malformed" in answer
    writer.close()
    wrong = TunnelToken(new_tunnel_id(), new_secret(), (f"127.0.0.1:{zg.tunnel_port}",)).encode()
    with pytest.raises(TunnelRefused) as refused:
        await TunnelTestConnector(wrong).connect()
    assert refused.value.reason == "bad_token"
    # silence after TLS: closed by the 10 s registration timeout
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", zg.tunnel_port, ssl=context)
    answer = await asyncio.wait_for(reader.read(), 15)
    assert b"registration timed out" in answer
    assert 9 < time.monotonic() - started < 13
    writer.close()


def scrape(server: TunnelZerogate) -> dict[str, float]:
    """From one scrape of ``/.zerogate/metrics``: the bypassed requests of ``wiki`` and the
    requests relayed between nodes (``zerogate_relay_served_total``)."""
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/.zerogate/metrics", headers={"Host": server.portal}
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        text = r.read().decode()
    found = {"wiki": 0.0, "relay": 0.0}
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total"):
        found[name] = sum(
            float(line.rpartition(" ")[2])
            for line in text.splitlines()
            if line.startswith(f"{name} ")
        )
    for line in text.splitlines():
        if line.startswith('zerogate_requests_total{app="wiki",decision="bypass"}'):
            found["wiki"] = float(line.rpartition(" ")[2])
        elif line.startswith("zerogate_relay_served_total "):
            found["relay"] = float(line.rpartition(" ")[2])
    return found


@pytest.mark.e2e
def test_e2e_several_workers_serve_tunnels_through_each_other(tmp_path: Path) -> None:
    """``--workers 2`` with tunnels (issue #14): the workers share the tunnel port, and a
    request that lands on the worker without the connector's one connection is relayed to the
    one that has it (SQLite: the workers share the store file). Any scrape of the metrics
    counts the requests of both workers, each once."""
    from edge_harness import Origin
    from test_tunnel_e2e import start_connector

    server = TunnelZerogate(tmp_path, free_port(), free_port())
    server.tunnel_port = free_port()
    body = """
identity_providers: [{name: otp, type: onetimepin}]
tunnels: [{name: office, routes: [wiki.localhost]}]
applications:
  - name: wiki
    domain: wiki.localhost
    tunnel: office
    policies: [{name: anyone, decision: bypass, include: [{everyone: true}]}]
"""
    server.apply(body)
    origin = Origin().start()
    connector = None
    try:
        made = server.cli(
            "tunnel", "token", "office", "--rotate", "-c", str(server.config), "--json"
        )
        assert made.returncode == 0, made.stderr
        token = json.loads(made.stdout)["token"]
        server.start(workers=2)
        wait_for_port(server.tunnel_port, server.proc, timeout=15)
        connector = start_connector(
            tmp_path, token, server.tunnel_port, origin.url, name="one", ha=1
        )
        wait_until(lambda: (connector.ready() or {}).get("connections") == 1, 20)

        def status() -> int | None:
            import urllib.error
            import urllib.request

            request = urllib.request.Request(
                f"http://127.0.0.1:{server.port}/x", headers={"Host": "wiki.localhost"}
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as r:
                    return int(r.status)
            except urllib.error.HTTPError as exc:
                return int(exc.code)
            except OSError:
                return None

        # both workers learn who holds the tunnel within a second or two; then every request
        # succeeds, whichever worker granian gives it to
        wait_until(lambda: all(status() == 200 for _ in range(8)), 30)
        before = scrape(server)
        assert [status() for _ in range(40)] == [200] * 40
        sent = 40
        # metrics (docs/cluster.md "Metrics"): one scrape counts what every worker did, and a
        # request relayed from one worker to the other is counted once, by the one it reached;
        # until the worker without the connection was given some (and relayed them), go on
        while scrape(server)["relay"] - before["relay"] == 0 and sent < 400:
            assert status() == 200
            sent += 1
        for _ in range(4):  # whichever worker answers the scrape
            after = scrape(server)
            assert after["wiki"] - before["wiki"] == sent, (before, after)
            assert after["relay"] > before["relay"]
        # the workers' metrics folder is the server's own (private), gone when it stops
        assert server.proc is not None
        pid = server.proc.pid
        workers = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        # process_* of the edge: the workers' memory summed (once: one series), as read by
        # the workers themselves every second
        rss = sum(
            int(Path(f"/proc/{w}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for w in workers
        )
        wait_until(lambda: 0.8 * rss < scrape(server)["process_resident_memory_bytes"], 5)
        assert scrape(server)["process_resident_memory_bytes"] < 1.5 * rss
        assert scrape(server)["process_cpu_seconds_total"] > 0
        mapped = {
            Path(line.split()[-1]).parent
            for worker in workers
            for line in Path(f"/proc/{worker}/maps").read_text().splitlines()
            if "/zerogate-metrics-" in line
        }
        assert len(mapped) == 1, mapped  # both workers write to the one folder
        folder = mapped.pop()
        assert folder.stat().st_mode & 0o077 == 0
        assert len(list(folder.glob("counter_*.db"))) == 2  # one per worker, not per request
        server.stop()
        assert not folder.exists()
    finally:
        if connector is not None:
            connector.stop()
        server.stop()
        origin.stop()


@pytest.mark.e2e
async def test_e2e_real_connector(zg: TunnelZerogate, tmp_path: Path) -> None:
    """The real ``zerogate connector run`` against the real edge."""
    from zg_harness import VerifyingOrigin

    origin = VerifyingOrigin(f"http://{zg.portal}/.zerogate/certs", f"https://{zg.portal}").start()
    token = zg.token("office")
    log = open(tmp_path / "connector.log", "wb")  # noqa: SIM115, ASYNC230 - closed below
    proc = subprocess.Popen(  # noqa: ASYNC220 - a long-running process, not awaited
        [
            *ZEROGATE,
            "connector",
            "run",
            "--token",
            token,
            "--url",
            f"http://127.0.0.1:{origin.port}",
            "--metrics",
            f"127.0.0.1:{free_port()}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        headers = {"Host": f"wiki.localhost:{zg.port}", "Cookie": await session_cookie(zg, "wiki")}
        async with ClientSession() as http:

            async def ok() -> dict[str, Any] | None:
                async with http.get(f"http://127.0.0.1:{zg.port}/real?x=1", headers=headers) as r:
                    return await r.json() if r.status == 200 else None

            deadline = time.monotonic() + 30
            record = None
            while record is None and time.monotonic() < deadline and proc.poll() is None:
                record = await ok()
                if record is None:
                    await asyncio.sleep(0.2)
        assert record is not None, (tmp_path / "connector.log").read_text()
        assert record["path"] == "/real?x=1" and record["email"] == "ann@example.com"
        assert record["jwt_error"] is None and record["claims"]["email"] == "ann@example.com"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        origin.stop()


@pytest.mark.e2e
def test_e2e_a_killed_workers_connections_are_ignored_at_once(tmp_path: Path) -> None:
    """``--workers 2`` with tunnels, the worker holding the tunnel's connections killed as by
    the OOM killer (issue #14): granian starts a new worker (a new node id), the connector
    redials the shared tunnel port, and the rows the dead node left stop counting as soon as
    their connections are registered again (the newer row of a connector connection wins),
    long before its heartbeat goes silent: every request succeeds again within 5 s."""
    import signal
    import urllib.error
    import urllib.request

    from edge_harness import Origin
    from test_tunnel_e2e import start_connector

    server = TunnelZerogate(tmp_path, free_port(), free_port())
    server.tunnel_port = free_port()
    server.apply("""
identity_providers: [{name: otp, type: onetimepin}]
tunnels: [{name: office, routes: [wiki.localhost]}]
applications:
  - name: wiki
    domain: wiki.localhost
    tunnel: office
    policies: [{name: anyone, decision: bypass, include: [{everyone: true}]}]
""")
    origin = Origin().start()
    connector = None

    def status() -> int | None:
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.port}/x", headers={"Host": "wiki.localhost"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return None

    def nodes() -> list[dict[str, Any]]:
        listed = server.cli("nodes", "list", "-c", str(server.config), "--json")
        assert listed.returncode == 0, listed.stderr
        return list(json.loads(listed.stdout)["nodes"])

    try:
        made = server.cli(
            "tunnel", "token", "office", "--rotate", "-c", str(server.config), "--json"
        )
        assert made.returncode == 0, made.stderr
        server.start(workers=2)
        wait_for_port(server.tunnel_port, server.proc, timeout=15)
        token = json.loads(made.stdout)["token"]
        connector = start_connector(
            tmp_path, token, server.tunnel_port, origin.url, name="one", ha=2
        )
        wait_until(lambda: (connector.ready() or {}).get("connections") == 2, 20)
        wait_until(lambda: sum(n["connections"] for n in nodes()) == 2, 20)
        wait_until(lambda: all(status() == 200 for _ in range(8)), 30)
        holder = max(nodes(), key=lambda n: int(n["connections"]))
        os.kill(int(holder["pid"]), signal.SIGKILL)
        killed = time.monotonic()

        def recovered() -> bool:
            return all(status() == 200 for _ in range(10))

        wait_until(recovered, timeout=15, interval=0.1)
        took = time.monotonic() - killed
        after = {n["node"]: n for n in nodes()}
        print(f"\nworker killed: every request succeeded again {took:.2f} s after the kill")
        assert took < 5, took
        # the dead node's rows no longer count though its heartbeat is not silent yet
        assert after[holder["node"]]["connections"] == 0, after
        assert sum(int(n["connections"]) for n in after.values()) == 2, after
    finally:
        if connector is not None:
            connector.stop()
        server.stop()
        origin.stop()
