"""OIDC login against a REAL OpenID provider, in a real browser.

The provider is npm ``oidc-provider`` (OpenID-certified; ``tests/oidc_provider/server.js``), run
by Node as a subprocess with two issuers: ``corp`` (client_secret_basic; its id_tokens carry only
``sub``/``amr``/``nonce``, so email and groups come from its userinfo endpoint) and ``corp2``
(client_secret_post; claims inside the id_token). zerogate runs as ``zerogate server`` with a
real SMTP outbox and an origin that verifies the JWT it receives. Playwright drives Debian's
chromium through the provider's own login form.

Covered here, with what a real provider produces: full login through its form, the groups claim
driving an ``idp_group`` policy (allowed and blocked), ``amr`` driving ``auth_method``, the same
user allowed via OIDC and blocked where only the PIN is accepted (``login_method``, and an app
whose only method is the PIN), auto-redirect when the provider is an app's only method, the last
method remembered, and the failures: cancel (``access_denied``), unverified email, a replayed
callback URL, a replayed code under a fresh state, a tampered state, a callback opened in another
browser, a discovery document whose issuer is not the configured one, and a provider that is
down. The cases no real provider produces (alg none, a foreign key, wrong aud/iss, an expired
id_token) are in ``test_oidc_fake_provider.py``.

Under CI (``CI`` set) a missing ``node`` or ``tests/oidc_provider/node_modules`` fails the run.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPConnection
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit, urlunsplit
from urllib.request import urlopen

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from harness import assert_screenshot_shows, free_port, wait_until
from zerogate.store import AccessEvent
from zg_harness import ThreadedOutbox, VerifyingOrigin, Zerogate, open_store

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
PROVIDER_DIR = Path(__file__).resolve().parent / "oidc_provider"
SECRET_BASIC = "basic-secret-0123456789-abcdefghijklmnop"
SECRET_POST = "post-secret-0123456789-abcdefghijklmnop"

ACCOUNTS: dict[str, dict[str, Any]] = {
    "ann": {
        "password": "ann-pw",
        "email": "Ann@Corp.test",
        "email_verified": True,
        "groups": ["staff", "engineering"],
        "amr": ["pwd", "mfa"],
    },
    "bob": {
        "password": "bob-pw",
        "email": "bob@corp.test",
        "email_verified": True,
        "groups": ["contractors"],
        "amr": ["pwd"],
    },
    "eve": {
        "password": "eve-pw",
        "email": "eve@corp.test",
        "email_verified": False,
        "groups": ["staff"],
    },
}


def require_node() -> str:
    """The node binary; with the provider's package installed (``npm ci`` in .ci/run)."""
    node = shutil.which("node")
    missing = None
    if node is None:
        missing = "node is not on PATH"
    elif not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        missing = "run: npm ci --prefix tests/oidc_provider"
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"OIDC interop tests need the real provider: {missing}")
        pytest.skip(missing)
    assert node is not None
    return node


