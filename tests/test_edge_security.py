"""The authentication boundary under attack, over plain HTTP against a real ``zerogate server``.

One server for the module (its origin verifies the JWT it receives against ``/.zerogate/certs``,
PIN emails go to a real SMTP outbox). Each test takes one attack class and asserts what would
break if the defence failed: the origin's record of what reached it is checked, not only the
status code. Every test client binds its own loopback address (127.0.0.N) so the per-IP PIN
rate limit of one test does not leak into the next; 127.0.0.254 is the configured trusted proxy.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import itertools
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_harness import RawResponse, http_request, raw_request
from zerogate.identity import KeySet, issue_app_token
from zerogate.identity.flow import Flow, sign_flow
from zerogate.identity.secret_hash import SecretKind, hash_secret
from zerogate.runtime import audience_tag
from zerogate.store import ServiceCredential
from zg_harness import (
    HttpBrowser,
    Reply,
    ThreadedOutbox,
    VerifyingWsOrigin,
    Zerogate,
    app_cookie_name,
    apply_here,
    free_port,
    hidden_inputs,
    log_out,
    login,
    login_page,
    open_store,
    request_pin,
    server_keyset,
    submit_pin,
    wait_for,
    wait_ready,
    wait_until,
)

pytestmark = pytest.mark.e2e

TRUSTED_PROXY = "127.0.0.254"
APP_NAMES = ("wiki", "wiki-admin", "docs", "api", "finance", "finance-health")
_sources = itertools.count(10)


def new_source() -> str:
    """A loopback address no other test of this module uses (its own PIN rate-limit bucket)."""
    n = next(_sources)
    assert n < 250
    return f"127.0.0.{n}"


def config(origin_port: int) -> str:
    o = f"http://127.0.0.1:{origin_port}"
    return f"""
trusted_proxies: [{TRUSTED_PROXY}/32]
identity_providers: [{{name: otp, type: onetimepin}}]
groups:
  - name: Office
    include: [{{ip: [203.0.113.0/24]}}]
service_tokens:
  - {{name: ci-bot, duration: 8760h}}
  - {{name: old-bot, duration: 8760h}}
  - {{name: other-bot, duration: 8760h}}
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
      - {{name: admins, decision: allow, include: [{{email: [root@example.com]}}]}}
  - name: docs
    domain: docs.localhost
    origin: {o}
    policies:
      - {{name: staff, decision: allow, include: [{{email_domain: [example.com]}}]}}
  - name: api
    domain: api.localhost
    origin: {o}
    policies:
      - {{name: ci, decision: service_auth, include: [{{service_token: [ci-bot, old-bot]}}]}}
      - {{name: staff, decision: allow, include: [{{email_domain: [example.com]}}]}}
  - name: finance
    domain: finance.localhost
    origin: {o}
    policies:
      - {{name: office staff, decision: allow, include: [{{email_domain: [example.com]}}],
          require: [{{group: [Office]}}]}}
  - name: finance-health
    domain: finance.localhost/health
    origin: {o}
    policies:
      - {{name: office probes, decision: bypass, include: [{{group: [Office]}}]}}
"""


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def outbox() -> Iterator[ThreadedOutbox]:
    box = ThreadedOutbox().start()
    yield box
    box.stop()


@pytest.fixture(scope="module")
def zg(tmp_path_factory: pytest.TempPathFactory, outbox: ThreadedOutbox) -> Iterator[Zerogate]:
    port = free_port()
    origin = VerifyingWsOrigin(
        f"http://auth.localhost:{port}/.zerogate/certs", f"https://auth.localhost:{port}"
    ).start()
    zerogate = Zerogate(tmp_path_factory.mktemp("zg-security"), port, outbox.port)
    zerogate.extra["origin"] = origin
    try:
        asyncio.run(apply_here(zerogate, config(origin.port)))
        zerogate.start()
        wait_ready(zerogate)
        yield zerogate
    finally:
        zerogate.stop()
        origin.stop()


@pytest.fixture(scope="module")
def origin(zg: Zerogate) -> VerifyingWsOrigin:
    found = zg.extra["origin"]
    assert isinstance(found, VerifyingWsOrigin)
    return found


@dataclass
class Session:
    """A logged-in client: its address and cookie jar; ``browser()`` gives a fresh copy."""

    email: str
    source: str
    jar: dict[str, dict[str, tuple[str, str]]]

    def browser(self, *, source: str | None = None) -> HttpBrowser:
        browser = HttpBrowser(source=source or self.source)
        browser.jar = copy.deepcopy(self.jar)
        return browser

    def cookie(self, host: str, name: str) -> str:
        return self.jar[host][name][0]


@pytest.fixture(scope="module")
def staff(zg: Zerogate, outbox: ThreadedOutbox) -> Session:
    """ann@example.com: a session on wiki (staff may) and one on wiki/admin (staff may not)."""
    source = new_source()

    async def go() -> dict[str, dict[str, tuple[str, str]]]:
        async with HttpBrowser(source=source) as browser:
            reply = await login(browser, zg, outbox, "wiki.localhost", "ann@example.com")
            assert reply.status == 200 and reply.json()["email"] == "ann@example.com"
            # single sign-on into the path-scoped admin app of the same host: a session, blocked
            chain = await browser.follow(zg.url("wiki.localhost", "/admin"))
            assert chain[-1].status == 403, [(r.status, r.url) for r in chain]
            assert app_cookie_name("wiki-admin") in browser.cookies("wiki.localhost")
            return browser.jar

    return Session("ann@example.com", source, asyncio.run(go()))


def seen_since(origin: VerifyingWsOrigin, mark: int) -> list[dict[str, Any]]:
    return origin.seen[mark:]


async def raw(zg: Zerogate, request: bytes, *, source: str = "127.0.0.1") -> RawResponse:
    return await raw_request(zg.port, request, source=source)


def is_login_redirect(zg: Zerogate, reply: Reply | RawResponse) -> bool:
    location = reply.header("location") if isinstance(reply, RawResponse) else reply.location
    return reply.status == 302 and (location or "").startswith(
        f"http://{zg.portal}/.zerogate/login?flow="
    )


# ---------------------------------------------------------------------------- open redirect


EVIL_TARGETS = [  # PORT stands for the server's port
    "https://evil.test/",
    "//evil.test",
    "/\\evil.test",
    "\\/evil.test",
    "/%2F%2Fevil.test",
    "https:evil.test",
    "http://wiki.localhost:PORT@evil.test/",
    "http://docs.localhost:PORT/other-app",  # another application
    "/admin",  # another application on the same host (the path-scoped one)
    "/ok\r\nSet-Cookie: injected=1",
    "/%0d%0aSet-Cookie:%20injected=1",
    "javascript:alert(1)",
    "///evil.test",
    "http:/\\/evil.test",
    "http://evil.test:PORT/",
    "/" + "a" * 1000,
]


def assert_lands_on_wiki(zg: Zerogate, chain: list[Reply]) -> None:
    """Every hop stays on the portal or the wiki host; the last one is wiki's origin."""
    for reply in chain:
        for value in reply.headers.getall("Location", []):
            assert "\r" not in value and "\n" not in value and "\\" not in value, value
            host = urlsplit(value).netloc
            assert host in (zg.portal, f"wiki.localhost:{zg.port}"), value
        assert "injected" not in reply.set_cookies()
    final = chain[-1]
    assert urlsplit(final.url).netloc == f"wiki.localhost:{zg.port}", final.url
    path = urlsplit(final.url).path.lower()
    assert not path.startswith("/admin"), final.url  # routes to wiki itself
    # the wiki origin's own echo of this very request: the right app, the right path
    assert final.status == 200, (final.status, final.url, final.text[:300])
    seen = final.json()
    parts = urlsplit(final.url)
    assert seen["path"] == parts.path + (f"?{parts.query}" if parts.query else ""), seen["path"]
    assert seen["email"], seen
    assert "protected by zerogate" not in final.text  # the origin's answer, not the edge's


