"""The tunnel end to end with the real parts: a ``zerogate server`` subprocess, the real
``zerogate connector run`` subprocess (four connections), and ``edge_harness.Origin``.

Between connector and edge sits a TCP relay owned by the test (it passes the TLS bytes through
untouched), so the test can cut one connection the way a broken network would, and count how
often a connector dials. Covered: WebSocket echo and unbuffered server-sent events through the
tunnel, a gigabyte each way with bounded memory on the edge and on the connector, one of four
connections cut under load with no failed new request, a wrong token refused (and no hot redial
loop), a connector of another tunnel never seeing this tunnel's hostnames, and the edge
restarted with the connector serving again after its backoff.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import zlib
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from edge_harness import PATTERN, Origin, crc_of_pattern
from harness import free_port, peak_rss_kib, wait_for, wait_for_port, wait_until
from zerogate.tunnel.token import TunnelToken, decode
from zg_harness import ZEROGATE, Zerogate, worker_pids

pytestmark = pytest.mark.e2e

T = TypeVar("T")
GIB = 1024 * 1024 * 1024
MAX_PEAK_GROWTH_KIB = 96 * 1024  # far below the gigabyte that passes each way

CONFIG = """
identity_providers: [{{name: otp, type: onetimepin}}]
tunnels:
  - {{name: lab, routes: [open.localhost]}}
  - {{name: other, routes: [other.localhost]}}
applications:
  - name: open
    domain: open.localhost
    tunnel: lab
    policies:
      - {{name: anyone, decision: bypass, include: [{{everyone: true}}]}}
  - name: other
    domain: other.localhost
    tunnel: other
    policies:
      - {{name: anyone, decision: bypass, include: [{{everyone: true}}]}}
