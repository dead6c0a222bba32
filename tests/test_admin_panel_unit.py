"""The web admin panel's ASGI app driven directly (no server, no browser): a fake principal in
the scope stands in for the admin front door, a real SQLite store for the data. Covers the forms
(create, edit, delete, the rule builder), CSRF and read-only refusals, the 422 and 409 pages,
escaping, secrets shown once, the logs and the policy tester; and the pure helpers of
``panel_forms``."""

from __future__ import annotations

import asyncio
import base64
import html
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from zerogate.admin import panel_forms as forms
from zerogate.admin.panel import create_panel
from zerogate.admin.principal import SCOPE_KEY, Principal
from zerogate.admin.service import Actor, AdminService, split_api_token
from zerogate.identity.oidc import FetchError, HttpRequest, HttpResponse
from zerogate.identity.secret_hash import SecretKind, hash_secret, secret_matches
from zerogate.model.loader import Problem, validate_objects
from zerogate.model.objects import Settings
from zerogate.model.values import parse_since
from zerogate.store import AccessEvent, Store, storage_url
from zerogate.store.certificates import StoredCertificate
from zerogate.tunnel import token as tunnel_token

SECRET = b"k" * 32
ADMIN = Principal("admin@example.test", "192.0.2.10", False, "session", "session-1")
READER = Principal("reader@example.test", "192.0.2.11", True, "session", "session-2")

SEED: dict[str, Any] = {
    "admins": ["admin@example.test"],
    "identity_providers": [
        {"name": "otp", "type": "onetimepin"},
        {"name": "okta", "type": "oidc", "issuer": "https://idp.test", "client_id": "abc"},
    ],
    "groups": [
        {"name": "Partners", "include": [{"email": ["alice@partner.test"]}]},
        {"name": "Office", "include": [{"ip": ["203.0.113.0/24"]}]},
    ],
    "applications": [
        {
            "name": "wiki",
            "domain": "wiki.example.test",
            "origin": "http://127.0.0.1:9",
            "policies": [
                {
                    "name": "staff",
                    "decision": "allow",
                    "include": [{"email_domain": ["example.test"]}],
                }
            ],
        }
    ],
}


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    @property
    def location(self) -> str | None:
        return self.header("location")


@dataclass
class Client:
    """Calls the panel's ASGI app with ``principal`` in the scope; keeps the flash cookie."""

    app: Any
    principal: Principal | None
    cookies: dict[str, str] = field(default_factory=dict)

    async def request(
        self, method: str, target: str, body: bytes = b"", content_type: str = ""
    ) -> Reply:
        parts = urlsplit(target)
        headers = [(b"host", b"auth.example.test")]
        if content_type:
            headers.append((b"content-type", content_type.encode()))
            headers.append((b"content-length", str(len(body)).encode()))
        if self.cookies:
            cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            headers.append((b"cookie", cookie.encode()))
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "https",
            "path": parts.path,
            "raw_path": parts.path.encode(),
            "query_string": parts.query.encode(),
            "root_path": "",
            "headers": headers,
            "server": ("auth.example.test", 443),
            "client": ("192.0.2.10", 50000),
        }
        if self.principal is not None:
            scope[SCOPE_KEY] = self.principal
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop(0)
            # the client stays connected (a streamed answer, such as an export, is read whole)
            await asyncio.Event().wait()
            return {"type": "http.disconnect"}  # pragma: no cover

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        reply = Reply(
            start["status"],
            [(k.decode().lower(), v.decode()) for k, v in start["headers"]],
            b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"),
        )
        for name, value in reply.headers:
            if name == "set-cookie":
                jar: SimpleCookie = SimpleCookie()
                jar.load(value)
                for key, morsel in jar.items():
                    if morsel["max-age"] == "0" or not morsel.value or morsel.value == '""':
                        self.cookies.pop(key, None)
                    else:
                        self.cookies[key] = morsel.value
        return reply

    async def get(self, path: str, **query: str) -> Reply:
        return await self.request("GET", path + ("?" + urlencode(query) if query else ""))

    async def post(self, path: str, data: list[tuple[str, str]] | dict[str, str]) -> Reply:
        pairs = list(data.items()) if isinstance(data, dict) else data
        return await self.request(
            "POST", path, urlencode(pairs).encode(), "application/x-www-form-urlencoded"
        )

    async def csrf(self) -> str:
        page = await self.get("/admin/groups/edit")
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert found is not None
        return found.group(1)