@dataclass
class RealProvider:
    """``node server.js``: one process, one issuer per port."""

    proc: subprocess.Popen[bytes]
    ports: dict[str, int]
    log: Path

    def issuer(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_provider(workdir: Path, zg_port: int) -> RealProvider:
    node = require_node()
    ports = {"corp": free_port(), "corp2": free_port()}
    portal = f"http://auth.localhost:{zg_port}"
    config = {
        "providers": [
            {"port": ports["corp"]},
            {"port": ports["corp2"], "conformIdTokenClaims": False},
        ],
        "clients": [
            {
                "client_id": "zerogate-basic",
                "client_secret": SECRET_BASIC,
                "redirect_uris": [f"{portal}/.zerogate/oidc/corp/callback"],
                "token_endpoint_auth_method": "client_secret_basic",
                "grant_types": ["authorization_code"],
                "response_types": ["code"],
            },
            {
                "client_id": "zerogate-post",
                "client_secret": SECRET_POST,
                "redirect_uris": [f"{portal}/.zerogate/oidc/corp2/callback"],
                "token_endpoint_auth_method": "client_secret_post",
                "grant_types": ["authorization_code"],
                "response_types": ["code"],
            },
        ],
        "accounts": ACCOUNTS,
    }
    path = workdir / "provider.json"
    path.write_text(json.dumps(config))
    log = workdir / "provider.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [node, str(PROVIDER_DIR / "server.js"), str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=PROVIDER_DIR,
        )
    provider = RealProvider(proc, ports, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the OIDC provider exited: {log.read_text()}")
        try:
            for name in ports:
                url = f"{provider.issuer(name)}/.well-known/openid-configuration"
                with urlopen(url, timeout=2) as resp:
                    if json.load(resp)["issuer"] != provider.issuer(name):
                        return False
            return True
        except (URLError, OSError, ValueError):
            return False

    try:
        wait_until(ready, timeout=30, interval=0.1)
    except BaseException:
        provider.stop()
        raise
    return provider


def config(origin: int, provider: RealProvider, down_port: int) -> str:
    corp, corp2 = provider.issuer("corp"), provider.issuer("corp2")
    return f"""
admins: ["group:Corp Admins"]
groups:
  - name: Corp Admins
    include: [{{idp_group: [engineering]}}]
    require: [{{login_method: [corp]}}, {{auth_method: [mfa]}}]
identity_providers:
  - {{name: otp, type: onetimepin}}
  - {{name: corp, type: oidc, issuer: "{corp}", client_id: zerogate-basic,
      client_secret_env: ZG_TEST_OIDC_BASIC, scopes: [openid, email, profile, groups],
      groups_claim: groups, display_name: Corp SSO}}
  - {{name: corp2, type: oidc, issuer: "{corp2}", client_id: zerogate-post,
      client_secret_env: ZG_TEST_OIDC_POST, token_endpoint_auth_method: client_secret_post,
      scopes: [openid, email, profile, groups], groups_claim: groups, display_name: Corp Two}}
  - {{name: slashed, type: oidc, issuer: "{corp}/", client_id: zerogate-basic,
      client_secret_env: ZG_TEST_OIDC_BASIC}}
  - {{name: down, type: oidc, issuer: "http://127.0.0.1:{down_port}", client_id: x,
      client_secret_env: ZG_TEST_OIDC_BASIC}}
applications:
  - name: wiki
    domain: wiki.localhost
    origin: http://127.0.0.1:{origin}
    identity_providers: [corp, corp2, otp]
    policies:
      - {{name: staff, decision: allow, include: [{{idp_group: [staff]}}]}}
      - {{name: corp by pin, decision: allow, include: [{{email_domain: [corp.test]}}],
          require: [{{login_method: [otp]}}]}}
  - name: mixed
    domain: mixed.localhost
    origin: http://127.0.0.1:{origin}
    identity_providers: [corp, otp]
    policies:
      - {{name: pin users only, decision: allow, include: [{{email_domain: [corp.test]}}],
          require: [{{login_method: [otp]}}]}}
  - name: pinonly
    domain: pinonly.localhost
    origin: http://127.0.0.1:{origin}
    identity_providers: [otp]
    policies:
      - {{name: corp, decision: allow, include: [{{email_domain: [corp.test]}}]}}
  - name: ops
    domain: ops.localhost
    origin: http://127.0.0.1:{origin}
    identity_providers: [corp]
    policies:
      - {{name: mfa staff, decision: allow, include: [{{idp_group: [staff]}}],
          require: [{{auth_method: [mfa]}}]}}
  - name: broken
    domain: broken.localhost
    origin: http://127.0.0.1:{origin}
    identity_providers: [slashed, down, otp]
    policies:
      - {{name: all, decision: allow, include: [{{everyone: true}}]}}
"""


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def outbox() -> Iterator[ThreadedOutbox]:
    box = ThreadedOutbox().start()
    yield box
    box.stop()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, outbox: ThreadedOutbox
) -> Iterator[tuple[Zerogate, RealProvider]]:
    workdir = tmp_path_factory.mktemp("oidc")
    port = free_port()
    provider = start_provider(workdir, port)
    origin = VerifyingOrigin(
        f"http://auth.localhost:{port}/.zerogate/certs", f"https://auth.localhost:{port}"
    ).start()
    saved = {k: os.environ.get(k) for k in ("ZG_TEST_OIDC_BASIC", "ZG_TEST_OIDC_POST")}
    os.environ["ZG_TEST_OIDC_BASIC"] = SECRET_BASIC
    os.environ["ZG_TEST_OIDC_POST"] = SECRET_POST
    zg = Zerogate(workdir, port, outbox.port)
    try:
        zg.apply(config(origin.port, provider, free_port()))
        zg.start()
        yield zg, provider
    finally:
        zg.stop()
        origin.stop()
        provider.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def zg(stack: tuple[Zerogate, RealProvider]) -> Zerogate:
    return stack[0]