"""


# ---------------------------------------------------------------------------- the relay


@dataclass
class _Pair:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


@dataclass
class Relay:
    """A TCP relay on its own thread: ``port`` forwards to ``target``; ``cut_one`` aborts one
    relayed connection on both sides (as a broken network would); ``accepted`` counts dials."""

    target: int
    port: int = field(default_factory=free_port)
    accepted: int = 0
    pairs: list[_Pair] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)

    def start(self) -> Relay:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self._listen())
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        assert ready.wait(10)
        return self

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        pair = _Pair(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        pair.upstream = up_writer
        self.pairs.append(pair)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(256 * 1024):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            if pair in self.pairs:
                self.pairs.remove(pair)

    def live(self) -> int:
        return len(self.pairs)

    def cut_one(self) -> None:
        async def cut() -> None:
            self.pairs.pop(0).abort()

        self.call(cut())

    def stop(self) -> None:
        async def close() -> None:
            self._server.close()
            for pair in list(self.pairs):
                pair.abort()

        self.call(close())
        self.loop.call_soon_threadsafe(self.loop.stop)


# ---------------------------------------------------------------------------- the setup


@dataclass
class Connector:
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log: Path

    def ready(self) -> dict[str, Any] | None:
        try:
            with urlopen(f"http://127.0.0.1:{self.metrics_port}/ready") as r:
                data: dict[str, Any] = json.loads(r.read())
                return data
        except OSError:
            return None

    def metric(self, name: str) -> float:
        with urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def urlopen(url: str) -> Any:
    import urllib.error
    import urllib.request

    try:
        return urllib.request.urlopen(url, timeout=5)
    except urllib.error.HTTPError as exc:  # /ready answers 503 with a JSON body
        return exc


def start_connector(
    workdir: Path, token: str, edge_port: int, url: str, *, name: str, ha: int = 4
) -> Connector:
    metrics_port = free_port()
    log = workdir / f"{name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                *ZEROGATE,
                "connector",
                "run",
                "--token",
                token,
                "--edge",
                f"127.0.0.1:{edge_port}",
                "--url",
                url,
                "--ha-connections",
                str(ha),
                "--metrics",
                f"127.0.0.1:{metrics_port}",
                "--grace-period",
                "2s",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Connector(proc, metrics_port, log)


@dataclass
class Setup:
    zg: Zerogate
    origin: Origin
    relay: Relay
    connector: Connector
    lab_token: str
    workdir: Path
    tunnel_port: int

    def url(self, path: str, host: str = "open.localhost") -> tuple[str, dict[str, str]]:
        return f"http://127.0.0.1:{self.zg.port}{path}", {"Host": f"{host}:{self.zg.port}"}


def token_for(zg: Zerogate, name: str) -> str:
    made = zg.cli("tunnel", "token", name, "--rotate", "--json", "-c", str(zg.config))
    assert made.returncode == 0, made.stderr
    token: str = json.loads(made.stdout)["token"]
    return token


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("tunnel-e2e")
    origin = Origin().start()
    tunnel_port = free_port()
    zg = Zerogate(workdir, free_port(), free_port(), tunnel_listen=f"127.0.0.1:{tunnel_port}")
    zg.apply(CONFIG.format())
    zg.start()
    relay = Relay(tunnel_port).start()
    connector: Connector | None = None
    try:
        token = token_for(zg, "lab")
        wait_for_port(tunnel_port, zg.proc, timeout=10)
        connector = start_connector(workdir, token, relay.port, origin.url, name="lab")
        wait_until(lambda: (connector.ready() or {}).get("connections") == 4, timeout=20)
        yield Setup(zg, origin, relay, connector, token, workdir, tunnel_port)
    finally:
        if connector is not None:
            connector.stop()
        relay.stop()
        zg.stop()
        origin.stop()


def client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=300),
    )


# ---------------------------------------------------------------------------- streams


async def test_websocket_echo_and_server_sent_events(setup: Setup) -> None:
    url, headers = setup.url("/_/ws?key=tunnel-ws")
    async with client() as session:
        async with session.ws_connect(url.replace("http", "ws", 1), headers=headers) as ws:
            await ws.send_str("hello")
            assert (await ws.receive(timeout=10)).data == "echo:hello"
            await ws.send_bytes(b"\x00\x01" * 70000)  # bigger than one frame buffer
            assert (await ws.receive(timeout=10)).data == b"echo:" + b"\x00\x01" * 70000
            await ws.send_str("close:4001:bye")
            msg = await ws.receive(timeout=10)
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4001
        url, headers = setup.url("/_/sse?key=tunnel-sse&count=3")
        async with session.get(url, headers=headers) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
            for n in (1, 2, 3):
                # the origin sends event n+1 only after the test saw event n
                event = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 10)
                assert event == f"id: {n}\ndata: event {n}\n\n".encode()
                if n < 3:
                    setup.origin.release(f"tunnel-sse:{n}")


async def test_a_gigabyte_each_way_with_bounded_memory(setup: Setup) -> None:
    [worker] = worker_pids(setup.zg)
    edge_before = peak_rss_kib(worker)
    connector_before = peak_rss_kib(setup.connector.proc.pid)

    async def body() -> AsyncIterator[bytes]:
        left = GIB
        while left:
            piece = PATTERN[: min(left, len(PATTERN))]
            left -= len(piece)
            yield piece

    async with client() as session:
        url, headers = setup.url("/_/upload?key=gib")
        headers["Content-Length"] = str(GIB)
        async with session.post(url, data=body(), headers=headers) as r:
            assert r.status == 200
            assert await r.json() == {"size": GIB, "crc": crc_of_pattern(GIB)}
        url, headers = setup.url(f"/_/download?size={GIB}")
        size, crc = 0, 0
        async with session.get(url, headers=headers) as r:
            assert r.status == 200 and r.headers["Content-Length"] == str(GIB)
            async for chunk in r.content.iter_any():
                size += len(chunk)
                crc = zlib.crc32(chunk, crc)
        assert (size, crc) == (GIB, crc_of_pattern(GIB))
    edge_growth = peak_rss_kib(worker) - edge_before
    connector_growth = peak_rss_kib(setup.connector.proc.pid) - connector_before
    assert edge_growth < MAX_PEAK_GROWTH_KIB, f"edge peak RSS grew {edge_growth} KiB"
    assert connector_growth < MAX_PEAK_GROWTH_KIB, f"connector grew {connector_growth} KiB"


# ---------------------------------------------------------------------------- failures


async def test_one_of_four_connections_cut_under_load_fails_no_new_request(
    setup: Setup,
) -> None:
    wait_until(lambda: setup.relay.live() == 4, timeout=20)
    url, headers = setup.url("/echo")
    results: list[tuple[float, int | str]] = []
    cut_at: list[float] = []
    stop = asyncio.Event()

    async def worker(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                async with session.get(url, headers=headers) as r:
                    await r.read()
                    results.append((started, r.status))
            except aiohttp.ClientError as exc:
                results.append((started, type(exc).__name__))

    async with client() as session:
        workers = [asyncio.create_task(worker(session)) for _ in range(16)]
        await asyncio.sleep(0)
        await wait_for(lambda: len(results) >= 200, timeout=30)
        cut_at.append(time.monotonic())
        setup.relay.cut_one()
        count = len(results)
        await wait_for(lambda: len(results) >= count + 400, timeout=30)
        stop.set()
        await asyncio.gather(*workers)
    after = [status for started, status in results if started > cut_at[0]]
    assert len(after) >= 400
    failed_after = [s for s in after if s != 200]
    # a request already sent on the cut connection may fail; none started after the cut
    assert failed_after == [], f"{len(failed_after)} requests after the cut failed"
    # only requests in flight on the cut connection (at most one per worker) may have failed
    assert len([s for _, s in results if s != 200]) <= 16
    # and the connector dials the lost connection again
    wait_until(lambda: (setup.connector.ready() or {}).get("connections") == 4, timeout=20)


async def test_a_wrong_token_is_refused_without_a_hot_loop(setup: Setup) -> None:
    real = decode(setup.lab_token)
    wrong = TunnelToken(real.tunnel_id, "x" * 43, real.edges, real.fingerprint).encode()
    counting = Relay(setup.tunnel_port).start()
    bad = start_connector(setup.workdir, wrong, counting.port, setup.origin.url, name="wrong")
    try:
        wait_until(lambda: counting.accepted >= 1, timeout=10)
        dialled_at = time.monotonic()
        wait_until(lambda: "bad_token" in bad.log.read_text(errors="replace"), timeout=10)
        ready = bad.ready()
        assert ready is not None and ready.get("connections") == 0
        # a refused token is not redialled in a hot loop: a few dials over several seconds
        wait_until(lambda: time.monotonic() - dialled_at > 4, timeout=10, interval=0.2)
        assert counting.accepted <= 8, f"{counting.accepted} dials in ~4 s"
    finally:
        bad.stop()
        counting.stop()


async def test_another_tunnels_connector_never_sees_this_tunnels_hosts(setup: Setup) -> None:
    second = Origin().start()
    other = start_connector(
        setup.workdir,
        token_for(setup.zg, "other"),
        setup.tunnel_port,
        second.url,
        name="other",
        ha=1,
    )
    try:
        wait_until(lambda: (other.ready() or {}).get("connections") == 1, timeout=20)
        lab_before = setup.origin.state.echoes
        async with client() as session:
            for host in ("other.localhost", "open.localhost"):
                for _ in range(10):
                    url, headers = setup.url("/echo", host)
                    async with session.get(url, headers=headers) as r:
                        assert r.status == 200
                        names = {k.lower(): v for k, v in (await r.json())["headers"]}
                        assert names["host"] == f"{host}:{setup.zg.port}"
        # each tunnel's connector served only its own hostname
        assert second.state.echoes == 10
        assert setup.origin.state.echoes - lab_before == 10
    finally:
        other.stop()
        second.stop()


def test_the_edge_restarts_and_the_connector_serves_again(setup: Setup) -> None:
    url, headers = setup.url("/echo")

    def status() -> int | None:
        import urllib.request

        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                return int(r.status)
        except OSError:
            return None

    assert status() == 200
    reconnects = setup.connector.metric("zerogate_connector_reconnects_total")
    setup.zg.stop()
    wait_until(lambda: (setup.connector.ready() or {}).get("connections") == 0, timeout=20)
    setup.zg.start()
    wait_until(lambda: status() == 200, timeout=45, interval=0.25)
    assert setup.connector.proc.poll() is None
    assert setup.connector.metric("zerogate_connector_reconnects_total") > reconnects