@pytest.mark.parametrize("rd", EVIL_TARGETS, ids=[t[:40] for t in EVIL_TARGETS])
async def test_login_return_url_never_leaves_the_application(
    zg: Zerogate, staff: Session, rd: str
) -> None:
    rd = rd.replace("PORT", str(zg.port))
    async with staff.browser() as browser:  # holds a portal session: the flow runs to the end
        chain = await browser.follow(
            zg.url("wiki.localhost", "/.zerogate/login?rd=" + quote(rd, safe=""))
        )
    assert len(chain) >= 3  # /.zerogate/login → portal → /.zerogate/authorized → target
    assert chain[1].location and "/.zerogate/authorized?code=" in chain[1].location
    assert_lands_on_wiki(zg, chain)


async def test_a_good_return_url_is_kept(zg: Zerogate, staff: Session) -> None:
    """The control for the test above: a path of the application itself is where one lands."""
    async with staff.browser() as browser:
        for rd in ("/page?q=1", f"http://wiki.localhost:{zg.port}/absolute"):
            chain = await browser.follow(
                zg.url("wiki.localhost", "/.zerogate/login?rd=" + quote(rd, safe=""))
            )
            assert_lands_on_wiki(zg, chain)
            assert chain[-1].url.endswith(rd if rd.startswith("/") else "/absolute")


@pytest.mark.parametrize("how", ["navigation", "rd"])
async def test_a_very_long_url_still_logs_in(
    zg: Zerogate, outbox: ThreadedOutbox, how: str
) -> None:
    long_path = "/long/" + "a" * 3200
    async with HttpBrowser(source=new_source()) as browser:
        await login(browser, zg, outbox, "wiki.localhost", "longurl@example.com")
        del browser.jar["wiki.localhost"]  # only the portal session is left: the flow runs again
        url = (
            zg.url("wiki.localhost", long_path)
            if how == "navigation"
            else zg.url("wiki.localhost", "/.zerogate/login?rd=" + quote(long_path, safe=""))
        )
        chain = await browser.follow(url)
    assert_lands_on_wiki(zg, chain)  # the long path itself or the application's root


# ---------------------------------------------------------------------------- tampered flows


