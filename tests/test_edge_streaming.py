"""Streaming through the whole zerogate pipeline (route → identify → decide → forward): a real
``zerogate server`` in front of ``edge_harness.Origin`` (WebSocket echo, gated server-sent
events, big uploads and downloads, HEAD and 204) and of a JWT-verifying origin.

``live.localhost`` needs a session (staff), ``verify.localhost`` too (its origin verifies the
JWT it gets, on a WebSocket upgrade as well), and ``open.localhost`` is a bypass for everyone,
for the tests where identity is not the point.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from edge_harness import PATTERN, Origin, crc_of_pattern, http_request, raw_request
from harness import free_port, peak_rss_kib, wait_until
from zg_harness import (
    HttpBrowser,
    ThreadedOutbox,
    VerifyingWsOrigin,
    Zerogate,
    app_cookie_name,
    apply_here,
    login,
    wait_ready,
    worker_pids,
)

pytestmark = pytest.mark.e2e

BIG_BODY = 100 * 1024 * 1024
MAX_PEAK_GROWTH_KIB = 32 * 1024  # well below the 100 MiB that passes through


def config(origin_port: int, verifying_port: int) -> str:
    return f"""
identity_providers: [{{name: otp, type: onetimepin}}]
applications:
  - name: live
    domain: live.localhost
    origin: http://127.0.0.1:{origin_port}
    policies:
      - {{name: staff, decision: allow, include: [{{email_domain: [example.com]}}]}}
  - name: verify
    domain: verify.localhost
    origin: http://127.0.0.1:{verifying_port}
    policies:
      - {{name: staff, decision: allow, include: [{{email_domain: [example.com]}}]}}
  - name: open
    domain: open.localhost
    origin: http://127.0.0.1:{origin_port}
    policies:
      - {{name: everyone, decision: bypass, include: [{{everyone: true}}]}}