async def fake_fetch(request: HttpRequest) -> HttpResponse:
    if request.url == "https://idp.test/.well-known/openid-configuration":
        doc = {
            "issuer": "https://idp.test",
            "authorization_endpoint": "https://idp.test/authorize",
            "token_endpoint": "https://idp.test/token",
            "jwks_uri": "https://idp.test/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }
        return HttpResponse(200, json.dumps(doc).encode())
    if request.url == "https://idp.test/jwks":
        return HttpResponse(200, b'{"keys": [{"kty": "RSA"}, {"kty": "EC"}]}')
    if request.url == "https://idp.test/token":  # the client is authenticated, then the code
        right = (
            request.headers.get("Authorization")
            == "Basic " + base64.b64encode(b"abc:right-secret").decode()
        )
        if not right:
            return HttpResponse(401, b'{"error": "invalid_client"}')
        return HttpResponse(400, b'{"error": "invalid_grant"}')
    raise FetchError(f"{request.url}: connection refused")


@pytest.fixture
async def store(tmp_path: Any) -> AsyncIterator[Store]:
    opened = await Store.open(storage_url("sqlite:///panel.db", base_dir=tmp_path))
    await opened.apply(validate_objects(SEED), actor="seed", source="test")
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def service(store: Store) -> AdminService:
    return AdminService(store)


@pytest.fixture
def app(service: AdminService) -> Any:
    settings = Settings.model_validate(
        {"portal": "auth.example.test", "listen": {"tunnel": "0.0.0.0:7844"}}
    )
    return create_panel(service, secret=SECRET, settings=settings, fetch=fake_fetch)


@pytest.fixture
def admin(app: Any) -> Client:
    return Client(app, ADMIN)


@pytest.fixture
def reader(app: Any) -> Client:
    return Client(app, READER)


def rule_fields(section: str, *rows: tuple[str, str]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for selector, values in rows:
        out += [(f"{section}_selector", selector), (f"{section}_values", values)]
    return out


# ---------------------------------------------------------------------------- pages


async def test_dashboard_shows_applications_tunnels_counts_and_recent_blocks(
    admin: Client, store: Store, service: AdminService
) -> None:
    await service.create("tunnels", {"name": "office", "routes": []}, Actor("t"))
    await store.write_access(
        [
            AccessEvent(
                at=datetime.now(UTC),
                kind="request",
                app="wiki",
                email="mallory@evil.test",
                idp="otp",
                ip="198.51.100.7",
                country=None,
                decision="block",
                policy=None,
                method="GET",
                host="wiki.example.test",
                path="/secret",
            )
        ]
    )
    page = await admin.get("/admin")
    assert page.status == 200
    assert "wiki.example.test" in page.text and "http://127.0.0.1:9" in page.text
    assert "mallory@evil.test" in page.text
    assert "office" in page.text and "no token" in page.text
    assert re.search(r"<strong>1</strong> application<", page.text)  # not "1 applications"
    assert re.search(r"<strong>2</strong> identity providers<", page.text)
    assert re.search(r"<strong>1</strong> tunnel<", page.text)
    assert page.header("content-security-policy") is not None
    assert page.header("cache-control") == "no-store"


async def test_dashboard_shows_the_certificates_and_their_last_error(
    admin: Client, store: Store
) -> None:
    """Automatic HTTPS on the dashboard: a stored certificate (issuer, until) and a hostname
    whose order failed (its error, escaped); no section without any."""
    page = await admin.get("/admin")
    assert 'id="certificates"' not in page.text
    now = datetime.now(UTC)
    await store.put_certificate(
        StoredCertificate(
            host="wiki.example.test",
            cert_pem="-",
            key_pem="-",
            not_before=now - timedelta(days=1),
            not_after=now + timedelta(days=89),
            issuer="Pebble Intermediate CA",
            updated_at=now,
        )
    )
    failed = AccessEvent(
        at=now,
        kind="tls",
        app=None,
        email=None,
        idp=None,
        ip=None,
        country=None,
        decision="failed",
        policy=None,
        host="new.example.test",
        detail="new.example.test: <b>connection refused</b>",
    )
    await store.write_access([failed])
    page = await admin.get("/admin")
    assert page.status == 200
    section = page.text.split('id="certificates"', 1)[1].split("</section>", 1)[0]
    assert "wiki.example.test" in section and "Pebble Intermediate CA" in section
    assert ">valid<" in section
    assert (now + timedelta(days=89)).strftime("%Y-%m-%d") in section
    assert "new.example.test" in section and ">missing<" in section
    assert "&lt;b&gt;connection refused&lt;/b&gt;" in section and "<b>" not in section


async def test_the_header_signs_a_browser_out_but_not_an_api_token(app: Any) -> None:
    """The panel's header links to the portal's sign-out for a signed-in person; an API
    token (no session to end) gets no such link."""
    page = await Client(app, ADMIN).get("/admin/groups")
    header = page.text.split("</header>", 1)[0]
    assert '<a class="signout" href="/.zerogate/logout">Sign out</a>' in header
    token = Principal("api-token:ci", "192.0.2.12", True, "token", "token-1")
    page = await Client(app, token).get("/admin/groups")
    assert page.status == 200 and "/.zerogate/logout" not in page.text


async def test_every_page_renders_for_an_admin(admin: Client) -> None:
    for path, query in [
        ("/admin/", {}),
        ("/admin/applications", {}),
        ("/admin/applications/edit", {}),
        ("/admin/applications/edit", {"name": "wiki"}),
        ("/admin/policies/edit", {"app": "wiki"}),
        ("/admin/policies/edit", {"app": "wiki", "name": "staff"}),
        ("/admin/groups", {}),
        ("/admin/groups/edit", {}),
        ("/admin/groups/edit", {"name": "Partners"}),
        ("/admin/identity-providers", {}),
        ("/admin/identity-providers/edit", {"type": "oidc"}),
        ("/admin/identity-providers/edit", {"name": "okta"}),
        ("/admin/tunnels", {}),
        ("/admin/tunnels/edit", {}),
        ("/admin/service-tokens", {}),
        ("/admin/admins", {}),
        ("/admin/api-tokens", {}),
        ("/admin/access-log", {}),
        ("/admin/admin-log", {}),
        ("/admin/policy-test", {}),
    ]:
        page = await admin.get(path, **query)
        assert page.status == 200, (path, query, page.text[:300])
        assert "<html" in page.text


async def test_static_files_and_unknown_objects(admin: Client) -> None:
    css = await admin.get("/admin/static/panel.css")
    assert css.status == 200
    assert (css.header("content-type") or "").startswith("text/css")
    js = await admin.get("/admin/static/panel.js")
    assert js.status == 200 and "addEventListener" in js.text
    assert (await admin.get("/admin/static/../panel.py")).status == 404
    missing = await admin.get("/admin/groups/edit", name="nope")
    assert missing.status == 404 and "nope" in missing.text


async def test_without_a_principal_the_panel_refuses_to_run(app: Any) -> None:
    with pytest.raises(RuntimeError, match="principal"):
        await Client(app, None).get("/admin")


# ---------------------------------------------------------------------------- groups and CSRF


async def test_create_a_group_through_the_form_redirects_with_a_flash(
    admin: Client, service: AdminService, store: Store
) -> None:
    csrf = await admin.csrf()
    reply = await admin.post(
        "/admin/groups/save",
        [
            ("csrf", csrf),
            ("name", "Contractors"),
            *rule_fields("include", ("email", "c1@vendor.test, c2@vendor.test"), ("", "")),
            *rule_fields("require", ("ip", "203.0.113.0/24")),
            *rule_fields("exclude", ("", "")),
        ],
    )
    assert reply.status == 303, reply.text
    assert reply.location == "/admin/groups"
    item = await service.get("groups", "Contractors")
    assert item.spec["include"] == [{"email": ["c1@vendor.test", "c2@vendor.test"]}]
    assert item.spec["require"] == [{"ip": ["203.0.113.0/24"]}]
    listing = await admin.get("/admin/groups")
    assert "Group Contractors saved." in listing.text
    again = await admin.get("/admin/groups")
    assert "Group Contractors saved." not in again.text  # a flash is shown once
    entry = (await store.admin_log(1))[0]
    assert (entry.actor, entry.source, entry.name) == (
        "admin@example.test",
        "192.0.2.10",
        "Contractors",
    )


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "garbage",
        "1700000000.0000",
        forms.csrf_token(SECRET, "someone-elses-session"),
        forms.csrf_token(b"another key" * 3, "session-1"),
        forms.csrf_token(SECRET, "session-1", now=datetime.now(UTC).timestamp() - 9 * 3600),
    ],
)
async def test_a_post_without_a_valid_csrf_token_is_refused(
    admin: Client, service: AdminService, token: str | None
) -> None:
    data = [("name", "Evil"), *rule_fields("include", ("everyone", ""))]
    if token is not None:
        data.append(("csrf", token))
    reply = await admin.post("/admin/groups/save", data)
    assert reply.status == 403
    assert "expired" in reply.text
    assert "Evil" not in await service_names(service, "groups")


