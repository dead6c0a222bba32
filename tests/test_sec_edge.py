"""Attacks on what the edge passes between browser and upstream: foreign identity headers,
paths some origins read differently, cookies tossed by an origin or a connector, repeated
cookies (issue 10 items 6-8, issue 17 item 2).

The end-to-end tests drive a real ``zerogate server`` (plain HTTP; one over TLS for the cookie
names) with an origin that records what it receives and, on ``/public/set-cookie``, answers
with the ``Set-Cookie`` headers the test asks for; the tunnel tests use a scripted connector.
Each checks what reached the origin or the browser, not only the status code.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trustme
from aiohttp import ClientSession, TCPConnector, web

from test_tunnel_attacks import BODY as TUNNEL_BODY
from test_tunnel_attacks import json_body, raw_http, status_of
from test_tunnel_edge import TunnelZerogate, connect_fresh, session_cookie
from zerogate.model.paths import PathError, fold, normalise_path, under
from zerogate.net import http
from zerogate.net.headers import (
    downstream_response_headers,
    is_zerogate_cookie,
    upstream_request_headers,
)
from zerogate.portal.oidc import browser_value_ok, new_browser_value
from zerogate.runtime import cookies
from zg_harness import (
    HttpBrowser,
    ThreadedOutbox,
    TunnelRequest,
    TunnelTestConnector,
    VerifyingWsOrigin,
    Zerogate,
    app_cookie_name,
    apply_here,
    free_port,
    login,
    wait_ready,
)

# ============================================================================ the lists

#: identity and rewrite headers other gateways and frameworks trust (SPEC "HTTP contract")
FOREIGN = [
    ("Cf-Access-Authenticated-User-Email", "ceo@example.com"),
    ("Cf-Access-Jwt-Assertion", "forged"),
    ("CF-ACCESS-CLIENT-ID", "x"),
    ("Remote-User", "ceo"),
    ("X-Remote-User", "ceo"),
    ("X-Webauth-User", "admin"),
    ("X-Auth-Request-User", "ceo"),
    ("X-Auth-Request-Email", "ceo@example.com"),
    ("X-Forwarded-User", "ceo"),
    ("X-Forwarded-Email", "ceo@example.com"),
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
    ("X-Original-URI", "/admin"),
    ("x_original_url", "/admin"),
    ("Remote_User", "ceo"),
    # found by the second security review
    ("X-Forwarded", "for=203.0.113.9"),
    ("Client-Ip", "203.0.113.9"),
    ("X-Cluster-Client-Ip", "203.0.113.9"),
    ("X-Goog-Authenticated-User-Email", "accounts.google.com:ceo@example.com"),
    ("X-Ms-Client-Principal-Name", "ceo@example.com"),
    ("X-Amzn-Oidc-Identity", "ceo"),
    ("X-Pomerium-Claim-Email", "ceo@example.com"),
    ("Tailscale-User-Login", "ceo@example.com"),
    ("X-User", "ceo"),
    ("X-Email", "ceo@example.com"),
    ("X-Host", "admin.internal"),
    ("X-Http-Method-Override", "DELETE"),
]

#: paths some origin reads as another one; each is refused or routed to /admin
SNEAKY_PATHS = [
    "/public/..%20/admin",
    "/public/..%09/admin",
    "/public/..;x/admin",
    "/public/..;/admin",
    "/public/.%20./admin",
    "/public/.../admin",
    "/public/%2e%2e%20/admin",
    "/admin%09",
    "/admin%3bx",
    "/admin%3Bx/secret",
    "/public/%252e%252e/admin",
    "/public/%252E%252E%252Fadmin",
    "/public/%C0%AE%C0%AE/admin",
]

#: spellings that leave /admin for the bypass app /public once dot segments are resolved, but
#: that an origin serves from /admin (aiohttp, Flask, Starlette and prefix routers do not
#: resolve dot segments; RFC 3986 resolvers such as Node's URL read "/admin//../x" as
#: "/admin/x"): found by the second security review
LEAVING_ADMIN = [
    "/admin/../public/x",
    "/admin/%2e%2e/public/x",
    "/admin/.%2E/public/x",
    "/admin//../public/payroll",
    "/admin/.//../public/payroll",
    "/admin/./../public",
    "//public/x",
]

#: Set-Cookie values an origin could use to toss one of zerogate's cookies
TOSSED = [
    "__zg_portal=tossed; Path=/",
    "__zg_portal=tossed; Domain=localhost; Path=/.zerogate/",
    "__zg_oidc=" + "A" * 43 + "; Path=/.zerogate/oidc/callback",
    "__zg_csrf=" + "B" * 32,
    "__zg_state=fixed; Path=/.zerogate/authorized",
    "__Host-__zg_portal=tossed; Secure; Path=/",
    "__HOST-__zg_portal=tossed; Secure; Path=/",
    "__Secure-__zg_portal=tossed; Secure",
    "__ZG_PORTAL=tossed",
    " __zg_portal = tossed",
    "=__zg_portal=tossed",
    "__zg_portal",
    "__zg_0123456789abcdef=tossed",  # an application's session cookie
]


# ============================================================================ unit level


def test_foreign_identity_headers_are_dropped_from_every_request() -> None:
    headers = [(k.lower().encode(), v.encode()) for k, v in FOREIGN]
    out = upstream_request_headers(
        [*headers, (b"x-kept", b"1"), (b"host", b"wiki")],
        client_ip="127.0.0.1",
        proto="http",
        host="wiki",
        inject=[],
        upgrade=False,
    )
    names = [k for k, _ in out]
    assert b"x-kept" in names
    for name, _ in headers:
        assert name not in names, name


@pytest.mark.parametrize("raw", SNEAKY_PATHS)
def test_sneaky_paths_are_refused_or_land_under_admin(raw: str) -> None:
    try:
        path = normalise_path(raw)
    except PathError:
        return
    assert under(fold(path), "/admin"), (raw, path)


@pytest.mark.parametrize("value", TOSSED)
def test_a_set_cookie_for_a_zerogate_name_is_dropped(value: str) -> None:
    assert is_zerogate_cookie(value.encode())
    headers = [(b"set-cookie", value.encode()), (b"set-cookie", b"theirs=1; Path=/")]
    assert downstream_response_headers(headers) == [(b"set-cookie", b"theirs=1; Path=/")]


@pytest.mark.parametrize("value", ["theirs=1", "zg_portal=1", "__zgportal=1", "__Host-app=1"])
def test_the_origins_own_cookies_pass(value: str) -> None:
    assert not is_zerogate_cookie(value.encode())


def test_two_cookies_of_one_name_are_none() -> None:
    scope: dict[str, Any] = {
        "headers": [(b"cookie", b"__zg_portal=a; other=1"), (b"cookie", b"__zg_portal=b")]
    }
    assert cookies.cookie(scope, "__zg_portal", secure=False) is None
    assert http.cookies(scope) == {"other": "1"}
    scope["headers"] = [(b"cookie", b"__Host-__zg_portal=a; __zg_portal=b")]
    assert cookies.cookie(scope, "__zg_portal", secure=True) == "a"
    assert cookies.cookie(scope, "__zg_portal", secure=False) == "b"


def test_tls_cookies_are_host_prefixed_secure_and_host_only() -> None:
    name, value = cookies.set_cookie("__zg_csrf", "v", path="/.zerogate/", secure=True)
    text = value.decode()
    assert name == b"set-cookie" and text.startswith("__Host-__zg_csrf=v;")
    lowered = text.lower()
    assert "; secure" in lowered and "; httponly" in lowered and "samesite=lax" in lowered
    assert "path=/;" in lowered or lowered.endswith("path=/")
    assert "domain" not in lowered
    plain = cookies.set_cookie("__zg_csrf", "v", path="/.zerogate/", secure=False)[1].decode()
    assert plain.startswith("__zg_csrf=v;") and "secure" not in plain.lower()


def test_the_oidc_browser_cookie_must_be_signed_by_this_server() -> None:
    secret = b"s" * 32
    value = new_browser_value(secret)
    assert browser_value_ok(secret, value)
    assert not browser_value_ok(b"t" * 32, value)
    assert not browser_value_ok(secret, "A" * 43)  # what the old code accepted
    nonce, _, mac = value.rpartition(".")
    assert not browser_value_ok(secret, f"{nonce}x.{mac}")


# ============================================================================ end to end, HTTP


class CookieTossingOrigin(VerifyingWsOrigin):
    """Records every request; ``/public/set-cookie?c=…&c=…`` answers with those Set-Cookies."""

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/public/set-cookie", self._toss)
        app.router.add_get("/ws", self._ws)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _toss(self, request: web.Request) -> web.Response:
        await self._handle(request)
        response = web.Response(text="tossed")
        for value in request.query.getall("c", []):
            response.headers.add("Set-Cookie", value)
        return response


def config(origin_port: int) -> str:
    o = f"http://127.0.0.1:{origin_port}"
    return f"""
