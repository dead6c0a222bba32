"""End to end over HTTPS in a real browser: under TLS every zerogate cookie is a
``__Host-`` cookie (Secure, host-only, ``Path=/``), and the whole PIN login — the state
cookie on the app host, the portal's CSRF and PIN-binding cookies, the emailed link's
confirmation in the browser that asked — still works with those names."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import trustme
from playwright.sync_api import Browser, sync_playwright

from zg_harness import ThreadedOutbox, VerifyingOrigin, Zerogate, free_port

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"

CONFIG = """
identity_providers: [{{name: otp, type: onetimepin}}]
applications:
  - name: wiki
    domain: wiki.localhost
    origin: http://127.0.0.1:{port}
    policies:
      - {{name: staff, decision: allow, include: [{{email_domain: [example.com]}}]}}
"""


@pytest.fixture(scope="module")
def outbox() -> Iterator[ThreadedOutbox]:
    box = ThreadedOutbox().start()
    yield box
    box.stop()


@pytest.fixture(scope="module")
def zg(tmp_path_factory: pytest.TempPathFactory, outbox: ThreadedOutbox) -> Iterator[Zerogate]:
    workdir = tmp_path_factory.mktemp("zg-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("auth.localhost", "wiki.localhost")
    cert.private_key_pem.write_to_path(str(workdir / "edge.key"))
    cert.cert_chain_pems[0].write_to_path(str(workdir / "edge.crt"))
    port = free_port()
    origin = VerifyingOrigin(f"https://auth.localhost:{port}/.zerogate/certs", "unused")
    origin.start()
    zerogate = Zerogate(workdir, port, outbox.port, tls="{cert: edge.crt, key: edge.key}")
    zerogate.extra["origin"] = origin
    zerogate.apply(CONFIG.format(port=origin.port))
    zerogate.start()
    yield zerogate
    zerogate.stop()
    origin.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run"],
        )
        yield b
        b.close()


def test_pin_login_over_tls_with_host_prefixed_cookies(
    zg: Zerogate, outbox: ThreadedOutbox, browser: Browser
) -> None:
    context = browser.new_context(ignore_https_errors=True)
    context.set_default_timeout(15_000)
    try:
        page = context.new_page()
        page.goto(zg.url("wiki.localhost", "/hello"))
        page.wait_for_url(re.compile(rf"https://auth\.localhost:{zg.port}/\.zerogate/login\?"))
        mark = outbox.mark()
        page.fill('input[name="email"]', "ann@example.com")
        page.click("button[type=submit]")
        page.wait_for_selector('input[autocomplete="one-time-code"]')
        message = outbox.wait("ann@example.com", after=mark)
        link = re.search(r'href="([^"]+/\.zerogate/login/otp/confirm[^"]+)"', message.html)
        assert link is not None and link.group(1).startswith("https://auth.localhost")
        # the emailed link, opened in the browser that asked: confirm, and in
        page.goto(link.group(1).replace("&amp;", "&"))
        page.wait_for_selector("text=Confirm sign-in")
        page.click("button[type=submit]")
        page.wait_for_url(zg.url("wiki.localhost", "/hello"))
        assert "ann@example.com" in page.content()
        cookies = context.cookies()
        ours = [c for c in cookies if "__zg_" in c["name"]]
        assert ours, cookies
        for c in ours:
            assert c["name"].startswith("__Host-__zg_"), c
            assert c["secure"] and c["httpOnly"] and c["path"] == "/", c
        assert {c["domain"] for c in ours} <= {"wiki.localhost", "auth.localhost"}
    finally:
        context.close()