async def service_names(service: AdminService, collection: str) -> list[str]:
    return [item.name for item in await service.items(collection)]


async def test_read_only_sees_pages_without_write_buttons_and_cannot_post(
    reader: Client, admin: Client, service: AdminService
) -> None:
    for path, query in [
        ("/admin", {}),
        ("/admin/applications", {}),
        ("/admin/applications/edit", {"name": "wiki"}),
        ("/admin/policies/edit", {"app": "wiki", "name": "staff"}),
        ("/admin/groups", {}),
        ("/admin/groups/edit", {"name": "Partners"}),
        ("/admin/identity-providers/edit", {"name": "okta"}),
        ("/admin/service-tokens", {}),
        ("/admin/tunnels", {}),
        ("/admin/admins", {}),
        ("/admin/api-tokens", {}),
    ]:
        page = await reader.get(path, **query)
        assert page.status == 200, path
        assert 'method="post"' not in page.text or "disabled" in page.text, path
        assert 'class="danger"' not in page.text, path
        assert "read-only" in page.text
    # even with a valid token of its own session, every write is refused
    csrf = await reader.csrf()
    for path in (
        "/admin/groups/save",
        "/admin/groups/delete",
        "/admin/service-tokens/save",
        "/admin/admins/save",
        "/admin/api-tokens/save",
        "/admin/api-tokens/revoke",
    ):
        reply = await reader.post(
            path, [("csrf", csrf), ("name", "Partners"), ("version", "1"), ("type", "x")]
        )
        assert reply.status == 403, path
        assert "read-only" in reply.text
    assert await service_names(service, "groups") == ["Partners", "Office"]
    assert (await service.admins())[0] == ["admin@example.test"]
    assert await service.api_tokens() == []


async def test_an_invalid_group_gets_422_with_the_problem_next_to_its_row(
    admin: Client, service: AdminService
) -> None:
    csrf = await admin.csrf()
    reply = await admin.post(
        "/admin/groups/save",
        [
            ("csrf", csrf),
            ("name", "Broken"),
            *rule_fields("include", ("email", "ok@example.test"), ("ip", "300.1.2.3/8")),
        ],
    )
    assert reply.status == 422
    text = html.unescape(reply.text)
    # the problem sits in the second include row, and the input is kept
    row = re.search(r'<div class="rule has-error">(.*?)</div>', reply.text, re.S)
    assert row is not None
    assert 'value="300.1.2.3/8"' in row.group(1)
    assert "is not an IP address or CIDR range" in html.unescape(row.group(1))
    assert 'value="ok@example.test"' in text
    assert 'value="Broken"' in text
    assert "Broken" not in await service_names(service, "groups")


async def test_a_group_without_include_names_the_problem(admin: Client) -> None:
    csrf = await admin.csrf()
    reply = await admin.post(
        "/admin/groups/save",
        [("csrf", csrf), ("name", "Empty"), *rule_fields("require", ("ip", "10.0.0.0/8"))],
    )
    assert reply.status == 422
    assert "at least one include" in reply.text


async def test_values_without_a_selector_are_a_problem_not_silently_dropped(
    admin: Client,
) -> None:
    csrf = await admin.csrf()
    reply = await admin.post(
        "/admin/groups/save",
        [
            ("csrf", csrf),
            ("name", "Half"),
            *rule_fields("include", ("everyone", ""), ("", "bob@example.test")),
        ],
    )
    assert reply.status == 422
    assert "choose a selector" in reply.text
    assert 'value="bob@example.test"' in reply.text


async def test_a_stale_edit_gets_409_and_keeps_the_input(
    admin: Client, service: AdminService
) -> None:
    group = await service.get("groups", "Partners")
    page = await admin.get("/admin/groups/edit", name="Partners")
    assert f'name="version" value="{group.version}"' in page.text
    # someone else changes the group meanwhile
    await service.update(
        "groups",
        "Partners",
        {"name": "Partners", "include": [{"email": ["bob@vendor.test"]}]},
        version=group.version,
        actor=Actor("other@example.test"),
    )
    csrf = await admin.csrf()
    reply = await admin.post(
        "/admin/groups/save",
        [
            ("csrf", csrf),
            ("original", "Partners"),
            ("version", str(group.version)),
            ("name", "Partners"),
            *rule_fields("include", ("email", "carol@partner.test")),
        ],
    )
    assert reply.status == 409
    assert "changed by someone else" in reply.text and "reload" in reply.text
    assert 'value="carol@partner.test"' in reply.text
    current = await service.get("groups", "Partners")
    assert current.spec["include"] == [{"email": ["bob@vendor.test"]}]


async def test_a_hostile_group_name_is_escaped_everywhere(
    admin: Client, service: AdminService
) -> None:
    hostile = '<script>alert("x")</script>'
    await service.create(
        "groups", {"name": hostile, "include": [{"everyone": True}]}, Actor("seed")
    )
    for path, query in [
        ("/admin/groups", {}),
        ("/admin/groups/edit", {"name": hostile}),
        ("/admin/admin-log", {}),
        ("/admin/policies/edit", {"app": "wiki"}),
    ]:
        page = await admin.get(path, **query)
        assert page.status == 200
        assert "<script>alert" not in page.text, path
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page.text, path
    # and the edit link carries it URL-encoded
    listing = await admin.get("/admin/groups")
    assert "name=%3Cscript%3Ealert%28%22x%22%29%3C/script%3E" in listing.text


async def test_add_a_rule_without_javascript_shows_one_more_row_and_writes_nothing(
    admin: Client, service: AdminService
) -> None:
    csrf = await admin.csrf()
    reply = await admin.post(
        "/admin/groups/save",
        [
            ("csrf", csrf),
            ("name", "Growing"),
            *rule_fields("include", ("email", "a@example.test")),
            ("add", "include"),
        ],
    )
    assert reply.status == 200
    section = reply.text.split('data-section="include"')[1].split("</fieldset>")[0]
    assert section.count('name="include_selector"') == 3  # the filled one and two blanks
    assert "Growing" not in await service_names(service, "groups")


