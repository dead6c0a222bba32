"""Attacks on the admin surface (``/admin``, ``/api/v1`` on the portal host): reaching it
through other hosts or path spellings, writing without the right, cross-site requests, open
redirects after sign-in, framing, script injection into the panel, secrets leaking into
responses and logs, fields the YAML does not have, the reserved name.

One real ``zerogate server`` (subprocess, SQLite) for the module; admin sessions are portal
session tokens signed with the server's own keys (what a PIN or OIDC login would set), so no
test waits for mail. Raw HTTP where the bytes of the path matter.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from aiohttp import ClientSession

from harness import free_port, wait_for
from zerogate.admin.auth import csrf_token
from zerogate.admin.panel_forms import csrf_token as panel_csrf
from zerogate.admin.service import Actor, AdminService
from zerogate.identity.tokens import issue_portal_token
from zerogate.runtime import PORTAL_AUDIENCE
from zerogate.runtime.admin_login import admin_return
from zg_harness import VerifyingOrigin, Zerogate, open_store, server_keyset

pytestmark = pytest.mark.e2e

ADMIN = "ops@example.test"
USER = "ann@example.test"


def config(origin_port: int) -> str:
    return f"""
admins: [{ADMIN}]
identity_providers: [{{name: otp, type: onetimepin}}]
applications:
  - name: wiki
    domain: wiki.localhost
    origin: http://127.0.0.1:{origin_port}
    policies:
      - {{name: staff, decision: allow, include: [{{email_domain: [example.test]}}]}}
  - name: open
    domain: open.localhost
    origin: http://127.0.0.1:{origin_port}
    policies:
      - {{name: local, decision: bypass, include: [{{ip: [127.0.0.0/8]}}]}}
tunnels:
  - {{name: office, routes: []}}
service_tokens:
  - {{name: robot}}
"""


@pytest.fixture(scope="module")
def origin() -> Iterator[VerifyingOrigin]:
    server = VerifyingOrigin("http://auth.localhost:1/.zerogate/certs", "https://x").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def zg(tmp_path_factory: pytest.TempPathFactory, origin: VerifyingOrigin) -> Iterator[Zerogate]:
    server = Zerogate(tmp_path_factory.mktemp("admin-attacks"), free_port(), free_port())
    server.apply(config(origin.port))
    server.start()
    server.extra["rw"] = asyncio.run(_api_token(server, "rw"))
    server.extra["ro"] = asyncio.run(_api_token(server, "ro", read_only=True))
    server.extra["admin"] = asyncio.run(_portal_token(server, ADMIN))
    server.extra["user"] = asyncio.run(_portal_token(server, USER))
    yield server
    server.stop()


async def _api_token(zg: Zerogate, name: str, *, read_only: bool = False) -> str:
    async with open_store(zg) as store:
        _, text = await AdminService(store).create_api_token(
            name, read_only=read_only, expires="1d", actor=Actor("test")
        )
    return text


async def _portal_token(zg: Zerogate, email: str) -> str:
    """The portal session a login sets (signed with the server's keys)."""
    for _ in range(100):  # the server makes its keys at its first start
        try:
            keyset = await server_keyset(zg)
            break
        except AssertionError:
            await asyncio.sleep(0.1)
    return issue_portal_token(
        keyset,
        issuer=f"https://{zg.portal}",
        audience=PORTAL_AUDIENCE,
        email=email,
        sub=email,
        idp="otp",
        ttl_seconds=600,
        now=time.time(),
    )


def jti_of(token: str) -> str:
    import base64

    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["jti"])


async def app_cookie(zg: Zerogate, app: str, email: str) -> str:
    """An application session cookie (what the hand-over after a login sets)."""
    from zerogate.identity import issue_app_token
    from zerogate.runtime import audience_tag

    token = issue_app_token(
        await server_keyset(zg),
        issuer=f"https://{zg.portal}",
        audience=audience_tag(app),
        email=email,
        sub=email,
        idp="otp",
        ttl_seconds=600,
        now=time.time(),
    )
    return f"__zg_{audience_tag(app)[:16]}={token}"


def cookie(zg: Zerogate, who: str = "admin") -> dict[str, str]:
    return {"Cookie": f"__zg_portal={zg.extra[who]}"}


def bearer(zg: Zerogate, which: str = "rw") -> dict[str, str]:
    return {"Authorization": f"Bearer {zg.extra[which]}", "Accept": "application/json"}


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