"""


@dataclass
class Setup:
    zg: Zerogate
    origin: Origin
    verifying: VerifyingWsOrigin
    cookies: dict[str, str]  # application (live, verify) -> Cookie header of the staff session

    def host(self, name: str) -> str:
        return f"{name}.localhost:{self.zg.port}"

    def url(self, path: str) -> str:
        """Where to connect: loopback (the Host header names the application)."""
        return f"http://127.0.0.1:{self.zg.port}{path}"

    def headers(self, name: str, *, session: bool = True) -> dict[str, str]:
        headers = {"Host": self.host(name)}
        if session and name in self.cookies:
            headers["Cookie"] = self.cookies[name]
        return headers


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    outbox = ThreadedOutbox().start()
    origin = Origin().start()
    port = free_port()
    verifying = VerifyingWsOrigin(
        f"http://auth.localhost:{port}/.zerogate/certs", f"https://auth.localhost:{port}"
    )
    verifying.start()
    zg = Zerogate(tmp_path_factory.mktemp("zg-streaming"), port, outbox.port)
    try:
        asyncio.run(apply_here(zg, config(origin.port, verifying.port)))
        zg.start()
        wait_ready(zg)

        async def sign_in() -> dict[str, str]:
            async with HttpBrowser() as browser:
                reply = await login(browser, zg, outbox, "live.localhost", "ann@example.com")
                assert reply.status == 200
                sso = await browser.follow(zg.url("verify.localhost", "/"))
                assert sso[-1].status == 200 and sso[-1].json()["email"] == "ann@example.com"
                return {
                    name: browser.cookie_header(f"{name}.localhost", "/")
                    for name in ("live", "verify")
                }

        yield Setup(zg, origin, verifying, asyncio.run(sign_in()))
    finally:
        zg.stop()
        verifying.stop()
        origin.stop()
        outbox.stop()


def client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=120),
    )


# ---------------------------------------------------------------------------- WebSocket


async def test_websocket_echo_through_an_allowed_session(setup: Setup) -> None:
    key = f"ws-{time.monotonic_ns()}"
    async with (
        client() as session,
        session.ws_connect(
            setup.url(f"/_/ws?key={key}"),
            headers=setup.headers("live"),
            protocols=("chat",),
        ) as ws,
    ):
        assert ws.protocol == "chat"
        await ws.send_str("héllo")
        assert await ws.receive_str(timeout=5) == "echo:héllo"
        await ws.send_bytes(bytes(range(256)) * 64)
        assert await ws.receive_bytes(timeout=5) == b"echo:" + bytes(range(256)) * 64
        await ws.send_str("headers")
        names = json.loads(await ws.receive_str(timeout=5))
        assert names.count("zerogate-jwt-assertion") == 1
        await ws.close(code=4001, message=b"client says bye")
    wait_until(lambda: key in setup.origin.state.ws_close_codes, timeout=5)
    assert setup.origin.state.ws_close_codes[key] == 4001


async def test_websocket_close_code_from_the_origin_reaches_the_client(setup: Setup) -> None:
    async with (
        client() as session,
        session.ws_connect(
            setup.url("/_/ws?key=origin-closes"), headers=setup.headers("live")
        ) as ws,
    ):
        await ws.send_str("close:4002:origin says bye")
        message = await ws.receive(timeout=5)
        assert message.type is aiohttp.WSMsgType.CLOSE
        assert (message.data, message.extra) == (4002, "origin says bye")


async def test_websocket_without_a_session_is_refused(setup: Setup) -> None:
    mark = len(setup.verifying.seen)
    forged = f"{app_cookie_name('verify')}=eyJhbGciOiJub25lIn0.e30."
    async with client() as session:
        for headers in (
            setup.headers("verify", session=False),
            {**setup.headers("verify", session=False), "Cookie": forged},
            # live's session on verify's host: another application's cookie
            {"Host": setup.host("verify"), "Cookie": setup.cookies["live"]},
        ):
            # the edge closes the handshake before accepting it: the server answers 403 (a
            # WebSocket handshake has no login redirect or 401 JSON to give)
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(setup.url("/ws"), headers=headers)
            assert refused.value.status == 403, refused.value.status
        # a reserved path is never upgraded either
        with pytest.raises(aiohttp.WSServerHandshakeError) as reserved:
            await session.ws_connect(
                setup.url("/.zerogate/identity"), headers=setup.headers("verify")
            )
        assert reserved.value.status == 403, reserved.value.status
    assert setup.verifying.seen[mark:] == []


async def test_the_jwt_reaches_the_origin_on_a_websocket_upgrade(setup: Setup) -> None:
    async with (
        client() as session,
        session.ws_connect(
            setup.url("/ws"),
            headers={
                **setup.headers("verify"),
                "Zerogate-Authenticated-User-Email": "ceo@example.com",  # spoofed: dropped
            },
        ) as ws,
    ):
        record = json.loads(await ws.receive_str(timeout=10))
        assert record["jwt_error"] is None, record["jwt_error"]
        assert record["claims"]["email"] == "ann@example.com"
        assert record["claims"]["type"] == "app"
        assert record["email"] == "ann@example.com"
        headers = [name for name, _ in setup.verifying.seen[-1]["raw_headers"]]
        assert headers.count("zerogate-authenticated-user-email") == 1
        assert headers.count("zerogate-jwt-assertion") == 1
        assert "__zg_" not in record["headers"].get("cookie", "")
        await ws.send_str("still there")
        assert await ws.receive_str(timeout=5) == "echo:still there"


# ---------------------------------------------------------------------------- server-sent events


async def test_server_sent_events_arrive_one_by_one(setup: Setup) -> None:
    key = f"sse-{time.monotonic_ns()}"
    async with (
        client() as session,
        session.get(setup.url(f"/_/sse?key={key}&count=3"), headers=setup.headers("live")) as r,
    ):
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/event-stream"
        for n in (1, 2, 3):
            # the origin sends event n+1 only once the test saw event n: a buffering edge hangs
            event = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
            assert event == f"id: {n}\ndata: event {n}\n\n".encode()
            if n < 3:
                setup.origin.release(f"{key}:{n}")
        assert await r.content.read() == b""


# ---------------------------------------------------------------------------- big bodies


async def test_a_big_upload_and_download_stream_with_bounded_memory(setup: Setup) -> None:
    [worker] = worker_pids(setup.zg)
    before = peak_rss_kib(worker)

    async def body() -> AsyncIterator[bytes]:
        left = BIG_BODY
        while left:
            piece = PATTERN[: min(left, len(PATTERN))]
            left -= len(piece)
            yield piece

    async with client() as session:
        headers = {**setup.headers("open"), "Content-Length": str(BIG_BODY)}
        async with session.post(setup.url("/_/upload?key=big"), data=body(), headers=headers) as r:
            assert r.status == 200
            assert await r.json() == {"size": BIG_BODY, "crc": crc_of_pattern(BIG_BODY)}
        size, crc = 0, 0
        async with session.get(
            setup.url(f"/_/download?size={BIG_BODY}"), headers=setup.headers("open")
        ) as r:
            assert r.status == 200
            assert r.headers["Content-Length"] == str(BIG_BODY)
            async for chunk in r.content.iter_any():
                size += len(chunk)
                crc = zlib.crc32(chunk, crc)
        assert (size, crc) == (BIG_BODY, crc_of_pattern(BIG_BODY))
    growth = peak_rss_kib(worker) - before
    assert growth < MAX_PEAK_GROWTH_KIB, (
        f"the zerogate worker's peak RSS grew {growth} KiB while 2 x {BIG_BODY} B went through"
    )


async def test_an_upload_through_a_session_streams_to_the_origin(setup: Setup) -> None:
    size = 8 * 1024 * 1024
    async with (
        client() as session,
        session.post(
            setup.url("/_/upload?key=session-upload"),
            data=PATTERN * (size // len(PATTERN)),
            headers=setup.headers("live"),
        ) as r,
    ):
        assert r.status == 200
        assert await r.json() == {"size": size, "crc": crc_of_pattern(size)}


# ---------------------------------------------------------------------------- HEAD and 204


async def test_head_and_204_have_no_body(setup: Setup) -> None:
    for name, cookie in (("open", None), ("live", setup.cookies["live"])):
        extra = [("Cookie", cookie)] if cookie else []
        host = setup.host(name)
        head = await raw_request(
            setup.zg.port,
            http_request("HEAD", "/_/download?size=12345", host, extra),
            head_only=True,
        )
        assert head.status == 200, (name, head.status)
        assert head.header("content-length") == "12345"
        assert head.body == b""
        empty = await raw_request(
            setup.zg.port, http_request("GET", "/_/status/204", host, extra), head_only=True
        )
        assert empty.status == 204, (name, empty.status)
        assert empty.body == b""
        assert empty.header("content-length") in (None, "0")
        assert empty.header("transfer-encoding") is None
        assert empty.header("etag") == '"v1"'
    # without a session a HEAD is a navigation like a GET: off to the portal, no body
    head = await raw_request(
        setup.zg.port,
        http_request("HEAD", "/_/download?size=12345", setup.host("live")),
        head_only=True,
    )
    assert head.status == 302 and head.body == b""
    assert (head.header("location") or "").startswith(
        f"http://{setup.zg.portal}/.zerogate/login?flow="
    )


async def test_a_bypass_request_carries_no_identity(setup: Setup) -> None:
    async with (
        client() as session,
        session.get(
            setup.url("/echo"),
            headers={**setup.headers("open"), "Zerogate-Jwt-Assertion": "forged"},
        ) as r,
    ):
        echo = await r.json()
    names = [name.lower() for name, _ in echo["headers"]]
    assert not [n for n in names if n.startswith("zerogate-")]
    assert names.count("x-forwarded-for") == 1