async def test_delete_a_group_in_use_is_refused_with_the_reference_named(
    admin: Client, service: AdminService
) -> None:
    app = await service.get("applications", "wiki")
    await service.put_policy(
        "wiki",
        {"name": "partners", "decision": "allow", "include": [{"group": ["Partners"]}]},
        app_version=app.version,
        actor=Actor("seed"),
    )
    group = await service.get("groups", "Partners")
    csrf = await admin.csrf()
    reply = await admin.post(
        "/admin/groups/delete",
        {"csrf": csrf, "name": "Partners", "version": str(group.version)},
    )
    assert reply.status == 303
    page = await admin.get("/admin/groups")
    assert "Cannot delete group Partners" in page.text
    text = html.unescape(page.text)
    assert "group 'Partners' is in use: remove it from application 'wiki' › policy" in text
    assert "unknown group" not in text
    # the list says where each group is used
    row = text.split('edit?name=Partners"')[1].split("</tr>")[0]
    assert "application 'wiki' › policy 'partners'" in row
    office_row = text.split('edit?name=Office"')[1].split("</tr>")[0]
    assert "nothing" in office_row
    assert "Partners" in await service_names(service, "groups")
    office = await service.get("groups", "Office")
    reply = await admin.post(
        "/admin/groups/delete", {"csrf": csrf, "name": "Office", "version": str(office.version)}
    )
    assert reply.status == 303
    assert "Office" not in await service_names(service, "groups")


# ---------------------------------------------------------------------------- applications


async def test_create_edit_and_delete_an_application(admin: Client, service: AdminService) -> None:
    csrf = await admin.csrf()
    reply = await admin.post(
        "/admin/applications/save",
        [
            ("csrf", csrf),
            ("name", "docs"),
            ("domain", "docs.example.test/api"),
            ("target", "origin"),
            ("origin", "http://127.0.0.1:8081"),
            ("idp_mode", "some"),
            ("identity_providers", "otp"),
            ("session_duration", "8h"),
        ],
    )
    assert reply.status == 303, reply.text
    assert reply.location == "/admin/applications/edit?name=docs"
    item = await service.get("applications", "docs")
    assert item.spec["identity_providers"] == ["otp"]
    assert item.spec["session_duration"] == "8h"
    # edit: switch to all IdPs; policies are kept
    await service.put_policy(
        "docs",
        {"name": "all", "decision": "allow", "include": [{"everyone": True}]},
        app_version=item.version,
        actor=Actor("seed"),
    )
    item = await service.get("applications", "docs")
    reply = await admin.post(
        "/admin/applications/save",
        [
            ("csrf", csrf),
            ("original", "docs"),
            ("version", str(item.version)),
            ("name", "docs"),
            ("domain", "docs.example.test/api"),
            ("target", "origin"),
            ("origin", "http://127.0.0.1:8082"),
            ("idp_mode", "all"),
        ],
    )
    assert reply.status == 303
    item = await service.get("applications", "docs")
    assert item.spec["origin"] == "http://127.0.0.1:8082"
    assert "identity_providers" not in item.spec
    assert [p["name"] for p in item.spec["policies"]] == ["all"]
    reply = await admin.post(
        "/admin/applications/delete",
        {"csrf": csrf, "name": "docs", "version": str(item.version)},
    )
    assert reply.status == 303
    assert "docs" not in await service_names(service, "applications")


async def test_an_invalid_application_shows_the_problems_and_keeps_the_input(
    admin: Client,
) -> None:
    csrf = await admin.csrf()
    reply = await admin.post(
        "/admin/applications/save",
        [
            ("csrf", csrf),
            ("name", "bad"),
            ("domain", "https://bad.example.test"),
            ("target", "tunnel"),
            ("tunnel", ""),
        ],
    )
    assert reply.status == 422
    assert "without a scheme" in reply.text
    assert 'value="https://bad.example.test"' in reply.text


async def test_create_policy_with_group_and_ip_requirement_then_test_it(
    admin: Client, service: AdminService
) -> None:
    app = await service.get("applications", "wiki")
    page = await admin.get("/admin/policies/edit", app="wiki")
    for selector in forms.SELECTOR_LABELS:
        assert f'<option value="{selector}">' in page.text
    csrf = await admin.csrf()
    reply = await admin.post(
        "/admin/policies/save",
        [
            ("csrf", csrf),
            ("app", "wiki"),
            ("app_version", str(app.version)),
            ("name", "partners from the office"),
            ("decision", "allow"),
            ("position", "1"),
            *rule_fields("include", ("group", "Partners")),
            *rule_fields("require", ("ip", "203.0.113.0/24")),
            *rule_fields("exclude", ("email", "eve@partner.test")),
        ],
    )
    assert reply.status == 303, reply.text
    item = await service.get("applications", "wiki")
    policy = item.spec["policies"][0]
    assert policy == {
        "name": "partners from the office",
        "decision": "allow",
        "include": [{"group": ["Partners"]}],
        "require": [{"ip": ["203.0.113.0/24"]}],
        "exclude": [{"email": ["eve@partner.test"]}],
    }
    inside = await admin.get(
        "/admin/policy-test", run="1", app="wiki", email="alice@partner.test", ip="203.0.113.9"
    )
    assert "d-allow" in inside.text and "partners from the office" in inside.text
    outside = await admin.get(
        "/admin/policy-test", run="1", app="wiki", email="alice@partner.test", ip="198.51.100.7"
    )
    assert 'badge d-block">block' in outside.text
    assert "no policy matched" in outside.text
    by_url = await admin.get(
        "/admin/policy-test",
        run="1",
        url="https://wiki.example.test/x",
        email="ann@example.test",
    )
    assert "d-allow" in by_url.text and "staff" in by_url.text
    # unusable inputs: the page says which and why, as the API does
    bad = await admin.get(
        "/admin/policy-test", run="1", app="wiki", email="not an address", ip="300.1.1.1"
    )
    assert bad.status == 400
    assert "the test request is not valid" in bad.text
    assert "<code>email</code>" in bad.text and "<code>ip</code>" in bad.text


async def test_policy_errors_are_placed_on_their_rows(admin: Client, service: AdminService) -> None:
    app = await service.get("applications", "wiki")
    csrf = await admin.csrf()
    reply = await admin.post(
        "/admin/policies/save",
        [
            ("csrf", csrf),
            ("app", "wiki"),
            ("app_version", str(app.version)),
            ("name", "health"),
            ("decision", "bypass"),
            *rule_fields("include", ("", ""), ("email", "a@example.test")),
        ],
    )
    assert reply.status == 422
    assert "has-error" in reply.text
    assert "bypass" in html.unescape(reply.text)