@pytest.fixture(scope="module")
def provider(stack: tuple[Zerogate, RealProvider]) -> RealProvider:
    return stack[1]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context()
    ctx.set_default_timeout(15_000)
    yield ctx
    ctx.close()


# ---------------------------------------------------------------------------- helpers


def origin_json(page: Page) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(page.locator("body").inner_text())
    return data


def login_page_url(zg: Zerogate) -> re.Pattern[str]:
    return re.compile(rf"http://auth\.localhost:{zg.port}/\.zerogate/login\?flow=")


def provider_form(page: Page, login: str, password: str) -> None:
    """The provider's own login form."""
    page.wait_for_selector("input[name=login]")
    assert page.url.startswith("http://127.0.0.1:"), page.url
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", password)
    page.click("button.login-submit")


def oidc_login(page: Page, zg: Zerogate, url: str, account: str, button: str = "corp") -> None:
    """From an application URL: the portal's login page, the provider button, its form."""
    page.goto(url)
    page.wait_for_url(login_page_url(zg))
    page.click(f"a[data-idp={button}]")
    provider_form(page, account, ACCOUNTS[account]["password"])


def failure_page(page: Page) -> str:
    page.wait_for_selector("text=Sign-in failed")
    return page.locator("main").inner_text()


def portal_identity(context: BrowserContext, zg: Zerogate) -> int:
    """The status of the portal's ``/.zerogate/identity`` in this browser (401: no session)."""
    page = context.new_page()
    try:
        response = page.goto(f"http://auth.localhost:{zg.port}/.zerogate/identity")
        assert response is not None
        return response.status
    finally:
        page.close()


def login_events(zg: Zerogate, **filters: Any) -> list[AccessEvent]:
    async def read() -> list[AccessEvent]:
        async with open_store(zg) as store:
            return await store.access_log(kind="login", limit=500, **filters)

    # Playwright's sync API runs an event loop on this thread: read from another one
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, read()).result(30)


def wait_for_event(zg: Zerogate, detail: str, **filters: Any) -> AccessEvent:
    def found() -> AccessEvent | None:
        for event in login_events(zg, **filters):
            if event.detail and detail in event.detail:
                return event
        return None

    event: AccessEvent = wait_until(found, timeout=10, interval=0.2)
    return event