identity_providers: [{{name: otp, type: onetimepin}}]
applications:
  - name: wiki
    domain: wiki.localhost
    origin: {o}
    policies:
      - {{name: staff, decision: allow, include: [{{email_domain: [example.com]}}]}}
  - name: wiki-admin
    domain: wiki.localhost/admin
    origin: {o}
    policies:
      - {{name: root, decision: allow, include: [{{email: [root@example.com]}}]}}
  - name: wiki-public
    domain: wiki.localhost/public
    origin: {o}
    policies:
      - {{name: anyone, decision: bypass, include: [{{everyone: true}}]}}
"""


@pytest.fixture(scope="module")
def outbox() -> Iterator[ThreadedOutbox]:
    box = ThreadedOutbox().start()
    yield box
    box.stop()


@pytest.fixture(scope="module")
def zg(tmp_path_factory: pytest.TempPathFactory, outbox: ThreadedOutbox) -> Iterator[Zerogate]:
    port = free_port()
    origin = CookieTossingOrigin(
        f"http://auth.localhost:{port}/.zerogate/certs", f"https://auth.localhost:{port}"
    ).start()
    server = Zerogate(tmp_path_factory.mktemp("sec-edge"), port, outbox.port)
    server.extra["origin"] = origin
    try:
        asyncio.run(apply_here(server, config(origin.port)))
        server.start()
        wait_ready(server)
        yield server
    finally:
        server.stop()
        origin.stop()


@pytest.fixture(scope="module")
def origin(zg: Zerogate) -> CookieTossingOrigin:
    found = zg.extra["origin"]
    assert isinstance(found, CookieTossingOrigin)
    return found


@pytest.fixture(scope="module")
def jar(zg: Zerogate, outbox: ThreadedOutbox) -> dict[str, dict[str, tuple[str, str]]]:
    """ann@example.com's cookies after a PIN login to wiki (portal session + wiki's cookie)."""

    async def go() -> dict[str, dict[str, tuple[str, str]]]:
        async with HttpBrowser(source="127.0.0.21") as browser:
            reply = await login(browser, zg, outbox, "wiki.localhost", "ann@example.com")
            assert reply.status == 200 and reply.json()["email"] == "ann@example.com"
            return browser.jar

    return asyncio.run(go())


async def raw_get(
    zg: Zerogate, host: str, path: str, headers: list[tuple[str, str]]
) -> tuple[int, list[tuple[str, str]], bytes]:
    """A GET with exactly these headers (repeats kept) and the target as written."""
    async with (
        ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{zg.port}{path}",
            headers=[("Host", f"{host}:{zg.port}"), *headers],
            allow_redirects=False,
            skip_auto_headers=("User-Agent",),
        ) as resp,
    ):
        return resp.status, list(resp.headers.items()), await resp.read()


def cookie_header(jar: dict[str, dict[str, tuple[str, str]]], host: str) -> str:
    return "; ".join(f"{name}={value}" for name, (value, _) in jar.get(host, {}).items())


@pytest.mark.e2e
async def test_foreign_identity_headers_never_reach_a_bypass_origin(
    zg: Zerogate, origin: CookieTossingOrigin
) -> None:
    mark = len(origin.seen)
    status, _, _ = await raw_get(zg, "wiki.localhost", "/public/page", FOREIGN)
    assert status == 200
    [seen] = origin.seen[mark:]
    names = {name for name, _ in seen["raw_headers"]}
    assert seen["path"] == "/public/page"
    for name, _ in FOREIGN:
        assert name.lower() not in names, name
    assert "ceo" not in str(seen["raw_headers"]) and "/admin" not in str(seen["raw_headers"])


@pytest.mark.e2e
async def test_foreign_identity_headers_never_reach_an_allowed_origin(
    zg: Zerogate, origin: CookieTossingOrigin, jar: dict[str, dict[str, tuple[str, str]]]
) -> None:
    mark = len(origin.seen)
    cookie = cookie_header(jar, "wiki.localhost")
    status, _, _ = await raw_get(zg, "wiki.localhost", "/page", [("Cookie", cookie), *FOREIGN])
    assert status == 200
    [seen] = origin.seen[mark:]
    assert seen["email"] == "ann@example.com" and seen["jwt_error"] is None
    names = {name for name, _ in seen["raw_headers"]}
    for name, _ in FOREIGN:
        assert name.lower() not in names, name


@pytest.mark.e2e
@pytest.mark.parametrize("path", SNEAKY_PATHS)
async def test_a_sneaky_path_never_reaches_the_origin_through_the_bypass_app(
    zg: Zerogate, origin: CookieTossingOrigin, path: str
) -> None:
    """Without a session, each spelling is refused (400) or asks for a login as /admin would:
    the bypass application ``/public`` never serves it."""
    mark = len(origin.seen)
    status, headers, _ = await raw_get(zg, "wiki.localhost", path, [("Accept", "text/html")])
    assert status in (400, 302), (path, status)
    if status == 302:
        location = dict(headers)["Location"]
        assert "/.zerogate/login?flow=" in location, location
    assert origin.seen[mark:] == []


@pytest.mark.parametrize("path", LEAVING_ADMIN)
async def test_a_path_that_leaves_admin_for_the_bypass_app_is_refused(
    zg: Zerogate, origin: CookieTossingOrigin, path: str
) -> None:
    """Without a session, no spelling that the policy would route to ``/public`` but an
    origin may serve from ``/admin`` is forwarded: 400, and the origin sees nothing."""
    mark = len(origin.seen)
    reader, writer = await asyncio.open_connection("127.0.0.1", zg.port)
    try:  # a socket of our own: HTTP clients resolve dot segments before sending
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: wiki.localhost:{zg.port}\r\n"
            "Accept: text/html\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 400"), (path, answer[:100])
    assert origin.seen[mark:] == []


@pytest.mark.e2e
@pytest.mark.parametrize("path", ["/.ZEROGATE/certs", "/.Zerogate/identity", "/.zeroGATE/x"])
async def test_the_reserved_prefix_is_zerogates_in_any_case(
    zg: Zerogate, origin: CookieTossingOrigin, path: str
) -> None:
    """wiki.localhost's root application is an origin app; /.ZEROGATE/ must not reach it."""
    mark = len(origin.seen)
    status, _, body = await raw_get(zg, "wiki.localhost", path, [("Accept", "application/json")])
    assert status in (200, 401, 404), status
    if path.lower() == "/.zerogate/certs":
        assert status == 200 and b'"keys"' in body
    assert b"login required" not in body  # answered as zerogate's path, not the application's
    assert origin.seen[mark:] == []