async def test_a_stale_policy_edit_gets_409(admin: Client, service: AdminService) -> None:
    app = await service.get("applications", "wiki")
    await service.update(
        "applications",
        "wiki",
        {**app.spec, "session_duration": "1h"},
        version=app.version,
        actor=Actor("other"),
    )
    csrf = await admin.csrf()
    reply = await admin.post(
        "/admin/policies/save",
        [
            ("csrf", csrf),
            ("app", "wiki"),
            ("app_version", str(app.version)),
            ("original", "staff"),
            ("name", "staff"),
            ("decision", "allow"),
            *rule_fields("include", ("email_domain", "example.test, example.org")),
        ],
    )
    assert reply.status == 409
    assert "changed by someone else" in reply.text
    assert 'value="example.test, example.org"' in reply.text


async def test_move_and_delete_policies(admin: Client, service: AdminService) -> None:
    app = await service.get("applications", "wiki")
    await service.put_policy(
        "wiki",
        {"name": "second", "decision": "block", "include": [{"country": ["KP"]}]},
        app_version=app.version,
        actor=Actor("seed"),
    )
    app = await service.get("applications", "wiki")
    csrf = await admin.csrf()
    reply = await admin.post(
        "/admin/policies/move",
        {
            "csrf": csrf,
            "app": "wiki",
            "app_version": str(app.version),
            "name": "second",
            "direction": "up",
        },
    )
    assert reply.status == 303
    app = await service.get("applications", "wiki")
    assert [p["name"] for p in app.spec["policies"]] == ["second", "staff"]
    reply = await admin.post(
        "/admin/policies/delete",
        {"csrf": csrf, "app": "wiki", "app_version": str(app.version), "name": "second"},
    )
    assert reply.status == 303
    app = await service.get("applications", "wiki")
    assert [p["name"] for p in app.spec["policies"]] == ["staff"]


# ---------------------------------------------------------------------------- IdPs


async def test_identity_provider_create_and_test_connection(
    admin: Client, service: AdminService
) -> None:
    csrf = await admin.csrf()
    reply = await admin.post(
        "/admin/identity-providers/save",
        {
            "csrf": csrf,
            "name": "kc",
            "type": "oidc",
            "issuer": "https://down.test",
            "client_id": "zerogate",
            "client_secret_env": "ZEROGATE_SECRET_KC_PANEL_TEST",
            "scopes": "openid email profile groups",
        },
    )
    assert reply.status == 303, reply.text
    kc = await service.get("identity_providers", "kc")
    assert kc.spec["scopes"] == ["openid", "email", "profile", "groups"]
    page = await admin.get("/admin/identity-providers/edit", name="kc")
    assert "/.zerogate/oidc/kc/callback" in page.text
    failed = await admin.post("/admin/identity-providers/test", {"csrf": csrf, "name": "kc"})
    assert failed.status == 200
    assert "Connection test failed" in failed.text and "connection refused" in failed.text
    no_secret = await admin.post("/admin/identity-providers/test", {"csrf": csrf, "name": "okta"})
    assert "Connection test failed" in no_secret.text and "no client secret" in no_secret.text
    okta = await service.get("identity_providers", "okta")
    saved = await admin.post(
        "/admin/identity-providers/save",
        {
            "csrf": csrf,
            "original": "okta",
            "version": str(okta.version),
            "name": "okta",
            "type": "oidc",
            "issuer": "https://idp.test",
            "client_id": "abc",
            "client_secret": "wrong-secret",
        },
    )
    assert saved.status == 303, saved.text
    wrong = await admin.post("/admin/identity-providers/test", {"csrf": csrf, "name": "okta"})
    assert "refused the client id or secret" in wrong.text
    await service.set_oidc_secret("okta", "right-secret", Actor("test"))
    page = await admin.get("/admin/identity-providers/edit", name="okta")
    assert "a secret is stored now" in page.text and "right-secret" not in page.text
    works = await admin.post("/admin/identity-providers/test", {"csrf": csrf, "name": "okta"})
    assert "Connection works" in works.text
    assert "accepted the client id and secret" in works.text
    assert "https://idp.test/token" in works.text
    assert "signing keys (JWKS): 2" in works.text


async def test_identity_provider_problems(admin: Client) -> None:
    csrf = await admin.csrf()
    reply = await admin.post(
        "/admin/identity-providers/save",
        {"csrf": csrf, "name": "bad", "type": "oidc", "issuer": "http://idp.test"},
    )
    assert reply.status == 422
    assert "https" in reply.text and 'value="http://idp.test"' in reply.text


# ---------------------------------------------------------------------------- credentials


async def test_service_token_secret_is_shown_once_and_matches_the_stored_hash(
    admin: Client, store: Store, service: AdminService
) -> None:
    csrf = await admin.csrf()
    reply = await admin.post(
        "/admin/service-tokens/save", {"csrf": csrf, "name": "ci-bot", "duration": "30d"}
    )
    assert reply.status == 200
    assert reply.header("cache-control") == "no-store"
    secret = re.search(r'id="client-secret" value="([^"]+)"', reply.text)
    client_id = re.search(r'id="client-id" value="([^"]+)"', reply.text)
    assert secret and client_id
    (cred,) = await store.service_credentials()
    assert cred.client_id == client_id.group(1)
    assert cred.secret_hash == hash_secret(SecretKind.SERVICE_TOKEN, secret.group(1))
    assert timedelta(days=29) < cred.expires_at - datetime.now(UTC) <= timedelta(days=30)
    listing = await admin.get("/admin/service-tokens")
    assert client_id.group(1) in listing.text and secret.group(1) not in listing.text
    again = await admin.post("/admin/service-tokens/save", {"csrf": csrf, "name": "ci-bot"})
    assert again.status == 409 and "already exists" in again.text
    item = await service.get("service_tokens", "ci-bot")
    reply = await admin.post(
        "/admin/service-tokens/delete",
        {"csrf": csrf, "name": "ci-bot", "version": str(item.version)},
    )
    assert reply.status == 303
    assert await store.service_credentials() == []