class Walker:
    """A small synchronous browser for the steps a test must stop between (Playwright cannot
    hold a navigation inside a redirect chain): keeps cookies per host, sends every request to
    127.0.0.1 with the URL's host as ``Host`` (Python cannot resolve ``*.localhost``)."""

    def __init__(self) -> None:
        self.jar: dict[str, dict[str, str]] = {}

    def request(
        self, method: str, url: str, form: dict[str, str] | None = None
    ) -> tuple[int, str | None, str]:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None, url
        headers = {"Host": parts.netloc}
        cookies = self.jar.get(parts.hostname, {})
        if cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        body = None
        if form is not None:
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn = HTTPConnection("127.0.0.1", parts.port, timeout=20)
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            for value in resp.headers.get_all("Set-Cookie") or []:
                jar: SimpleCookie = SimpleCookie()
                jar.load(value)
                for name, morsel in jar.items():
                    if morsel["max-age"] == "0" or "1970" in morsel["expires"]:
                        self.jar.setdefault(parts.hostname, {}).pop(name, None)
                    else:
                        self.jar.setdefault(parts.hostname, {})[name] = morsel.value
            location = resp.getheader("Location")
            text = resp.read().decode("utf-8", "replace")
            return resp.status, urljoin(url, location) if location else None, text
        finally:
            conn.close()

    def walk(self, url: str, stop: str | None = None, form: dict[str, str] | None = None) -> str:
        """Follow redirects from ``url``; return the first URL containing ``stop`` (not
        fetched) or, without one, the URL of the last page."""
        method = "POST" if form is not None else "GET"
        for _ in range(15):
            if stop is not None and stop in url:
                return url
            status, location, _ = self.request(method, url, form)
            method, form = "GET", None
            if status not in (302, 303) or location is None:
                return url
            url = location
        raise AssertionError("too many redirects")

    def held_callback(self, zg: Zerogate, account: str, app: str = "wiki.localhost") -> str:
        """Log in at the real provider; the callback URL to zerogate, not yet opened."""
        login = self.walk(zg.url(app, "/"))
        _, _, page = self.request("GET", login)
        found = re.search(r'<a class="idp" href="([^"]+)" data-idp="corp"', page)
        assert found is not None, page[:2000]
        start = urljoin(login, html.unescape(found.group(1)))
        form_url = self.walk(start)
        _, _, form_page = self.request("GET", form_url)
        action = re.search(r'action="([^"]+)"', form_page)
        assert action is not None, form_page[:2000]
        password = ACCOUNTS[account]["password"]
        return self.walk(
            urljoin(form_url, action.group(1)),
            stop="/.zerogate/oidc/corp/callback",
            form={"login": account, "password": password},
        )


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


# ---------------------------------------------------------------------------- logins


def test_login_through_the_providers_form_reaches_the_origin_with_groups_and_amr(
    zg: Zerogate, context: BrowserContext
) -> None:
    page = context.new_page()
    page.goto(zg.url("wiki.localhost", "/docs?x=1"))
    page.wait_for_url(login_page_url(zg))
    # a button per provider of the application, next to the PIN form
    assert page.locator("a[data-idp=corp]").inner_text().strip() == "Sign in with Corp SSO"
    assert page.locator("a[data-idp=corp2]").count() == 1
    assert page.locator('input[type=email][name=email][autocomplete="email"]').count() == 1
    page.click("a[data-idp=corp]")
    provider_form(page, "ann", "ann-pw")
    page.wait_for_url(zg.url("wiki.localhost", "/docs?x=1"))
    seen = origin_json(page)
    assert seen["email"] == "ann@corp.test"
    assert seen["jwt_error"] is None, seen["jwt_error"]
    claims = seen["claims"]
    assert claims["idp"] == "corp"
    assert claims["groups"] == ["staff", "engineering"]
    assert claims["amr"] == ["pwd", "mfa"]
    event = wait_for_event(zg, "oidc login", email="ann@corp.test", decision="allow")
    assert event.idp == "corp" and event.app == "wiki"

    # single sign-on: the OIDC session opens an app that takes the same provider (no form)
    page.goto(zg.url("ops.localhost", "/"))
    page.wait_for_url(zg.url("ops.localhost", "/"))
    assert origin_json(page)["claims"]["amr"] == ["pwd", "mfa"]  # auth_method: mfa satisfied