@pytest.mark.e2e
async def test_an_origin_cannot_toss_zerogates_cookies(zg: Zerogate) -> None:
    query = "&".join(f"c={quote(v, safe='')}" for v in [*TOSSED, "theirs=kept; Path=/"])
    status, headers, body = await raw_get(zg, "wiki.localhost", f"/public/set-cookie?{query}", [])
    assert status == 200 and body == b"tossed"
    set_cookies = [value for name, value in headers if name.lower() == "set-cookie"]
    assert set_cookies == ["theirs=kept; Path=/"], set_cookies


@pytest.mark.e2e
async def test_two_portal_cookies_are_no_session(
    zg: Zerogate, jar: dict[str, dict[str, tuple[str, str]]]
) -> None:
    """A tossed cookie of the same name (longer path: sent first) makes the session none,
    never the tossed one."""
    portal = jar["auth.localhost"]["__zg_portal"][0]
    alone = [("Cookie", f"__zg_portal={portal}")]
    status, _, body = await raw_get(zg, "auth.localhost", "/.zerogate/identity", alone)
    assert status == 200 and b"ann@example.com" in body  # the control
    for pair in (f"__zg_portal={portal}; __zg_portal=x", f"__zg_portal=x; __zg_portal={portal}"):
        status, _, _ = await raw_get(
            zg, "auth.localhost", "/.zerogate/identity", [("Cookie", pair)]
        )
        assert status == 401, pair