async def test_tunnel_token_is_shown_once_with_the_command(
    admin: Client, store: Store, service: AdminService
) -> None:
    csrf = await admin.csrf()
    reply = await admin.post(
        "/admin/tunnels/save", {"csrf": csrf, "name": "office", "routes": "intranet.example.test"}
    )
    assert reply.status == 200, reply.text
    found = re.search(r'id="connector-token">([^<]+)<', reply.text)
    assert found is not None
    decoded = tunnel_token.decode(html.unescape(found.group(1)))
    assert decoded.edges == ("auth.example.test:7844",)
    assert decoded.fingerprint is not None and len(decoded.fingerprint) == 64
    (cred,) = await store.tunnel_credentials()
    assert cred.name == "office" and cred.tunnel_id == decoded.tunnel_id
    assert secret_matches(SecretKind.TUNNEL, decoded.secret, cred.secret_hash)
    assert "zgt1_" in reply.text
    assert "zerogate connector run --token-file /etc/zerogate/office.token" in reply.text
    assert (await service.get("tunnels", "office")).spec["routes"] == ["intranet.example.test"]
    # a new token replaces the secret, keeps the id, and pins the same certificate
    again = await admin.post("/admin/tunnels/token", {"csrf": csrf, "name": "office"})
    second = re.search(r'id="connector-token">([^<]+)<', again.text)
    assert second is not None
    renewed = tunnel_token.decode(html.unescape(second.group(1)))
    assert renewed.tunnel_id == decoded.tunnel_id and renewed.secret != decoded.secret
    assert renewed.fingerprint == decoded.fingerprint
    page = await admin.get("/admin/tunnels")
    assert "down" in page.text and renewed.secret not in page.text
    item = await service.get("tunnels", "office")
    await admin.post(
        "/admin/tunnels/delete", {"csrf": csrf, "name": "office", "version": str(item.version)}
    )
    assert await store.tunnel_credentials() == []


# ---------------------------------------------------------------------------- admins list


def hidden_fields(text: str) -> list[tuple[str, str]]:
    """The hidden inputs of a page, in order (what a browser posts again)."""
    return [
        (html.unescape(name), html.unescape(value))
        for name, value in re.findall(r'<input type="hidden" name="([^"]*)" value="([^"]*)">', text)
    ]


async def test_admins_page_shows_the_list_and_saves_it_with_its_version(
    admin: Client, service: AdminService, store: Store
) -> None:
    _, version = await service.admins()
    page = await admin.get("/admin/admins")
    assert page.status == 200
    assert 'href="/admin/admins" aria-current="page"' in page.text  # linked from the menu
    assert 'href="/admin/api-tokens"' in page.text
    assert f"Version {version}" in page.text
    assert f'name="version" value="{version}"' in page.text
    assert ">admin@example.test</textarea>" in page.text
    csrf = await admin.csrf()
    reply = await admin.post(
        "/admin/admins/save",
        {
            "csrf": csrf,
            "version": str(version),
            "admins": "admin@example.test\r\n\r\n  group:Partners \r\nbob@example.test",
        },
    )
    assert reply.status == 303, reply.text
    assert reply.location == "/admin/admins"
    saved, new_version = await service.admins()
    assert saved == ["admin@example.test", "group:Partners", "bob@example.test"]
    assert new_version > version
    listing = await admin.get("/admin/admins")
    assert "The admins list is saved." in listing.text
    assert 'href="/admin/groups/edit?name=Partners"' in listing.text
    entry = (await store.admin_log(1))[0]
    assert (entry.actor, entry.source, entry.kind) == (
        "admin@example.test",
        "192.0.2.10",
        "admins",
    )


async def test_admins_page_409_422_and_csrf(admin: Client, service: AdminService) -> None:
    _, version = await service.admins()
    await service.set_admins(
        ["admin@example.test", "carol@example.test"], version=version, actor=Actor("other")
    )
    csrf = await admin.csrf()
    stale = await admin.post(
        "/admin/admins/save",
        {"csrf": csrf, "version": str(version), "admins": "admin@example.test\ndan@example.test"},
    )
    assert stale.status == 409
    assert "changed by someone else" in stale.text
    assert "dan@example.test</textarea>" in stale.text  # the input is kept
    assert f'name="version" value="{version}"' in stale.text  # still the stale base
    admins, current = await service.admins()
    assert admins == ["admin@example.test", "carol@example.test"]
    bad = await admin.post(
        "/admin/admins/save",
        {"csrf": csrf, "version": str(current), "admins": "admin@example.test\ngroup:Nope"},
    )
    assert bad.status == 422
    text = html.unescape(bad.text)
    assert "unknown group 'Nope'" in text and "admins" in text
    assert "group:Nope</textarea>" in text
    for token in (None, "garbage", forms.csrf_token(SECRET, "someone-elses-session")):
        data = {"version": str(current), "admins": "mallory@evil.test"}
        if token is not None:
            data["csrf"] = token
        refused = await admin.post("/admin/admins/save", data)
        assert refused.status == 403 and "expired" in refused.text
    missing = await admin.post("/admin/admins/save", {"csrf": csrf, "admins": "x@example.test"})
    assert missing.status == 400
    assert await service.admins() == (admins, current)


async def test_admins_page_refuses_to_lock_me_out_unless_saved_anyway(
    admin: Client, service: AdminService
) -> None:
    _, version = await service.admins()
    csrf = await admin.csrf()
    reply = await admin.post(
        "/admin/admins/save",
        {"csrf": csrf, "version": str(version), "admins": "someone@example.test"},
    )
    assert reply.status == 422
    text = html.unescape(reply.text)
    assert "would lock you out" in text and "your own admin access" in text
    assert "admin@example.test in from 192.0.2.10" in text
    assert 'type="checkbox" name="force" value="1" required' in reply.text
    assert 'action="/admin/admins/save"' in reply.text
    assert await service.admins() == (["admin@example.test"], version)  # nothing written
    # the page posts the same fields again, with a fresh CSRF token and the box ticked
    fields = hidden_fields(reply.text)
    assert ("admins", "someone@example.test") in fields
    assert ("version", str(version)) in fields
    assert [name for name, _ in fields].count("csrf") == 1
    again = await admin.post("/admin/admins/save", fields)  # the box left unticked
    assert again.status == 422
    forced = await admin.post("/admin/admins/save", [*fields, ("force", "1")])
    assert forced.status == 303, forced.text
    assert (await service.admins())[0] == ["someone@example.test"]


