"""Tests for zerogate.net.pool: the keep-alive HTTP/1.1 client of plain-HTTP origins.

Every origin here is a tiny asyncio server in the test's own event loop that reads each request
(head, then a Content-Length or chunked body) and answers with canned bytes, so framing,
hop-by-hop headers and protocol violations are exact. It counts the TCP connections it
accepted: keep-alive reuse is asserted on that count. A few tests go through
``zerogate.edge.proxy.OriginProxy.forward_http`` in-process to check what the client would get
(502, 504, a truncated response).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import free_port
from zerogate.edge.proxy import CLIENT_CLOSED, OriginProxy
from zerogate.net.asgi import Message
from zerogate.net.pool import (
    BUFFER_HIGH,
    OriginAddress,
    RequestBodyError,
    UpstreamClosedError,
    UpstreamConnectError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeoutError,
    _Connection,
    _OriginPool,
    request_head,
)
from zerogate.net.upstream import Outbound, Timeouts

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

# ---------------------------------------------------------------------------- the canned origin


@dataclass
class Seen:
    """A request as the origin received it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes
    connection: int  # 1 for the first connection the origin accepted, …
    index: int  # 1 for the first request on its connection, …

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name]
        return values[0] if values else None


Writer = asyncio.StreamWriter
Action = Callable[[asyncio.StreamReader, Writer], Awaitable[bool]]
Reply = bytes | Action  # bytes: written, then the connection stays open for the next request


def close_after(data: bytes) -> Action:
    async def act(reader: asyncio.StreamReader, writer: Writer) -> bool:
        writer.write(data)
        await writer.drain()
        return False

    return act