async def request(
    zg: Zerogate,
    method: str,
    path: str,
    *,
    host: str | None = None,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> Answer:
    """One request with the path sent byte-exact (no client normalisation)."""
    host = host or zg.portal
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    reader, writer = await asyncio.open_connection("127.0.0.1", zg.port)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        found[key] = found[key] + "\n" + value.strip() if key in found else value.strip()
    if "chunked" in found.get("transfer-encoding", ""):
        out = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2 :]
        rest = out
    return Answer(int(status_line.split(" ")[1]), found, rest)


# ---------------------------------------------------------------- reaching the front door


ADMIN_SPELLINGS = [
    "/api/v1/groups",
    "/api/v1/groups/",
    "/%61pi/v1/groups",
    "/api/v1;x/groups",
    "/api/v1/groups;x",
    "/api/v1./groups",
    "/api/v1%20/groups",
    "/api/%76%31/groups",
    "/admin",
    "/admin/",
    "/admin/groups",
    "/%61dmin/groups",
    "/admin;jsessionid=1/groups",
    "/admin./groups",
]
CASE_SPELLINGS = ["/API/v1/groups", "/Api/V1/groups", "/ADMIN/groups", "/Admin/"]
UNSAFE = [
    "/api/v1%2Fgroups",
    "/admin%2fgroups",
    "/api/v1/groups%00",
    "/admin\\groups",
    # dot and empty segments: origins read them differently, so the edge refuses them (400)
    "/api/v1/./groups",
    "/x/../api/v1/groups",
    "//api//v1//groups",
    "/admin/./groups",
    "/static/../admin/groups",
    "//admin/groups",
]


@pytest.mark.parametrize("path", ADMIN_SPELLINGS)
async def test_every_spelling_of_an_admin_path_meets_the_front_door(
    zg: Zerogate, path: str
) -> None:
    """Dot segments, encoded letters, ``;params``, trailing dots, doubled slashes: each lands
    on the front door, which wants credentials (never a page served without them)."""
    anonymous = await request(zg, "GET", path, headers={"Accept": "application/json"})
    assert anonymous.status == 401, (path, anonymous.status, anonymous.text[:200])
    assert anonymous.json()["error"] == "login required"
    non_admin = await request(
        zg, "GET", path, headers={**cookie(zg, "user"), "Accept": "application/json"}
    )
    assert non_admin.status == 403, (path, non_admin.status)


@pytest.mark.parametrize("path", CASE_SPELLINGS + UNSAFE)
async def test_other_cases_and_unsafe_paths_serve_nothing(zg: Zerogate, path: str) -> None:
    """Admin paths are case-sensitive: ``/ADMIN`` is not the panel, and nothing at all is served
    there (404); unsafe escapes are 400. With an admin's credentials the same."""
    for headers in ({}, bearer(zg), cookie(zg)):
        answer = await request(zg, "GET", path, headers={**headers, "Accept": "application/json"})
        assert answer.status in (400, 404), (path, answer.status, answer.text[:200])
        assert "Partners" not in answer.text and "robot" not in answer.text


@pytest.mark.parametrize(
    "path", ["/admin/", "/api/v1/groups", "/api/v1/session", "/admin/login?rd=/admin/"]
)
async def test_the_admin_is_not_reachable_through_an_application_host(
    zg: Zerogate, origin: VerifyingOrigin, path: str
) -> None:
    """``/admin`` and ``/api/v1`` belong to the portal host only: on an application's host they
    are the application's own paths (here: the origin answers), whatever credentials come."""
    for headers in (bearer(zg), cookie(zg), {}):
        answer = await request(zg, "GET", path, host=f"open.localhost:{zg.port}", headers=headers)
        assert answer.status == 200, (path, answer.status, answer.text[:200])
        assert answer.json()["path"] == path  # the origin's echo, not the admin
    # the portal host with a port that is not the portal's is still the portal host
    answer = await request(zg, "GET", "/api/v1/groups", host="AUTH.localhost.", headers=bearer(zg))
    assert answer.status == 200, answer.text[:200]
    if answer.status == 200:
        assert isinstance(answer.json(), list)


# ---------------------------------------------------------------- who may write


