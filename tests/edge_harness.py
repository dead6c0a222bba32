"""Real servers for edge tests: an origin, a granian-served edge, and a raw HTTP/1.1 client.

- :class:`Origin` — an aiohttp.web origin on 127.0.0.1 (random port, plus a Unix socket and an
  HTTPS port with a trustme certificate) running on its own thread and event loop, so it
  outlives any test's loop. Every path it does not know echoes the request as JSON; ``/_/…``
  paths stream, wait, fail or speak WebSocket. The test talks to it directly (``release`` an
  SSE gate, wait for a connection to be seen ``closed``).
- :class:`RawOrigin` — a TCP server that answers each request with canned bytes (exact framing
  and hop-by-hop response headers) and records the request it received.
- :class:`Granian` — ``granian --interface asgi`` in a subprocess, ready when its port accepts
  a connection; exposes the worker's pid for memory readings (:func:`peak_rss_kib`).
- :func:`edge_app` — the ASGI app the edge tests serve: every request goes through
  ``zerogate.net.headers`` and ``zerogate.edge.proxy`` to the origin its Host names, as the
  edge pipeline will after an allow decision. Configured by ``ZG_EDGE_*`` environment variables
  (see :func:`edge_env`).
- :func:`raw_request` — send exact bytes, read to EOF, parse status, headers and (de-chunked)
  body; binds a chosen source address (127.0.0.2 plays the trusted proxy).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import zlib
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import WSMsgType, web

from harness import free_port, wait_for_port
from zerogate.edge.proxy import OriginProxy
from zerogate.net.asgi import Receive, Scope, Send
from zerogate.net.headers import resolve_client, upstream_request_headers
from zerogate.net.upstream import Outbound, Timeouts

T = TypeVar("T")

TESTS_DIR = Path(__file__).resolve().parent
GRANIAN = Path(sys.executable).with_name("granian")
PATTERN = bytes(range(256)) * 1024  # 256 KiB of every byte value
INJECTED = [
    (b"zerogate-jwt-assertion", b"header.payload.signature"),
    (b"zerogate-authenticated-user-email", b"alice@example.com"),
]


# ---------------------------------------------------------------------------- small helpers


def crc_of_pattern(size: int) -> int:
    crc, left = 0, size
    while left:
        piece = PATTERN[: min(left, len(PATTERN))]
        crc = zlib.crc32(piece, crc)
        left -= len(piece)
    return crc


# ---------------------------------------------------------------------------- the origin


@dataclass
class OriginState:
    """What the origin observed; read from the test's thread."""

    closed: dict[str, threading.Event] = field(default_factory=dict)
    ws_close_codes: dict[str, int | None] = field(default_factory=dict)
    uploads: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: requests the echo handler answered
    echoes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def closed_event(self, key: str) -> threading.Event:
        with self.lock:
            return self.closed.setdefault(key, threading.Event())