def in_pieces(*pieces: bytes, pause: float = 0.05, keep: bool = True) -> Action:
    async def act(reader: asyncio.StreamReader, writer: Writer) -> bool:
        for n, piece in enumerate(pieces):
            if n and await closed_within(reader, pause):
                return False
            writer.write(piece)
            await writer.drain()
        return keep

    return act


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Wait ``seconds`` unless the client closes first (then ``True``)."""
    try:
        return await asyncio.wait_for(reader.read(1), seconds) == b""
    except TimeoutError:
        return False


async def hang(reader: asyncio.StreamReader, writer: Writer) -> bool:
    """Never answer; read (and drop) whatever comes until the client closes."""
    while await reader.read(65536):
        pass
    return False


async def close_now(reader: asyncio.StreamReader, writer: Writer) -> bool:
    return False


@dataclass
class CannedOrigin:
    """An HTTP/1.1 origin in the test's loop: ``answer(seen)`` says what to send back."""

    answer: Callable[[Seen], Reply]
    unix: bool = False
    read_body: bool = True
    accepted: int = 0
    seen: list[Seen] = field(default_factory=list)
    open_connections: int = 0
    _server: asyncio.AbstractServer | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None
    port: int = 0
    path: str = ""

    @property
    def address(self) -> OriginAddress:
        if self.unix:
            return OriginAddress.unix(self.path)
        return OriginAddress.tcp("127.0.0.1", self.port)

    @property
    def url(self) -> str:
        return f"unix:{self.path}" if self.unix else f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> CannedOrigin:
        if self.unix:
            self._tmp = tempfile.TemporaryDirectory(prefix="zg-pool-")
            self.path = os.path.join(self._tmp.name, "origin.sock")
            self._server = await asyncio.start_unix_server(self._handle, self.path)
        else:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for _ in range(100):  # let handlers see their clients go (a cancelled one logs noise)
            if not self.open_connections:
                break
            await asyncio.sleep(0.01)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1)
        if self._tmp is not None:
            self._tmp.cleanup()

    async def _handle(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        self.accepted += 1
        self.open_connections += 1
        connection, index = self.accepted, 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                index += 1
                seen = _parse_request(head, connection, index)
                if self.read_body:
                    seen.body = await _read_body(reader, seen)
                self.seen.append(seen)
                reply = self.answer(seen)
                if isinstance(reply, bytes):
                    writer.write(reply)
                    await writer.drain()
                elif not await reply(reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self.open_connections -= 1
            writer.close()


def _parse_request(head: bytes, connection: int, index: int) -> Seen:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = [
        (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:] if line)
    ]
    return Seen(method, target, headers, b"", head, connection, index)


async def _read_body(reader: asyncio.StreamReader, seen: Seen) -> bytes:
    if (seen.header("transfer-encoding") or "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailer fields
                return bytes(body)
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    length = int(seen.header("content-length") or 0)
    return await reader.readexactly(length) if length else b""


def always(reply: Reply) -> Callable[[Seen], Reply]:
    return lambda seen: reply


# ---------------------------------------------------------------------------- client helpers


@contextlib.asynccontextmanager
async def make_pool(**options: Any) -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool(**options)
    try:
        yield pool
    finally:
        await pool.close()


async def read_all(response: UpstreamResponse) -> bytes:
    body = bytearray()
    try:
        while chunk := await response.read():
            body += chunk
    finally:
        response.close()
    return bytes(body)


async def fetch(
    pool: UpstreamPool,
    origin: CannedOrigin,
    target: str = "/",
    *,
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes | AsyncIterator[bytes] = b"",
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    response = await pool.request(
        origin.address,
        method,
        target,
        [(b"host", b"app.test")] if headers is None else headers,
        body,
    )
    return response.status, response.headers, await read_all(response)


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    values = [v for k, v in headers if k.lower() == name]
    return values[0] if values else None


# ---------------------------------------------------------------------------- request bytes


def test_request_head_is_exact() -> None:
    headers = [
        (b"host", b"app.test"),
        (b"X-Mixed-Case", b"v\xe9"),  # obs-text passes byte for byte
        (b"cookie", b"a=1"),
        (b"connection", b"keep-alive"),  # the pool's business: never forwarded
        (b"transfer-encoding", b"chunked"),
        (b"content-length", b"3"),
    ]
    head, length = request_head("POST", "/a%2Fb/../c?x=1&x=2", headers, b"abc", host_header=b"h")
    assert head == (
        b"POST /a%2Fb/../c?x=1&x=2 HTTP/1.1\r\n"
        b"host: app.test\r\nX-Mixed-Case: v\xe9\r\ncookie: a=1\r\ncontent-length: 3\r\n\r\n"
    )
    assert length == 3


def test_request_head_framing() -> None:
    def frame(method: str, body: Any, headers: list[tuple[bytes, bytes]]) -> tuple[bytes, Any]:
        head, length = request_head(method, "/", headers, body, host_header=b"origin:8080")
        return head.split(b"\r\n", 1)[1], length

    async def stream() -> AsyncIterator[bytes]:
        yield b"x"

    assert frame("GET", b"", []) == (b"host: origin:8080\r\n\r\n", 0)
    assert frame("DELETE", b"", []) == (b"host: origin:8080\r\n\r\n", 0)
    assert frame("POST", b"", []) == (b"host: origin:8080\r\ncontent-length: 0\r\n\r\n", 0)
    assert frame("GET", b"", [(b"content-length", b"0")])[0].endswith(b"content-length: 0\r\n\r\n")
    assert frame("PUT", stream(), []) == (
        b"host: origin:8080\r\ntransfer-encoding: chunked\r\n\r\n",
        None,
    )
    assert frame("PUT", stream(), [(b"content-length", b"10")]) == (
        b"host: origin:8080\r\ncontent-length: 10\r\n\r\n",
        10,
    )
    # two different lengths from the caller: neither is trusted, the body goes out chunked
    conflicting = [(b"content-length", b"10"), (b"content-length", b"11")]
    assert frame("PUT", stream(), conflicting)[1] is None


@pytest.mark.parametrize(
    "bad",
    [
        (b"x-evil", b"1\r\nX-Smuggled: yes"),
        (b"x-evil", b"1\nX-Smuggled: yes"),
        (b"x-evil", b"1\rX-Smuggled: yes"),
        (b"x-evil", b"a\x00b"),
        (b"x evil", b"1"),
        (b"x-evil:", b"1"),
        (b"x-evil\r\nX-Smuggled", b"yes"),
        (b"", b"empty name"),
    ],
)
def test_request_headers_that_could_split_the_request_are_dropped(
    bad: tuple[bytes, bytes],
) -> None:
    headers = [(b"host", b"app.test"), bad, (b"x-after", b"kept")]
    head, _ = request_head("GET", "/", headers, b"", host_header=b"h")
    assert head == b"GET / HTTP/1.1\r\nhost: app.test\r\nx-after: kept\r\n\r\n"


def test_request_line_refuses_unsafe_methods_and_targets() -> None:
    for method, target in (("GET", "/a b"), ("GET", "/a\r\nX: y"), ("GET", ""), ("G T", "/")):
        with pytest.raises(ValueError):
            request_head(method, target, [], b"", host_header=b"h")


def test_origin_address() -> None:
    assert OriginAddress.tcp("127.0.0.1", 8080).host_header == b"127.0.0.1:8080"
    assert OriginAddress.tcp("example.com", 80).host_header == b"example.com"
    assert OriginAddress.tcp("::1", 8080).host_header == b"[::1]:8080"
    assert str(OriginAddress.unix("/run/app.sock")) == "unix:/run/app.sock"


# ---------------------------------------------------------------------------- keep-alive


async def test_keep_alive_reuse_one_connection_for_100_requests() -> None:
    async with CannedOrigin(always(OK)) as origin, make_pool() as pool:
        for _ in range(100):
            assert await fetch(pool, origin) == (200, [(b"Content-Length", b"2")], b"ok")
        assert origin.accepted == 1
        assert [s.index for s in origin.seen] == list(range(1, 101))
        assert pool.stats(origin.address) == (1, 1, 0)


async def test_concurrent_requests_then_lifo_reuse() -> None:
    async with CannedOrigin(always(OK)) as origin, make_pool(max_idle=3) as pool:
        results = await asyncio.gather(*(fetch(pool, origin) for _ in range(8)))
        assert {r[2] for r in results} == {b"ok"}
        assert origin.accepted == 8
        # at most max_idle kept; the others were closed
        assert pool.stats(origin.address) == (3, 3, 0)
        await fetch(pool, origin)
        assert origin.accepted == 8


async def test_reuse_after_an_error_response() -> None:
    def answer(seen: Seen) -> Reply:
        if seen.target == "/boom":
            return b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\nerror"
        return OK

    async with CannedOrigin(answer) as origin, make_pool() as pool:
        assert (await fetch(pool, origin, "/boom"))[::2] == (500, b"error")
        assert (await fetch(pool, origin, "/"))[::2] == (200, b"ok")
        assert (await fetch(pool, origin, "/boom"))[::2] == (500, b"error")
        assert origin.accepted == 1


async def test_no_reuse_after_connection_close() -> None:
    reply = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    async with CannedOrigin(always(reply)) as origin, make_pool() as pool:
        for _ in range(3):
            assert (await fetch(pool, origin))[2] == b"ok"
        assert origin.accepted == 3
        assert pool.stats(origin.address)[1] == 0


async def test_no_reuse_after_http_1_0_without_keep_alive() -> None:
    reply = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"
    ka = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
    async with (
        CannedOrigin(lambda s: ka if s.target == "/ka" else reply) as origin,
        make_pool() as pool,
    ):
        await fetch(pool, origin)
        await fetch(pool, origin)
        assert origin.accepted == 2
        await fetch(pool, origin, "/ka")
        await fetch(pool, origin, "/ka")
        assert origin.accepted == 3


async def test_body_delimited_by_close_is_read_to_the_end_and_not_reused() -> None:
    async with (
        CannedOrigin(always(close_after(b"HTTP/1.1 200 OK\r\n\r\nuntil close"))) as origin,
        make_pool() as pool,
    ):
        assert (await fetch(pool, origin))[2] == b"until close"
        assert (await fetch(pool, origin))[2] == b"until close"
        assert origin.accepted == 2


async def test_keep_alive_timeout_announced_by_the_origin() -> None:
    short = b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1, max=100\r\nContent-Length: 2\r\n\r\nok"
    async with CannedOrigin(always(short)) as origin, make_pool() as pool:
        await fetch(pool, origin)
        await fetch(pool, origin)
        assert origin.accepted == 2  # timeout=1 leaves no safe idle time: not kept


async def test_idle_connections_expire() -> None:
    async with CannedOrigin(always(OK)) as origin, make_pool(idle_timeout=0.2) as pool:
        await fetch(pool, origin)
        await asyncio.sleep(0.5)
        assert pool.stats(origin.address) == (0, 0, 0)  # swept
        assert origin.open_connections == 0
        await fetch(pool, origin)
        assert origin.accepted == 2


async def test_limit_bounds_concurrent_exchanges_per_origin() -> None:
    active, peak = 0, 0

    def answer(seen: Seen) -> Reply:
        async def act(reader: asyncio.StreamReader, writer: Writer) -> bool:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.05)
            active -= 1
            writer.write(OK)
            return True

        return act

    async with CannedOrigin(answer) as origin, make_pool(limit=2) as pool:
        results = await asyncio.gather(*(fetch(pool, origin) for _ in range(6)))
        assert [r[2] for r in results] == [b"ok"] * 6
        assert peak == 2
        assert origin.accepted == 2


async def test_waiting_for_a_free_connection_is_bounded_by_the_connect_timeout() -> None:
    async with (
        CannedOrigin(always(hang)) as origin,
        make_pool(limit=1, connect_timeout=0.2) as pool,
    ):
        first = asyncio.ensure_future(fetch(pool, origin))
        await asyncio.sleep(0.05)
        with pytest.raises(UpstreamTimeoutError, match="free connection"):
            await fetch(pool, origin)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        assert pool.stats(origin.address)[2] == 0  # the slot came back


# ---------------------------------------------------------------------------- bodies


async def test_chunked_response_with_extensions_and_trailers() -> None:
    reply = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
        b"3;name=value\r\nabc\r\n"
        b'2;quoted="a;b"\r\nde\r\n'
        b"A\r\n0123456789\r\n"
        b"0\r\nX-Checksum: 42\r\n\r\n"
    )
    async with CannedOrigin(always(reply)) as origin, make_pool() as pool:
        status, headers, body = await fetch(pool, origin)
        assert (status, body) == (200, b"abcde0123456789")
        assert headers == [(b"Transfer-Encoding", b"chunked"), (b"Trailer", b"X-Checksum")]
        assert (await fetch(pool, origin))[2] == b"abcde0123456789"
        assert origin.accepted == 1


async def test_chunked_response_arriving_in_pieces() -> None:
    reply = in_pieces(
        b"HTTP/1.1 200 OK\r\nTransfer-",
        b"Encoding: chunked\r\n\r\n3\r\nab",
        b"c\r\n",
        b"0\r\n\r\n",
        pause=0.01,
    )
    async with CannedOrigin(always(reply)) as origin, make_pool() as pool:
        assert (await fetch(pool, origin))[2] == b"abc"
        assert (await fetch(pool, origin))[2] == b"abc"
        assert origin.accepted == 1


async def test_response_one_byte_at_a_time() -> None:
    reply = b"HTTP/1.1 100 Continue\r\n\r\n" + OK.replace(b"OK\r\n", b"OK\r\nX-A: 1\r\n")
    pieces = in_pieces(*(reply[n : n + 1] for n in range(len(reply))), pause=0.001)
    async with CannedOrigin(always(pieces)) as origin, make_pool() as pool:
        assert await fetch(pool, origin) == (
            200,
            [(b"X-A", b"1"), (b"Content-Length", b"2")],
            b"ok",
        )
        assert (await fetch(pool, origin, method="HEAD"))[::2] == (200, b"")
        assert origin.accepted == 1


async def test_malformed_head_fails_before_it_is_complete() -> None:
    # bare LF line ends never make a CRLFCRLF: the pool must not wait for the read timeout
    reply = in_pieces(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", b"", pause=5)
    async with CannedOrigin(always(reply)) as origin, make_pool(read_timeout=30) as pool:
        with pytest.raises(UpstreamProtocolError, match="Missing expected CR"):
            await asyncio.wait_for(fetch(pool, origin), 2)


async def test_body_cut_short_is_an_error_and_the_connection_is_dropped() -> None:
    def answer(seen: Seen) -> Reply:
        if seen.target == "/short":
            return close_after(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        if seen.target == "/short-chunked":
            return close_after(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial")
        return OK

    async with CannedOrigin(answer) as origin, make_pool() as pool:
        for target in ("/short", "/short-chunked"):
            response = await pool.request(origin.address, "GET", target, [])
            assert response.status == 200
            assert await response.read() == b"partial"
            with pytest.raises(UpstreamClosedError):
                await response.read()
            response.close()
        assert (await fetch(pool, origin))[2] == b"ok"
        assert origin.accepted == 3


async def test_a_response_abandoned_half_way_closes_its_connection() -> None:
    reply = in_pieces(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf-", b"done!")
    async with CannedOrigin(always(reply)) as origin, make_pool() as pool:
        response = await pool.request(origin.address, "GET", "/", [])
        assert await response.read() == b"half-"
        response.close()  # the client went away
        assert pool.stats(origin.address) == (0, 0, 0)
        assert (await fetch(pool, origin))[2] == b"half-done!"
        assert origin.accepted == 2


async def test_head_has_no_body_whatever_its_content_length() -> None:
    def answer(seen: Seen) -> Reply:
        if seen.method == "HEAD":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: text/plain\r\n\r\n"
        return OK

    async with CannedOrigin(answer) as origin, make_pool() as pool:
        status, headers, body = await fetch(pool, origin, method="HEAD")
        assert (status, header(headers, b"content-length"), body) == (200, b"1000", b"")
        # the connection is reused, and the next response is read from the right place
        assert (await fetch(pool, origin))[2] == b"ok"
        assert (await fetch(pool, origin, method="HEAD"))[2] == b""
        assert origin.accepted == 1


async def test_head_with_chunked_header_and_in_pieces() -> None:
    reply = in_pieces(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r", b"\n\r\n", pause=0.01)
    async with (
        CannedOrigin(lambda s: reply if s.method == "HEAD" else OK) as origin,
        make_pool() as pool,
    ):
        assert (await fetch(pool, origin, method="HEAD"))[::2] == (200, b"")
        assert (await fetch(pool, origin))[2] == b"ok"
        assert origin.accepted == 1


async def test_body_bytes_after_a_head_response_are_a_violation() -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    async with CannedOrigin(always(reply)) as origin, make_pool() as pool:
        with pytest.raises(UpstreamProtocolError, match="after the end"):
            await fetch(pool, origin, method="HEAD")
        assert pool.stats(origin.address) == (0, 0, 0)


@pytest.mark.parametrize("status", [204, 304])
async def test_204_and_304_have_no_body(status: int) -> None:
    def answer(seen: Seen) -> Reply:
        if seen.target == "/empty":
            # a Content-Length on a 304 describes the full representation, not this message
            return f'HTTP/1.1 {status} X\r\nETag: "v1"\r\nContent-Length: 7\r\n\r\n'.encode()
        return OK

    async with CannedOrigin(answer) as origin, make_pool() as pool:
        status_got, headers, body = await fetch(pool, origin, "/empty")
        assert (status_got, body, header(headers, b"etag")) == (status, b"", b'"v1"')
        assert (await fetch(pool, origin))[2] == b"ok"
        assert origin.accepted == 1


async def test_interim_responses_are_skipped() -> None:
    reply = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: yes\r\n\r\nok"
    )
    pieces = in_pieces(b"HTTP/1.1 100 Continue\r\n\r\n", OK, pause=0.02)
    async with (
        CannedOrigin(lambda s: pieces if s.target == "/pieces" else reply) as origin,
        make_pool() as pool,
    ):
        status, headers, body = await fetch(pool, origin, method="POST", body=b"data")
        assert (status, body) == (200, b"ok")
        assert headers == [(b"Content-Length", b"2"), (b"X-Final", b"yes")]
        assert (await fetch(pool, origin, "/pieces"))[::2] == (200, b"ok")
        assert origin.accepted == 1


async def test_slow_reader_does_not_make_the_pool_buffer_the_response() -> None:
    size = 64 * 1024 * 1024
    drained = 0
    finished = asyncio.Event()

    async def big(reader: asyncio.StreamReader, writer: Writer) -> bool:
        nonlocal drained
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        piece = b"x" * 65536
        for _ in range(size // len(piece)):
            writer.write(piece)
            await writer.drain()
            drained += len(piece)
        finished.set()
        return True

    async with CannedOrigin(always(big)) as origin, make_pool() as pool:
        response = await pool.request(origin.address, "GET", "/", [])
        received = len(await response.read())
        await asyncio.sleep(0.5)  # the client stalls; the origin keeps trying to send
        # kernel socket buffers hold a few MiB; the pool holds at most BUFFER_HIGH + one read
        assert drained < 24 * 1024 * 1024, f"origin pushed {drained} bytes past a stalled reader"
        assert response._size <= BUFFER_HIGH + 256 * 1024
        while chunk := await response.read():
            received += len(chunk)
            assert len(chunk) <= BUFFER_HIGH + 256 * 1024
        response.close()
        assert received == size
        await asyncio.wait_for(finished.wait(), 5)
        assert (await fetch(pool, origin, "/again"))[0] == 200  # reading resumed: reusable
        assert origin.accepted == 1


# ---------------------------------------------------------------------------- uploads


async def test_upload_of_unknown_length_goes_out_chunked() -> None:
    async def body() -> AsyncIterator[bytes]:
        for part in (b"one,", b"", b"two,", b"three"):
            yield part
            await asyncio.sleep(0)

    async with CannedOrigin(always(OK)) as origin, make_pool() as pool:
        assert (await fetch(pool, origin, method="PUT", body=body()))[2] == b"ok"
        seen = origin.seen[-1]
        assert seen.header("transfer-encoding") == "chunked"
        assert seen.header("content-length") is None
        assert seen.body == b"one,two,three"
        # then a plain request on the same connection: the chunked body was framed right
        assert (await fetch(pool, origin))[2] == b"ok"
        assert origin.accepted == 1


async def test_upload_with_content_length_passes_it_through() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"12345"
        yield b"67890"

    async with CannedOrigin(always(OK)) as origin, make_pool() as pool:
        headers = [(b"host", b"app.test"), (b"content-length", b"10")]
        await fetch(pool, origin, method="POST", headers=headers, body=body())
        seen = origin.seen[-1]
        assert (seen.header("content-length"), seen.header("transfer-encoding")) == ("10", None)
        assert seen.body == b"1234567890"


async def test_upload_longer_than_its_content_length_is_refused() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"12345"
        yield b"67890"

    async with CannedOrigin(always(hang), read_body=False) as origin, make_pool() as pool:
        headers = [(b"content-length", b"6")]
        with pytest.raises(RequestBodyError, match="longer"):
            await fetch(pool, origin, method="POST", headers=headers, body=body())
        assert pool.stats(origin.address) == (0, 0, 0)


async def test_upload_waits_for_a_slow_origin() -> None:
    produced = 0
    release = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        nonlocal produced
        piece = b"u" * 65536
        for _ in range(1024):  # 64 MiB
            produced += len(piece)
            yield piece

    async def slow(reader: asyncio.StreamReader, writer: Writer) -> bool:
        await release.wait()
        received = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line, 16)
            if size == 0:
                await reader.readexactly(2)
                break
            received += len((await reader.readexactly(size + 2))[:-2])
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d" % (len(str(received)), received)
        )
        return True

    async with CannedOrigin(always(slow), read_body=False) as origin, make_pool() as pool:
        call = asyncio.ensure_future(fetch(pool, origin, method="PUT", body=body()))
        await asyncio.sleep(0.5)
        assert produced < 24 * 1024 * 1024, f"{produced} bytes read ahead of a stalled origin"
        release.set()
        assert (await call)[2] == str(64 * 1024 * 1024).encode()


async def test_early_response_during_an_upload_ends_the_exchange() -> None:
    stalled = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"first part"
        await stalled.wait()  # the client never sends the rest
        yield b"never"

    async def refuse(reader: asyncio.StreamReader, writer: Writer) -> bool:
        writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 3\r\n\r\nbig")
        await writer.drain()
        return True  # but keeps the connection: the pool must not reuse it mid-upload

    async with CannedOrigin(always(refuse), read_body=False) as origin, make_pool() as pool:
        status, _, text = await fetch(pool, origin, method="POST", body=body())
        assert (status, text) == (413, b"big")
        assert pool.stats(origin.address) == (0, 0, 0)  # closed, not pooled


# ---------------------------------------------------------------------------- violations


VIOLATIONS = {
    "cl-and-te": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    ),
    "te-and-cl": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    ),
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    "bad-chunk-size": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
    ),
    "chunk-size-overflow": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nabc\r\n"
    ),
    "bare-lf-in-header": b"HTTP/1.1 200 OK\r\nX-A: 1\nX-Injected: 1\r\nContent-Length: 2\r\n\r\nok",
    "bare-cr-in-header": b"HTTP/1.1 200 OK\r\nX-A: 1\rX-Injected: 1\r\nContent-Length: 2\r\n\r\nok",
    "bare-lf-lines": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 2\r\n\r\nok",
    "space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
    "nul-in-value": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "http-2": b"HTTP/2 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "http-1.2": b"HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "http-0.9-status": b"HTTP/0.9 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "rtsp": b"RTSP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "icy": b"ICY 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "garbage": b"this is not HTTP\r\n\r\n",
    "leading-newline": b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "switching-protocols": (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n"
    ),
    "status-out-of-range": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    "response-splitting": OK + b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
    "junk-after-response": OK + b"junk",
    "splitting-after-chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        b"HTTP/1.1 302 Found\r\nLocation: http://evil/\r\nContent-Length: 0\r\n\r\n"
    ),
    "splitting-after-204": b"HTTP/1.1 204 No Content\r\n\r\n" + OK,
}