async def test_read_only_tokens_and_non_admins_cannot_write(zg: Zerogate) -> None:
    group = json.dumps({"name": "Sneaky", "include": [{"everyone": True}]}).encode()
    before = await request(zg, "GET", "/api/v1/admin-log?limit=1", headers=bearer(zg))
    for method, path in (
        ("POST", "/api/v1/groups"),
        ("PUT", "/api/v1/admins"),
        ("PATCH", "/api/v1/groups/x"),
        ("DELETE", "/api/v1/service-tokens/robot?version=1"),
        ("POST", "/api/v1/api-tokens"),
        ("POST", "/api/v1/tunnels/office/token"),
        ("POST", "/api/v1/service-tokens/robot/rotate"),
        ("POST", "/admin/groups/save"),
        ("POST", "/admin/tunnels/token"),
    ):
        ro = await request(
            zg,
            method,
            path,
            headers={**bearer(zg, "ro"), "Content-Type": "application/json"},
            body=group,
        )
        assert ro.status == 403, (method, path, ro.status, ro.text[:200])
        # a method override does not turn a read into a write either: the GET is answered
        # exactly as one without the header (and the admin log below shows no write)
        plain = await request(zg, "GET", path.split("?")[0], headers=bearer(zg, "ro"))
        override = await request(
            zg,
            "GET",
            path.split("?")[0],
            headers={**bearer(zg, "ro"), "X-HTTP-Method-Override": method},
        )
        assert (override.status, override.text) == (plain.status, plain.text), path
        user = await request(
            zg,
            method,
            path,
            headers={
                **cookie(zg, "user"),
                "Content-Type": "application/json",
                "X-Zerogate-CSRF": "x",
            },
            body=group,
        )
        assert user.status == 403, (method, path, user.status)
    listed = await request(zg, "GET", "/api/v1/groups", headers=bearer(zg))
    assert "Sneaky" not in listed.text
    after = await request(zg, "GET", "/api/v1/admin-log?limit=1", headers=bearer(zg))
    assert before.json() == after.json()  # nothing was written


async def test_tokens_that_are_not_quite_right_get_401(zg: Zerogate) -> None:
    good = zg.extra["rw"]
    prefix, token_id, secret = good.split("_", 2)
    variants = [
        good[:-1] + ("A" if good[-1] != "A" else "B"),  # one character off
        f"{prefix}_{token_id}_",  # no secret
        f"{prefix}_{token_id.upper()}_{secret}",  # id in another case
        f"{prefix}_{'0' * 16}_{secret}",  # another id, the same secret
        good + "x",
        good.replace("zga_", "ZGA_"),
        " " * 3,
        "x" * 5000,
    ]
    for text in variants:
        answer = await request(
            zg, "GET", "/api/v1/groups", headers={"Authorization": f"Bearer {text}"}
        )
        assert answer.status == 401, (text[:40], answer.status)
        assert answer.headers["content-type"].startswith("application/json")
    for header in (f"Basic {good}", f"Token {good}", "Bearer", f"bearer  {good}"):
        answer = await request(zg, "GET", "/api/v1/groups", headers={"Authorization": header})
        assert answer.status == (200 if header.startswith("bearer ") else 401), header
    # an expired token is refused even though its secret is right
    async with open_store(zg) as store:
        service = AdminService(store)
        _, text = await service.create_api_token(
            "short", read_only=False, expires="1s", actor=Actor("t")
        )

    async def refused() -> bool:
        answer = await request(
            zg, "GET", "/api/v1/groups", headers={"Authorization": f"Bearer {text}"}
        )
        return answer.status == 401

    await wait_for(refused, timeout=5, what="the expired API token refused", interval=0.2)


# ---------------------------------------------------------------- cross-site requests


async def test_cookie_writes_without_the_csrf_header_are_refused_whatever_the_content_type(
    zg: Zerogate,
) -> None:
    """A page on another site can make the browser POST with the cookie, as a form
    (urlencoded, multipart, text/plain) or ``fetch`` without custom headers: refused."""
    group = json.dumps({"name": "CSRF", "include": [{"everyone": True}]}).encode()
    other_session = csrf_token(b"not the server secret", jti_of(zg.extra["admin"]))
    for content_type in (
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ):
        for extra in ({}, {"X-Zerogate-CSRF": other_session}, {"Origin": f"http://{zg.portal}"}):
            answer = await request(
                zg,
                "POST",
                "/api/v1/groups",
                headers={**cookie(zg), "Content-Type": content_type, **extra},
                body=group,
            )
            assert answer.status == 403 and answer.json()["error"] == "csrf", content_type
    # the session's own token opens the door; another session's token does not
    session = await request(zg, "GET", "/api/v1/session", headers=cookie(zg))
    mine = session.json()["csrf_token"]
    other = await _portal_token(zg, ADMIN)
    answer = await request(
        zg,
        "POST",
        "/api/v1/groups",
        headers={
            "Cookie": f"__zg_portal={other}",
            "Content-Type": "application/json",
            "X-Zerogate-CSRF": mine,
        },
        body=group,
    )
    assert answer.status == 403
    listed = await request(zg, "GET", "/api/v1/groups", headers=bearer(zg))
    assert "CSRF" not in [g["name"] for g in listed.json()]


