"""A real zerogate for end-to-end tests: config file, store, ``zerogate server`` subprocess,
an origin that verifies the identity JWT against ``/.zerogate/certs`` with PyJWT, and a real SMTP
server (the Outbox) that receives the PIN emails.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.cookies import Morsel, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import jwt
from aiohttp import ClientSession, ClientTimeout, DummyCookieJar, TCPConnector, WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from harness import free_port as free_port  # re-exported: tests import it from here too
from harness import wait_for as wait_for
from harness import wait_for_port
from harness import wait_until as wait_until
from zerogate.identity import KeySet
from zerogate.model import load_file
from zerogate.outbox import Message, Outbox
from zerogate.runtime import audience_tag
from zerogate.store import Store, storage_url

ZEROGATE = [sys.executable, "-m", "zerogate"]
#: ``ZEROGATE_TEST_FAST_PATH=1``: every server the tests start (without TLS) runs with
#: ``listen.fast_path: true``, so the end-to-end tests run through the front
FAST_PATH = os.environ.get("ZEROGATE_TEST_FAST_PATH") == "1"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``zerogate ARGS`` in a subprocess (no colour, wide tables); the exit code is the
    caller's to check."""
    return subprocess.run(
        [*ZEROGATE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "250"},
        check=False,
    )


class VerifyingOrigin:
    """An origin that checks ``Zerogate-Jwt-Assertion`` against the edge's JWKS (as a real
    origin would) and echoes what it saw as JSON; runs on its own thread and loop."""

    def __init__(self, certs_url: str, issuer: str) -> None:
        self.certs_url = certs_url
        self.issuer = issuer
        self.port = free_port()
        self.seen: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _handle(self, request: web.Request) -> web.Response:
        if request.path.startswith("/upload"):
            # an upload is answered only once its body is complete (an origin that answers
            # early races the edge's own verdict on a malformed body)
            await request.read()
        assertion = request.headers.get("Zerogate-Jwt-Assertion")
        claims: dict[str, Any] | None = None
        error = None
        if assertion:
            try:
                header = jwt.get_unverified_header(assertion)
                # certs_url names the portal host; connect to loopback with that Host header
                parts = urlsplit(self.certs_url)
                async with (
                    ClientSession() as session,
                    session.get(
                        f"http://127.0.0.1:{parts.port}{parts.path}",
                        headers={"Host": parts.netloc},
                    ) as resp,
                ):
                    keys = (await resp.json())["keys"]
                key = next(k for k in keys if k["kid"] == header["kid"])
                claims = jwt.decode(
                    assertion,
                    jwt.PyJWK(key).key,
                    algorithms=[key["alg"]],
                    issuer=self.issuer,
                    options={"verify_aud": False},
                )
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
        record = {
            "path": request.path_qs,
            "email": request.headers.get("Zerogate-Authenticated-User-Email"),
            "claims": claims,
            "jwt_error": error,
            "headers": {k.lower(): v for k, v in request.headers.items()},
        }
        self.seen.append(record)
        return web.json_response(record)

    def start(self) -> VerifyingOrigin:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@dataclass