def tampered_flows(flow: str, secret: bytes) -> dict[str, str]:
    payload, _, mac = flow.partition(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    swapped = dict(data, a="docs")
    swapped_payload = (
        base64.urlsafe_b64encode(json.dumps(swapped, separators=(",", ":")).encode())
        .rstrip(b"=")
        .decode()
    )
    middle = len(payload) // 2
    flipped_payload = (
        payload[:middle] + ("A" if payload[middle] != "A" else "B") + payload[middle + 1 :]
    )
    flipped_mac = mac[:5] + ("A" if mac[5] != "A" else "B") + mac[6:]
    expired = sign_flow(
        secret,
        Flow(app=data["a"], rd=data["r"], state_hash=data["s"], expires=int(time.time()) - 1),
    )
    return {
        "payload byte flipped": f"{flipped_payload}.{mac}",
        "mac byte flipped": f"{payload}.{flipped_mac}",
        "app swapped": f"{swapped_payload}.{mac}",
        "expired": expired,
        "no mac": payload,
        "empty": "",
    }


async def test_a_tampered_flow_is_refused_and_issues_no_code(
    zg: Zerogate, staff: Session, outbox: ThreadedOutbox
) -> None:
    async with open_store(zg) as store:
        secret = await store.server_secret()
    async with HttpBrowser(source=new_source()) as fresh:
        page = await login_page(fresh, zg, "wiki.localhost")
        flows = tampered_flows(page.fields["flow"], secret)
        mark = outbox.mark()
        for name, flow in flows.items():
            url = f"http://{zg.portal}/.zerogate/login?" + urlencode({"flow": flow})
            shown = await fresh.get(url)
            assert shown.status == 400, (name, shown.status)
            assert 'name="email"' not in shown.text, name
            fields = {"flow": flow, "csrf": page.fields["csrf"]}
            asked = await request_pin(fresh, zg, fields, "ann@example.com")
            assert asked.status == 400, (name, asked.status)
            # with a portal session the login page would hand over a code at once: not here
            async with staff.browser() as signed_in:
                handed = await signed_in.get(url)
            assert handed.status == 400 and handed.location is None, (name, handed.status)
        # a valid request afterwards is delivered; mail arrives in order, so none came before it
        asked = await request_pin(fresh, zg, page.fields, "ann@example.com")
        assert asked.status == 200
        await outbox.wait_async("ann@example.com", after=mark)
        assert len(outbox.messages(after=mark)) == 1


# ---------------------------------------------------------------------------- paths


ADMIN_SPELLINGS = [
    "/admin",
    "/ADMIN",
    "/%61dmin",
    "/%41DMIN",
    "/x/../admin",
    "//admin",
    "/admin/",
    "/admin%2Fx",
    "/admin%2fx",
    "/admin%5Cx",
    "/./admin",
    "/%2e%2e/admin",
    "/x/%2e%2e/admin",
    "/x/.%2E/admin",
    "/adm%69n/x",
    "/admin%00",
    "/\\admin",
    "/admin\\x",
    "/admin?x=1",
    "/admin.",
    "/admin%20",
    "/admin./x",
    "/admin;x",
    "/x/..;/admin",
    "/admin;jsessionid=0/x",
]


async def test_controls_for_the_path_tests(zg: Zerogate, staff: Session) -> None:
    """Staff reach wiki; the admin reaches wiki/admin: the 403s below are the policy's."""
    cookie = staff.browser().cookie_header("wiki.localhost", "/")
    page = await raw(
        zg, http_request("GET", "/page", f"wiki.localhost:{zg.port}", [("Cookie", cookie)])
    )
    assert page.status == 200 and page.json()["email"] == "ann@example.com"


async def test_the_admin_reaches_the_admin_application(
    zg: Zerogate, outbox: ThreadedOutbox
) -> None:
    async with HttpBrowser(source=new_source()) as browser:
        reply = await login(
            browser, zg, outbox, "wiki.localhost", "root@example.com", path="/admin"
        )
        assert reply.status == 200 and reply.json()["path"] == "/admin"


@pytest.mark.parametrize("path", ADMIN_SPELLINGS)
async def test_a_staff_session_never_reaches_the_admin_path(
    zg: Zerogate, staff: Session, origin: VerifyingWsOrigin, path: str
) -> None:
    cookie = staff.browser().cookie_header("wiki.localhost", "/")
    assert app_cookie_name("wiki-admin") in cookie and app_cookie_name("wiki") in cookie
    mark = len(origin.seen)
    reply = await raw(
        zg, http_request("GET", path, f"wiki.localhost:{zg.port}", [("Cookie", cookie)])
    )
    assert reply.status in (400, 403), (path, reply.status, reply.body[:200])
    assert seen_since(origin, mark) == []


# ---------------------------------------------------------------------------- spoofed headers


SPOOFED = [
    ("Zerogate-Jwt-Assertion", "forged.jwt.value"),
    ("Zerogate-Authenticated-User-Email", "ceo@example.com"),
    ("zerogate-anything", "x"),
    ("ZEROGATE-Client-Secret", "leak"),
    ("X-Forwarded-For", "203.0.113.9"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.test"),
    ("X-Forwarded-Port", "443"),
    ("Forwarded", "for=203.0.113.9;host=evil.test;proto=https"),
    ("X-Real-IP", "203.0.113.9"),
]


async def test_client_sent_identity_and_forwarding_headers_never_reach_the_origin(
    zg: Zerogate, staff: Session, origin: VerifyingWsOrigin
) -> None:
    source = new_source()  # not a trusted proxy
    cookie = staff.browser().cookie_header("wiki.localhost", "/")
    mark = len(origin.seen)
    reply = await raw(
        zg,
        http_request(
            "GET", "/headers", f"wiki.localhost:{zg.port}", [("Cookie", cookie), *SPOOFED]
        ),
        source=source,
    )
    assert reply.status == 200
    [seen] = seen_since(origin, mark)
    names = [name for name, _ in seen["raw_headers"]]
    values = dict(seen["raw_headers"])
    # the real identity, once each, verified against the JWKS
    assert names.count("zerogate-jwt-assertion") == 1
    assert names.count("zerogate-authenticated-user-email") == 1
    assert values["zerogate-authenticated-user-email"] == "ann@example.com"
    assert seen["jwt_error"] is None and seen["claims"]["email"] == "ann@example.com"
    assert values["zerogate-jwt-assertion"] == staff.cookie(
        "wiki.localhost", app_cookie_name("wiki")
    )
    assert not [n for n in names if n.startswith("zerogate-") and n not in (
        "zerogate-jwt-assertion", "zerogate-authenticated-user-email"
    )]  # fmt: skip
    # the edge's own forwarding headers, once each; the client's are gone
    for name in ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"):
        assert names.count(name) == 1, name
    assert values["x-forwarded-for"] == source
    assert values["x-forwarded-proto"] == "http"
    assert values["x-forwarded-host"] == f"wiki.localhost:{zg.port}"
    assert "forwarded" not in names and "x-real-ip" not in names
    assert "x-forwarded-port" not in names
    assert "evil.test" not in json.dumps(seen["raw_headers"])
    assert "203.0.113.9" not in json.dumps(seen["raw_headers"])
    # zerogate's cookies stay at the edge
    assert "__zg_" not in values.get("cookie", "")


async def test_underscore_spellings_of_identity_headers_never_reach_the_origin(
    zg: Zerogate, staff: Session, origin: VerifyingWsOrigin
) -> None:
    cookie = staff.browser().cookie_header("wiki.localhost", "/")
    mark = len(origin.seen)
    reply = await raw(
        zg,
        http_request(
            "GET",
            "/underscores",
            f"wiki.localhost:{zg.port}",
            [
                ("Cookie", cookie),
                ("Zerogate_Authenticated_User_Email", "ceo@example.com"),
                ("Zerogate_Jwt_Assertion", "forged"),
            ],
        ),
    )
    assert reply.status == 200
    [seen] = seen_since(origin, mark)
    planted = [n for n, _ in seen["raw_headers"] if n.replace("_", "-").startswith("zerogate-")]
    assert sorted(planted) == ["zerogate-authenticated-user-email", "zerogate-jwt-assertion"]


async def test_a_spoofed_office_address_does_not_satisfy_an_ip_requirement(
    zg: Zerogate, outbox: ThreadedOutbox, origin: VerifyingWsOrigin
) -> None:
    office = {"X-Forwarded-For": "203.0.113.5"}
    spoofs = [
        office,
        {"Forwarded": "for=203.0.113.5"},
        {"X-Real-IP": "203.0.113.5"},
        {"X-Forwarded-For": "203.0.113.5, 203.0.113.6"},
    ]
    # control: through the trusted proxy the office address counts — login, then the bypass
    async with HttpBrowser(source=TRUSTED_PROXY, headers=office) as inside:
        reply = await login(inside, zg, outbox, "finance.localhost", "fin@example.com")
        assert reply.status == 200 and reply.json()["email"] == "fin@example.com"
        assert (await inside.get(zg.url("finance.localhost", "/health"))).status == 200
        session = inside.jar
    mark = len(origin.seen)
    for spoof in spoofs:
        # the same session from an untrusted peer that claims the office address: blocked
        async with HttpBrowser(source=new_source(), headers=spoof) as outside:
            outside.jar = copy.deepcopy(session)
            blocked = await outside.get(zg.url("finance.localhost", "/ledger"))
            assert blocked.status == 403, (spoof, blocked.status)
            # the office-only bypass does not open either (nobody may log in there: 403)
            probe = await outside.get(zg.url("finance.localhost", "/health"))
            assert probe.status == 403, (spoof, probe.status)
    assert seen_since(origin, mark) == []
    # and no PIN is sent to someone who could only pass from the office
    async with HttpBrowser(source=new_source(), headers=office) as outside:
        page = await login_page(outside, zg, "finance.localhost")
        mark_mail = outbox.mark()
        asked = await request_pin(outside, zg, page.fields, "fin2@example.com")
        assert asked.status == 200
        sentinel = await login_page(outside, zg, "wiki.localhost")
        await request_pin(outside, zg, sentinel.fields, "sentinel@example.com")
        await outbox.wait_async("sentinel@example.com", after=mark_mail)
        assert [m.to for m in outbox.messages(after=mark_mail)] == ["sentinel@example.com"]


# ---------------------------------------------------------------------------- JWT tampering


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def forged_tokens(
    real: str, portal_token: str, keyset: KeySet, issuer: str, jwks: dict[str, Any]
) -> dict[str, str]:
    header_b64, payload_b64, sig_b64 = real.split(".")
    header = json.loads(unb64url(header_b64))
    payload = json.loads(unb64url(payload_b64))
    kid = header["kid"]
    now = time.time()
    wiki = audience_tag("wiki")

    def mint(**changes: Any) -> str:
        args: dict[str, Any] = {
            "issuer": issuer,
            "audience": wiki,
            "email": "ann@example.com",
            "sub": "ann@example.com",
            "idp": "otp",
            "ttl_seconds": 3600,
            "now": now,
        }
        args.update(changes)
        return issue_app_token(keyset, **args)

    def unsigned(head: dict[str, Any], body: dict[str, Any], signature: bytes = b"") -> str:
        return ".".join(
            (
                b64url(json.dumps(head).encode()),
                b64url(json.dumps(body).encode()),
                b64url(signature),
            )
        )

    elevated = dict(payload, email="root@example.com", sub="root@example.com")
    middle = len(payload_b64) // 2
    flipped = payload_b64[:middle] + ("A" if payload_b64[middle] != "A" else "B")
    flipped += payload_b64[middle + 1 :]
    sig = unb64url(sig_b64)
    bad_sig = b64url(sig[:10] + bytes([sig[10] ^ 1]) + sig[11:])

    jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
    public_pem = jwt.PyJWK(jwk).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_head = {"alg": "HS256", "kid": kid, "typ": "JWT"}
    hs_input = f"{b64url(json.dumps(hs_head).encode())}.{b64url(json.dumps(elevated).encode())}"

    def hs256(secret: bytes) -> str:
        mac = hmac.new(secret, hs_input.encode(), hashlib.sha256).digest()
        return f"{hs_input}.{b64url(mac)}"

    foreign = ec.generate_private_key(ec.SECP256R1())
    foreign_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(foreign.public_key()))
    return {
        "payload edited": f"{header_b64}.{b64url(json.dumps(elevated).encode())}.{sig_b64}",
        "payload byte flipped": f"{header_b64}.{flipped}.{sig_b64}",
        "signature byte flipped": f"{header_b64}.{payload_b64}.{bad_sig}",
        "signature removed": f"{header_b64}.{payload_b64}.",
        "alg none": unsigned({"alg": "none", "kid": kid, "typ": "JWT"}, elevated),
        "alg none, no kid": unsigned({"alg": "none", "typ": "JWT"}, elevated),
        "alg None": unsigned({"alg": "None", "kid": kid}, elevated),
        "HS256 with the JWKS public key (PEM)": hs256(public_pem),
        "HS256 with the JWKS public key (JWK JSON)": hs256(json.dumps(jwk).encode()),
        "foreign key, server's kid": jwt.encode(
            elevated, foreign, algorithm="ES256", headers={"kid": kid}
        ),
        "foreign key embedded as jwk": jwt.encode(
            elevated, foreign, algorithm="ES256", headers={"kid": kid, "jwk": foreign_jwk}
        ),
        "expired": mint(now=now - 7200),
        "not valid yet": mint(now=now + 3600),
        "wrong issuer": mint(issuer="https://evil.test"),
        "another application's token (docs)": mint(audience=audience_tag("docs")),
        "the portal token": portal_token,
        "four segments": real + ".x",
        "empty": "",
        "garbage": "not-a-token",
        "huge": "a" * 20_000,
    }


async def test_forged_and_misused_session_tokens_are_refused(
    zg: Zerogate, staff: Session, origin: VerifyingWsOrigin
) -> None:
    keyset = await server_keyset(zg)
    issuer = f"https://{zg.portal}"
    async with HttpBrowser() as client:
        jwks = (await client.get(f"http://{zg.portal}/.zerogate/certs")).json()
        wiki_cookie = app_cookie_name("wiki")
        # control: a token minted like the edge mints them passes, so the refusals mean something
        good = issue_app_token(
            keyset,
            issuer=issuer,
            audience=audience_tag("wiki"),
            email="minted@example.com",
            sub="minted@example.com",
            idp="otp",
            ttl_seconds=600,
            now=time.time(),
        )
        client.set_cookie("wiki.localhost", wiki_cookie, good)
        control = await client.get(zg.url("wiki.localhost", "/minted"))
        assert control.status == 200 and control.json()["email"] == "minted@example.com"

        forged = forged_tokens(
            staff.cookie("wiki.localhost", wiki_cookie),
            staff.cookie("auth.localhost", "__zg_portal"),
            keyset,
            issuer,
            jwks,
        )
        mark = len(origin.seen)
        for name, token in forged.items():
            client.set_cookie("wiki.localhost", wiki_cookie, token)
            navigation = await client.get(zg.url("wiki.localhost", "/forged"))
            assert is_login_redirect(zg, navigation), (name, navigation.status)
            api = await client.get(
                zg.url("wiki.localhost", "/forged"), headers={"Accept": "application/json"}
            )
            assert api.status == 401 and "login_url" in api.json(), (name, api.status)
            identity = await client.get(zg.url("wiki.localhost", "/.zerogate/identity"))
            assert identity.status == 401, name
        assert seen_since(origin, mark) == []


async def test_an_app_cookie_replayed_on_another_app_is_refused(
    zg: Zerogate, staff: Session, origin: VerifyingWsOrigin
) -> None:
    """wiki's real cookie under docs' cookie name, on docs' host (and on wiki's admin path)."""
    token = staff.cookie("wiki.localhost", app_cookie_name("wiki"))
    mark = len(origin.seen)
    async with HttpBrowser() as client:
        client.set_cookie("docs.localhost", app_cookie_name("docs"), token)
        client.set_cookie("docs.localhost", app_cookie_name("wiki"), token)
        reply = await client.get(zg.url("docs.localhost", "/replayed"))
        assert is_login_redirect(zg, reply)
        client.set_cookie("finance.localhost", app_cookie_name("finance"), token)
        assert is_login_redirect(zg, await client.get(zg.url("finance.localhost", "/replayed")))
    assert seen_since(origin, mark) == []


# ---------------------------------------------------------------------------- malformed requests


def internal_names(zg: Zerogate, origin: VerifyingWsOrigin) -> list[str]:
    return [
        *APP_NAMES,
        "localhost",
        str(origin.port),
        "127.0.0.1",
        "Office",
        "ci-bot",
        "Traceback",
    ]


async def test_an_unknown_host_gets_a_404_that_names_nothing_inside(
    zg: Zerogate, origin: VerifyingWsOrigin, staff: Session
) -> None:
    cookie = staff.browser().cookie_header("wiki.localhost", "/")
    mark = len(origin.seen)
    for host, headers in [
        (f"unknown.localhost:{zg.port}", []),
        (f"unknown.localhost:{zg.port}", [("Accept", "application/json")]),
        (f"127.0.0.1:{zg.port}", [("Cookie", cookie)]),
        ("localhost", []),
        (f"wiki.localhost.evil.test:{zg.port}", [("Cookie", cookie)]),
        (f"evil-wiki.localhost:{zg.port}", []),
    ]:
        reply = await raw(zg, http_request("GET", "/x", host, headers))
        assert reply.status == 404, (host, reply.status)
        body = reply.body.decode("utf-8", "replace")
        for word in internal_names(zg, origin):
            assert word not in body, (host, word)
    assert seen_since(origin, mark) == []


def malformed_requests(zg: Zerogate, cookie: str) -> dict[str, bytes]:
    host = f"wiki.localhost:{zg.port}"
    name, value = cookie.split("=", 1)

    def req(
        *headers: str | bytes, target: str = "/m", host_line: str | None = f"Host: {host}"
    ) -> bytes:
        lines: list[str | bytes] = [f"GET {target} HTTP/1.1"]
        lines += [*([host_line] if host_line is not None else []), *headers]
        lines += ["Connection: close", "", ""]
        return b"\r\n".join(line if isinstance(line, bytes) else line.encode() for line in lines)

    return {
        "huge junk cookie": req(f"Cookie: {name}={'A' * 20000}"),
        "many cookies": req("Cookie: " + "; ".join(f"c{i}={i}" for i in range(2000))),
        "unicode cookie": req(f"Cookie: {name}=ü€😀"),
        "latin-1 bytes": req(f"Cookie: {name}=".encode() + b"\xe9\xff"),
        ";;;": req("Cookie: ;;;"),
        "= only": req("Cookie: ="),
        "quotes": req(f'Cookie: {name}="'),
        "quoted junk": req(f'Cookie: {name}="x.y.z"'),
        "whole header quoted": req(f'Cookie: "{cookie}"'),
        "junk first, then the real cookie": req(f"Cookie: {name}=junk; {cookie}"),
        "junk first, two headers": req(f"Cookie: {name}=junk", f"Cookie: {cookie}"),
        "name upper-cased": req(f"Cookie: {name.upper()}={value}"),
        "spaces in the name": req(f"Cookie: {name[:6]} {name[6:]}={value}"),
        "two Host headers": req("Host: evil.test", f"Cookie: {cookie}"),
        "two equal Host headers": req(f"Host: {host}", f"Cookie: {cookie}"),
        "empty Host": req(f"Cookie: {cookie}", host_line="Host: "),
        "no Host": req(f"Cookie: {cookie}", host_line=None),
        "Host with userinfo": req(f"Cookie: {cookie}", host_line="Host: wiki.localhost@evil"),
        "Host with a path": req(f"Cookie: {cookie}", host_line=f"Host: {host}/x"),
        "Host with a backslash": req(f"Cookie: {cookie}", host_line="Host: wiki.localhost\\x"),
        "Host list": req(f"Cookie: {cookie}", host_line=f"Host: {host}, evil.test"),
        "Host with a space": req(f"Cookie: {cookie}", host_line="Host: wiki.localhost evil"),
        "asterisk target": req(f"Cookie: {cookie}", target="*"),
    }


async def test_malformed_cookies_and_hosts_never_pass_and_never_crash(
    zg: Zerogate, staff: Session, origin: VerifyingWsOrigin
) -> None:
    cookie = f"{app_cookie_name('wiki')}={staff.cookie('wiki.localhost', app_cookie_name('wiki'))}"
    mark = len(origin.seen)
    for name, request in malformed_requests(zg, cookie).items():
        reply = await raw(zg, request)
        assert reply.status < 500, (name, reply.status, reply.body[:300])
        assert reply.status != 200, (name, reply.body[:300])
    assert seen_since(origin, mark) == []


async def test_a_host_header_with_a_bad_port_is_refused(zg: Zerogate, staff: Session) -> None:
    cookie = staff.browser().cookie_header("wiki.localhost", "/")
    for host in ("wiki.localhost:evil.test", "wiki.localhost:1?x", "wiki.localhost:1#x"):
        for headers in ([("Cookie", cookie)], []):
            reply = await raw(zg, http_request("GET", "/x", host, headers))
            assert reply.status == 400, (host, reply.status, reply.header("location"))


async def test_an_absolute_form_target_is_judged_by_the_host_the_origin_gets(
    zg: Zerogate, staff: Session, origin: VerifyingWsOrigin
) -> None:
    """granian drops the authority of an absolute-form target before the app sees it, so the
    edge routes by the Host header; what matters is that the origin then gets that very Host
    (no split view between the policy check and the origin), and never the other authority."""
    cookie = staff.browser().cookie_header("wiki.localhost", "/")
    host = f"wiki.localhost:{zg.port}"
    mark = len(origin.seen)
    reply = await raw(zg, http_request("GET", "http://evil.test/abs", host, [("Cookie", cookie)]))
    assert reply.status < 500
    for seen in seen_since(origin, mark):
        assert seen["headers"]["host"] == host and seen["headers"]["x-forwarded-host"] == host
        assert "evil.test" not in json.dumps(seen["raw_headers"])
        assert seen["path"] == "/abs"
    # the other way round: an application's authority in the target, an unknown Host
    mark = len(origin.seen)
    reply = await raw(
        zg, http_request("GET", f"http://{host}/abs", "evil.test", [("Cookie", cookie)])
    )
    assert reply.status == 404
    # and no session: never the origin
    reply = await raw(zg, http_request("GET", "http://evil.test/abs", host))
    assert is_login_redirect(zg, reply)
    assert seen_since(origin, mark) == []


# ---------------------------------------------------------------------------- PIN attacks


def wrong_pins(right: str, count: int) -> list[str]:
    return [p for p in (f"{n:06d}" for n in range(1000, 1000 + count + 1)) if p != right][:count]


async def test_five_wrong_pins_void_the_pin(zg: Zerogate, outbox: ThreadedOutbox) -> None:
    email = "guess@example.com"
    async with HttpBrowser(source=new_source()) as browser:
        page = await login_page(browser, zg, "wiki.localhost")
        mark = outbox.mark()
        asked = await request_pin(browser, zg, page.fields, email)
        pin = (await outbox.wait_async(email, after=mark)).pin
        assert pin is not None
        fields = hidden_inputs(asked.text)
        assert 'name="pin"' in asked.text and "autofocus>" in asked.text
        for n, guess in enumerate(wrong_pins(pin, 5), 1):
            reply = await submit_pin(browser, zg, fields, email, guess)
            assert reply.status == 401 and reply.location is None
            assert ("Too many wrong codes" in reply.text) == (n == 5), n
        # the last wrong code: no code field any more, a new code offered to the same address
        assert 'name="pin"' not in reply.text
        assert f"Send a new code to {email}" in reply.text
        right = await submit_pin(browser, zg, fields, email, pin)
        assert right.status == 401 and right.location is None
        assert "Too many wrong codes" in right.text
        assert app_cookie_name("wiki") not in browser.cookies("wiki.localhost")
        assert "__zg_portal" not in browser.cookies("auth.localhost")
        offered = hidden_inputs(reply.text)
        assert offered["email"] == email
        mark = outbox.mark()
        await request_pin(browser, zg, offered, email)
        fresh = (await outbox.wait_async(email, after=mark)).pin
        assert fresh is not None and fresh != pin


async def test_parallel_wrong_guesses_cannot_exceed_five_tries(
    zg: Zerogate, outbox: ThreadedOutbox
) -> None:
    email = "racer@example.com"
    async with HttpBrowser(source=new_source()) as browser:
        page = await login_page(browser, zg, "wiki.localhost")
        mark = outbox.mark()
        asked = await request_pin(browser, zg, page.fields, email)
        pin = (await outbox.wait_async(email, after=mark)).pin
        assert pin is not None
        fields = hidden_inputs(asked.text)
        replies = await asyncio.gather(
            *(submit_pin(browser, zg, fields, email, guess) for guess in wrong_pins(pin, 10))
        )
        assert [r.status for r in replies] == [401] * 10
        right = await submit_pin(browser, zg, fields, email, pin)
        assert right.status == 401 and right.location is None
        assert "Too many wrong codes" in right.text


async def test_a_pin_works_once_even_when_submitted_in_parallel(
    zg: Zerogate, outbox: ThreadedOutbox
) -> None:
    email = "twice@example.com"
    async with HttpBrowser(source=new_source()) as browser:
        page = await login_page(browser, zg, "wiki.localhost")
        mark = outbox.mark()
        asked = await request_pin(browser, zg, page.fields, email)
        pin = (await outbox.wait_async(email, after=mark)).pin
        assert pin is not None
        fields = hidden_inputs(asked.text)
        replies = await asyncio.gather(
            *(submit_pin(browser, zg, fields, email, pin) for _ in range(5))
        )
        winners = [r for r in replies if r.status == 302]
        assert len(winners) == 1, [r.status for r in replies]
        assert all(r.status == 401 and r.location is None for r in replies if r not in winners)
        again = await submit_pin(browser, zg, fields, email, pin)
        assert again.status == 401 and again.location is None
    # another browser with a fresh flow, the same used PIN
    async with HttpBrowser(source=new_source()) as other:
        page = await login_page(other, zg, "wiki.localhost")
        reply = await submit_pin(other, zg, page.fields, email, pin)
        assert reply.status == 401 and reply.location is None


async def test_a_pin_for_one_application_does_not_open_another(
    zg: Zerogate, outbox: ThreadedOutbox
) -> None:
    email = "cross@example.com"
    async with HttpBrowser(source=new_source()) as browser:
        wiki = await login_page(browser, zg, "wiki.localhost")
        mark = outbox.mark()
        asked = await request_pin(browser, zg, wiki.fields, email)
        pin = (await outbox.wait_async(email, after=mark)).pin
        assert pin is not None
        docs = await login_page(browser, zg, "docs.localhost")
        refused = await submit_pin(browser, zg, docs.fields, email, pin)
        assert refused.status == 401 and refused.location is None
        # control: the PIN is still good for the application it was sent for
        accepted = await submit_pin(browser, zg, hidden_inputs(asked.text), email, pin)
        assert accepted.status == 302 and accepted.location is not None
        assert accepted.location.startswith(f"http://wiki.localhost:{zg.port}/")


async def test_sending_pins_is_rate_limited_per_address(
    zg: Zerogate, outbox: ThreadedOutbox
) -> None:
    async with HttpBrowser(source=new_source()) as browser:
        page = await login_page(browser, zg, "wiki.localhost")
        mark = outbox.mark()
        for email in ("flood@example.com", "flood@evil.test"):  # allowed, and not allowed
            for _ in range(5):
                assert (await request_pin(browser, zg, page.fields, email)).status == 200
            limited = await request_pin(browser, zg, page.fields, email)
            assert limited.status == 429, email
            assert int(limited.headers["Retry-After"]) > 0
        # another address from the same client is not limited by them
        assert (await request_pin(browser, zg, page.fields, "calm@example.com")).status == 200
        # mail goes out after the page (same timing for every address), each in its own task:
        # wait until the five allowed ones and calm's arrived; the refused address started none
        await outbox.wait_async("calm@example.com", after=mark)
        deadline = time.monotonic() + 15
        while [m.to for m in outbox.messages(after=mark)].count("flood@example.com") < 5:
            assert time.monotonic() < deadline, "the five PIN emails did not all arrive"
            await asyncio.sleep(0.05)
        sent = [m.to for m in outbox.messages(after=mark)]
        assert sent.count("flood@example.com") == 5
        assert sent.count("flood@evil.test") == 0


async def test_subaddresses_share_their_mailbox_s_pin_limit(
    zg: Zerogate, outbox: ThreadedOutbox
) -> None:
    """bomb+1@…, bomb+2@… are all delivered to bomb's mailbox (and the staff policy allows
    each): they share one address limit, not five PINs per tag (a mail bomb past the limit)."""
    async with HttpBrowser(source=new_source()) as browser:
        page = await login_page(browser, zg, "wiki.localhost")
        mark = outbox.mark()
        for n in range(1, 6):
            sent = await request_pin(browser, zg, page.fields, f"bomb+{n}@example.com")
            assert sent.status == 200, n
        for email in ("bomb+6@example.com", "bomb@example.com", "Bomb+X@Example.com"):
            limited = await request_pin(browser, zg, page.fields, email)
            assert limited.status == 429, email
            assert int(limited.headers["Retry-After"]) > 0
        # control: another mailbox from the same client is not limited by them
        assert (await request_pin(browser, zg, page.fields, "bomber@example.com")).status == 200
        await outbox.wait_async("bomber@example.com", after=mark)
        deadline = time.monotonic() + 15
        while len([m for m in outbox.messages(after=mark) if m.to.startswith("bomb+")]) < 5:
            assert time.monotonic() < deadline, "the five PIN emails did not all arrive"
            await asyncio.sleep(0.05)
        sent_to = [m.to for m in outbox.messages(after=mark)]
        assert sorted(t for t in sent_to if t.startswith("bomb")) == [
            *(f"bomb+{n}@example.com" for n in range(1, 6)),
            "bomber@example.com",
        ]


def normalised_page(reply: Reply, email: str) -> tuple[int, list[tuple[str, str]], str]:
    headers = sorted(
        (k.lower(), v)
        for k, v in reply.headers.items()
        if k.lower() not in ("date", "content-length")
    )
    body = re.sub(r'name="csrf" value="[^"]*"', 'name="csrf" value="CSRF"', reply.text)
    return reply.status, headers, body.replace(email, "EMAIL")


async def test_the_pin_page_is_the_same_for_allowed_and_refused_addresses(
    zg: Zerogate, outbox: ThreadedOutbox
) -> None:
    async with HttpBrowser(source=new_source()) as browser:
        page = await login_page(browser, zg, "wiki.localhost")
        mark = outbox.mark()
        refused = await request_pin(browser, zg, page.fields, "mallory@evil.test")
        allowed = await request_pin(browser, zg, page.fields, "carl@example.com")
        assert normalised_page(refused, "mallory@evil.test") == normalised_page(
            allowed, "carl@example.com"
        )
        await outbox.wait_async("carl@example.com", after=mark)
        assert [m.to for m in outbox.messages(after=mark)] == ["carl@example.com"]


# ---------------------------------------------------------------------------- CSRF


async def test_portal_forms_need_the_csrf_token(zg: Zerogate, outbox: ThreadedOutbox) -> None:
    email = "csrf@example.com"
    async with HttpBrowser(source=new_source()) as browser:
        page = await login_page(browser, zg, "wiki.localhost")
        flow, csrf = page.fields["flow"], page.fields["csrf"]
        otp = f"http://{zg.portal}/.zerogate/login/otp"
        verify = f"http://{zg.portal}/.zerogate/login/otp/verify"
        mark = outbox.mark()
        attempts = [
            (otp, {"flow": flow, "email": email}),
            (otp, {"flow": flow, "email": email, "csrf": ""}),
            (otp, {"flow": flow, "email": email, "csrf": "x" * len(csrf)}),
            (otp, {"flow": flow, "email": email, "csrf": csrf + "x"}),
            (verify, {"flow": flow, "email": email, "pin": "123456"}),
            (verify, {"flow": flow, "email": email, "pin": "123456", "csrf": "wrong" * 5}),
        ]
        for url, fields in attempts:
            reply = await browser.post_form(url, fields)
            assert reply.status == 403, (url, fields, reply.status)
        # the token without its cookie (another browser: a cross-site form post)
        async with HttpBrowser(source=browser.source) as attacker:
            reply = await attacker.post_form(otp, {"flow": flow, "email": email, "csrf": csrf})
            assert reply.status == 403
        # the cookie without a form field matching it, but a cookie the attacker chose
        async with HttpBrowser(source=browser.source) as attacker:
            attacker.set_cookie("auth.localhost", "__zg_csrf", "a" * 32, "/.zerogate/")
            reply = await attacker.post_form(otp, {"flow": flow, "email": email, "csrf": csrf})
            assert reply.status == 403
        # a valid post is delivered; mail arrives in order, so nothing came before it
        assert (await request_pin(browser, zg, page.fields, email)).status == 200
        await outbox.wait_async(email, after=mark)
        assert [m.to for m in outbox.messages(after=mark)] == [email]


async def test_a_handover_code_only_works_in_the_browser_that_started_the_login(
    zg: Zerogate, staff: Session
) -> None:
    async def code_url(browser: HttpBrowser) -> str:
        start = await browser.get(zg.url("wiki.localhost", "/victim"))
        assert is_login_redirect(zg, start) and start.location is not None
        handed = await browser.get(start.location)  # the portal session signs in at once
        assert handed.status == 302 and handed.location is not None
        assert "/.zerogate/authorized?code=" in handed.location
        return handed.location

    async with staff.browser() as attacker:
        del attacker.jar["wiki.localhost"]
        first, second = await code_url(attacker), await code_url(attacker)
    # the victim's browser has no state cookie
    async with HttpBrowser(source=new_source()) as victim:
        reply = await victim.get(first)
        assert reply.status == 400
        assert not any(v.value for k, v in reply.set_cookies().items() if k != "__zg_state")
        assert app_cookie_name("wiki") not in victim.cookies("wiki.localhost")
        # a state cookie of its own login does not match the attacker's code either
        own = await victim.get(zg.url("wiki.localhost", "/mine"))
        assert "__zg_state" in victim.cookies("wiki.localhost")
        assert is_login_redirect(zg, own)
        reply = await victim.get(second)
        assert reply.status == 400
        assert app_cookie_name("wiki") not in victim.cookies("wiki.localhost")


async def test_a_handover_code_only_works_on_its_own_application(
    zg: Zerogate, staff: Session
) -> None:
    """A code minted for wiki, taken to docs' /.zerogate/authorized with docs' own state cookie."""
    async with staff.browser() as browser:
        del browser.jar["wiki.localhost"]
        start = await browser.get(zg.url("wiki.localhost", "/mine"))
        assert start.location is not None
        handed = await browser.get(start.location)
        assert handed.location is not None and "/.zerogate/authorized?code=" in handed.location
        code = handed.location.split("code=", 1)[1]
        docs = await browser.get(zg.url("docs.localhost", "/theirs"))  # docs' state cookie
        assert is_login_redirect(zg, docs)
        reply = await browser.get(zg.url("docs.localhost", f"/.zerogate/authorized?code={code}"))
        assert reply.status == 400
        assert app_cookie_name("docs") not in browser.cookies("docs.localhost")
        assert app_cookie_name("wiki") not in browser.cookies("docs.localhost")


async def test_session_cookies_are_host_only_and_out_of_scripts_reach(
    zg: Zerogate, staff: Session
) -> None:
    async with staff.browser() as browser:
        browser.jar.pop("docs.localhost", None)
        chain = await browser.follow(zg.url("docs.localhost", "/flags"))
        assert chain[-1].status == 200
    set_cookies = {name: morsel for reply in chain for name, morsel in reply.set_cookies().items()}
    session = set_cookies[app_cookie_name("docs")]
    assert session["httponly"] is True
    assert session["domain"] == ""  # host-only: never sent to a sibling host
    assert session["samesite"].lower() in ("lax", "strict")
    assert session["path"] == "/"
    state = set_cookies["__zg_state"]
    assert state["httponly"] is True and state["domain"] == ""


async def test_an_app_token_is_not_a_portal_session(zg: Zerogate, staff: Session) -> None:
    token = staff.cookie("wiki.localhost", app_cookie_name("wiki"))
    async with HttpBrowser(source=new_source()) as browser:
        browser.set_cookie("auth.localhost", "__zg_portal", token)
        identity = await browser.get(f"http://{zg.portal}/.zerogate/identity")
        assert identity.status == 401
        # the login page shows the form: no single sign-on from an app token
        page = await login_page(browser, zg, "docs.localhost")
        assert page.reply.status == 200


async def test_portal_pages_escape_what_they_reflect(zg: Zerogate) -> None:
    evil = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
    async with HttpBrowser(source=new_source()) as browser:
        page = await login_page(browser, zg, "wiki.localhost")
        confirm = await browser.get(
            f"http://{zg.portal}/.zerogate/login/otp/confirm?"
            + urlencode({"flow": page.fields["flow"], "email": evil, "pin": "12<b>34"})
        )
        invalid = await request_pin(browser, zg, page.fields, evil)
        assert invalid.status == 400  # not an email address: the form again, with an error
        for reply in (confirm, invalid, page.reply):
            assert "<script>" not in reply.text and "<img" not in reply.text
            assert reply.headers["X-Frame-Options"] == "DENY"
            assert "frame-ancestors 'none'" in reply.headers["Content-Security-Policy"]
            assert reply.headers["Cache-Control"] == "no-store"
        # not an address: no PIN was asked for it in this browser, so no form at all
        assert confirm.status == 403 and 'name="pin"' not in confirm.text


# ---------------------------------------------------------------------------- logout


async def test_logout_on_one_app_revokes_the_sessions_of_every_app(
    zg: Zerogate, outbox: ThreadedOutbox, origin: VerifyingWsOrigin
) -> None:
    email = "leaver@example.com"
    async with HttpBrowser(source=new_source()) as browser:
        assert (await login(browser, zg, outbox, "wiki.localhost", email)).status == 200
        docs = await browser.follow(zg.url("docs.localhost", "/sso"))
        assert docs[-1].status == 200 and docs[-1].json()["email"] == email
        before = copy.deepcopy(browser.jar)
        out = await log_out(browser, zg.url("wiki.localhost", "/.zerogate/logout"))
        assert out[-1].status == 200 and "signed out" in out[-1].text
    mark = len(origin.seen)
    async with HttpBrowser(source=new_source()) as stale:
        stale.jar = before
        for host in ("docs.localhost", "wiki.localhost"):
            assert is_login_redirect(zg, await stale.get(zg.url(host, "/stale"))), host
        identity = await stale.get(f"http://{zg.portal}/.zerogate/identity")
        assert identity.status == 401
        # the login page shows the form again (no single sign-on from the old portal session)
        start = await stale.get(zg.url("docs.localhost", "/stale"))
        assert start.location is not None
        assert (await stale.get(start.location)).status == 200
    assert seen_since(origin, mark) == []


async def still_signed_in(zg: Zerogate, browser: HttpBrowser) -> bool:
    reply = await browser.get(zg.url("wiki.localhost", "/still-here"))
    return reply.status == 200 and reply.json()["email"] == "ann@example.com"


async def test_a_cross_site_get_or_a_forged_post_does_not_log_out(
    zg: Zerogate, staff: Session
) -> None:
    """Attack (#10.9): an ``<img src=…/.zerogate/logout>`` on any site used to end every
    session of the address; now a GET only shows the button, and a POST needs the token of
    that page, which another site can neither read nor compute."""
    async with staff.browser() as browser:
        for url in (
            zg.url("wiki.localhost", "/.zerogate/logout"),
            f"http://{zg.portal}/.zerogate/logout",
        ):
            page = await browser.get(url)
            assert page.status == 200 and "Sign out of every application" in page.text
            assert "set-cookie" not in page.headers  # nothing cleared by a GET
        stranger = HttpBrowser(source=staff.source)
        async with stranger:
            other_token = hidden_inputs(
                (await stranger.get(zg.url("wiki.localhost", "/.zerogate/logout"))).text
            )["csrf"]
        for url in (
            zg.url("wiki.localhost", "/.zerogate/logout"),
            f"http://{zg.portal}/.zerogate/logout",
        ):
            for fields in ({}, {"csrf": ""}, {"csrf": "x" * 43}, {"csrf": other_token}):
                forged = await browser.post_form(
                    url, fields, headers={"Origin": "https://evil.test"}
                )
                assert forged.status == 403, (url, fields, forged.status)
        assert await still_signed_in(zg, browser)
        identity = await browser.get(f"http://{zg.portal}/.zerogate/identity")
        assert identity.status == 200


RESERVED_RETURNS = [
    "/.zerogate/logout",
    "/.ZEROGATE/logout",
    "/.zerogate/login?rd=/.zerogate/logout",
    "/x/../.zerogate/logout",
    "/%2Ezerogate/logout",
    "http://wiki.localhost:PORT/.zerogate/logout",
]


@pytest.mark.parametrize("rd", RESERVED_RETURNS)
async def test_a_return_url_is_never_a_reserved_path(zg: Zerogate, staff: Session, rd: str) -> None:
    """Attack (#10.9): ``rd=/.zerogate/logout`` sent the browser to the logout after login."""
    rd = rd.replace("PORT", str(zg.port))
    async with staff.browser() as browser:
        chain = await browser.follow(
            zg.url("wiki.localhost", "/.zerogate/login?rd=" + quote(rd, safe=""))
        )
        assert_lands_on_wiki(zg, chain)
        assert chain[-1].url == zg.url("wiki.localhost", "/"), chain[-1].url
        assert await still_signed_in(zg, browser)


async def test_return_urls_keep_the_public_port_not_the_host_headers(
    zg: Zerogate, staff: Session
) -> None:
    """Attack (#10.9): ``Host: wiki.localhost:1234`` made every URL the edge built point at
    port 1234 (another service on the same name) after the login."""
    nav = await raw(
        zg, http_request("GET", "/page?q=1", "wiki.localhost:1234", [("Accept", "text/html")])
    )
    assert nav.status == 302
    flow = parse_qs(urlsplit(nav.header("location") or "").query)["flow"][0]
    payload = flow.partition(".")[0]
    rd = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["r"]
    assert rd == zg.url("wiki.localhost", "/page?q=1"), rd
    api = await raw(
        zg, http_request("GET", "/api", "wiki.localhost:1234", [("Accept", "application/json")])
    )
    assert api.status == 401
    assert json.loads(api.body)["login_url"].startswith(
        zg.url("wiki.localhost", "/.zerogate/login")
    )
    async with staff.browser() as browser:
        start = await browser.get(
            f"http://wiki.localhost:{zg.port}/.zerogate/login?rd=/there",
            headers={"Host": "wiki.localhost:1234"},
        )
        assert start.status == 302 and start.location
        chain = [start, *await browser.follow(start.location)]
    for reply in chain:
        assert ":1234" not in (reply.location or ""), reply.location
    assert chain[-1].url == zg.url("wiki.localhost", "/there")


async def test_logging_in_again_right_after_logout_works(
    zg: Zerogate, outbox: ThreadedOutbox
) -> None:
    email = "comeback@example.com"
    async with HttpBrowser(source=new_source()) as browser:
        assert (await login(browser, zg, outbox, "wiki.localhost", email)).status == 200
        for _ in range(3):
            # log out early in a second, so that the next login can fall within that second
            wait_until(lambda: time.time() % 1 < 0.1, timeout=2, interval=0.005)
            logged_out_at = time.time()
            await log_out(browser, zg.url("wiki.localhost", "/.zerogate/logout"))
            reply = await login(browser, zg, outbox, "wiki.localhost", email, path="/back")
            assert reply.url == zg.url("wiki.localhost", "/back"), reply.url  # not the login page
            assert reply.status == 200 and reply.json()["email"] == email
            if int(reply.json()["claims"]["iat"]) == int(logged_out_at):
                return  # a session issued within the second of the logout works
        pytest.fail("could not log in again within the second of the logout (slow machine?)")


# ---------------------------------------------------------------------------- service tokens


@dataclass
class Credentials:
    client_id: str
    secret: str

    def headers(self, **extra: str) -> dict[str, str]:
        return {
            "Zerogate-Client-Id": self.client_id,
            "Zerogate-Client-Secret": self.secret,
            "Accept": "application/json",
            **extra,
        }


async def test_service_tokens(zg: Zerogate, origin: VerifyingWsOrigin) -> None:
    now = time.time()
    from datetime import UTC, datetime, timedelta

    at = datetime.fromtimestamp(now, UTC)
    creds = {
        "ci-bot": Credentials("ci-bot-id-0001", "s3cret-ci-" + "x" * 30),
        "old-bot": Credentials("old-bot-id-0001", "s3cret-old-" + "y" * 30),
        "other-bot": Credentials("other-bot-id-0001", "s3cret-other-" + "z" * 30),
    }
    async with open_store(zg) as store:
        for name, cred in creds.items():
            expires = at - timedelta(hours=1) if name == "old-bot" else at + timedelta(days=1)
            await store.put_service_credential(
                ServiceCredential(
                    name=name,
                    client_id=cred.client_id,
                    secret_hash=hash_secret(SecretKind.SERVICE_TOKEN, cred.secret),
                    created_at=at - timedelta(days=2),
                    expires_at=expires,
                )
            )
    api = zg.url("api.localhost", "/ci")
    ci = creds["ci-bot"]
    async with HttpBrowser(source=new_source()) as client:

        async def accepted() -> Reply:
            deadline = time.monotonic() + 5  # the server reloads credentials twice a second
            while True:
                reply = await client.get(api, headers=ci.headers())
                if reply.status == 200 or time.monotonic() > deadline:
                    return reply
                await asyncio.sleep(0.05)

        reply = await accepted()
        assert reply.status == 200, reply.status
        seen = origin.seen[-1]
        assert seen["jwt_error"] is None, seen["jwt_error"]
        assert seen["claims"]["sub"] == "service-token:ci-bot"
        assert seen["claims"]["aud"] == [audience_tag("api")]
        assert seen["claims"]["type"] == "app"
        assert "zerogate-client-secret" not in seen["headers"]
        assert "zerogate-client-id" not in seen["headers"]
        assert not seen["email"]

        mark = len(origin.seen)
        refused = {
            "wrong secret": (api, Credentials(ci.client_id, ci.secret + "x").headers()),
            "secret of another token": (
                api,
                Credentials(ci.client_id, creds["other-bot"].secret).headers(),
            ),
            "unknown id": (api, Credentials("nobody-id", ci.secret).headers()),
            "empty id and secret": (api, Credentials("", "").headers()),
            "expired credential": (api, creds["old-bot"].headers()),
            "token the policy does not name": (api, creds["other-bot"].headers()),
            "app without service_auth": (zg.url("wiki.localhost", "/ci"), ci.headers()),
            "path app without service_auth": (zg.url("finance.localhost", "/ci"), ci.headers()),
        }
        # a credential that proves nothing is refused as such: 401 JSON whatever the client
        # accepts (a machine is calling: never a login page); a valid token the application's
        # policies do not accept is "blocked" (403 either way)
        blocked = {
            "token the policy does not name",
            "app without service_auth",
            "path app without service_auth",
        }
        for name, (url, headers) in refused.items():
            status = (await client.get(url, headers=headers)).status
            assert status == (403 if name in blocked else 401), (name, status)
            # and as a browser navigation (no JSON asked for): the login page, never the origin
            nav = {k: v for k, v in headers.items() if k != "Accept"}
            reply = await client.get(url, headers=nav)
            assert reply.status == (403 if name in blocked else 401), (name, reply.status)
            if reply.status == 401:
                assert reply.json()["error"] == "invalid service token", reply.text[:200]
        # a repeated credential header is no credential (which one would count?)
        for repeated in (
            [("Zerogate-Client-Id", "nobody-id")],
            [("Zerogate-Client-Secret", "wrong")],
        ):
            twice = [*ci.headers().items(), *repeated]
            answer = await raw(zg, http_request("GET", "/ci", f"api.localhost:{zg.port}", twice))
            assert answer.status == 401, (repeated, answer.status)
        assert seen_since(origin, mark) == []

        # each refused credential is in the access log (not only the allowed ones)
        # (the access log is written behind the answer: wait for the writer, do not race it)
        async def refused_logged() -> list[Any]:
            async with open_store(zg) as store:
                events = await store.access_log(app="api", decision="block", limit=200)
            found = [e for e in events if e.detail and "service token refused" in e.detail]
            # five credentials that prove nothing, each asked twice
            return found if len(found) >= 10 else []

        logged = await wait_for(refused_logged, what="refused credentials in the access log")
        assert all(e.idp == "service_token" for e in logged)


# ---------------------------------------------------------------------------- mail oracles


@pytest.fixture(scope="module")
def silent_mail_zg(
    tmp_path_factory: pytest.TempPathFactory, origin: VerifyingWsOrigin
) -> Iterator[Zerogate]:
    """A second server whose SMTP server accepts connections and never answers (timeout 1 s)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        zerogate = Zerogate(
            tmp_path_factory.mktemp("zg-silent-mail"), free_port(), silent.getsockname()[1]
        )
        try:
            asyncio.run(apply_here(zerogate, config(origin.port)))
            text = zerogate.config.read_text()
            zerogate.config.write_text(text.replace("timeout: 5s", "timeout: 1s"))
            zerogate.start()
            wait_ready(zerogate)
            yield zerogate
        finally:
            zerogate.stop()


async def test_the_pin_page_does_not_tell_when_mail_fails(silent_mail_zg: Zerogate) -> None:
    zg = silent_mail_zg
    async with HttpBrowser(source=new_source()) as browser:
        page = await login_page(browser, zg, "wiki.localhost")
        refused = await request_pin(browser, zg, page.fields, "mallory@evil.test")
        allowed = await request_pin(browser, zg, page.fields, "dora@example.com")
        assert normalised_page(refused, "mallory@evil.test") == normalised_page(
            allowed, "dora@example.com"
        )


async def test_the_pin_page_takes_as_long_for_allowed_and_refused_addresses(
    silent_mail_zg: Zerogate,
) -> None:
    zg = silent_mail_zg
    async with HttpBrowser(source=new_source()) as browser:
        page = await login_page(browser, zg, "wiki.localhost")
        started = time.monotonic()
        await request_pin(browser, zg, page.fields, "mallory@evil.test")
        refused = time.monotonic() - started
        started = time.monotonic()
        await request_pin(browser, zg, page.fields, "erin@example.com")
        allowed = time.monotonic() - started
        assert abs(allowed - refused) < 0.5, (allowed, refused)


def test_harness_cookie_name_matches_the_edge(staff: Session) -> None:
    """The cookie names the tests forge are the ones the edge sets."""
    assert app_cookie_name("wiki") in staff.jar["wiki.localhost"]