async def test_panel_forms_need_their_session_bound_token_and_gets_change_nothing(
    zg: Zerogate,
) -> None:
    form = "name=Forged&include_selector=everyone&include_values="
    jti = jti_of(zg.extra["admin"])
    for token in (
        "",
        "1.abc",
        panel_csrf(b"wrong secret", jti),
        panel_csrf(b"wrong secret", jti, now=time.time() - 10),
    ):
        answer = await request(
            zg,
            "POST",
            "/admin/groups/save",
            headers={**cookie(zg), "Content-Type": "application/x-www-form-urlencoded"},
            body=f"{form}&csrf={quote(token)}".encode(),
        )
        assert answer.status == 403, (token, answer.status)
    # a token the panel rendered for another session of the same admin is refused too
    other = await _portal_token(zg, ADMIN)
    page = await request(
        zg, "GET", "/admin/groups/edit", headers={"Cookie": f"__zg_portal={other}"}
    )
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None
    answer = await request(
        zg,
        "POST",
        "/admin/groups/save",
        headers={**cookie(zg), "Content-Type": "application/x-www-form-urlencoded"},
        body=f"{form}&csrf={quote(found.group(1))}".encode(),
    )
    assert answer.status == 403
    # GET on the write routes does nothing (405), e.g. rotating a connector token
    before = await request(zg, "GET", "/api/v1/admin-log?limit=1", headers=bearer(zg))
    for path in (
        "/admin/tunnels/token?name=office",
        "/admin/groups/delete?name=x",
        "/admin/service-tokens/rotate?name=robot",
        "/api/v1/tunnels/office/token",
        "/api/v1/service-tokens/robot/rotate",
    ):
        answer = await request(zg, "GET", path, headers=cookie(zg))
        assert answer.status == 405, (path, answer.status)
    after = await request(zg, "GET", "/api/v1/admin-log?limit=1", headers=bearer(zg))
    assert before.json() == after.json()
    groups = await request(zg, "GET", "/api/v1/groups", headers=bearer(zg))
    assert "Forged" not in groups.text


# ---------------------------------------------------------------- sign-in return, framing


FOREIGN = [
    "https://evil.test/admin/",
    "//evil.test/admin/",
    "/\\evil.test/admin",
    "\\\\evil.test",
    "/admin/../../evil",
    "/admin/%2e%2e/%2e%2e/evil",
    "/admin/..%2fevil",
    "/admin/..;/..;/evil",
    "/admin\t/x",
    "/admin/\r\nLocation: https://evil.test",
    "https:/evil.test/admin",
    "javascript:alert(1)//admin",
    "/admin/login?rd=https://evil.test",
    "/ADMIN/../evil",
    "/api/v1/../../.zerogate/logout",
    "/%2fevil.test/admin",
    "/admin/" + "a" * 3000,
]


@pytest.mark.parametrize("target", FOREIGN)
def test_admin_return_never_leaves_the_admin(target: str) -> None:
    back = admin_return(target)
    parts = urlsplit(back)
    assert not parts.scheme and not parts.netloc and not back.startswith("//"), back
    assert back == "/admin/" or back.startswith(("/admin/", "/api/v1/")), back
    assert "\\" not in back and "\r" not in back and "\n" not in back and ".." not in back


async def test_the_login_address_redirects_only_to_the_portal(zg: Zerogate) -> None:
    for target in FOREIGN[:8]:
        answer = await request(zg, "GET", "/admin/login?rd=" + quote(target, safe=""))
        assert answer.status in (302, 303), target
        location = answer.headers["location"]
        assert location.startswith(
            f"http://{zg.portal}/.zerogate/login?flow="
        ) or location.startswith(f"https://{zg.portal}/.zerogate/login?flow="), location
    # a signed-in admin is sent straight back: to a local admin path only
    answer = await request(
        zg, "GET", "/admin/login?rd=" + quote("//evil.test/x"), headers=cookie(zg)
    )
    flow = answer.headers["location"]
    back = await request(zg, "GET", flow.split(zg.portal, 1)[1], headers=cookie(zg))
    assert back.status == 302 and back.headers["location"] in (
        "/admin/",
        f"http://{zg.portal}/admin/",
    )