async def test_editing_the_admins_group_cannot_lock_me_out_unless_saved_anyway(
    admin: Client, service: AdminService
) -> None:
    """The guard covers every write: an IP requirement on the group that makes me an admin."""
    await service.create(
        "groups", {"name": "Admins", "include": [{"email": ["admin@example.test"]}]}, Actor("t")
    )
    _, version = await service.admins()
    await service.set_admins(["group:Admins"], version=version, actor=Actor("t"))
    group = await service.get("groups", "Admins")
    csrf = await admin.csrf()
    edit = [
        ("csrf", csrf),
        ("original", "Admins"),
        ("version", str(group.version)),
        ("name", "Admins"),
        *rule_fields("include", ("email", "admin@example.test")),
        *rule_fields("require", ("ip", "10.0.0.0/8")),
    ]
    reply = await admin.post("/admin/groups/save", edit)
    assert reply.status == 422
    assert "your own admin access" in html.unescape(reply.text)
    assert 'action="/admin/groups/save"' in reply.text
    assert 'href="/admin/groups"' in reply.text  # "go back"
    assert await service.get("groups", "Admins") == group
    fields = hidden_fields(reply.text)
    assert ("require_values", "10.0.0.0/8") in fields
    forced = await admin.post("/admin/groups/save", [*fields, ("force", "1")])
    assert forced.status == 303, forced.text
    saved = await service.get("groups", "Admins")
    assert saved.spec["require"] == [{"ip": ["10.0.0.0/8"]}]
    # a requirement I meet (ADMIN comes from 192.0.2.10) needs no confirmation
    meets = [
        ("csrf", csrf),
        ("original", "Admins"),
        ("version", str(saved.version)),
        ("name", "Admins"),
        *rule_fields("include", ("email", "admin@example.test")),
        *rule_fields("require", ("ip", "192.0.2.0/24")),
    ]
    assert (await admin.post("/admin/groups/save", meets)).status == 303
    # deleting it is refused anyway: the admins list names it
    saved = await service.get("groups", "Admins")
    gone = await admin.post(
        "/admin/groups/delete", {"csrf": csrf, "name": "Admins", "version": str(saved.version)}
    )
    assert gone.status == 303
    listing = await admin.get("/admin/groups")
    assert "Cannot delete group Admins" in html.unescape(listing.text)
    assert "Admins" in await service_names(service, "groups")


# ---------------------------------------------------------------------------- API tokens


async def test_api_token_is_shown_once_and_verifies(
    admin: Client, service: AdminService, store: Store
) -> None:
    empty = await admin.get("/admin/api-tokens")
    assert "No API tokens yet." in empty.text
    csrf = await admin.csrf()
    reply = await admin.post(
        "/admin/api-tokens/save",
        {"csrf": csrf, "name": "deploy", "expires": "30d", "read_only": "1"},
    )
    assert reply.status == 200, reply.text
    assert reply.header("cache-control") == "no-store"
    found = re.search(r'id="api-token" value="([^"]+)"', reply.text)
    assert found is not None
    text = html.unescape(found.group(1))
    assert text.startswith("zga_") and split_api_token(text) is not None
    verified = await service.verify_api_token(text)
    assert verified is not None and verified.name == "deploy" and verified.read_only
    assert verified.created_by == "admin@example.test"
    assert verified.expires_at is not None
    assert timedelta(days=29) < verified.expires_at - datetime.now(UTC) <= timedelta(days=30)
    # the list shows who, scope, dates and last use, never the secret
    listing = await admin.get("/admin/api-tokens")
    assert listing.status == 200
    for shown in ("deploy", "read-only", "admin@example.test", "Revoke"):
        assert shown in listing.text
    assert text not in listing.text and text.split("_", 2)[2] not in listing.text
    # a taken name: 409, a bad expiry or name: 422, the input kept
    taken = await admin.post("/admin/api-tokens/save", {"csrf": csrf, "name": "deploy"})
    assert taken.status == 409 and "already exists" in taken.text
    bad = await admin.post(
        "/admin/api-tokens/save", {"csrf": csrf, "name": "ci", "expires": "soonish"}
    )
    assert bad.status == 422 and "expires" in bad.text
    assert 'value="soonish"' in bad.text and 'value="ci"' in bad.text
    # never expiring, read-write
    forever = await admin.post("/admin/api-tokens/save", {"csrf": csrf, "name": "ci"})
    assert forever.status == 200
    assert "Read-write" in forever.text and "never expires" in forever.text
    names = {t.name: t for t in await service.api_tokens()}
    assert set(names) == {"deploy", "ci"}
    assert not names["ci"].read_only and names["ci"].expires_at is None
    entry = (await store.admin_log(1))[0]
    assert (entry.action, entry.kind, entry.name) == ("add", "api_token", "ci")
    assert text not in str(entry.after)


async def test_api_token_revoke(admin: Client, service: AdminService) -> None:
    _, text = await service.create_api_token("old", read_only=False, expires=None, actor=Actor("t"))
    assert await service.verify_api_token(text) is not None
    csrf = await admin.csrf()
    reply = await admin.post("/admin/api-tokens/revoke", {"csrf": csrf, "name": "old"})
    assert reply.status == 303 and reply.location == "/admin/api-tokens"
    assert await service.verify_api_token(text) is None
    listing = await admin.get("/admin/api-tokens")
    assert "API token old is revoked." in listing.text
    missing = await admin.post("/admin/api-tokens/revoke", {"csrf": csrf, "name": "old"})
    assert missing.status == 404 and "old" in missing.text
    no_csrf = await admin.post("/admin/api-tokens/revoke", {"name": "x"})
    assert no_csrf.status == 403


# ---------------------------------------------------------------------------- logs


async def test_access_log_filters(admin: Client, store: Store) -> None:
    now = datetime.now(UTC)

    def event(email: str, decision: str, app: str, ago: timedelta) -> AccessEvent:
        return AccessEvent(
            at=now - ago,
            kind="request",
            app=app,
            email=email,
            idp="otp",
            ip="192.0.2.1",
            country=None,
            decision=decision,
            policy=None,
        )

    await store.write_access(
        [
            event("old@example.test", "allow", "wiki", timedelta(days=3)),
            event("ann@example.test", "allow", "wiki", timedelta(minutes=1)),
            event("bob@example.test", "block", "wiki", timedelta(minutes=2)),
            event("other@example.test", "allow", "docs", timedelta(minutes=3)),
        ]
    )
    page = await admin.get("/admin/access-log", app="wiki", since="1h")
    assert "ann@example.test" in page.text and "bob@example.test" in page.text
    assert "old@example.test" not in page.text and "other@example.test" not in page.text
    page = await admin.get("/admin/access-log", decision="block")
    assert "bob@example.test" in page.text and "ann@example.test" not in page.text
    page = await admin.get("/admin/access-log", email="ANN@example.test")
    assert "ann@example.test" in page.text and "bob@example.test" not in page.text
    bad = await admin.get("/admin/access-log", since="yesterday-ish")
    assert bad.status == 400 and "neither a duration" in bad.text


