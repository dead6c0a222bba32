"""A cluster end to end (issue #14): three ``zerogate server`` processes on one PostgreSQL
database, edge B with two workers, two real connectors of one tunnel — one dialling edge A,
one (a single connection) dialling edge B — and ``edge_harness.Origin``.

Edge C holds no connection: every request through it is relayed (mutual TLS) to A or B; a
request that lands on the worker of B without the connection is relayed to its sibling.
Covered: plain requests, WebSocket, server-sent events and a large body each way through
every edge; ``zerogate nodes list``; the relay listener refusing a plain client, a TLS client
without a certificate and one whose certificate another CA issued; ``kill -9`` of edge A under
a bounded load loop through B and C: only requests in flight fail, and new requests through
the survivors all succeed within 5 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

import test_store as base
from edge_harness import PATTERN, Origin, crc_of_pattern
from harness import free_port, peak_rss_kib, wait_for_port, wait_until
from test_tunnel_e2e import Connector, client, start_connector, token_for
from zg_harness import Zerogate, worker_pids

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

PG_SERVER = os.environ.get("ZEROGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
#: the body size each way (the issue asks 256 MiB; it passes in a few seconds here)
BIG = 256 * 1024 * 1024
#: what the relaying and the holding edge may grow by while BIG passes each way
MAX_PEAK_GROWTH_KIB = 96 * 1024

CONFIG = """
identity_providers: [{name: otp, type: onetimepin}]
tunnels:
  - {name: lab, routes: [open.localhost]}
applications:
  - name: open
    domain: open.localhost
    tunnel: lab
    policies:
      - {name: anyone, decision: bypass, include: [{everyone: true}]}