def test_an_admin_signs_in_to_the_panel_through_the_provider(
    zg: Zerogate, browser: Browser, context: BrowserContext, outbox: ThreadedOutbox
) -> None:
    """The admin panel is the built-in application ``zerogate-admin``: the portal's login page
    offers every method, and ``admins: [group:Corp Admins]`` (IdP group + login method + mfa)
    is decided on the provider's groups and amr; back on the page asked for."""
    page = context.new_page()
    page.goto(zg.url("auth.localhost", "/admin/applications"))
    page.wait_for_url(login_page_url(zg))
    assert "the zerogate admin panel" in page.locator("main").inner_text()
    for idp in ("corp", "corp2"):
        assert page.locator(f"a[data-idp={idp}]").count() == 1
    assert page.locator('input[type=email][name=email][autocomplete="email"]').count() == 1
    page.click("a[data-idp=corp]")
    provider_form(page, "ann", "ann-pw")
    page.wait_for_url(zg.url("auth.localhost", "/admin/applications"))
    page.wait_for_selector("h1:has-text('Applications')")
    response = page.goto(zg.url("auth.localhost", "/api/v1/session"))
    assert response is not None and response.status == 200
    assert origin_json(page)["who"] == "ann@corp.test"
    event = wait_for_event(zg, "oidc login", app="zerogate-admin", decision="allow")
    assert event.email == "ann@corp.test" and event.idp == "corp"

    # bob signs in at the same provider but is not in the IdP group: 403, no panel
    fresh = browser.new_context()
    fresh.set_default_timeout(15_000)
    try:
        bob = fresh.new_page()
        bob.goto(zg.url("auth.localhost", "/admin/"))
        bob.wait_for_url(login_page_url(zg))
        bob.click("a[data-idp=corp]")
        provider_form(bob, "bob", "bob-pw")
        bob.wait_for_url(zg.url("auth.localhost", "/admin/"))
        assert "bob@corp.test is not an administrator" in bob.locator("main").inner_text()
        # and a PIN for ann is never sent: the admins list wants the corp login and mfa
        bob.goto(zg.url("auth.localhost", "/.zerogate/logout"))
        bob.click("form[action='/.zerogate/logout'] button[type=submit]")
        bob.wait_for_selector("text=You are signed out of every application.")
        bob.goto(zg.url("auth.localhost", "/admin/"))
        bob.wait_for_url(login_page_url(zg))
        mark = outbox.mark()
        bob.fill("input[name=email]", "ann@corp.test")
        bob.click("form[action='/.zerogate/login/otp'] button[type=submit]")
        bob.wait_for_selector('input[autocomplete="one-time-code"]')
        wait_for_event(zg, "no pin sent", app="zerogate-admin", email="ann@corp.test")
        assert outbox.messages(mark) == []
    finally:
        fresh.close()


def test_client_secret_post_and_claims_inside_the_id_token(
    zg: Zerogate, context: BrowserContext
) -> None:
    page = context.new_page()
    oidc_login(page, zg, zg.url("wiki.localhost", "/two"), "ann", button="corp2")
    page.wait_for_url(zg.url("wiki.localhost", "/two"))
    claims = origin_json(page)["claims"]
    assert claims["idp"] == "corp2"
    assert claims["groups"] == ["staff", "engineering"]


def test_groups_claim_drives_the_idp_group_policy(zg: Zerogate, context: BrowserContext) -> None:
    page = context.new_page()
    oidc_login(page, zg, zg.url("wiki.localhost", "/"), "bob")  # groups: [contractors]
    page.wait_for_url(zg.url("wiki.localhost", "/"))
    assert "may not use this application" in page.locator("main").inner_text()
    response = page.goto(zg.url("wiki.localhost", "/again"))
    assert response is not None and response.status == 403


def test_the_only_method_redirects_straight_to_the_provider_and_amr_decides(
    zg: Zerogate, context: BrowserContext
) -> None:
    page = context.new_page()
    page.goto(zg.url("ops.localhost", "/console"))
    provider_form(page, "bob", "bob-pw")  # no zerogate login page in between
    page.wait_for_url(zg.url("ops.localhost", "/console"))
    response = page.goto(zg.url("ops.localhost", "/console"))
    assert response is not None and response.status == 403  # not staff, no mfa