class Zerogate:
    """A running ``zerogate server`` with its config file; ``apply`` edits the store."""

    workdir: Path
    port: int
    smtp_port: int
    proc: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the address browsers reach the edge on (``0.0.0.0`` when another namespace must too)
    http_host: str = "127.0.0.1"
    #: ``listen.tunnel`` (HOST:PORT) when the test serves tunnels
    tunnel_listen: str | None = None
    #: ``listen.tls`` ({cert: FILE, key: FILE}) when the test serves HTTPS
    tls: str | None = None
    #: more ``listen`` keys, as YAML flow-mapping entries (``header_timeout: 1s``)
    listen_extra: str = ""
    #: the ``portal`` setting when not ``auth.localhost:<port>`` (a public URL behind a proxy)
    portal_setting: str | None = None
    #: the ``storage`` setting (a PostgreSQL URL for several servers on one store)
    storage: str = "sqlite:///zerogate.db"

    @property
    def config(self) -> Path:
        return self.workdir / "zerogate.yaml"

    @property
    def portal(self) -> str:
        return f"auth.localhost:{self.port}"

    def url(self, host: str, path: str = "/") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def write(self, body: str) -> None:
        self.config.write_text(
            f"portal: {self.portal_setting or f'auth.localhost:{self.port}'}\n"
            f"listen: {{{self._listen()}}}\n"
            f"storage: {self.storage}\n"
            f"email: {{smtp: {{host: 127.0.0.1, port: {self.smtp_port}, timeout: 5s}}, "
            'from: "Access <noreply@example.test>"}\n' + body
        )

    def _listen(self) -> str:
        tunnel = f", tunnel: {self.tunnel_listen}" if self.tunnel_listen else ""
        tls = f", tls: {self.tls}" if self.tls else ""
        extra = f", {self.listen_extra}" if self.listen_extra else ""
        if FAST_PATH and not self.tls and "fast_path" not in extra:
            extra += ", fast_path: true"  # the whole e2e set through edge/front.py
        return f"http: {self.http_host}:{self.port}{tunnel}{tls}{extra}"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*ZEROGATE, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=self.workdir,
            env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"},
        )

    def apply(self, body: str) -> None:
        self.write(body)
        result = self.cli("apply", "-c", str(self.config))
        assert result.returncode == 0, result.stderr

    def start(self, workers: int = 1) -> None:
        log = open(self.workdir / "server.log", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [*ZEROGATE, "server", "-c", str(self.config), "--workers", str(workers)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env={**os.environ, "ZEROGATE_LOG_LEVEL": "WARNING"},
        )
        wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log_text(self) -> str:
        path = self.workdir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


def run_zerogate(workdir: Path, smtp_port: int, body: str) -> Iterator[Zerogate]:
    zg = Zerogate(workdir, free_port(), smtp_port)
    zg.apply(body)
    zg.start()
    try:
        yield zg
    finally:
        zg.stop()


# ---------------------------------------------------------------------------- HTTP-level helpers
# (used by test_edge_security.py and test_edge_streaming.py: no browser, raw HTTP with explicit
# Host headers against 127.0.0.1, since Python cannot resolve *.localhost)


class ThreadedOutbox:
    """The real SMTP server (``zerogate.outbox.Outbox``) on its own thread and loop, so it
    outlives any test's event loop; waits work from sync and async tests alike."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.outbox = Outbox(port=0)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> ThreadedOutbox:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.outbox.start(), self.loop).result(10)
        return self

    @property
    def port(self) -> int:
        return self.outbox.port

    def mark(self) -> int:
        return self.outbox.mark()

    def wait(self, to: str, after: int, timeout: float = 15) -> Message:
        future = asyncio.run_coroutine_threadsafe(
            self.outbox.wait_for(to, timeout, after=after), self.loop
        )
        return future.result(timeout + 5)

    async def wait_async(self, to: str, after: int, timeout: float = 15) -> Message:  # noqa: ASYNC109
        future = asyncio.run_coroutine_threadsafe(
            self.outbox.wait_for(to, timeout, after=after), self.loop
        )
        return await asyncio.wrap_future(future)

    def messages(self, after: int = 0) -> list[Message]:
        return [m for m in self.outbox.messages() if m.seq > after]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.outbox.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class VerifyingWsOrigin(VerifyingOrigin):
    """``VerifyingOrigin`` plus a WebSocket at ``/ws`` (its first message is the JSON record of
    the upgrade request: headers, verified JWT claims; then it echoes text and binary), and
    every record also keeps ``raw_headers``: ``[name (lower case), value]`` pairs in the order
    received, repeats included (the ``headers`` dict keeps only the last of a repeated name)."""

    async def _handle(self, request: web.Request) -> web.Response:
        response = await super()._handle(request)
        # no await since the record was appended: it is the last one
        self.seen[-1]["raw_headers"] = [
            [k.decode("latin-1").lower(), v.decode("latin-1")] for k, v in request.raw_headers
        ]
        return response

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/ws", self._ws)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return await self._handle(request)
        record = await self._handle(request)  # verifies the JWT, records the request
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        assert isinstance(record.body, bytes)
        await ws.send_str(record.body.decode())
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str("echo:" + msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(b"echo:" + msg.data)
        return ws


@dataclass
class Reply:
    """One HTTP response as :class:`HttpBrowser` saw it (redirects are never followed)."""

    status: int
    headers: CIMultiDict[str]
    body: bytes
    url: str

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")

    def set_cookies(self) -> dict[str, Morsel[str]]:
        found: dict[str, Morsel[str]] = {}
        for value in self.headers.getall("Set-Cookie", []):
            jar: SimpleCookie = SimpleCookie()
            jar.load(value)
            found.update(jar)
        return found


def hidden_inputs(page: str) -> dict[str, str]:
    """The hidden form fields of a portal page (the first form's, when names repeat)."""
    fields: dict[str, str] = {}
    for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page):
        fields.setdefault(name, html.unescape(value))
    return fields


class HttpBrowser:
    """A cookie-keeping HTTP client for the virtual hosts one zerogate serves on 127.0.0.1.

    Every request goes to ``127.0.0.1:<port of the URL>`` with the URL's host as the ``Host``
    header; cookies are kept per host name (like a browser: host-only, path-scoped, Max-Age=0
    deletes) and the target is sent exactly as written (no re-quoting, no dot-segment removal).
    ``source`` binds the client side to another loopback address (127.0.0.N), so one test
    machine can play many client IPs. ``headers`` go with every request.
    """

    def __init__(self, *, source: str = "127.0.0.1", headers: Mapping[str, str] | None = None):
        self.source = source
        self.headers = dict(headers or {})
        self.jar: dict[str, dict[str, tuple[str, str]]] = {}  # host -> name -> (value, path)
        self._session: ClientSession | None = None

    async def __aenter__(self) -> HttpBrowser:
        self._session = ClientSession(
            connector=TCPConnector(local_addr=(self.source, 0), force_close=True),
            cookie_jar=DummyCookieJar(),
            timeout=ClientTimeout(total=60),
            auto_decompress=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> ClientSession:
        assert self._session is not None, "use HttpBrowser as an async context manager"
        return self._session

    def cookies(self, host: str) -> dict[str, str]:
        return {name: value for name, (value, _) in self.jar.get(host, {}).items()}

    def set_cookie(self, host: str, name: str, value: str, path: str = "/") -> None:
        self.jar.setdefault(host, {})[name] = (value, path)

    def cookie_header(self, host: str, path: str) -> str:
        return "; ".join(
            f"{name}={value}"
            for name, (value, cpath) in self.jar.get(host, {}).items()
            if path.startswith(cpath)
        )

    def target(self, url: str) -> tuple[str, str, int, str]:
        """``(netloc, host name, port, target)`` of an absolute URL."""
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None, url
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return parts.netloc, parts.hostname, parts.port, target

    def request_args(
        self, method: str, url: str, headers: Mapping[str, str] | None = None
    ) -> tuple[URL, dict[str, str]]:
        netloc, host, port, target = self.target(url)
        sent = {"Host": netloc, **self.headers, **(headers or {})}
        cookie = self.cookie_header(host, target)
        if cookie and "Cookie" not in sent:
            sent["Cookie"] = cookie
        return URL(f"http://127.0.0.1:{port}{target}", encoded=True), sent

    def remember(self, url: str, reply: Reply) -> None:
        _, host, _, _ = self.target(url)
        for name, morsel in reply.set_cookies().items():
            if morsel["max-age"] == "0" or morsel["expires"] == "Thu, 01 Jan 1970 00:00:00 GMT":
                self.jar.get(host, {}).pop(name, None)
            else:
                self.set_cookie(host, name, morsel.value, morsel["path"] or "/")

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: Any = None,
    ) -> Reply:
        target, sent = self.request_args(method, url, headers)
        async with self.session.request(
            method, target, headers=sent, data=data, allow_redirects=False
        ) as resp:
            body = await resp.read()
            reply = Reply(resp.status, CIMultiDict(resp.headers), body, url)
        self.remember(url, reply)
        return reply

    async def get(self, url: str, *, headers: Mapping[str, str] | None = None) -> Reply:
        return await self.request("GET", url, headers=headers)

    async def post_form(
        self, url: str, fields: Mapping[str, str], *, headers: Mapping[str, str] | None = None
    ) -> Reply:
        return await self.request(
            "POST",
            url,
            headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
            data=urlencode(fields).encode(),
        )

    async def follow(
        self, url: str, *, limit: int = 10, headers: Mapping[str, str] | None = None
    ) -> list[Reply]:
        """GET ``url`` and every redirect after it; all the replies, the last one not a 3xx."""
        replies: list[Reply] = []
        for _ in range(limit):
            reply = await self.get(url, headers=headers)
            replies.append(reply)
            if reply.status not in (301, 302, 303, 307, 308) or not reply.location:
                return replies
            url = urljoin(url, reply.location)
        raise AssertionError(f"more than {limit} redirects: {[r.url for r in replies]}")


async def log_out(browser: HttpBrowser, url: str) -> list[Reply]:
    """Press the sign-out button at ``url`` (a ``/.zerogate/logout`` page): GET the page, POST
    its form with the token it carries, then follow the redirects; all the replies."""
    page = await browser.get(url)
    assert page.status == 200, (page.status, page.text[:300])
    fields = hidden_inputs(page.text)
    if "csrf" not in fields:  # no session there: the page already says so
        return [page]
    replies = [page, await browser.post_form(url, fields)]
    location = replies[-1].location
    if replies[-1].status in (302, 303) and location:
        replies += await browser.follow(urljoin(url, location))
    return replies


@dataclass
class LoginPage:
    """The portal's sign-in page a navigation to an application ended on."""

    chain: list[Reply]
    fields: dict[str, str]

    @property
    def reply(self) -> Reply:
        return self.chain[-1]


async def login_page(
    browser: HttpBrowser, zg: Zerogate, app_host: str, path: str = "/"
) -> LoginPage:
    """Navigate to an application without a session: it must end on the portal's login page."""
    chain = await browser.follow(zg.url(app_host, path))
    page = chain[-1]
    assert page.status == 200, (page.status, page.url, page.text[:500])
    assert page.url.startswith(f"http://{zg.portal}/.zerogate/login?flow="), page.url
    fields = hidden_inputs(page.text)
    assert set(fields) >= {"flow", "csrf"}, fields
    return LoginPage(chain, fields)


async def request_pin(
    browser: HttpBrowser, zg: Zerogate, fields: Mapping[str, str], email: str
) -> Reply:
    """POST the email form of a login page (``fields``: its hidden inputs)."""
    return await browser.post_form(
        f"http://{zg.portal}/.zerogate/login/otp",
        {"flow": fields["flow"], "csrf": fields["csrf"], "email": email},
    )


async def submit_pin(
    browser: HttpBrowser, zg: Zerogate, fields: Mapping[str, str], email: str, pin: str
) -> Reply:
    """POST the PIN form (``fields``: the hidden inputs of the page that asked for it)."""
    return await browser.post_form(
        f"http://{zg.portal}/.zerogate/login/otp/verify",
        {"flow": fields["flow"], "csrf": fields["csrf"], "email": email, "pin": pin},
    )


async def login(
    browser: HttpBrowser,
    zg: Zerogate,
    outbox: ThreadedOutbox,
    app_host: str,
    email: str,
    *,
    path: str = "/",
) -> Reply:
    """The whole one-time PIN login over HTTP: navigate to the app, land on the portal's login
    page, post the email, read the PIN from the outbox, post it, follow the hand-over back to
    the application. Returns the final reply (the origin's, when the address is allowed)."""
    page = await login_page(browser, zg, app_host, path)
    mark = outbox.mark()
    asked = await request_pin(browser, zg, page.fields, email)
    assert asked.status == 200, (asked.status, asked.text[:500])
    message = await outbox.wait_async(email, after=mark)
    assert message.pin is not None
    verified = await submit_pin(browser, zg, hidden_inputs(asked.text), email, message.pin)
    assert verified.status == 302, (verified.status, verified.text[:500])
    assert verified.location is not None
    assert verified.location.startswith(f"http://{app_host}:{zg.port}/.zerogate/authorized?code=")
    chain = await browser.follow(verified.location)
    return chain[-1]


def app_cookie_name(app_name: str) -> str:
    """The session cookie name of an application (as ``zerogate.edge.pipeline.app_cookie``)."""
    return f"__zg_{audience_tag(app_name)[:16]}"


@contextlib.asynccontextmanager
async def open_store(zg: Zerogate) -> AsyncIterator[Store]:
    """The server's own store (the SQLite file next to its config)."""
    store = await Store.open(storage_url("sqlite:///zerogate.db", base_dir=zg.workdir))
    try:
        yield store
    finally:
        await store.close()


async def server_keyset(zg: Zerogate) -> KeySet:
    async with open_store(zg) as store:
        doc, _ = await store.keyset()
    assert doc is not None, "the server has not created its signing keys yet"
    return KeySet.from_dict(doc)


def wait_ready(zg: Zerogate, timeout: float = 30) -> None:
    """Wait until the server answers (a worker finished its startup), not just listens."""

    def ready() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", zg.port), timeout=2) as sock:
                sock.sendall(
                    f"GET /.zerogate/certs HTTP/1.1\r\nHost: {zg.portal}\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                return sock.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    wait_until(ready, timeout=timeout, interval=0.1)


def worker_pids(zg: Zerogate) -> list[int]:
    """The granian worker processes of the server (children of the ``zerogate server`` process)."""
    assert zg.proc is not None
    pid = zg.proc.pid
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def apply_here(zg: Zerogate, body: str) -> None:
    """``Zerogate.apply`` without the CLI's start-up time: write the file, apply it in-process."""
    zg.write(body)
    objects = load_file(zg.config).config.objects()
    async with open_store(zg) as store:
        await store.apply(objects, actor="test", source="test")


# ---------------------------------------------------------------------------- tunnel test connector
# (used by test_tunnel_edge.py and test_cli_tunnels.py: ``ConnectorSide`` over asyncio TLS, so the
# edge's tunnel side is tested with a connector whose every move the test controls)


class TunnelRefused(Exception):
    """The edge refused the test connector's registration."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass
class TunnelRequest:
    """One stream the edge opened on a test connection; the handler answers it."""

    conn: TestTunnelConnection
    stream_id: int
    method: str
    authority: str
    path: str
    headers: list[tuple[bytes, bytes]]
    protocol: str | None
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    window: asyncio.Event = field(default_factory=asyncio.Event)
    reset: bool = False

    def header(self, name: str) -> str | None:
        key = name.lower().encode()
        return next((v.decode("latin-1") for k, v in self.headers if k == key), None)

    async def read(self) -> bytes | None:
        """The next body chunk (acknowledged: the edge may send more), None at the end."""
        item = await self.queue.get()
        if item:
            self.conn.core.ack(self.stream_id, len(item))
            self.conn.flush()
        return item

    async def body(self) -> bytes:
        chunks = []
        while (chunk := await self.read()) is not None:
            chunks.append(chunk)
        return b"".join(chunks)

    def respond(
        self, status: int, headers: Sequence[tuple[bytes, bytes]] = (), end: bool = False
    ) -> None:
        self.conn.core.send_response(self.stream_id, status, list(headers), end_stream=end)
        self.conn.flush()

    async def write(self, data: bytes, end: bool = False) -> None:
        view = memoryview(data)
        while True:
            if self.reset:
                raise ConnectionResetError("stream reset")
            self.window.clear()
            room = self.conn.core.send_capacity(self.stream_id)
            if room == 0 and view:
                await self.window.wait()
                continue
            piece, view = view[:room], view[room:]
            self.conn.core.send_body(self.stream_id, piece, end_stream=end and not view)
            self.conn.flush()
            await self.conn.writer.drain()
            if not view:
                return


class TestTunnelConnection:
    """One registered connection of :class:`TunnelTestConnector`."""

    def __init__(
        self,
        connector: TunnelTestConnector,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        index: int,
    ) -> None:
        from zerogate.tunnel.protocol import ConnectorSide, Registration

        self.connector = connector
        self.reader = reader
        self.writer = writer
        self.index = index
        self.core = ConnectorSide(
            Registration(
                token=connector.token,
                connector_id=connector.connector_id,
                version="test-0.1",
                connection_index=index,
                features=frozenset({"websocket"}),
                protocol=connector.protocol,
            )
        )
        self.requests: dict[int, TunnelRequest] = {}
        self.served = 0
        self.paused = False
        self.closed = asyncio.Event()
        self.ready = asyncio.Event()
        self.goaway_seen = False
        self._task: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    def flush(self) -> None:
        data = self.core.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)
        if self.core.closed and not self.writer.is_closing():
            self.writer.close()

    async def register(self) -> None:
        from zerogate.tunnel.protocol import (
            ConnectionTerminated,
            RegistrationAccepted,
            RegistrationRefused,
        )

        self.flush()
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                raise TunnelRefused("closed", "the edge closed the connection")
            events = self.core.receive_data(data)
            for index, event in enumerate(events):
                if isinstance(event, RegistrationRefused):
                    raise TunnelRefused(event.reason.value, event.message)
                if isinstance(event, ConnectionTerminated):
                    raise TunnelRefused("terminated", event.reason)
                if isinstance(event, RegistrationAccepted):
                    self._dispatch(events[index + 1 :])
                    self.flush()
                    self._task = asyncio.get_running_loop().create_task(self._run())
                    await asyncio.wait_for(self.ready.wait(), 10)
                    return
            self.flush()

    async def _run(self) -> None:
        try:
            while not self.core.closed:
                if self.paused:
                    await asyncio.sleep(0.05)
                    continue
                data = await self.reader.read(262144)
                events = self.core.receive_data(data) if data else self.core.connection_lost()
                self._dispatch(events)
                self.flush()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for req in self.requests.values():
                req.reset = True
                req.queue.put_nowait(None)
                req.window.set()
            self.closed.set()
            if not self.writer.is_closing():
                self.writer.close()

    def _dispatch(self, events: list[Any]) -> None:
        from zerogate.tunnel import protocol as p

        for event in events:
            if isinstance(event, p.ConnectionReady):
                self.ready.set()
            elif isinstance(event, p.RequestReceived):
                req = TunnelRequest(
                    self,
                    event.stream_id,
                    event.method,
                    event.authority,
                    event.path,
                    event.headers,
                    event.protocol,
                )
                self.requests[event.stream_id] = req
                self.served += 1
                self.connector.seen.append(req)
                task = asyncio.get_running_loop().create_task(self._serve(req))
                self._handlers.add(task)
                task.add_done_callback(self._handlers.discard)
            elif isinstance(event, p.BodyChunk):
                req_ = self.requests.get(event.stream_id)
                if req_ is not None:
                    req_.queue.put_nowait(event.data)
            elif isinstance(event, p.StreamEnded):
                req_ = self.requests.get(event.stream_id)
                if req_ is not None:
                    req_.queue.put_nowait(None)
            elif isinstance(event, p.StreamReset):
                req_ = self.requests.pop(event.stream_id, None)
                if req_ is not None:
                    req_.reset = True
                    req_.queue.put_nowait(None)
                    req_.window.set()
            elif isinstance(event, p.WindowOpened):
                req_ = self.requests.get(event.stream_id)
                if req_ is not None:
                    req_.window.set()
            elif isinstance(event, p.GoAwayReceived):
                self.goaway_seen = True

    async def _serve(self, req: TunnelRequest) -> None:
        try:
            await self.connector.handler(req)
        except (ConnectionResetError, OSError):
            pass
        finally:
            self.requests.pop(req.stream_id, None)

    @property
    def open_streams(self) -> int:
        return len(self.requests)

    def go_away(self) -> None:
        self.core.go_away("test connector drains")
        self.flush()

    def abort(self) -> None:
        """Cut the TCP connection without a word (a crash, a dead path)."""
        transport = self.writer.transport
        transport.abort()

    async def close(self) -> None:
        self.abort()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._handlers):
            task.cancel()


class TunnelTestConnector:
    """A connector for tests: dials the edge with a token, checks the certificate against the
    token's fingerprint, and serves every stream with ``handler`` (default: :func:`echo_app`)."""

    def __init__(
        self,
        token: str,
        address: tuple[str, int] | None = None,
        *,
        connector_id: str = "test-connector",
        handler: Any = None,
        protocol: int | None = None,
    ) -> None:
        from zerogate.tunnel.protocol import PROTOCOL_VERSION
        from zerogate.tunnel.token import TokenError, TunnelToken, decode

        self.protocol = protocol or PROTOCOL_VERSION  # the wire: 1 (h2) or 2 (mux)
        self.token = token
        try:
            self.decoded: TunnelToken | None = decode(token)
        except TokenError:
            self.decoded = None  # a test of what the edge does with garbage
        if address is None:
            assert self.decoded is not None
            host, _, port = self.decoded.edges[0].rpartition(":")
            address = (host.strip("[]"), int(port))
        self.address = address
        self.connector_id = connector_id
        self.handler = handler or echo_app
        self.connections: list[TestTunnelConnection] = []
        self.seen: list[TunnelRequest] = []

    async def dial(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        import hashlib
        import ssl

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # pinned below, as the real connector does
        reader, writer = await asyncio.open_connection(*self.address, ssl=context)
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        if self.decoded is not None and self.decoded.fingerprint is not None:
            assert hashlib.sha256(der).hexdigest() == self.decoded.fingerprint, "wrong certificate"
        return reader, writer

    async def connect(self, count: int = 1) -> list[TestTunnelConnection]:
        made = []
        for _ in range(count):
            reader, writer = await self.dial()
            conn = TestTunnelConnection(self, reader, writer, len(self.connections))
            try:
                await conn.register()
            except BaseException:
                writer.close()
                raise
            self.connections.append(conn)
            made.append(conn)
        return made

    async def close(self) -> None:
        for conn in self.connections:
            await conn.close()


async def echo_app(req: TunnelRequest) -> None:
    """The test connector's default origin.

    ``/upload``: reads the body, answers its size and SHA-256; ``/download?size=N``: N bytes;
    ``/sse``: three events, each only after ``req.conn.connector.sse_go`` (a list of events)
    allows it; ``/slow?ms=N``: answers after N ms; ``/ws``: a WebSocket echo ("echo:" + each
    message); anything else: JSON of what arrived (method, authority, path, headers, body size).
    """
    import hashlib
    from urllib.parse import parse_qs

    path, _, query = req.path.partition("?")
    args = {k: v[0] for k, v in parse_qs(query).items()}
    if req.protocol == "websocket":
        await ws_echo(req)
        return
    if path == "/upload":
        digest = hashlib.sha256()
        size = 0
        while (chunk := await req.read()) is not None:
            digest.update(chunk)
            size += len(chunk)
        body = json.dumps({"size": size, "sha256": digest.hexdigest()}).encode()
        req.respond(200, [(b"content-type", b"application/json")])
        await req.write(body, end=True)
        return
    if path == "/download":
        size = int(args.get("size", "0"))
        req.respond(200, [(b"content-type", b"application/octet-stream")])
        block = b"z" * 65536
        while size > 0:
            piece = block[: min(size, len(block))]
            size -= len(piece)
            await req.write(piece, end=size == 0)
        if int(args.get("size", "0")) == 0:
            await req.write(b"", end=True)
        return
    if path == "/sse":
        req.respond(200, [(b"content-type", b"text/event-stream")])
        gates: list[asyncio.Event] = getattr(req.conn.connector, "sse_go", [])
        for n in range(3):
            if n < len(gates):
                await gates[n].wait()
            await req.write(f"data: event {n}\n\n".encode())
        await req.write(b"", end=True)
        return
    body_size = len(await req.body())
    if path == "/slow":
        await asyncio.sleep(int(args.get("ms", "100")) / 1000)
    record = {
        "method": req.method,
        "authority": req.authority,
        "path": req.path,
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in req.headers],
        "body_size": body_size,
        "connection": req.conn.index,
        "connector": req.conn.connector.connector_id,
    }
    req.respond(200, [(b"content-type", b"application/json")])
    await req.write(json.dumps(record).encode(), end=True)


async def ws_echo(req: TunnelRequest) -> None:
    """The origin end of a WebSocket through the tunnel: raw RFC 6455 frames parsed with a
    server-role wsproto connection (as an origin behind the real connector would)."""
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

    if req.path.startswith("/ws-refuse"):
        req.respond(403, [(b"content-type", b"text/plain")])
        await req.write(b"no", end=True)
        return
    protocol = req.header("sec-websocket-protocol")
    headers = (
        [(b"sec-websocket-protocol", protocol.split(",")[0].strip().encode())] if protocol else []
    )
    req.respond(200, headers)
    ws = Connection(ConnectionType.SERVER)
    await req.write(ws.send(TextMessage(data="hello " + req.path)))
    text, data = "", b""  # messages arrive in pieces as the frames do
    while (chunk := await req.read()) is not None:
        ws.receive_data(chunk)
        for event in ws.events():
            if isinstance(event, TextMessage):
                text += event.data
                if event.message_finished:
                    await req.write(ws.send(TextMessage(data="echo:" + text)))
                    text = ""
            elif isinstance(event, BytesMessage):
                data += bytes(event.data)
                if event.message_finished:
                    await req.write(ws.send(BytesMessage(data=b"echo:" + data)))
                    data = b""
            elif isinstance(event, Ping):
                await req.write(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                await req.write(ws.send(event.response()), end=True)
                return