@pytest.mark.e2e
async def test_two_app_cookies_are_no_session(
    zg: Zerogate, origin: CookieTossingOrigin, jar: dict[str, dict[str, tuple[str, str]]]
) -> None:
    name = app_cookie_name("wiki")
    token = jar["wiki.localhost"][name][0]
    mark = len(origin.seen)
    status, _, _ = await raw_get(
        zg, "wiki.localhost", "/page", [("Cookie", f"{name}={token}"), ("Cookie", f"{name}=x")]
    )
    assert status == 302  # a login, not ann's session
    assert origin.seen[mark:] == []


# ============================================================================ end to end, TLS


async def tls_get(
    port: int, context: ssl.SSLContext, host: str, path: str, cookie: str = ""
) -> tuple[int, list[tuple[str, str]], bytes]:
    async with (
        ClientSession(connector=TCPConnector(ssl=context)) as session,
        session.get(
            f"https://127.0.0.1:{port}{path}",
            headers={"Host": f"{host}:{port}", **({"Cookie": cookie} if cookie else {})},
            allow_redirects=False,
            server_hostname=host,
        ) as resp,
    ):
        return resp.status, list(resp.headers.items()), await resp.read()


@pytest.mark.e2e
async def test_under_tls_zerogates_cookies_are_host_prefixed_and_secure(
    tmp_path: Path, outbox: ThreadedOutbox, origin: CookieTossingOrigin
) -> None:
    """The state cookie (app host) and the CSRF cookie (portal, never Secure before) are
    ``__Host-`` cookies: Secure, host-only, ``Path=/``, HttpOnly, SameSite; the login goes on
    with the prefixed state (the portal's form reads its prefixed CSRF cookie back)."""
    ca = trustme.CA()
    cert = ca.issue_cert("auth.localhost", "wiki.localhost")
    cert.private_key_pem.write_to_path(str(tmp_path / "edge.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "edge.crt"))
    server = Zerogate(tmp_path, free_port(), outbox.port)
    server.tls = "{cert: edge.crt, key: edge.key}"  # (the front serves no TLS: never fast_path)
    server.apply(config(origin.port))
    assert "tls: {cert: edge.crt" in server.config.read_text()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    server.start()
    try:
        status, headers, _ = await tls_get(server.port, context, "wiki.localhost", "/")
        assert status == 302
        cookies = [v for k, v in headers if k.lower() == "set-cookie"]
        [state] = cookies
        assert state.startswith("__Host-__zg_state="), state
        flags = [part.strip().lower() for part in state.split(";")[1:]]
        assert "secure" in flags and "httponly" in flags and "path=/" in flags
        assert "samesite=lax" in flags and not any(f.startswith("domain") for f in flags)
        login_url = dict(headers)["Location"]
        path = login_url.split(f"auth.localhost:{server.port}", 1)[1]
        status, headers, body = await tls_get(server.port, context, "auth.localhost", path)
        assert status == 200, body[:300]
        set = [v for k, v in headers if k.lower() == "set-cookie"]
        # the CSRF cookie and the PIN-binding cookie, both __Host- cookies
        assert sorted(v.split("=", 1)[0] for v in set) == ["__Host-__zg_csrf", "__Host-__zg_pin"]
        for value in set:
            flags = [part.strip().lower() for part in value.split(";")[1:]]
            assert "secure" in flags and "httponly" in flags and "path=/" in flags, value
        [csrf] = [v for v in set if v.startswith("__Host-__zg_csrf=")]
        # the unprefixed name (what a sibling host or plain HTTP could toss) is not read
        token = csrf.split(";", 1)[0].split("=", 1)[1]
        assert f'value="{token}"' in body.decode()
    finally:
        server.stop()


# ============================================================================ tunnel


@pytest.fixture(scope="module")
def tunnel_zg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunnelZerogate]:
    server = TunnelZerogate(tmp_path_factory.mktemp("sec-edge-tunnel"), free_port(), free_port())
    server.tunnel_port = free_port()
    server.apply(TUNNEL_BODY)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def tossing_connector(tunnel_zg: TunnelZerogate) -> AsyncIterator[TunnelTestConnector]:
    async def handler(req: TunnelRequest) -> None:
        await req.body()
        headers = [(b"content-type", b"application/json")]
        headers += [(b"set-cookie", v.strip().encode()) for v in TOSSED]
        headers.append((b"set-cookie", b"theirs=kept"))
        req.respond(200, headers)
        body = [[k.decode(), v.decode()] for k, v in req.headers]
        await req.write(json.dumps({"headers": body}).encode(), end=True)

    connector = TunnelTestConnector(tunnel_zg.token("office"), handler=handler)
    await connect_fresh(connector, 1)
    try:
        yield connector
    finally:
        await connector.close()


@pytest.mark.e2e
async def test_a_connector_cannot_toss_zerogates_cookies_nor_receive_foreign_headers(
    tunnel_zg: TunnelZerogate, tossing_connector: TunnelTestConnector
) -> None:
    foreign = "".join(f"{name}: {value}\r\n" for name, value in FOREIGN)
    for host, cookie in (
        ("open.localhost", ""),  # a bypass application
        ("wiki.localhost", await session_cookie(tunnel_zg, "wiki")),  # an allowed one
    ):
        request = (
            f"GET /x HTTP/1.1\r\nHost: {host}:{tunnel_zg.port}\r\n"
            + (f"Cookie: {cookie}\r\n" if cookie else "")
            + foreign
            + "\r\n"
        ).encode()
        answer = await raw_http(tunnel_zg.port, request)
        assert status_of(answer) == 200, answer[:300]
        head = answer.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
        set_cookies = [line for line in head.split("\r\n") if line.startswith("set-cookie:")]
        assert set_cookies == ["set-cookie: theirs=kept"], set_cookies
        names = {name for name, _ in json_body(answer)["headers"]}
        for name, _ in FOREIGN:
            assert name.lower() not in names, (host, name)
