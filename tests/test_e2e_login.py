"""End to end in a real browser (Playwright driving Debian's chromium): one-time PIN login
through the portal, single sign-on, logout everywhere, group changes applied while running,
and the network requirement — against a real ``zerogate server``, a real SMTP server and an
origin that verifies the JWT it receives against ``/.zerogate/certs``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from harness import assert_screenshot_shows, free_port, wait_until
from zerogate.outbox import Message
from zg_harness import ThreadedOutbox, VerifyingOrigin, Zerogate

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"


def config(origin_port: int, partners: list[str]) -> str:
    return f"""
trusted_proxies: [127.0.0.1/32]
identity_providers: [{{name: otp, type: onetimepin}}]
groups:
  - name: Partners
    include: [{{email: {json.dumps(partners)}}}]
  - name: Office
    include: [{{ip: [203.0.113.0/24]}}]
applications:
  - name: wiki
    domain: wiki.localhost
    origin: http://127.0.0.1:{origin_port}
    policies:
      - {{name: staff and partners, decision: allow,
          include: [{{email_domain: [example.com]}}, {{group: [Partners]}}]}}
  - name: docs
    domain: docs.localhost
    origin: http://127.0.0.1:{origin_port}
    policies:
      - {{name: staff, decision: allow, include: [{{email_domain: [example.com]}}]}}
  - name: finance
    domain: finance.localhost
    origin: http://127.0.0.1:{origin_port}
    policies:
      - {{name: staff in the office, decision: allow,
          include: [{{email_domain: [example.com]}}], require: [{{group: [Office]}}]}}
"""


@pytest.fixture(scope="module")
def outbox() -> Iterator[ThreadedOutbox]:
    box = ThreadedOutbox().start()
    yield box
    box.stop()


@pytest.fixture(scope="module")
def zg(tmp_path_factory: pytest.TempPathFactory, outbox: ThreadedOutbox) -> Iterator[Zerogate]:
    workdir = tmp_path_factory.mktemp("zg")
    port = free_port()
    origin = VerifyingOrigin(
        f"http://127.0.0.1:{port}/.zerogate/certs", f"https://auth.localhost:{port}"
    )
    # the certs URL must carry a Host that zerogate serves: the portal's
    origin.certs_url = f"http://auth.localhost:{port}/.zerogate/certs"
    origin.start()
    zerogate = Zerogate(workdir, port, outbox.port)
    zerogate.extra["origin"] = origin
    zerogate.apply(config(origin.port, ["alice@partner.test"]))
    zerogate.start()
    yield zerogate
    zerogate.stop()
    origin.stop()


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


def origin_json(page: Page) -> dict[str, Any]:
    text = page.locator("body").inner_text()
    data: dict[str, Any] = json.loads(text)
    return data


def pin_login(page: Page, zg: Zerogate, outbox: ThreadedOutbox, email: str) -> Message:
    """On the portal's login page: ask for a PIN, read it from the mailbox, enter it."""
    page.wait_for_url(re.compile(rf"http://auth\.localhost:{zg.port}/\.zerogate/login\?flow="))
    mark = outbox.mark()
    page.fill('input[type="email"][name="email"][autocomplete="email"]', email)
    page.click("button[type=submit]")
    page.wait_for_selector('input[autocomplete="one-time-code"]')
    message = outbox.wait(email, after=mark)
    assert message.pin is not None and re.fullmatch(r"\d{6}", message.pin)
    assert message.pin not in message.subject
    page.fill('input[autocomplete="one-time-code"]', message.pin)
    page.click("form[action='/.zerogate/login/otp/verify'] button[type=submit]")
    return message


def test_pin_login_reaches_the_origin_with_a_verified_jwt(
    zg: Zerogate, outbox: ThreadedOutbox, context: BrowserContext
) -> None:
    page = context.new_page()
    page.goto(zg.url("wiki.localhost", "/hello/world?x=1&y=2"))
    pin_login(page, zg, outbox, "ann@example.com")
    page.wait_for_url(zg.url("wiki.localhost", "/hello/world?x=1&y=2"))
    seen = origin_json(page)
    assert seen["path"] == "/hello/world?x=1&y=2"
    assert seen["email"] == "ann@example.com"
    assert seen["jwt_error"] is None, seen["jwt_error"]
    claims = seen["claims"]
    assert claims["email"] == "ann@example.com"
    assert claims["type"] == "app"
    assert claims["idp"] == "otp"
    assert claims["iss"] == f"https://auth.localhost:{zg.port}"
    assert isinstance(claims["aud"], list) and len(claims["aud"]) == 1
    # zerogate's own cookies never reach the origin
    assert "__zg_" not in seen["headers"].get("cookie", "")