"""


@dataclass
class Edge(Zerogate):
    """A server of the cluster: ``storage`` is the shared PostgreSQL store's URL (the
    harness writes it into the configuration)."""


def _admin(sql: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    async def run() -> None:
        connection = await asyncpg.connect(PG_SERVER)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


@dataclass
class Cluster:
    edges: dict[str, Edge]
    tunnel_ports: dict[str, int]
    origin: Origin
    connectors: list[Connector]
    workdir: Path

    def url(self, edge: str, path: str) -> tuple[str, dict[str, str]]:
        port = self.edges[edge].port
        return f"http://127.0.0.1:{port}{path}", {"Host": f"open.localhost:{port}"}

    def nodes(self) -> list[dict[str, object]]:
        listed = self.edges["b"].cli("nodes", "list", "--json", "-c", str(self.edges["b"].config))
        assert listed.returncode == 0, listed.stderr
        rows: list[dict[str, object]] = json.loads(listed.stdout)["nodes"]
        return rows


def _get(url: str, headers: dict[str, str]) -> int | None:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    database = f"zg_cluster_{secrets.token_hex(6)}"
    try:
        _admin(f'CREATE DATABASE "{database}"')
    except OSError as exc:
        base._unreachable(f"{PG_SERVER}: {exc}")
    storage = PG_SERVER.rsplit("/", 1)[0] + "/" + database
    workdir = tmp_path_factory.mktemp("cluster")
    origin = Origin().start()
    edges: dict[str, Edge] = {}
    ports: dict[str, int] = {}
    connectors: list[Connector] = []
    try:
        for name in ("a", "b", "c"):
            folder = workdir / name
            folder.mkdir()
            ports[name] = free_port()
            edge = Edge(
                folder,
                free_port(),
                free_port(),
                tunnel_listen=f"127.0.0.1:{ports[name]}",
                storage=storage,
            )
            edges[name] = edge
        edges["a"].apply(CONFIG)
        token = token_for(edges["a"], "lab")
        for name, edge in edges.items():
            edge.write(CONFIG)
            edge.start(workers=2 if name == "b" else 1)
            wait_for_port(ports[name], edge.proc, timeout=15)
        connectors.append(
            start_connector(workdir, token, ports["a"], origin.url, name="conn-a", ha=2)
        )
        connectors.append(
            start_connector(workdir, token, ports["b"], origin.url, name="conn-b", ha=1)
        )
        for connector, want in zip(connectors, (2, 1), strict=True):

            def connected(c: Connector = connector, w: int = want) -> bool:
                return (c.ready() or {}).get("connections") == w

            wait_until(connected, 20)
        made = Cluster(edges, ports, origin, connectors, workdir)
        # every edge (each worker of B) has learnt who holds the tunnel
        for name in edges:
            url, headers = made.url(name, "/hello")

            def answers(u: str = url, h: dict[str, str] = headers) -> bool:
                return all(_get(u, h) == 200 for _ in range(6))

            wait_until(answers, 30)
        yield made
    finally:
        for connector in connectors:
            connector.stop()
        for edge in edges.values():
            edge.stop()
        origin.stop()
        _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


# ---------------------------------------------------------------------------- through every edge


async def test_requests_through_every_edge_reach_the_origin(cluster: Cluster) -> None:
    async with client() as session:
        for name in ("a", "b", "c"):
            for n in range(6):  # B's two workers: both answer, one of them by relay
                url, headers = cluster.url(name, f"/echo/{name}/{n}?q=1")
                async with session.post(url, data=b"x" * 1000, headers=headers) as r:
                    assert r.status == 200, (name, n, r.status, await r.text())
                    seen = await r.json()
                    assert seen["target"] == f"/echo/{name}/{n}?q=1"
                    assert seen["body_size"] == 1000
                    sent = {k.lower(): v for k, v in seen["headers"]}
                    assert sent["host"] == f"open.localhost:{cluster.edges[name].port}"
                    assert not any(k.startswith("zerogate-relay") for k in sent)
                    assert "zerogate-relay" not in {k.lower() for k in r.headers}
                    assert r.headers["X-Origin"] == "yes"


def test_nodes_list_shows_every_node_and_what_it_holds(cluster: Cluster) -> None:
    rows = cluster.nodes()
    assert len(rows) == 4  # A, C and B's two workers
    assert all(row["live"] for row in rows)
    held = sorted(int(str(row["connections"])) for row in rows)
    assert held == [0, 0, 1, 2]
    text = cluster.edges["a"].cli("nodes", "list", "-c", str(cluster.edges["a"].config))
    assert text.returncode == 0 and "lab (2)" in text.stdout and "lab (1)" in text.stdout


async def test_the_admin_api_lists_the_nodes(cluster: Cluster) -> None:
    edge = cluster.edges["c"]
    made = edge.cli(
        "api-token", "create", "reader", "--read-only", "--json", "-c", str(edge.config)
    )
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)["token"]
    async with client() as session:
        url = f"http://127.0.0.1:{edge.port}/api/v1/nodes"
        headers = {"Host": edge.portal, "Authorization": f"Bearer {token}"}
        async with session.get(url, headers=headers) as r:
            assert r.status == 200, await r.text()
            nodes = (await r.json())["nodes"]
        async with session.get(url, headers={"Host": edge.portal}) as r:
            assert r.status == 401  # no token, no list
    assert sorted(n["connections"] for n in nodes) == [0, 0, 1, 2]
    assert all(n["tunnels"] in ({}, {"lab": 1}, {"lab": 2}) for n in nodes)


async def test_websocket_and_server_sent_events_through_the_relay(cluster: Cluster) -> None:
    async with client() as session:
        url, headers = cluster.url("c", "/_/ws?key=relay-ws")
        async with session.ws_connect(url.replace("http", "ws", 1), headers=headers) as ws:
            await ws.send_str("hello")
            assert (await ws.receive(timeout=10)).data == "echo:hello"
            await ws.send_bytes(b"\x00\x01" * 70000)
            assert (await ws.receive(timeout=10)).data == b"echo:" + b"\x00\x01" * 70000
            await ws.send_str("close:4001:bye")
            msg = await ws.receive(timeout=10)
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4001
        url, headers = cluster.url("c", "/_/sse?key=relay-sse&count=3")
        async with session.get(url, headers=headers) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
            for n in (1, 2, 3):
                # the origin sends event n+1 only after the test saw event n: nothing is held
                event = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 10)
                assert event == f"id: {n}\ndata: event {n}\n\n".encode()
                if n < 3:
                    cluster.origin.release(f"relay-sse:{n}")


async def test_a_large_body_each_way_through_the_relay(cluster: Cluster) -> None:
    async def body() -> AsyncIterator[bytes]:
        left = BIG
        while left:
            piece = PATTERN[: min(left, len(PATTERN))]
            left -= len(piece)
            yield piece

    # edge C relays it, B's worker (or A) forwards it into the tunnel: neither holds it
    watched = [*worker_pids(cluster.edges["c"]), *worker_pids(cluster.edges["b"])]
    peaks = {pid: peak_rss_kib(pid) for pid in watched}
    started = time.monotonic()
    async with client() as session:
        url, headers = cluster.url("c", "/_/upload?key=big")
        headers["Content-Length"] = str(BIG)
        async with session.post(url, data=body(), headers=headers) as r:
            assert r.status == 200
            assert await r.json() == {"size": BIG, "crc": crc_of_pattern(BIG)}
        url, headers = cluster.url("c", f"/_/download?size={BIG}")
        size, crc = 0, 0
        async with session.get(url, headers=headers) as r:
            assert r.status == 200 and r.headers["Content-Length"] == str(BIG)
            async for chunk in r.content.iter_any():
                size += len(chunk)
                crc = zlib.crc32(chunk, crc)
        assert (size, crc) == (BIG, crc_of_pattern(BIG))
    print(f"256 MiB up and down through the relay: {time.monotonic() - started:.1f} s")
    growth = {pid: peak_rss_kib(pid) - before for pid, before in peaks.items()}
    assert max(growth.values()) < MAX_PEAK_GROWTH_KIB, f"peak RSS grew (KiB): {growth}"
    async with client() as session:  # HEAD through the relay: the length, no body
        url, headers = cluster.url("c", "/_/download?size=1000")
        async with session.head(url, headers=headers) as r:
            assert r.status == 200 and r.headers["Content-Length"] == "1000"
            assert await r.read() == b""


# ---------------------------------------------------------------------------- the relay listener


def _holder(cluster: Cluster) -> tuple[str, tuple[str, int]]:
    """A node holding a connection: its id and relay address."""
    row = next(r for r in cluster.nodes() if int(str(r["connections"])) > 0)
    host, _, port = str(row["relay_address"]).rpartition(":")
    return str(row["node"]), (host, int(port))


def _handshake(address: tuple[str, int], context: ssl.SSLContext | None, name: str) -> bytes:
    """Send a relayed request (plain, or over TLS with ``context``); what came back."""
    request = (
        b"GET /relayed HTTP/1.1\r\nHost: open.localhost\r\nZerogate-Relay-Tunnel: lab\r\n"
        b"Zerogate-Relay-Authority: open.localhost\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(address, timeout=5) as raw:
        if context is None:
            raw.sendall(request)
            try:
                return raw.recv(65536)
            except OSError:
                return b""
        try:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                tls.sendall(request)
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
                return answer
        except (ssl.SSLError, OSError):
            return b""


def test_the_relay_listener_refuses_everyone_but_a_node(cluster: Cluster) -> None:
    import trustme

    from zerogate.store import Store, storage_url
    from zerogate.tunnel import peers

    node_id, address = _holder(cluster)
    before = cluster.origin.state.echoes
    # plain HTTP: the listener speaks TLS only; no HTTP answer, nothing relayed
    answer = _handshake(address, None, "")
    assert b"HTTP/1.1" not in answer
    # TLS without a client certificate: the handshake fails
    bare = ssl.create_default_context()
    bare.check_hostname = False
    bare.verify_mode = ssl.CERT_NONE
    assert _handshake(address, bare, "x") == b""
    # TLS with a certificate of another CA: refused too
    forged = ssl.create_default_context()
    forged.check_hostname = False
    forged.verify_mode = ssl.CERT_NONE
    trustme.CA().issue_cert(peers.node_name("intruder")).configure_cert(forged)
    assert _handshake(address, forged, "x") == b""
    assert cluster.origin.state.echoes == before  # none of them reached the origin

    # the control: a certificate of the cluster's own CA (as a node has) is served
    async def cluster_ca() -> peers.CertPair:
        store = await Store.open(storage_url(cluster.edges["a"].storage))
        try:
            return peers.CertPair.from_json(await store.named_secret(peers.SECRET_NAME, "{}"))
        finally:
            await store.close()

    ca = asyncio.run(cluster_ca())
    mine = peers.issue_node(ca, "test-node")
    node = ssl.create_default_context(cadata=ca.cert_pem)
    folder = cluster.workdir / "node-cert"
    folder.mkdir(exist_ok=True)
    (folder / "cert.pem").write_text(mine.cert_pem)
    (folder / "key.pem").write_text(mine.key_pem)
    node.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    answer = _handshake(address, node, peers.node_name(node_id))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b'"target": "/relayed"' in answer
    assert cluster.origin.state.echoes == before + 1


async def test_relay_headers_from_a_client_are_never_obeyed(cluster: Cluster) -> None:
    """A client cannot name a tunnel through the public port: the pipeline drops every
    ``Zerogate-*`` header before anything is forwarded."""
    async with client() as session:
        url, headers = cluster.url("c", "/echo/spoof")
        headers["Zerogate-Relay-Tunnel"] = "other"
        headers["Zerogate-Relay-Authority"] = "evil.localhost"
        async with session.get(url, headers=headers) as r:
            assert r.status == 200
            sent = {k.lower(): v for k, v in (await r.json())["headers"]}
            assert sent["host"] == f"open.localhost:{cluster.edges['c'].port}"
            assert "zerogate-relay-tunnel" not in sent


# ---------------------------------------------------------------------------- losing an edge


async def test_kill_9_one_edge_under_load(cluster: Cluster) -> None:
    """Last in the module: edge A dies. Requests through B and C keep succeeding: at most the
    ones in flight at the kill fail (event streams relayed through A are cut, not left
    hanging), and every request started 5 s after it succeeds."""
    results: list[tuple[float, float, bool]] = []  # (start, end, ok)
    killed_at: list[float] = []
    killed = asyncio.Event()
    began = time.monotonic()

    def over() -> bool:  # bounded: 9 s after the kill, and 30 s at most
        now = time.monotonic()
        return now > began + 30 or (bool(killed_at) and now > killed_at[0] + 9)

    async def worker(session: aiohttp.ClientSession, edge: str, n: int) -> None:
        i = 0
        while not over():
            i += 1
            url, headers = cluster.url(edge, f"/load/{n}/{i}")
            start = time.monotonic()
            try:
                async with session.get(url, headers=headers) as r:
                    await r.read()
                    ok = r.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            results.append((start, time.monotonic(), ok))
            await asyncio.sleep(0.02)

    async def killer() -> None:
        await asyncio.sleep(3)
        proc = cluster.edges["a"].proc
        assert proc is not None
        killed_at.append(time.monotonic())
        os.kill(proc.pid, signal.SIGKILL)
        killed.set()
        await asyncio.to_thread(proc.wait, 5)

    async def stream_end(k: int, r: aiohttp.ClientResponse) -> str:
        """How an event stream open through C at the kill ends: ``done`` (all events and a
        clean end), ``cut`` (the connection broke) or ``hung``."""
        await killed.wait()
        await asyncio.sleep(1)  # the relays through A have seen it die
        try:
            for n in (1, 2):
                cluster.origin.release(f"kill-{k}:{n}")
                event = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 10)
                assert event == f"id: {n + 1}\ndata: event {n + 1}\n\n".encode()
            assert await asyncio.wait_for(r.content.read(), 10) == b""
        except TimeoutError:
            return "hung"
        except (aiohttp.ClientError, ValueError, asyncio.IncompleteReadError):
            return "cut"
        return "done"

    [holder_of_two] = [r["node"] for r in cluster.nodes() if r["connections"] == 2]
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        # four event streams through C before the load starts: C takes turns between its two
        # holders (A, and B's worker with the connection), so two of them run through A
        streams = []
        for k in range(4):
            url, headers = cluster.url("c", f"/_/sse?key=kill-{k}&count=3")
            r = await session.get(url, headers=headers)
            assert r.status == 200
            assert await asyncio.wait_for(r.content.readuntil(b"\n\n"), 10) == (
                b"id: 1\ndata: event 1\n\n"
            )
            streams.append(r)
        ending = asyncio.gather(*(stream_end(k, r) for k, r in enumerate(streams)))
        await asyncio.gather(
            *(worker(session, edge, n) for n, edge in enumerate(["b", "c", "b", "c"])),
            killer(),
        )
        ends: list[str] = await ending
        for r in streams:
            r.close()
    # the streams in flight through A broke, the others finished; none hung
    assert sorted(ends) == ["cut", "cut", "done", "done"], ends
    [kill] = killed_at
    before = [ok for _, end, ok in results if end < kill]
    after = [ok for start, _, ok in results if start > kill + 5]
    failed = [(start - kill, end - kill) for start, end, ok in results if not ok]
    print(
        f"{len(results)} requests, {len(failed)} failed (start, end after the kill: {failed}); "
        f"{len(before)} before the kill, {len(after)} started 5 s after it"
    )
    assert before and all(before)
    assert len(after) > 20 and all(after), "a request started 5 s after the kill failed"
    # every failure was in flight at the kill or started in the 5 s after it
    assert all(start <= 5 and end >= 0 for start, end in failed)
    # the dead node's heartbeat stops: it is listed silent
    wait_until(
        lambda: [r["live"] for r in cluster.nodes() if r["node"] == holder_of_two] == [False], 15
    )