async def test_the_panel_cannot_be_framed(zg: Zerogate) -> None:
    for path in ("/admin/", "/admin/groups", "/admin/tunnels/edit?name=office", "/admin/nope"):
        answer = await request(zg, "GET", path, headers=cookie(zg))
        if answer.status == 404 and "text/html" not in answer.headers.get("content-type", ""):
            continue  # a plain-text 404 holds nothing to click
        assert answer.headers.get("x-frame-options") == "DENY", path
        assert "frame-ancestors 'none'" in answer.headers.get("content-security-policy", ""), path


# ---------------------------------------------------------------- script injection


async def test_what_attackers_write_into_logs_is_escaped_in_the_panel(zg: Zerogate) -> None:
    """The access log holds attacker-chosen text (the path, a PIN address, a blocked email);
    the admin log holds object names and values: the panel escapes all of it, and its CSP
    forbids inline script anyway."""
    evil = "<script>alert(1)</script>"
    # allowed and blocked requests are both logged, with the raw path
    for email in (USER, "eve@evil.test"):
        await request(
            zg,
            "GET",
            f"/x/{quote(evil)}/%3Cimg%20src=x%20onerror=alert(2)%3E",
            host=f"wiki.localhost:{zg.port}",
            headers={"Cookie": await app_cookie(zg, "wiki", email)},
        )

    async def logged() -> bool:  # the access log is written in batches
        answer = await request(
            zg, "GET", "/api/v1/access-log?app=wiki&limit=50", headers=bearer(zg)
        )
        return "<script>" in answer.text or "%3Cscript%3E" in answer.text

    await wait_for(logged, timeout=10, what="the evil request in the access log", interval=0.1)
    group: dict[str, Any] = {
        "name": "XSS \"' <b>",
        "include": [
            {"email": ["x@example.test"]},
            {"idp_group": [evil, '"><img src=x onerror=alert(4)>']},
        ],
    }
    made = await request(
        zg,
        "POST",
        "/api/v1/groups",
        headers={**bearer(zg), "Content-Type": "application/json"},
        body=json.dumps(group).encode(),
    )
    assert made.status == 201, made.text
    for path in (
        "/admin/access-log",
        "/admin/admin-log",
        "/admin/groups",
        "/admin/groups/edit?name=" + quote(str(group["name"])),
    ):
        page = await request(zg, "GET", path, headers=cookie(zg))
        assert page.status == 200, (path, page.status)
        html = page.text
        for needle in ("<script>alert", "<svg/onload", "<img src=x", "<b>"):
            assert needle not in html, (path, needle)
        assert "script-src 'self'" in page.headers["content-security-policy"]
    # the policy tester echoes its inputs and explanation escaped too: a request it answers
    # shows the evil email and IdP group in the form and the verdict...
    tester = await request(
        zg,
        "GET",
        "/admin/policy-test?run=1&app=wiki&email=ann@example.test&idp_groups=" + quote(evil),
        headers=cookie(zg),
    )
    assert tester.status == 200, tester.text[:300]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in tester.text
    assert "<script>alert" not in tester.text
    # ...and one it refuses (no address of the strict grammar) echoes the input escaped in
    # the error message
    for evil_email, shown in (
        ("<script>alert(6)</script>", "&lt;script&gt;alert(6)&lt;/script&gt;"),
        ('"><script>alert(5)</script>@example.test', "&lt;script&gt;alert(5)&lt;/script&gt;"),
    ):
        refused = await request(
            zg,
            "GET",
            "/admin/policy-test?run=1&app=wiki&email=" + quote(evil_email),
            headers=cookie(zg),
        )
        assert refused.status == 400, refused.text[:300]
        assert shown in refused.text
        assert "<script>alert" not in refused.text


# ---------------------------------------------------------------- secrets and fields