@pytest.mark.parametrize("name", sorted(VIOLATIONS))
async def test_protocol_violations_fail_and_drop_the_connection(name: str) -> None:
    reply = VIOLATIONS[name]
    async with (
        CannedOrigin(lambda s: reply if s.target == "/bad" else OK) as origin,
        make_pool() as pool,
    ):
        await fetch(pool, origin)  # a pooled connection, then the bad response on it
        with pytest.raises(UpstreamProtocolError):
            await fetch(pool, origin, "/bad")
        assert pool.stats(origin.address) == (0, 0, 0)
        assert (await fetch(pool, origin))[2] == b"ok"  # a new connection
        assert origin.accepted == 2


async def test_violation_after_the_head_was_delivered_fails_the_body() -> None:
    reply = in_pieces(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"zz\r\n",
        pause=0.05,
    )
    async with CannedOrigin(always(reply)) as origin, make_pool() as pool:
        response = await pool.request(origin.address, "GET", "/", [])
        assert (response.status, await response.read()) == (200, b"hello")
        with pytest.raises(UpstreamProtocolError, match="chunk size"):
            await response.read()
        response.close()
        assert pool.stats(origin.address) == (0, 0, 0)


async def test_bytes_after_the_response_in_a_later_packet_drop_the_idle_connection() -> None:
    reply = in_pieces(OK, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil", pause=0.05)
    async with CannedOrigin(always(reply)) as origin, make_pool() as pool:
        assert (await fetch(pool, origin))[2] == b"ok"
        await asyncio.sleep(0.2)  # the stray response arrives while the connection is idle
        assert pool.stats(origin.address) == (0, 0, 0)
        assert (await fetch(pool, origin))[2] == b"ok"  # never "evil"
        assert origin.accepted == 2


async def test_oversized_head_is_refused() -> None:
    reply = b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * (300 * 1024) + b"\r\n\r\n"
    async with CannedOrigin(always(reply)) as origin, make_pool() as pool:
        with pytest.raises(UpstreamProtocolError, match="head over"):
            await fetch(pool, origin)


# ---------------------------------------------------------------------------- any split


class FakeTransport(asyncio.Transport):
    """Records what the pool writes; the test plays the origin by calling data_received."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


SPLIT_CASES: dict[str, tuple[str, bytes]] = {
    "plain": ("GET", OK),
    "chunked+trailer": (
        "GET",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n",
    ),
    "interim": ("GET", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 E\r\nLink: <a>\r\n\r\n" + OK),
    "head": ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
    "304": ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"),
    "close": ("GET", b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"),
    "splitting": ("GET", OK + b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"),
    "cl-and-te": ("GET", VIOLATIONS["cl-and-te"]),
    "bare-lf": ("GET", VIOLATIONS["bare-lf-in-header"]),
    "obs-fold": ("GET", VIOLATIONS["obs-fold"]),
    "rtsp": ("GET", VIOLATIONS["rtsp"]),
    "interim-then-rtsp": ("GET", b"HTTP/1.1 100 Continue\r\n\r\n" + VIOLATIONS["rtsp"]),
    "head-then-bytes": ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
}


async def _outcome(method: str, pieces: list[bytes]) -> tuple[object, ...]:
    """Feed ``pieces`` as one response to a fresh connection; what came of it."""
    pool = UpstreamPool()
    pool._loop = asyncio.get_running_loop()
    origin = _OriginPool(pool, OriginAddress.tcp("127.0.0.1", 9))
    conn = _Connection(origin)
    transport = FakeTransport()
    conn.connection_made(transport)
    origin.open.add(conn)
    assert origin.try_slot()
    head, length = request_head(method, "/", [], b"", host_header=b"h")
    call = asyncio.ensure_future(conn.exchange(head, b"", length, method == "HEAD"))
    await asyncio.sleep(0)
    assert transport.written == head
    try:
        for piece in pieces:
            if conn.closed:
                break
            conn.data_received(piece)
        response = await asyncio.wait_for(call, 1)
        body = bytearray()
        while not response.at_eof:
            body += await asyncio.wait_for(response.read(), 1)
        return (response.status, response.headers, bytes(body), origin.idle == [conn])
    except UpstreamProtocolError as exc:
        assert transport.aborted and not origin.idle
        return ("violation", str(exc).split("(")[0])
    except TimeoutError:
        return ("incomplete",)


def _equivalent(split: tuple[object, ...], whole: tuple[object, ...]) -> bool:
    """The same outcome; or, when the whole bytes had extra bytes after the response, the
    response itself (those bytes came in a later packet) with the connection dropped."""
    if split == whole:
        return True
    after_the_end = whole[0] == "violation" and "after the end" in str(whole[1])
    return after_the_end and isinstance(split[0], int) and split[-1] is False


def _pieces(data: bytes, points: list[int]) -> list[bytes]:
    cuts = sorted({p for p in points if 0 < p < len(data)})
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@pytest.mark.parametrize("name", sorted(SPLIT_CASES))
async def test_every_split_point_and_byte_by_byte_give_the_same_outcome(name: str) -> None:
    method, data = SPLIT_CASES[name]
    whole = await _outcome(method, [data])
    for point in range(1, len(data)):
        split = await _outcome(method, _pieces(data, [point]))
        assert _equivalent(split, whole), (point, split, whole)
    assert _equivalent(await _outcome(method, _pieces(data, list(range(len(data))))), whole)


@pytest.mark.parametrize("name", sorted(SPLIT_CASES))
@settings(max_examples=40, deadline=None)
@given(points=st.lists(st.integers(min_value=1, max_value=200), max_size=12))
async def test_any_split_gives_the_same_outcome(name: str, points: list[int]) -> None:
    method, data = SPLIT_CASES[name]
    split = await _outcome(method, _pieces(data, [p % len(data) for p in points]))
    assert _equivalent(split, await _outcome(method, [data]))


def test_split_outcomes_are_the_expected_ones() -> None:
    async def whole(name: str) -> tuple[object, ...]:
        method, data = SPLIT_CASES[name]
        return await _outcome(method, [data])

    async def run() -> None:
        assert await whole("plain") == (200, [(b"Content-Length", b"2")], b"ok", True)
        assert (await whole("chunked+trailer"))[2:] == (b"abcde", True)
        assert (await whole("interim"))[::2] == (200, b"ok")
        assert await whole("head") == (200, [(b"Content-Length", b"1000")], b"", True)
        assert (await whole("304"))[::2] == (304, b"")
        assert (await whole("close"))[2:] == (b"ok", False)
        for name in ("splitting", "cl-and-te", "bare-lf", "obs-fold", "rtsp", "head-then-bytes"):
            assert (await whole(name))[0] == "violation", name
        assert (await whole("interim-then-rtsp"))[0] == "violation"

    asyncio.run(run())


# ---------------------------------------------------------------------------- stale and failing


async def test_stale_connection_is_retried_for_get_but_not_for_post() -> None:
    def answer(seen: Seen) -> Reply:
        # every connection answers its first request, then closes as the second arrives
        # (as an origin does whose keep-alive timer fired just as the request was sent)
        return OK if seen.index == 1 else close_now

    async with CannedOrigin(answer) as origin, make_pool() as pool:
        await fetch(pool, origin)
        assert (await fetch(pool, origin))[2] == b"ok"  # retried on a fresh connection
        assert origin.accepted == 2
        with pytest.raises(UpstreamClosedError, match="before responding"):
            await fetch(pool, origin, method="POST", body=b"once only")
        assert origin.accepted == 2
        assert [s.method for s in origin.seen] == ["GET", "GET", "GET", "POST"]


async def test_stale_connection_is_retried_only_once() -> None:
    async with (
        CannedOrigin(lambda s: OK if s.connection == 1 else close_now) as origin,
        make_pool() as pool,
    ):
        await fetch(pool, origin)
        origin.answer = always(close_now)
        with pytest.raises(UpstreamClosedError):
            await fetch(pool, origin)
        assert origin.accepted == 2


async def test_connection_closed_while_idle_is_not_used() -> None:
    async with (
        CannedOrigin(always(close_after(OK.replace(b"OK\r\n", b"OK\r\nX: 1\r\n")))) as origin,
        make_pool() as pool,
    ):
        origin.answer = always(in_pieces(OK, keep=False))  # responds keep-alive, then closes
        await fetch(pool, origin)
        await asyncio.sleep(0.1)
        assert pool.stats(origin.address) == (0, 0, 0)  # seen closing while idle
        # a POST is never retried, so it only succeeds if the dead connection was skipped
        assert (await fetch(pool, origin, method="POST", body=b"x"))[2] == b"ok"


async def test_connect_refused() -> None:
    port = free_port()
    async with make_pool() as pool:
        with pytest.raises(UpstreamConnectError):
            await pool.request(OriginAddress.tcp("127.0.0.1", port), "GET", "/", [])
        assert pool.stats(OriginAddress.tcp("127.0.0.1", port))[2] == 0


async def test_read_timeout_waiting_for_the_head() -> None:
    async with CannedOrigin(always(hang)) as origin, make_pool(read_timeout=0.2) as pool:
        with pytest.raises(UpstreamTimeoutError):
            await fetch(pool, origin)
        assert pool.stats(origin.address) == (0, 0, 0)


async def test_read_timeout_mid_body() -> None:
    reply = in_pieces(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf-", b"", pause=5)
    async with CannedOrigin(always(reply)) as origin, make_pool(read_timeout=0.2) as pool:
        response = await pool.request(origin.address, "GET", "/", [])
        assert await response.read() == b"half-"
        with pytest.raises(UpstreamTimeoutError):
            await response.read()
        response.close()


async def test_cancelled_request_closes_its_connection_and_frees_the_slot() -> None:
    async with CannedOrigin(always(hang)) as origin, make_pool(limit=1) as pool:
        call = asyncio.ensure_future(fetch(pool, origin))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert pool.stats(origin.address) == (0, 0, 0)
        await asyncio.sleep(0.05)
        assert origin.open_connections == 0


async def test_unix_socket_origin() -> None:
    async with CannedOrigin(always(OK), unix=True) as origin, make_pool() as pool:
        for _ in range(5):
            assert await fetch(pool, origin, "/via?x=1") == (
                200,
                [(b"Content-Length", b"2")],
                b"ok",
            )
        assert origin.accepted == 1
        assert origin.seen[0].target == "/via?x=1"
        assert origin.seen[0].header("host") == "app.test"
        await fetch(pool, origin, headers=[])
        assert origin.seen[-1].header("host") == "localhost"


async def test_closed_pool_refuses_requests() -> None:
    async with CannedOrigin(always(OK)) as origin:
        pool = UpstreamPool()
        await fetch(pool, origin)
        await pool.close()
        with pytest.raises(RuntimeError):
            await fetch(pool, origin)
        await asyncio.sleep(0.05)
        assert origin.open_connections == 0


# ---------------------------------------------------------------------------- through the proxy


class FakeClient:
    """ASGI receive/send for calling OriginProxy in-process."""

    def __init__(self, *bodies: bytes) -> None:
        parts = bodies or (b"",)
        self.pending: list[dict[str, Any]] = [
            {"type": "http.request", "body": part, "more_body": n < len(parts) - 1}
            for n, part in enumerate(parts)
        ]
        self.sent: list[Message] = []
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        if self.pending:
            return self.pending.pop(0)
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])

    @property
    def finished(self) -> bool:
        return bool(self.sent) and self.sent[-1].get("more_body") is False


async def forward(
    upstream: OriginProxy,
    origin: CannedOrigin,
    target: str = "/",
    *,
    method: str = "GET",
    client: FakeClient | None = None,
) -> tuple[int, FakeClient]:
    client = client or FakeClient()
    scope = {
        "type": "http",
        "method": method,
        "raw_path": target.encode(),
        "query_string": b"",
        "headers": [(b"host", b"app.test"), (b"accept", b"application/json")],
    }
    status = await upstream.forward_http(
        scope, client.receive, client.send, Outbound(origin.url, target, [(b"host", b"app.test")])
    )
    return status, client


@pytest.fixture
async def upstream() -> AsyncIterator[OriginProxy]:
    upstream = OriginProxy(timeouts=Timeouts(response=0.5, idle=0.5))
    try:
        yield upstream
    finally:
        await upstream.close()


@pytest.mark.parametrize("name", ["cl-and-te", "bare-lf-in-header", "response-splitting", "rtsp"])
async def test_proxy_answers_502_for_a_violation(upstream: OriginProxy, name: str) -> None:
    async with CannedOrigin(always(VIOLATIONS[name])) as origin:
        status, client = await forward(upstream, origin)
        assert status == client.status == 502
        assert b"bad_gateway" in client.body


async def test_proxy_answers_504_when_the_origin_is_silent(upstream: OriginProxy) -> None:
    async with CannedOrigin(always(hang)) as origin:
        status, client = await forward(upstream, origin)
        assert status == 504
        assert b"gateway_timeout" in client.body


async def test_proxy_leaves_the_response_unfinished_when_the_origin_fails_mid_body(
    upstream: OriginProxy,
) -> None:
    reply = in_pieces(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", b"zz\r\n"
    )
    async with CannedOrigin(always(reply)) as origin:
        status, client = await forward(upstream, origin)
        assert (status, client.body) == (200, b"hello")
        assert not client.finished


async def test_proxy_relays_through_the_pool(upstream: OriginProxy) -> None:
    reply = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
        b"Keep-Alive: timeout=60\r\nTransfer-Encoding: chunked\r\nX-Kept: yes\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n"
    )
    async with CannedOrigin(always(reply)) as origin:
        for _ in range(3):
            client = FakeClient(b"part one, ", b"part two")
            status, client = await forward(
                upstream, origin, "/a%2Fb?q=1", method="POST", client=client
            )
            assert (status, client.body, client.finished) == (201, b"ok", True)
            assert client.sent[0]["headers"] == [(b"X-Kept", b"yes")]
        assert origin.accepted == 1
        assert origin.seen[0].body == b"part one, part two"
        assert origin.seen[0].target == "/a%2Fb?q=1"
        await upstream.close()  # before the origin stops: it holds an idle connection


async def test_proxy_client_leaving_mid_response(upstream: OriginProxy) -> None:
    reply = in_pieces(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst", b"", pause=5)
    async with CannedOrigin(always(reply)) as origin:
        client = FakeClient()
        call = asyncio.ensure_future(forward(upstream, origin, client=client))
        await asyncio.sleep(0.1)
        client.gone.set()
        status, _ = await asyncio.wait_for(call, 2)
        assert status == 200
        assert not client.finished
        await asyncio.sleep(0.05)
        assert origin.open_connections == 0

        early = FakeClient()
        early.pending = [{"type": "http.disconnect"}]
        assert (await forward(upstream, origin, client=early))[0] == CLIENT_CLOSED
