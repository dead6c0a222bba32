"""Tests for zerogate.net.headers and zerogate.edge.proxy.

The header rules are pure and tested with plain values. Forwarding is tested end to end: a
real aiohttp origin (TCP, Unix socket, HTTPS) and a canned-bytes origin, a real edge (granian
serving ``edge_harness.edge_app``, which forwards every request the way the pipeline will after
an allow), and clients that speak raw HTTP/1.1 or aiohttp. 127.0.0.2 plays a trusted proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from edge_harness import (
    PATTERN,
    Granian,
    Origin,
    RawOrigin,
    crc_of_pattern,
    edge_env,
    http_request,
    raw_request,
    running,
)
from harness import free_port, peak_rss_kib, wait_for
from zerogate.edge.proxy import CLIENT_CLOSED, OriginProxy, request_target
from zerogate.net.asgi import Message
from zerogate.net.headers import (
    HOP_BY_HOP,
    client_ip,
    downstream_response_headers,
    parse_ip,
    resolve_client,
    upstream_request_headers,
    wants_json,
)
from zerogate.net.upstream import Outbound

# The issue asks for 1 GB bodies with bounded memory; bench/ runs that size. Here 200 MB proves
# the same property (memory growth far below the body size) in a few seconds.
BIG_BODY = 200 * 1024 * 1024
MAX_RSS_GROWTH_KIB = 64 * 1024

TRUSTED = [ipaddress.ip_network("127.0.0.2/32"), ipaddress.ip_network("10.0.0.0/8")]
FORGED = [
    ("Zerogate-Jwt-Assertion", "forged.jwt.value"),
    ("zerogate-authenticated-user-email", "mallory@evil.test"),
    ("ZEROGATE-ANYTHING", "x"),
    ("Zerogate-Client-Secret", "s3cret"),
]

RAW_RESPONSES = {
    "/hop": (
        b"HTTP/1.1 200 OK\r\n"
        b"Connection: keep-alive, X-Bar\r\n"
        b"X-Bar: secret\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Trailer: X-T\r\n"
        b"Upgrade: foo\r\n"
        b"Proxy-Authenticate: Basic\r\n"
        b"X-Kept: yes\r\n"
        b"Set-Cookie: a=1\r\n"
        b"Set-Cookie: b=2\r\n"
        b"Content-Length: 2\r\n\r\nok"
    ),
    "/chunked-trailer": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n"
    ),
    "/truncated": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial",
    "/truncated-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\npartial\r\n",
    "/garbage": b"this is not HTTP\r\n\r\n",
}


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    server = Origin()
    with running(server):
        yield server


@pytest.fixture(scope="module")
def raw_origin() -> Iterator[RawOrigin]:
    server = RawOrigin(RAW_RESPONSES)
    with running(server):
        yield server


@pytest.fixture(scope="module")
def edge(origin: Origin, raw_origin: RawOrigin) -> Iterator[Granian]:
    routes = {
        "app.test": origin.url,
        "slow.test": origin.url,
        "unix.test": f"unix:{origin.unix_path}",
        "tls.test": f"https://127.0.0.1:{origin.tls_port}",
        "raw.test": raw_origin.url,
        "down.test": f"http://127.0.0.1:{free_port()}",
    }
    env = edge_env(
        routes,
        trusted="127.0.0.2/32,10.0.0.0/8",
        slow_hosts="slow.test",
        slow_read_timeout=1.0,
        ca_file=origin.ca_path,
    )
    with Granian("edge_harness:edge_app", env=env) as server:
        yield server


@contextlib.asynccontextmanager
async def client(source: str = "127.0.0.1") -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        yield session


def names(echo: dict[str, Any]) -> list[str]:
    return [name.lower() for name, _ in echo["headers"]]


def values(echo: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in echo["headers"] if k.lower() == name]


# ---------------------------------------------------------------------------- client_ip


def test_client_ip_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    headers = [(b"x-forwarded-for", b"1.2.3.4")]
    assert client_ip("198.51.100.7", headers, TRUSTED) == "198.51.100.7"
    assert client_ip("198.51.100.7", headers, []) == "198.51.100.7"
    assert client_ip("127.0.0.2", headers, []) == "127.0.0.2"  # nothing trusted


@pytest.mark.parametrize(
    ("xff", "expected"),
    [
        ([], "127.0.0.2"),  # trusted peer, no chain: the peer itself
        (["203.0.113.9"], "203.0.113.9"),
        (["203.0.113.9, 10.1.1.1"], "203.0.113.9"),  # skips a trusted hop
        (["6.6.6.6, 203.0.113.9, 10.1.1.1, 10.2.2.2"], "203.0.113.9"),  # spoofed left part
        (["6.6.6.6, 203.0.113.9", "10.1.1.1"], "203.0.113.9"),  # several headers, one list
        (["10.3.3.3, 10.1.1.1"], "10.3.3.3"),  # all trusted: the farthest hop
        (["203.0.113.9:4711"], "203.0.113.9"),  # a port some proxies add
        ([" 203.0.113.9 ,10.1.1.1 "], "203.0.113.9"),
    ],
)
def test_client_ip_walks_the_chain_from_the_right(xff: list[str], expected: str) -> None:
    headers = [(b"x-forwarded-for", value.encode()) for value in xff]
    assert client_ip("127.0.0.2", headers, TRUSTED) == expected


def test_client_ip_ipv6_and_mapped_addresses() -> None:
    trusted = [ipaddress.ip_network("2001:db8:ffff::/48"), ipaddress.ip_network("10.0.0.0/8")]
    headers = [(b"x-forwarded-for", b"2001:db8::1, 2001:db8:ffff::5")]
    assert client_ip("2001:db8:ffff::1", headers, trusted) == "2001:db8::1"
    bracketed = [(b"x-forwarded-for", b"[2001:DB8::1]:443")]
    assert client_ip("2001:db8:ffff::1", bracketed, trusted) == "2001:db8::1"
    # IPv4-mapped peers and entries are IPv4 (a dual-stack listener reports them so)
    assert client_ip("::ffff:198.51.100.7", [], trusted) == "198.51.100.7"
    mapped = [(b"x-forwarded-for", b"::ffff:203.0.113.9")]
    assert client_ip("::ffff:10.0.0.1", mapped, trusted) == "203.0.113.9"
    # an IPv4 peer is never inside an IPv6 range
    assert client_ip("10.0.0.1", headers, [ipaddress.ip_network("::/0")]) == "10.0.0.1"


@pytest.mark.parametrize(
    ("xff", "expected"),
    [
        ("not-an-ip", "127.0.0.2"),  # rightmost malformed: the peer
        ("203.0.113.9, garbage, 10.1.1.1", "10.1.1.1"),  # stop at the last trusted hop
        ("203.0.113.9, , 10.1.1.1", "10.1.1.1"),  # empty entry
        ("203.0.113.9, unknown", "127.0.0.2"),
        ("203.0.113.9, 10.1.1.1:x", "127.0.0.2"),  # bad port
        ("203.0.113.9, fe80::1%eth0", "127.0.0.2"),  # zone id
        ("203.0.113.9, 999.1.1.1", "127.0.0.2"),
        ("[2001:db8::1", "127.0.0.2"),
    ],
)
def test_client_ip_malformed_entries_fail_closed(xff: str, expected: str) -> None:
    assert client_ip("127.0.0.2", [(b"x-forwarded-for", xff.encode())], TRUSTED) == expected


def test_resolve_client_chain_and_proto() -> None:
    headers = [
        (b"x-forwarded-for", b"6.6.6.6, 203.0.113.9, 10.1.1.1"),
        (b"x-forwarded-proto", b"http, HTTPS"),
    ]
    resolved = resolve_client("127.0.0.2", headers, TRUSTED)
    assert resolved.ip == "203.0.113.9"
    assert resolved.forwarded_for == ("203.0.113.9", "10.1.1.1", "127.0.0.2")
    assert resolved.proto == "https"
    assert resolved.peer_trusted

    untrusted = resolve_client("198.51.100.7", headers, TRUSTED)
    assert untrusted == ("198.51.100.7", ("198.51.100.7",), None, False)
    assert resolve_client("127.0.0.2", [(b"x-forwarded-proto", b"gopher")], TRUSTED).proto is None
    assert resolve_client("unix-peer", headers, TRUSTED).ip == "unix-peer"


def test_parse_ip() -> None:
    assert str(parse_ip("1.2.3.4:80")) == "1.2.3.4"
    assert str(parse_ip("[::1]")) == "::1"
    assert parse_ip("[::1]x") is None
    assert parse_ip("1.2.3.4:") is None
    assert parse_ip("") is None


# ---------------------------------------------------------------------------- header filters


def test_upstream_request_headers_filters_and_writes_forwarding() -> None:
    incoming = [
        (b"host", b"app.test"),
        (b"connection", b"keep-alive, X-Foo"),
        (b"x-foo", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"te", b"trailers"),
        (b"trailer", b"X-T"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"websocket"),
        (b"proxy-authorization", b"Basic eA=="),
        (b"proxy-connection", b"keep-alive"),
        (b"expect", b"100-continue"),
        (b"Zerogate-Jwt-Assertion", b"forged"),
        (b"ZEROGATE-AUTHENTICATED-USER-EMAIL", b"mallory@evil.test"),
        (b"zerogate-whatever", b"x"),
        (b"x-forwarded-for", b"6.6.6.6"),
        (b"X-Forwarded-Proto", b"https"),
        (b"x-forwarded-host", b"evil.test"),
        (b"x-forwarded-port", b"1"),
        (b"forwarded", b"for=6.6.6.6"),
        (b"x-real-ip", b"6.6.6.6"),
        (b"cookie", b"a=1"),
        (b"cookie", b"b=2"),
        (b"accept", b"*/*"),
    ]
    out = upstream_request_headers(
        incoming,
        client_ip="198.51.100.7",
        proto="https",
        host="app.test",
        inject=[(b"zerogate-jwt-assertion", b"real")],
        upgrade=False,
    )
    assert out == [
        (b"host", b"app.test"),
        (b"cookie", b"a=1"),
        (b"cookie", b"b=2"),
        (b"accept", b"*/*"),
        (b"x-forwarded-for", b"198.51.100.7"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"app.test"),
        (b"zerogate-jwt-assertion", b"real"),
    ]


def test_upstream_request_headers_chain_upgrade_and_missing_host() -> None:
    out = upstream_request_headers(
        [(b"connection", b"Upgrade"), (b"upgrade", b"websocket"), (b"x-forwarded-for", b"1.1.1.1")],
        client_ip="203.0.113.9",
        proto="http",
        host="app.test:8080",
        inject=[],
        upgrade=True,
        forwarded_for=("203.0.113.9", "10.1.1.1", "127.0.0.2"),
    )
    assert out == [
        (b"upgrade", b"websocket"),
        (b"connection", b"upgrade"),
        (b"host", b"app.test:8080"),
        (b"x-forwarded-for", b"203.0.113.9, 10.1.1.1, 127.0.0.2"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"app.test:8080"),
    ]


def test_downstream_response_headers_drop_hop_by_hop() -> None:
    incoming = [(name, b"x") for name in sorted(HOP_BY_HOP)] + [
        (b"Connection", b"X-Bar"),
        (b"X-Bar", b"1"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Content-Length", b"2"),
    ]
    assert downstream_response_headers(incoming) == [
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Content-Length", b"2"),
    ]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], False),
        ([(b"accept", b"text/html,application/xhtml+xml,*/*;q=0.8")], False),
        ([(b"accept", b"application/json")], True),
        ([(b"accept", b"application/problem+json, */*")], True),
        ([(b"accept", b"*/*")], False),
        ([(b"x-requested-with", b"XMLHttpRequest")], True),
    ],
)
def test_wants_json(headers: list[tuple[bytes, bytes]], expected: bool) -> None:
    assert wants_json(headers) is expected


def test_request_target() -> None:
    assert request_target(b"/a%2Fb/../c?x=1&x=2") == "/a%2Fb/../c?x=1&x=2"
    assert request_target("/a%2Fb?x=1") == "/a%2Fb?x=1"
    assert request_target(b"/caf\xc3\xa9?q=\xff") == "/caf%C3%A9?q=%FF"
    assert request_target("/café") == "/caf%C3%A9"
    for bad in (b"/a b", b"/a\r\nX: y", b"/a#frag", b"a/b", b"", b"/\x7f", b"*"):
        assert request_target(bad) is None


# ---------------------------------------------------------------------------- through the edge


@pytest.mark.parametrize(
    "target",
    ["/a%2Fb?x=1&x=2", "//double//slash/./x/../y?q=%20&q=&r", "/caf%C3%A9;v=1/%2e%2e/?a=%2F"],
)
async def test_raw_path_and_query_pass_exactly(edge: Granian, target: str) -> None:
    response = await raw_request(edge.port, http_request("GET", target, "app.test"))
    assert response.status == 200
    echo = response.json()
    assert echo["target"] == target
    assert echo["method"] == "GET"
    assert "content-length" not in names(echo)  # a GET stays bodiless
    assert "transfer-encoding" not in names(echo)


async def test_bodies_stream_to_the_origin(edge: Granian) -> None:
    payload = PATTERN * 4  # 1 MiB

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield PATTERN
            await asyncio.sleep(0)

    async with client() as session:
        headers = {"Host": "app.test", "Content-Type": "application/x-test"}
        async with session.post(f"{edge.url}/post", data=payload, headers=headers) as r:
            echo = await r.json()
        assert (echo["method"], echo["body_size"]) == ("POST", len(payload))
        assert echo["body_sha256"] == hashlib.sha256(payload).hexdigest()
        assert values(echo, "content-length") == [str(len(payload))]
        assert values(echo, "content-type") == ["application/x-test"]

        async with session.put(f"{edge.url}/put", data=chunks(), headers=headers) as r:
            echo = await r.json()
        assert (echo["method"], echo["body_size"]) == ("PUT", len(payload))
        assert values(echo, "transfer-encoding") == ["chunked"]  # no length: chunked again

        async with session.delete(f"{edge.url}/thing", headers={"Host": "app.test"}) as r:
            echo = await r.json()
        assert (echo["method"], echo["body_size"]) == ("DELETE", 0)


async def test_status_headers_and_body_come_back(edge: Granian) -> None:
    response = await raw_request(edge.port, http_request("POST", "/_/status/418", "app.test"))
    assert response.status == 418
    assert response.body == b"status 418"
    response = await raw_request(edge.port, http_request("GET", "/x", "app.test"))
    assert response.header("set-cookie") == "a=1; Path=/"
    assert response.header("x-origin") == "yes"
    assert response.header("content-type") == "application/json; charset=utf-8"


async def test_chunked_responses(edge: Granian) -> None:
    response = await raw_request(edge.port, http_request("GET", "/_/chunked", "app.test"))
    assert response.status == 200
    assert response.body == b"one,two,three"
    response = await raw_request(edge.port, http_request("GET", "/chunked-trailer", "raw.test"))
    assert (response.status, response.body) == (200, b"abcde")
    assert response.header("trailer") is None


async def test_head_204_and_304_have_no_body(edge: Granian) -> None:
    head = await raw_request(
        edge.port, http_request("HEAD", "/_/download?size=1000", "app.test"), head_only=True
    )
    assert head.status == 200
    assert head.header("content-length") == "1000"
    assert head.body == b""
    for code in (204, 304):
        response = await raw_request(
            edge.port, http_request("GET", f"/_/status/{code}", "app.test")
        )
        assert response.status == code
        assert response.body == b""
        assert response.header("etag") == '"v1"'


async def test_hop_by_hop_request_headers_never_reach_the_origin(edge: Granian) -> None:
    request = http_request(
        "GET",
        "/echo",
        "app.test",
        [
            ("Connection", "close, X-Foo"),
            ("X-Foo", "listed in Connection"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Trailer", "X-T"),
            ("Upgrade", "foo/1"),
            ("Proxy-Authorization", "Basic eA=="),
            ("Proxy-Connection", "keep-alive"),
            ("X-Keep", "1"),
        ],
    )
    echo = (await raw_request(edge.port, request)).json()
    sent = set(names(echo))
    assert sent.isdisjoint({name.decode() for name in HOP_BY_HOP})
    assert "x-foo" not in sent
    assert values(echo, "x-keep") == ["1"]


async def test_hop_by_hop_response_headers_never_reach_the_client(edge: Granian) -> None:
    response = await raw_request(edge.port, http_request("GET", "/hop", "raw.test"))
    assert (response.status, response.body) == (200, b"ok")
    got = {name.lower() for name, _ in response.headers}
    for name in ("x-bar", "keep-alive", "proxy-connection", "trailer", "upgrade"):
        assert name not in got
    assert "proxy-authenticate" not in got
    assert response.all("set-cookie") == ["a=1", "b=2"]
    assert response.header("x-kept") == "yes"
    assert response.all("connection") in ([], ["close"])  # the edge's own, not the origin's


async def test_client_zerogate_headers_are_replaced_by_the_injected_ones(edge: Granian) -> None:
    echo = (await raw_request(edge.port, http_request("GET", "/", "app.test", FORGED))).json()
    zerogate = [(k.lower(), v) for k, v in echo["headers"] if k.lower().startswith("zerogate-")]
    assert zerogate == [
        ("zerogate-jwt-assertion", "header.payload.signature"),
        ("zerogate-authenticated-user-email", "alice@example.com"),
    ]


SPOOFED = [
    ("X-Forwarded-For", "6.6.6.6, 203.0.113.9, 10.1.1.1"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.test"),
    ("X-Forwarded-Port", "1"),
    ("Forwarded", "for=6.6.6.6;proto=https"),
    ("X-Real-IP", "6.6.6.6"),
]


async def test_untrusted_peer_forwarding_headers_are_replaced(edge: Granian) -> None:
    echo = (await raw_request(edge.port, http_request("GET", "/", "app.test", SPOOFED))).json()
    assert values(echo, "x-forwarded-for") == ["127.0.0.1"]
    assert values(echo, "x-forwarded-proto") == ["http"]
    assert values(echo, "x-forwarded-host") == ["app.test"]
    for name in ("x-forwarded-port", "forwarded", "x-real-ip"):
        assert values(echo, name) == []


async def test_trusted_peer_chain_is_kept_and_extended(edge: Granian) -> None:
    request = http_request("GET", "/", "app.test", SPOOFED)
    echo = (await raw_request(edge.port, request, source="127.0.0.2")).json()
    # 6.6.6.6 is left of the first untrusted hop: nobody vouches for it, so it is dropped
    assert values(echo, "x-forwarded-for") == ["203.0.113.9, 10.1.1.1, 127.0.0.2"]
    assert values(echo, "x-forwarded-proto") == ["https"]  # the trusted proxy terminated TLS
    assert values(echo, "x-forwarded-host") == ["app.test"]
    plain = await raw_request(edge.port, http_request("GET", "/", "app.test"), source="127.0.0.2")
    assert values(plain.json(), "x-forwarded-for") == ["127.0.0.2"]


async def test_server_sent_events_arrive_one_by_one(edge: Granian, origin: Origin) -> None:
    key = f"sse-{time.monotonic_ns()}"
    async with client() as session:
        url = f"{edge.url}/_/sse?key={key}&count=3"
        async with session.get(url, headers={"Host": "app.test"}) as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            for n in (1, 2, 3):
                # The origin sends event n+1 only after we saw event n: a buffering proxy hangs.
                event = await asyncio.wait_for(r.content.readuntil(b"\n\n"), 5)
                assert event == f"id: {n}\ndata: event {n}\n\n".encode()
                if n < 3:
                    origin.release(f"{key}:{n}")
            assert await r.content.read() == b""


async def test_websocket_relay(edge: Granian, origin: Origin) -> None:
    async with client() as session:
        url = f"{edge.url}/_/ws?key=ws-a"
        async with session.ws_connect(
            url, headers={"Host": "app.test"}, protocols=("superchat",)
        ) as ws:
            assert ws.protocol == "superchat"
            await ws.send_str("héllo")
            assert await ws.receive_str(timeout=5) == "echo:héllo"
            await ws.send_bytes(b"\x00\xff" * 1000)
            assert await ws.receive_bytes(timeout=5) == b"echo:" + b"\x00\xff" * 1000
            await ws.send_str("headers")
            sent = json.loads(await ws.receive_str(timeout=5))
            assert "zerogate-jwt-assertion" in sent
            assert sent.count("sec-websocket-key") == 1
            assert "x-forwarded-for" in sent
            await ws.close(code=4001, message=b"bye")
        await wait_for(lambda: "ws-a" in origin.state.ws_close_codes, timeout=5)
        assert origin.state.ws_close_codes["ws-a"] == 4001

        async with session.ws_connect(
            f"{edge.url}/_/ws?key=ws-b", headers={"Host": "app.test"}
        ) as ws:
            assert ws.protocol is None
            await ws.send_str("close:4002:origin says bye")
            msg = await ws.receive(timeout=5)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert (msg.data, msg.extra) == (4002, "origin says bye")


async def test_websocket_origin_refusal(edge: Granian) -> None:
    async with client() as session:
        for host, path, status in (
            ("down.test", "/_/ws", 502),
            ("app.test", "/_/status/403", 403),
            ("app.test", "/not-a-websocket", 502),
        ):
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await session.ws_connect(f"{edge.url}{path}", headers={"Host": host})
            assert caught.value.status == status


async def test_origin_down_is_a_502_page(edge: Granian) -> None:
    html = await raw_request(
        edge.port, http_request("GET", "/", "down.test", [("Accept", "text/html,*/*")])
    )
    assert html.status == 502
    assert html.header("content-type") == "text/html; charset=utf-8"
    assert b"502 Bad Gateway" in html.body
    assert b"Traceback" not in html.body
    # styled like the portal's pages (its stylesheet, the viewport for phones, the footer)
    assert b"<style>" in html.body and b'name="viewport"' in html.body
    assert b"could not be reached" in html.body and b"protected by zerogate" in html.body
    api = await raw_request(
        edge.port, http_request("GET", "/", "down.test", [("Accept", "application/json")])
    )
    assert api.status == 502
    assert api.json()["error"] == "bad_gateway"
    garbage = await raw_request(edge.port, http_request("GET", "/garbage", "raw.test"))
    assert garbage.status == 502


async def test_origin_slower_than_the_read_timeout_is_a_504(edge: Granian) -> None:
    started = time.monotonic()
    response = await raw_request(
        edge.port,
        http_request("GET", "/_/slow?delay=5", "slow.test", [("Accept", "application/json")]),
    )
    assert response.status == 504
    assert response.json() == {
        "error": "gateway_timeout",
        "status": 504,
        "message": "The application's origin did not answer in time.",
    }
    assert time.monotonic() - started < 4


async def test_client_disconnect_releases_the_origin(edge: Granian, origin: Origin) -> None:
    key = f"forever-{time.monotonic_ns()}"
    closed = origin.state.closed_event(key)
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    writer.write(http_request("GET", f"/_/forever?key={key}", "app.test"))
    await writer.drain()
    received = 0
    while received < 4 * 1024 * 1024:
        received += len(await asyncio.wait_for(reader.read(65536), 5))
    writer.transport.abort()
    assert await asyncio.to_thread(closed.wait, 5), "the origin kept streaming to nobody"


async def test_client_disconnect_mid_upload_aborts_the_origin_request(
    edge: Granian, origin: Origin
) -> None:
    key = f"upload-{time.monotonic_ns()}"
    closed = origin.state.closed_event(key)
    _reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    head = http_request(
        "POST", f"/_/upload?key={key}", "app.test", [("Content-Length", "100000000")]
    )
    writer.write(head + PATTERN * 4)
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()
    assert await asyncio.to_thread(closed.wait, 5), "the origin still waits for the body"
    assert key not in origin.state.uploads


async def test_websocket_outlives_the_http_read_timeout(edge: Granian) -> None:
    async with client() as session:
        url = f"{edge.url}/_/ws"
        async with session.ws_connect(url, headers={"Host": "slow.test"}) as ws:
            await asyncio.sleep(1.5)  # the slow.test upstream's read timeout is 1 s
            await ws.send_str("still there")
            assert await ws.receive_str(timeout=5) == "echo:still there"


async def test_origin_failure_mid_body_truncates_the_response(edge: Granian) -> None:
    # The origin dies after 7 bytes. The edge must not finish the response (a final empty chunk
    # would make the download look complete); the server then cuts the connection.
    chunked = await raw_request(
        edge.port, http_request("GET", "/truncated-chunked", "raw.test"), head_only=True
    )
    assert chunked.status == 200
    assert chunked.header("transfer-encoding") == "chunked"
    assert b"partial" in chunked.body
    assert not chunked.body.endswith(b"0\r\n\r\n")
    sized = await raw_request(
        edge.port, http_request("GET", "/truncated", "raw.test"), head_only=True
    )
    assert (sized.status, sized.header("content-length"), sized.body) == (200, "100", b"partial")


async def test_unix_socket_and_https_origins(edge: Granian) -> None:
    for host in ("unix.test", "tls.test"):
        response = await raw_request(edge.port, http_request("GET", "/via?x=1", host))
        assert response.status == 200, host
        assert response.json()["target"] == "/via?x=1"


async def test_upstream_connections_are_reused(edge: Granian) -> None:
    ports = set()
    for _ in range(3):
        echo = (await raw_request(edge.port, http_request("GET", "/", "app.test"))).json()
        ports.add(echo["peer_port"])
    assert len(ports) == 1


class FakeClient:
    """ASGI receive/send for calling OriginProxy in-process: a body, then a disconnect on demand."""

    def __init__(self, body: bytes = b"") -> None:
        self.pending = [{"type": "http.request", "body": body, "more_body": False}]
        self.gone = asyncio.Event()
        self.sent: list[Message] = []

    async def receive(self) -> dict[str, Any]:
        if self.pending:
            return self.pending.pop(0)
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if sum(len(m.get("body", b"")) for m in self.sent) > 1024 * 1024:
            self.gone.set()  # the client reads a megabyte, then leaves


def http_scope(path: bytes, method: str = "GET") -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "raw_path": path,
        "query_string": b"",
        "headers": [(b"host", b"app.test")],
    }


async def test_in_process_client_leaving_does_not_leak_a_cancellation(origin: Origin) -> None:
    upstream = OriginProxy()
    try:
        fake = FakeClient()
        key = f"inproc-{time.monotonic_ns()}"
        status = await upstream.forward_http(
            http_scope(f"/_/forever?key={key}".encode()),
            fake.receive,
            fake.send,
            Outbound(origin.url, f"/_/forever?key={key}", [(b"host", b"app.test")]),
        )
        assert status == 200
        assert fake.sent[-1].get("more_body") is True  # left unfinished, never completed
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        await asyncio.sleep(0.01)  # no stray CancelledError lands here
        assert await asyncio.to_thread(origin.state.closed_event(key).wait, 5)

        early = FakeClient()
        early.pending = [{"type": "http.disconnect"}]
        assert (
            await upstream.forward_http(
                http_scope(b"/"), early.receive, early.send, Outbound(origin.url, b"/", [])
            )
            == CLIENT_CLOSED
        )
        assert early.sent == []
    finally:
        await upstream.close()


async def test_in_process_outside_cancellation_propagates(origin: Origin) -> None:
    upstream = OriginProxy()
    try:
        fake = FakeClient()
        call = asyncio.ensure_future(
            upstream.forward_http(
                http_scope(b"/_/slow?delay=5"),
                fake.receive,
                fake.send,
                Outbound(origin.url, b"/_/slow?delay=5", []),
            )
        )
        await asyncio.sleep(0.2)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    finally:
        await upstream.close()


# ---------------------------------------------------------------------------- big bodies


@pytest.mark.e2e
async def test_big_upload_streams_with_bounded_memory(edge: Granian, origin: Origin) -> None:
    worker = edge.worker_pids()[0]
    before = peak_rss_kib(worker)

    async def body() -> AsyncIterator[bytes]:
        left = BIG_BODY
        while left:
            piece = PATTERN[: min(left, len(PATTERN))]
            left -= len(piece)
            yield piece

    async with client() as session:
        headers = {"Host": "app.test", "Content-Length": str(BIG_BODY)}
        async with session.post(f"{edge.url}/_/upload?key=big", data=body(), headers=headers) as r:
            assert r.status == 200
            assert await r.json() == {"size": BIG_BODY, "crc": crc_of_pattern(BIG_BODY)}
    growth = peak_rss_kib(worker) - before
    assert growth < MAX_RSS_GROWTH_KIB, f"edge peak RSS grew {growth} KiB for a {BIG_BODY} B upload"


@pytest.mark.e2e
async def test_big_download_streams_with_bounded_memory(edge: Granian) -> None:
    worker = edge.worker_pids()[0]
    before = peak_rss_kib(worker)
    size, crc = 0, 0
    async with client() as session:
        url = f"{edge.url}/_/download?size={BIG_BODY}"
        async with session.get(url, headers={"Host": "app.test"}) as r:
            assert r.headers["Content-Length"] == str(BIG_BODY)
            async for chunk in r.content.iter_any():
                size += len(chunk)
                crc = zlib.crc32(chunk, crc)
    assert (size, crc) == (BIG_BODY, crc_of_pattern(BIG_BODY))
    growth = peak_rss_kib(worker) - before
    assert growth < MAX_RSS_GROWTH_KIB, (
        f"edge peak RSS grew {growth} KiB for a {BIG_BODY} B download"
    )