async def test_secrets_never_come_back_after_they_were_shown_once(zg: Zerogate) -> None:
    json_headers = {**bearer(zg), "Content-Type": "application/json"}
    tunnel = await request(zg, "POST", "/api/v1/tunnels/office/token", headers=json_headers)
    assert tunnel.status == 201, tunnel.text
    connector_token = tunnel.json()["token"]
    from zerogate.tunnel.token import decode

    tunnel_secret = decode(connector_token).secret
    service = await request(zg, "POST", "/api/v1/service-tokens/robot/rotate", headers=json_headers)
    assert service.status == 200, service.text
    client_secret = service.json()["client_secret"]
    api = await request(
        zg,
        "POST",
        "/api/v1/api-tokens",
        headers=json_headers,
        body=json.dumps({"name": "leaky", "read_only": True, "expires": "1h"}).encode(),
    )
    assert api.status == 201, api.text
    api_token = api.json()["token"]
    api_secret = api_token.split("_", 2)[2]
    secrets = [connector_token, tunnel_secret, client_secret, api_token, api_secret]
    places = [
        "/api/v1/admin-log?limit=200",
        "/api/v1/tunnels",
        "/api/v1/tunnels/office",
        "/api/v1/service-tokens",
        "/api/v1/service-tokens/robot",
        "/api/v1/api-tokens",
        "/api/v1/access-log?limit=200",
        "/api/v1/openapi.json",
    ]
    for path in places:
        answer = await request(zg, "GET", path, headers=bearer(zg))
        assert answer.status == 200, path
        for secret in secrets:
            assert secret not in answer.text, path
        assert "secret_hash" not in answer.text, path
    for path in (
        "/admin/admin-log",
        "/admin/tunnels",
        "/admin/service-tokens",
        "/admin/tunnels/edit?name=office",
    ):
        answer = await request(zg, "GET", path, headers=cookie(zg))
        for secret in secrets:
            assert secret not in answer.text, path
    exported = zg.cli("export", "-c", str(zg.config))
    assert exported.returncode == 0, exported.stderr
    listed = zg.cli("api-token", "list", "-c", str(zg.config), "--json")
    tunnels = zg.cli("tunnel", "list", "-c", str(zg.config), "--json")
    logs = zg.cli("logs", "-c", str(zg.config), "--json")
    for text in (exported.stdout, listed.stdout, tunnels.stdout, logs.stdout, zg.log_text()):
        for secret in secrets:
            assert secret not in text
    # the API token works (it was shown once), and is read-only as asked
    assert (
        await request(zg, "GET", "/api/v1/groups", headers={"Authorization": f"Bearer {api_token}"})
    ).status == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/groups", {"name": "G1", "include": [{"everyone": True}], "secret_hash": "x"}),
        ("/api/v1/groups", {"name": "G2", "include": [{"everyone": True}], "id": 7}),
        ("/api/v1/tunnels", {"name": "t1", "routes": [], "tunnel_id": "x" * 32}),
        ("/api/v1/tunnels", {"name": "t2", "routes": [], "token": "zgt1_x"}),
        ("/api/v1/service-tokens", {"name": "s1", "client_secret": "mine"}),
        ("/api/v1/api-tokens", {"name": "a1", "read_only": True, "secret_hash": "0" * 64}),
        ("/api/v1/api-tokens", {"name": "a2", "read_only": True, "token_id": "0" * 16}),
        ("/api/v1/api-tokens", {"name": "a3", "read_only": True, "created_by": "root"}),
        ("/api/v1/api-tokens", {"name": "a4", "expires_at": "2999-01-01T00:00:00Z"}),
        (
            "/api/v1/applications",
            {
                "name": "zerogate-admin",
                "domain": "za.localhost",
                "origin": "http://127.0.0.1:9",
                "policies": [],
            },
        ),
        (
            "/api/v1/applications",
            {
                "name": "ZeroGate-Admin",
                "domain": "zb.localhost",
                "origin": "http://127.0.0.1:9",
                "policies": [],
            },
        ),
        (
            "/api/v1/applications",
            {
                "name": "portal-grab",
                "domain": "wiki.localhost",
                "origin": "http://127.0.0.1:9",
                "policies": [],
            },
        ),
        ("/api/v1/admins", {"admins": [ADMIN], "extra": True}),
        ("/api/v1/policy-test", {"app": "wiki", "email": USER, "admin": True}),
    ],
)
async def test_fields_the_yaml_does_not_have_are_refused(
    zg: Zerogate, path: str, body: dict[str, Any]
) -> None:
    method = "PUT" if path.endswith("/admins") else "POST"
    headers = {**bearer(zg), "Content-Type": "application/json"}
    if method == "PUT":
        current = await request(zg, "GET", path, headers=bearer(zg))
        headers["If-Match"] = f'"{current.json()["version"]}"'
    answer = await request(zg, method, path, headers=headers, body=json.dumps(body).encode())
    assert answer.status == 422, (path, body, answer.status, answer.text[:300])
    listed = await request(zg, "GET", path, headers=bearer(zg))
    if isinstance(listed.json(), list):  # a collection: nothing of that name was made
        assert body["name"] not in [item["name"] for item in listed.json()]