async def test_access_log_pages_export_and_says_what_filters_accept(
    admin: Client, store: Store
) -> None:
    now = datetime.now(UTC)
    await store.write_access(
        [
            AccessEvent(
                at=now - timedelta(seconds=i),
                kind="request",
                app="wiki",
                email=f"user{i}@example.test",
                idp="otp",
                ip="192.0.2.1",
                country=None,
                decision="allow",
                policy="staff",
                method="GET",
                host="wiki.example.test",
                path=f"/{i}",
                status=502 if i % 50 == 0 else 200,
                duration_ms=3.25,
            )
            for i in range(230)
        ]
    )
    first = await admin.get("/admin/access-log", app="wiki")
    assert first.status == 200 and "user0@example.test" in first.text
    assert "user199@example.test" in first.text and "user200@example.test" not in first.text
    assert "3.2 ms" in first.text and 'class="status-bad">502' in first.text
    older = re.search(r'href="(/admin/access-log\?[^"]*cursor=[^"]+)"', first.text)
    assert older is not None
    second = await admin.get(html.unescape(older.group(1)))
    assert "user229@example.test" in second.text and "user199@example.test" not in second.text
    assert "Older entries" not in second.text
    failed = await admin.get("/admin/access-log", status="5xx")
    assert failed.text.count('class="status-bad">502') == 5
    export = re.search(r'href="(/admin/access-log/export\?[^"]*format=csv[^"]*)"', failed.text)
    assert export is not None
    csv_reply = await admin.get(html.unescape(export.group(1)))
    assert csv_reply.status == 200 and (csv_reply.header("content-type") or "").startswith(
        "text/csv"
    )
    assert "attachment" in (csv_reply.header("content-disposition") or "")
    lines = csv_reply.text.strip().splitlines()
    assert lines[0].startswith("id,at,kind,decision,status") and len(lines) == 1 + 5
    assert ",/150," in csv_reply.text and ",/1," not in csv_reply.text
    bad = await admin.get("/admin/access-log", decision="allowed")
    assert bad.status == 400
    assert "decision: &#39;allowed&#39; is not one of allow, block" in bad.text


async def test_admin_log_shows_who_where_and_the_changed_fields(
    admin: Client, service: AdminService
) -> None:
    group = await service.get("groups", "Office")
    await service.update(
        "groups",
        "Office",
        {"name": "Office", "include": [{"ip": ["203.0.113.0/24", "198.51.100.0/24"]}]},
        version=group.version,
        actor=Actor("ops@example.test", "192.0.2.99"),
    )
    page = await admin.get("/admin/admin-log")
    text = html.unescape(page.text)
    assert "ops@example.test" in text and "192.0.2.99" in text
    assert "include[0].ip" in text
    assert "203.0.113.0/24, 198.51.100.0/24" in text


# ---------------------------------------------------------------------------- helpers


def test_csrf_tokens_are_bound_to_session_key_and_time() -> None:
    token = forms.csrf_token(SECRET, "s1", now=1_000_000)
    assert forms.csrf_valid(SECRET, "s1", token, now=1_000_100)
    assert not forms.csrf_valid(SECRET, "s2", token, now=1_000_100)
    assert not forms.csrf_valid(b"other", "s1", token, now=1_000_100)
    assert not forms.csrf_valid(SECRET, "s1", token, now=1_000_000 + forms.CSRF_MAX_AGE + 1)
    assert not forms.csrf_valid(SECRET, "s1", token, now=1_000_000 - 120)
    stamp, _, mac = token.partition(".")
    assert not forms.csrf_valid(SECRET, "s1", f"{int(stamp) + 1}.{mac}", now=1_000_100)


def test_flash_cookies_are_signed() -> None:
    value = forms.sign_flash(SECRET, "ok", "Saved <b>")
    assert forms.open_flash(SECRET, value) == ("ok", "Saved <b>")
    body, _, mac = value.partition(".")
    assert forms.open_flash(SECRET, body + "." + "0" * len(mac)) is None
    assert forms.open_flash(b"other", value) is None


def test_rules_round_trip_between_spec_and_form() -> None:
    spec = {
        "include": [{"everyone": True}, {"ip": ["10.0.0.0/8", "2001:db8::/48"]}],
        "require": [{"group": ["Office Networks"]}],
        "exclude": [{"any_service_token": True}],
    }
    form = forms.rules_from_spec(spec)
    fields: dict[str, list[str]] = {}
    for section in forms.SECTIONS:
        fields[f"{section}_selector"] = [r.selector for r in form.rows[section]] + [""]
        fields[f"{section}_values"] = [r.values for r in form.rows[section]] + [""]
    parsed, _ = forms.rules_from_form(fields)
    assert parsed == spec


def test_attach_problems_maps_spec_indexes_to_rows() -> None:
    _, form = forms.rules_from_form(
        {"include_selector": ["", "email", "ip"], "include_values": ["", "a@b.test", "nope"]}
    )
    rest = forms.attach_problems(
        form,
        [
            Problem("group 'G' › include[1].ip[0]", "'nope' is not an IP address"),
            Problem("group 'G'", "something else"),
        ],
    )
    assert [p.message for p in rest] == ["something else"]
    assert form.rows["include"][1].errors == ["ip[0]: 'nope' is not an IP address"]


def test_spec_diff_names_changed_fields() -> None:
    before = {"name": "wiki", "origin": "http://a", "policies": [{"name": "p", "include": []}]}
    after = {"name": "wiki", "tunnel": "office", "policies": [{"name": "q", "include": []}]}
    lines = {(d.field, d.before, d.after) for d in forms.spec_diff(before, after)}
    assert lines == {
        ("origin", "http://a", None),
        ("tunnel", None, "office"),
        ("policies[0].name", "p", "q"),
    }
    assert [d.field for d in forms.spec_diff(None, {"name": "x"})] == ["name"]


def test_parse_since() -> None:
    now = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
    assert parse_since("2h", now) == datetime(2025, 1, 31, 10, 0, tzinfo=UTC)
    assert parse_since("2025-01-30T08:00", now) == datetime(2025, 1, 30, 8, 0, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_since("soon", now)


async def test_the_nodes_page_lists_each_node_and_what_it_holds(
    admin: Client, reader: Client, store: Store
) -> None:
    """Issue 14: the cluster's nodes, as ``zerogate nodes list`` shows them; text from the
    store (a host name) is escaped."""
    from zerogate.store import ClusterNode, Presence

    empty = await admin.get("/admin/nodes")
    assert empty.status == 200 and "No nodes" in empty.text
    now = datetime.now(UTC)
    node = ClusterNode("3f1c2a9be0d47a55", "<b>edge-a</b>", 4121, "10.0.0.11:7845", now, now)
    rows = [Presence(node.node_id, f"c{i}", "lab", "zgc-1", i, now, now) for i in range(2)]
    await store.cluster_heartbeat(node, rows)
    for client in (admin, reader):
        page = await client.get("/admin/nodes")
        assert page.status == 200
        assert "3f1c2a9be0d47a55" in page.text and "10.0.0.11:7845" in page.text
        assert "lab (2)" in page.text and ">live<" in page.text
        assert "<b>edge-a</b>" not in page.text and "&lt;b&gt;edge-a&lt;/b&gt;" in page.text
        assert 'href="/admin/nodes" aria-current="page"' in page.text