def test_same_user_allowed_via_oidc_is_blocked_where_only_the_pin_counts(
    zg: Zerogate, outbox: ThreadedOutbox, context: BrowserContext
) -> None:
    page = context.new_page()
    oidc_login(page, zg, zg.url("wiki.localhost", "/"), "ann")
    page.wait_for_url(zg.url("wiki.localhost", "/"))
    assert origin_json(page)["email"] == "ann@corp.test"

    # "mixed" offers both methods but its policy requires login_method otp: SSO hands over the
    # OIDC session, and the policy blocks it
    response = page.goto(zg.url("mixed.localhost", "/"))
    assert response is not None and response.status == 403

    # "pinonly" offers only the PIN: the OIDC session does not open it, the page has no button
    page.goto(zg.url("pinonly.localhost", "/"))
    page.wait_for_url(login_page_url(zg))
    assert page.locator("a.idp").count() == 0
    mark = outbox.mark()
    page.fill("input[name=email]", "ann@corp.test")
    page.click("button[type=submit]")
    message = outbox.wait("ann@corp.test", after=mark)
    assert message.pin is not None
    page.fill('input[autocomplete="one-time-code"]', message.pin)
    page.click("form[action='/.zerogate/login/otp/verify'] button[type=submit]")
    page.wait_for_url(zg.url("pinonly.localhost", "/"))
    assert origin_json(page)["claims"]["idp"] == "otp"


def test_the_last_method_is_remembered_on_this_browser(
    zg: Zerogate, context: BrowserContext
) -> None:
    page = context.new_page()
    page.goto(zg.url("wiki.localhost", "/"))
    page.wait_for_url(login_page_url(zg))
    assert page.locator(".last").count() == 0
    page.click("a[data-idp=corp2]")
    provider_form(page, "ann", "ann-pw")
    page.wait_for_url(zg.url("wiki.localhost", "/"))
    page.goto(zg.url("wiki.localhost", "/.zerogate/logout"))
    page.click("form[action='/.zerogate/logout'] button[type=submit]")
    page.wait_for_selector("text=You are signed out of every application.")

    page.goto(zg.url("wiki.localhost", "/"))
    page.wait_for_url(login_page_url(zg))
    first = page.locator("a.idp").first
    assert first.get_attribute("data-idp") == "corp2"
    assert "last used" in first.inner_text()


# ---------------------------------------------------------------------------- failures


def test_cancel_at_the_provider_is_a_page_and_no_session(
    zg: Zerogate, context: BrowserContext
) -> None:
    page = context.new_page()
    page.goto(zg.url("wiki.localhost", "/"))
    page.wait_for_url(login_page_url(zg))
    page.click("a[data-idp=corp]")
    page.wait_for_selector("a#cancel")
    page.click("a#cancel")
    text = failure_page(page)
    assert "You cancelled the sign-in at Corp SSO" in text
    assert "Try again" in text
    assert portal_identity(context, zg) == 401
    wait_for_event(zg, "oidc access_denied", decision="block")


def test_unverified_email_is_refused(zg: Zerogate, context: BrowserContext) -> None:
    page = context.new_page()
    oidc_login(page, zg, zg.url("wiki.localhost", "/"), "eve")
    text = failure_page(page)
    assert "has not verified your email address" in text
    assert portal_identity(context, zg) == 401
    event = wait_for_event(zg, "oidc email_unverified", decision="block")
    assert event.email == "eve@corp.test"