class Origin:
    """An aiohttp.web origin on its own thread and loop (TCP, Unix socket and HTTPS)."""

    def __init__(self) -> None:
        self.state = OriginState()
        self.port = free_port()
        self.tls_port = free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="zg-origin-")
        self.unix_path = os.path.join(self._tmp.name, "origin.sock")
        self.ca_path = os.path.join(self._tmp.name, "ca.pem")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._gates: dict[str, asyncio.Event] = {}
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Origin:
        import trustme

        ca = trustme.CA()
        ca.cert_pem.write_to_path(self.ca_path)
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
        self._thread.start()
        self.call(self._start(server_context))
        return self

    def stop(self) -> None:
        if self._runner is not None:
            self.call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._tmp.cleanup()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def release(self, key: str) -> None:
        """Open the SSE gate ``key``: the origin sends its next event."""
        self._loop.call_soon_threadsafe(self._gate(key).set)

    def _gate(self, key: str) -> asyncio.Event:
        return self._gates.setdefault(key, asyncio.Event())

    async def _start(self, server_context: ssl.SSLContext) -> None:
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/_/upload", self._upload)
        app.router.add_get("/_/download", self._download)
        app.router.add_get("/_/chunked", self._chunked)
        app.router.add_get("/_/sse", self._sse)
        app.router.add_get("/_/forever", self._forever)
        app.router.add_get("/_/slow", self._slow)
        app.router.add_route("*", "/_/status/{code}", self._status)
        app.router.add_get("/_/ws", self._ws)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        # handler_cancellation: a handler stops when its client (the edge) goes away, as in
        # most real origins; shutdown_timeout: the tests never wait on a stray handler.
        self._runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=1.0,
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        await web.TCPSite(
            self._runner, "127.0.0.1", self.tls_port, ssl_context=server_context
        ).start()
        await web.UnixSite(self._runner, self.unix_path).start()

    async def _echo(self, request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        with self.state.lock:
            self.state.echoes += 1
        return web.json_response(
            {
                "method": request.method,
                "target": request.raw_path,
                "headers": [
                    [k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers
                ],
                "body_size": size,
                "body_sha256": digest.hexdigest(),
                "peer": peer[0] if isinstance(peer, tuple) else str(peer),
                "peer_port": peer[1] if isinstance(peer, tuple) else None,
            },
            headers={"Set-Cookie": "a=1; Path=/", "X-Origin": "yes"},
        )

    async def _upload(self, request: web.Request) -> web.Response:
        key = request.query.get("key", "")
        size, crc = 0, 0
        try:
            async for chunk in request.content.iter_any():
                size += len(chunk)
                crc = zlib.crc32(chunk, crc)
        except BaseException:
            self.state.closed_event(key).set()  # the body was cut off
            raise
        with self.state.lock:
            self.state.uploads[key] = (size, crc)
        return web.json_response({"size": size, "crc": crc})

    async def _download(self, request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        response = web.StreamResponse(
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        )
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        left = size
        while left:
            piece = PATTERN[: min(left, len(PATTERN))]
            await response.write(piece)
            left -= len(piece)
        await response.write_eof()
        return response

    async def _chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b"one,", b"two,", b"three"):
            await response.write(part)
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        key = request.query["key"]
        count = int(request.query.get("count", "3"))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for n in range(1, count + 1):
            await response.write(f"id: {n}\ndata: event {n}\n\n".encode())
            if n < count:
                gate = self._gate(f"{key}:{n}")
                await asyncio.wait_for(gate.wait(), 10)
        await response.write_eof()
        return response

    async def _forever(self, request: web.Request) -> web.StreamResponse:
        key = request.query["key"]
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        try:
            while True:
                await response.write(PATTERN)
        finally:
            self.state.closed_event(key).set()

    async def _slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("delay", "5")))
        return web.Response(text="finally")

    async def _status(self, request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        if code in (204, 304):
            return web.Response(status=code, headers={"ETag": '"v1"'})
        return web.Response(status=code, text=f"status {code}")

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        key = request.query.get("key", "")
        ws = web.WebSocketResponse(protocols=("chat", "superchat"))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                if msg.data.startswith("close:"):
                    _, code, reason = msg.data.split(":", 2)
                    await ws.close(code=int(code), message=reason.encode())
                    break
                if msg.data == "headers":
                    names = [k.decode("latin-1").lower() for k, _ in request.raw_headers]
                    await ws.send_str(json.dumps(names))
                    continue
                await ws.send_str("echo:" + msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(b"echo:" + msg.data)
        with self.state.lock:
            self.state.ws_close_codes[key] = ws.close_code
        return ws


# ---------------------------------------------------------------------------- the raw origin


class RawOrigin:
    """Answers each request with the canned bytes registered for its path; records requests."""

    def __init__(self, responses: Mapping[str, bytes]) -> None:
        self.responses = dict(responses)
        self.requests: list[bytes] = []
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RawOrigin:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            path = head.split(b" ", 2)[1].decode("latin-1").split("?")[0]
            writer.write(
                self.responses.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


# ---------------------------------------------------------------------------- the edge


def edge_env(
    routes: Mapping[str, str],
    *,
    trusted: str = "",
    slow_hosts: str = "",
    slow_read_timeout: float = 1.0,
    ca_file: str = "",
) -> dict[str, str]:
    """Environment for :func:`edge_app`: Host → origin, trusted CIDRs, short-timeout hosts."""
    return {
        "ZG_EDGE_ROUTES": json.dumps(dict(routes)),
        "ZG_EDGE_TRUSTED": trusted,
        "ZG_EDGE_SLOW_HOSTS": slow_hosts,
        "ZG_EDGE_SLOW_READ_TIMEOUT": str(slow_read_timeout),
        "ZG_EDGE_CA": ca_file,
    }


class _EdgeConfig:
    def __init__(self) -> None:
        self.routes: dict[str, str] = json.loads(os.environ.get("ZG_EDGE_ROUTES", "{}"))
        self.trusted = [
            ipaddress.ip_network(cidr.strip())
            for cidr in os.environ.get("ZG_EDGE_TRUSTED", "").split(",")
            if cidr.strip()
        ]
        self.slow_hosts = {h for h in os.environ.get("ZG_EDGE_SLOW_HOSTS", "").split(",") if h}
        ca = os.environ.get("ZG_EDGE_CA") or None
        context = ssl.create_default_context(cafile=ca) if ca else None
        self.upstream = OriginProxy(ssl_context=context)
        slow = float(os.environ.get("ZG_EDGE_SLOW_READ_TIMEOUT", "1"))
        self.slow = OriginProxy(
            timeouts=Timeouts(response=slow, idle=slow),
            ssl_context=context,
        )


_config: _EdgeConfig | None = None


async def edge_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Forward every request to the origin its Host names (the edge after an allow)."""
    global _config
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _config = _EdgeConfig()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _config is not None:
                    await _config.upstream.close()
                    await _config.slow.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if _config is None:
        _config = _EdgeConfig()
    config = _config
    host_header = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
    host = host_header.rsplit(":", 1)[0].lower() if "]" not in host_header else host_header
    origin = config.routes.get(host)
    if origin is None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"no such application"})
        return
    websocket = scope["type"] == "websocket"
    resolved = resolve_client(scope["client"][0], scope["headers"], config.trusted)
    scheme = "https" if scope["scheme"] in ("https", "wss") else "http"
    headers = upstream_request_headers(
        scope["headers"],
        client_ip=resolved.ip,
        proto=resolved.proto or scheme,
        host=host_header,
        inject=INJECTED,
        upgrade=websocket,
        forwarded_for=resolved.forwarded_for,
    )
    query = scope.get("query_string") or b""
    path_qs = scope["raw_path"] + (b"?" + query if query else b"")
    upstream = config.slow if host in config.slow_hosts else config.upstream
    if websocket:
        await upstream.forward_websocket(scope, receive, send, Outbound(origin, path_qs, headers))
    else:
        await upstream.forward_http(scope, receive, send, Outbound(origin, path_qs, headers))


class Granian:
    """``granian --interface asgi TARGET`` in a subprocess on a free port."""

    def __init__(
        self,
        target: str,
        *,
        env: Mapping[str, str] | None = None,
        workers: int = 1,
        cwd: Path = TESTS_DIR,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.target = target
        self.port = free_port()
        self.env = {**os.environ, **(env or {})}
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(cwd), self.env.get("PYTHONPATH", "")) if p
        )
        self.workers = workers
        self.cwd = cwd
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> Granian:
        command = [
            str(GRANIAN), "--interface", "asgi", "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(self.workers), "--no-access-log", *self.extra_args, self.target,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command, cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        try:
            wait_for_port(
                self.port,
                timeout=timeout,
                alive=lambda: self.proc is not None and self.proc.poll() is None,
            )
        except BaseException:
            output = self.log()
            self.stop()
            raise RuntimeError(f"granian did not start:\n{output}") from None
        return self

    def worker_pids(self) -> list[int]:
        """The worker processes (granian's main process only supervises)."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def log(self) -> str:
        if self._log.closed:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        self._log.close()

    def __enter__(self) -> Granian:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(*servers: Origin | RawOrigin) -> Iterator[None]:
    try:
        for server in servers:
            server.start()
        yield
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()


# ---------------------------------------------------------------------------- raw client


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


def _dechunk(data: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end].split(b";")[0], 16)
        pos = end + 2
        if size == 0:
            return bytes(out)
        out += data[pos : pos + size]
        pos += size + 2


async def raw_request(
    port: int,
    request: bytes,
    *,
    source: str = "127.0.0.1",
    within: float = 10,
    head_only: bool = False,
) -> RawResponse:
    """Send ``request`` as is (it should say ``Connection: close``) and read the response to EOF."""

    async def run() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        try:
            writer.write(request)
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()

    async with asyncio.timeout(within):
        data = await run()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    response = RawResponse(status, headers, body, head)
    if not head_only and (response.header("transfer-encoding") or "").lower() == "chunked":
        response.body = _dechunk(body)
    return response


def http_request(
    method: str,
    target: str,
    host: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    """Bytes of an HTTP/1.1 request with ``Connection: close`` appended unless one is given."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if not any(k.lower() == "connection" for k, _ in headers):
        lines.append("Connection: close")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