async def test_the_reserved_name_cannot_be_taken_by_a_rename(zg: Zerogate) -> None:
    wiki = await request(zg, "GET", "/api/v1/applications/wiki", headers=bearer(zg))
    spec = wiki.json()
    spec["name"] = "zerogate-admin"
    answer = await request(
        zg,
        "PUT",
        "/api/v1/applications/wiki",
        headers={
            **bearer(zg),
            "Content-Type": "application/json",
            "If-Match": wiki.headers["etag"],
        },
        body=json.dumps(spec).encode(),
    )
    assert answer.status == 422, answer.text
    assert "reserved" in answer.text


async def test_forged_and_foreign_sessions_are_not_administrators(zg: Zerogate) -> None:
    """A portal session signed with another key, an app session presented as the portal
    cookie, ``alg: none``: all anonymous to the front door."""
    import base64

    admin = zg.extra["admin"]
    head, payload, _ = admin.split(".")
    none_head = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    for forged in (f"{none_head}.{payload}.", f"{head}.{payload}.AAAA", admin[:-4] + "AAAA"):
        answer = await request(
            zg,
            "GET",
            "/api/v1/session",
            headers={"Cookie": f"__zg_portal={forged}", "Accept": "application/json"},
        )
        assert answer.status == 401, forged[:30]
    # the same admin's application session (audience of wiki) is no portal session
    from zerogate.identity import issue_app_token
    from zerogate.runtime import audience_tag

    keyset = await server_keyset(zg)
    app_token = issue_app_token(
        keyset,
        issuer=f"https://{zg.portal}",
        audience=audience_tag("wiki"),
        email=ADMIN,
        sub=ADMIN,
        idp="otp",
        ttl_seconds=600,
        now=time.time(),
    )
    answer = await request(
        zg,
        "GET",
        "/api/v1/session",
        headers={"Cookie": f"__zg_portal={app_token}", "Accept": "application/json"},
    )
    assert answer.status == 401


async def test_ui_sessions_with_aiohttp_follow_the_same_rules(zg: Zerogate) -> None:
    """The same through an ordinary client (cookie jar, redirects not followed)."""
    async with (
        ClientSession() as http,
        http.get(
            f"http://127.0.0.1:{zg.port}/admin/",
            headers={"Host": zg.portal, "Accept": "text/html"},
            allow_redirects=False,
        ) as r,
    ):
        assert r.status == 302
        assert "/.zerogate/login?flow=" in r.headers["Location"]


@pytest.mark.parametrize("suffix", ["wiki.", "wiki%2E", "wiki%20", "wiki;x", "x/../wiki"])
async def test_a_path_normalisation_would_change_names_no_other_object(
    zg: Zerogate, suffix: str
) -> None:
    """``/api/v1/applications/wiki.`` must not read, change or delete ``wiki``: normalising
    (what the front door decides by) strips the dot, so such a path is refused outright."""
    for method in ("GET", "DELETE"):
        answer = await request(
            zg, method, f"/api/v1/applications/{suffix}?version=1", headers=bearer(zg)
        )
        assert answer.status == 400, (method, suffix, answer.status, answer.text[:200])
        detail = answer.json()["detail"]
        assert "canonical" in detail or "dot segment" in detail, detail
    still = await request(zg, "GET", "/api/v1/applications/wiki", headers=bearer(zg))
    assert still.status == 200 and still.json()["name"] == "wiki"


async def test_an_api_body_over_a_mebibyte_is_refused_unread(zg: Zerogate) -> None:
    big = b'{"name": "x", "include": [{"email": ["' + b"a" * (2 * 1024 * 1024) + b'"]}]}'
    headers = {**bearer(zg), "Content-Type": "application/json"}
    answer = await request(zg, "POST", "/api/v1/groups", headers=headers, body=big)
    assert answer.status == 413, (answer.status, answer.text[:200])