def test_a_replayed_callback_url_and_a_replayed_code_are_refused(
    zg: Zerogate, context: BrowserContext
) -> None:
    page = context.new_page()
    callbacks: list[str] = []
    page.on(
        "request",
        lambda r: callbacks.append(r.url) if "/.zerogate/oidc/corp/callback" in r.url else None,
    )
    oidc_login(page, zg, zg.url("wiki.localhost", "/"), "ann")
    page.wait_for_url(zg.url("wiki.localhost", "/"))
    assert len(callbacks) == 1
    used = callbacks[0]

    # the same callback URL again (browser history, a leaked Referer...): state is single-use
    page.goto(used)
    assert "expired or was already used" in failure_page(page)
    wait_for_event(zg, "oidc state_unknown")

    # the used code under the fresh, valid state of another login: the provider refuses it
    walker = Walker()
    fresh = walker.held_callback(zg, "ann")
    code = parse_qs(urlsplit(used).query)["code"][0]
    status, _, text = walker.request("GET", with_query(fresh, code=code))
    assert status == 400, text[:500]
    assert "did not accept this sign-in any more" in text
    assert "__zg_portal" not in walker.jar.get("auth.localhost", {})
    wait_for_event(zg, "oidc code_rejected")


def test_a_tampered_or_missing_state_is_refused(zg: Zerogate) -> None:
    walker = Walker()
    callback = walker.held_callback(zg, "ann")
    state = parse_qs(urlsplit(callback).query)["state"][0]
    tampered = state[:-2] + ("AA" if not state.endswith("AA") else "BB")
    status, _, text = walker.request("GET", with_query(callback, state=tampered))
    assert status == 400 and "expired or was already used" in text, text[:500]
    parts = urlsplit(callback)
    query = {k: v[0] for k, v in parse_qs(parts.query).items() if k != "state"}
    status, _, text = walker.request("GET", urlunsplit(parts._replace(query=urlencode(query))))
    assert status == 400 and "no valid state" in text, text[:500]
    assert "__zg_portal" not in walker.jar.get("auth.localhost", {})
    wait_for_event(zg, "oidc state_missing")
    # the untouched answer still works: what failed above was the tampering
    status, location, text = walker.request("GET", callback)
    assert status == 302, text[:500]
    assert location is not None and "/.zerogate/authorized?code=" in location


def test_a_callback_opened_in_another_browser_is_refused(
    zg: Zerogate, context: BrowserContext
) -> None:
    """Login CSRF: an attacker's own callback URL (code and state) opened by a victim."""
    attacker = Walker()
    callback = attacker.held_callback(zg, "bob")
    victim = context.new_page()
    victim.goto(callback)
    assert "did not start in this browser" in failure_page(victim)
    assert portal_identity(context, zg) == 401
    wait_for_event(zg, "oidc state_other_browser")


def test_a_discovery_issuer_mismatch_and_a_provider_that_is_down_are_pages(
    zg: Zerogate, context: BrowserContext
) -> None:
    page = context.new_page()
    page.goto(zg.url("broken.localhost", "/"))
    page.wait_for_url(login_page_url(zg))
    login = page.url
    page.click("a[data-idp=slashed]")
    assert "not set up correctly on this gateway" in failure_page(page)
    event = wait_for_event(zg, "oidc discovery_invalid")
    assert "trailing slash" in (event.detail or "")

    page.goto(login)
    started = time.monotonic()
    page.click("a[data-idp=down]")
    assert "We could not reach down" in failure_page(page)
    assert time.monotonic() - started < 15
    wait_for_event(zg, "oidc provider_unreachable")
    assert portal_identity(context, zg) == 401
    assert "Traceback" not in zg.log_text()


def test_screenshot_of_the_login_page_with_providers(
    zg: Zerogate, context: BrowserContext, tmp_path: Path
) -> None:
    page = context.new_page()
    page.goto(zg.url("wiki.localhost", "/"))
    page.wait_for_selector("a[data-idp=corp]")
    shot = page.screenshot(path=str(tmp_path / "login-oidc.png"))
    assert_screenshot_shows(page, shot, "a[data-idp=corp]")
    text = page.locator("main").inner_text()
    assert text.index("Sign in with Corp SSO") < text.index("Email address")