def test_single_sign_on_then_logout_everywhere(
    zg: Zerogate, outbox: ThreadedOutbox, context: BrowserContext
) -> None:
    page = context.new_page()
    page.goto(zg.url("wiki.localhost", "/"))
    pin_login(page, zg, outbox, "bo@example.com")
    page.wait_for_url(zg.url("wiki.localhost", "/"))
    assert origin_json(page)["email"] == "bo@example.com"

    mark = outbox.mark()
    page.goto(zg.url("docs.localhost", "/page"))
    page.wait_for_url(zg.url("docs.localhost", "/page"))  # no login page, no new PIN
    assert origin_json(page)["email"] == "bo@example.com"
    assert [m for m in outbox.messages() if m.seq > mark] == []

    # a visit to the logout address alone ends nothing (no cross-site logout): a button does
    page.goto(zg.url("wiki.localhost", "/.zerogate/logout"))
    page.goto(zg.url("docs.localhost", "/still"))
    page.wait_for_url(zg.url("docs.localhost", "/still"))
    page.goto(zg.url("wiki.localhost", "/.zerogate/logout"))
    page.click("form[action='/.zerogate/logout'] button[type=submit]")
    page.wait_for_selector("text=You are signed out of every application.")
    for host in ("wiki.localhost", "docs.localhost"):
        page.goto(zg.url(host, "/again"))
        page.wait_for_url(re.compile(r"/\.zerogate/login\?flow="))


def test_address_that_may_not_log_in_gets_no_email_and_the_same_page(
    zg: Zerogate, outbox: ThreadedOutbox, context: BrowserContext
) -> None:
    def ask(email: str) -> str:
        page = context.new_page()
        page.goto(zg.url("wiki.localhost", "/"))
        page.fill('input[name="email"]', email)
        page.click("button[type=submit]")
        page.wait_for_selector('input[autocomplete="one-time-code"]')
        text = page.locator("main").inner_text().replace(email, "EMAIL")
        page.close()
        return text

    mark = outbox.mark()
    refused = ask("mallory@evil.test")
    allowed = ask("carl@example.com")
    assert refused == allowed
    outbox.wait("carl@example.com", after=mark)  # mail is delivered in order: carl's arrived,
    recipients = [m.to for m in outbox.messages() if m.seq > mark]  # so mallory's never will
    assert "mallory@evil.test" not in recipients


def test_partner_removed_from_the_group_is_blocked_on_the_next_request(
    zg: Zerogate, outbox: ThreadedOutbox, context: BrowserContext
) -> None:
    page = context.new_page()
    page.goto(zg.url("wiki.localhost", "/partner"))
    pin_login(page, zg, outbox, "alice@partner.test")
    page.wait_for_url(zg.url("wiki.localhost", "/partner"))
    assert origin_json(page)["email"] == "alice@partner.test"

    origin: VerifyingOrigin = zg.extra["origin"]
    zg.apply(config(origin.port, ["bob@vendor.test"]))
    try:

        def blocked() -> bool:
            response = page.goto(zg.url("wiki.localhost", "/partner"))
            return response is not None and response.status == 403

        wait_until(blocked, timeout=5, interval=0.1)  # the server reloads within a second
        assert "may not use this application" in page.locator("main").inner_text()
    finally:
        zg.apply(config(origin.port, ["alice@partner.test"]))


def test_network_requirement_allows_from_the_range_and_blocks_outside(
    zg: Zerogate, outbox: ThreadedOutbox, browser: Browser
) -> None:
    # 127.0.0.1 is a trusted proxy in this config, so X-Forwarded-For sets the client address
    office = browser.new_context(extra_http_headers={"X-Forwarded-For": "203.0.113.5"})
    try:
        page = office.new_page()
        page.goto(zg.url("finance.localhost", "/ledger"))
        pin_login(page, zg, outbox, "fin@example.com")
        page.wait_for_url(zg.url("finance.localhost", "/ledger"))
        seen = origin_json(page)
        assert seen["email"] == "fin@example.com"
        assert seen["headers"]["x-forwarded-for"].split(",")[0].strip() == "203.0.113.5"

        cookies = office.cookies()
        away = browser.new_context(extra_http_headers={"X-Forwarded-For": "198.51.100.7"})
        try:
            away.add_cookies(cookies)  # type: ignore[arg-type]  # same session, outside the office
            response = away.new_page().goto(zg.url("finance.localhost", "/ledger"))
            assert response is not None and response.status == 403
        finally:
            away.close()
    finally:
        office.close()


def test_the_emailed_link_opens_a_confirmation_page(
    zg: Zerogate, outbox: ThreadedOutbox, context: BrowserContext
) -> None:
    page = context.new_page()
    page.goto(zg.url("docs.localhost", "/from-mail"))
    page.wait_for_url(re.compile(r"/\.zerogate/login\?flow="))
    mark = outbox.mark()
    page.fill('input[name="email"]', "dee@example.com")
    page.click("button[type=submit]")
    message = outbox.wait("dee@example.com", after=mark)
    link = re.search(r'href="([^"]+/\.zerogate/login/otp/confirm[^"]+)"', message.html)
    assert link is not None
    url = link.group(1).replace("&amp;", "&")
    page.goto(url)  # a GET (what a mail scanner does) only shows the button
    page.wait_for_selector("text=Confirm sign-in")
    page.click("button[type=submit]")
    page.wait_for_url(zg.url("docs.localhost", "/from-mail"))
    assert origin_json(page)["email"] == "dee@example.com"


def test_screenshot_of_the_login_page(
    zg: Zerogate, context: BrowserContext, tmp_path: Path
) -> None:
    page = context.new_page()
    page.goto(zg.url("wiki.localhost", "/"))
    page.wait_for_selector('input[type="email"]')
    shot = page.screenshot(path=str(tmp_path / "login.png"))
    assert_screenshot_shows(page, shot, 'input[type="email"]')
    assert "wiki" in page.locator("main").inner_text()
