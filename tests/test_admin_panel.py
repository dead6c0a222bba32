"""The web admin panel end to end in a real browser (Playwright driving Debian's chromium)
against a real ``zerogate server``: an administrator signs in with a one-time PIN on the
portal's own login page (the panel is the built-in application ``zerogate-admin``), creates an
Access Group and a policy (include the group + require an IP range) on an application through
the panel's forms, and the edge enforces it on the next request — a partner in the group from
the office network is let in, the same session from elsewhere is blocked, and after the admin
removes her from the group her next request is blocked; the access log page shows it all.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from harness import free_port, wait_until
from zg_harness import ThreadedOutbox, VerifyingOrigin, Zerogate

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
ADMIN = "admin@example.test"
PARTNER = "alice@partner.test"
OFFICE_IP = "203.0.113.5"
AWAY_IP = "198.51.100.7"


def config(origin_port: int) -> str:
    return f"""
trusted_proxies: [127.0.0.1/32]
admins: [{ADMIN}]
identity_providers: [{{name: otp, type: onetimepin}}]
applications:
  - name: wiki
    domain: wiki.localhost
    origin: http://127.0.0.1:{origin_port}
    policies:
      - {{name: staff, decision: allow, include: [{{email_domain: [example.test]}}]}}
"""


@pytest.fixture(scope="module")
def outbox() -> Iterator[ThreadedOutbox]:
    box = ThreadedOutbox().start()
    yield box
    box.stop()


@pytest.fixture(scope="module")
def zg(tmp_path_factory: pytest.TempPathFactory, outbox: ThreadedOutbox) -> Iterator[Zerogate]:
    port = free_port()
    origin = VerifyingOrigin(
        f"http://auth.localhost:{port}/.zerogate/certs", f"https://auth.localhost:{port}"
    )
    origin.start()
    zerogate = Zerogate(tmp_path_factory.mktemp("zg"), port, outbox.port)
    zerogate.apply(config(origin.port))
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


def context(browser: Browser, client_ip: str | None = None) -> BrowserContext:
    headers = {"X-Forwarded-For": client_ip} if client_ip else None
    ctx = browser.new_context(extra_http_headers=headers, viewport={"width": 420, "height": 900})
    ctx.set_default_timeout(15_000)
    return ctx


def origin_json(page: Page) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(page.locator("body").inner_text())
    return data


def admin_sign_in(page: Page, zg: Zerogate, outbox: ThreadedOutbox) -> None:
    """The portal's own login page, for the built-in application ``zerogate-admin``."""
    page.goto(zg.url(zg.portal.partition(":")[0], "/admin"))
    page.wait_for_url(re.compile(r"/\.zerogate/login\?flow="))
    mark = outbox.mark()
    page.fill('form[action="/.zerogate/login/otp"] input[name="email"]', ADMIN)
    page.click('form[action="/.zerogate/login/otp"] button[type=submit]')
    page.wait_for_selector('input[autocomplete="one-time-code"]')
    message = outbox.wait(ADMIN, after=mark)
    assert message.pin is not None
    page.fill('input[autocomplete="one-time-code"]', message.pin)
    page.click('form[action="/.zerogate/login/otp/verify"] button[type=submit]')
    page.wait_for_url(re.compile(r"/admin/?$"))
    page.wait_for_selector("h1:has-text('Dashboard')")


def partner_pin_login(page: Page, zg: Zerogate, outbox: ThreadedOutbox) -> None:
    page.goto(zg.url("wiki.localhost", "/handbook"))
    page.wait_for_url(re.compile(r"/\.zerogate/login\?flow="))
    mark = outbox.mark()
    page.fill('input[name="email"]', PARTNER)
    page.click("button[type=submit]")
    page.wait_for_selector('input[autocomplete="one-time-code"]')
    message = outbox.wait(PARTNER, after=mark)
    assert message.pin is not None
    page.fill('input[autocomplete="one-time-code"]', message.pin)
    page.click("form[action='/.zerogate/login/otp/verify'] button[type=submit]")
    page.wait_for_url(zg.url("wiki.localhost", "/handbook"))


def live_version(zg: Zerogate) -> int:
    """The configuration version the server's snapshot holds (its metrics, from loopback)."""
    conn = http.client.HTTPConnection("127.0.0.1", zg.port, timeout=5)
    try:
        conn.request("GET", "/.zerogate/metrics", headers={"Host": zg.portal})
        body = conn.getresponse().read().decode()
    finally:
        conn.close()
    found = re.search(r"^zerogate_config_version (\S+)$", body, re.M)
    assert found is not None, body[:300]
    return int(float(found.group(1)))


def stored_version(zg: Zerogate) -> int:
    """The configuration version in the server's store (SQLite next to its config)."""
    with contextlib.closing(sqlite3.connect(zg.workdir / "zerogate.db")) as db:
        (version,) = db.execute("SELECT version FROM config_state").fetchone()
    return int(version)


def wait_live(zg: Zerogate) -> None:
    """Wait until the server runs the stored configuration (it polls the store twice a
    second), so the next request is decided by the changes just saved."""
    wanted = stored_version(zg)
    wait_until(lambda: live_version(zg) >= wanted, timeout=5, interval=0.05)


def fill_rule(page: Page, section: str, selector: str, values: str) -> None:
    """Fill the last (blank) row of a section of the rule builder."""
    rows = page.locator(f'fieldset[data-section="{section}"] .rule')
    row = rows.nth(rows.count() - 1)
    row.locator("select").select_option(selector)
    row.locator("input").fill(values)


def test_admin_builds_group_and_policy_in_the_browser_and_the_edge_enforces_them(
    zg: Zerogate, outbox: ThreadedOutbox, browser: Browser
) -> None:
    admin_ctx = context(browser)
    office = context(browser, OFFICE_IP)
    away = context(browser, AWAY_IP)
    try:
        admin = admin_ctx.new_page()
        admin.on("dialog", lambda dialog: dialog.accept())
        admin_sign_in(admin, zg, outbox)
        assert "wiki.localhost" in admin.locator("main").inner_text()

        # 1. an Access Group, through the group form
        admin.click("nav >> text=Groups")
        admin.click("text=New group")
        admin.fill('input[name="name"]', "Partners")
        fill_rule(admin, "include", "email", PARTNER)
        admin.click("button:has-text('Create group')")
        admin.wait_for_selector("text=Group Partners saved.")

        # 2. a policy on the application: include the group, require the office network
        admin.click("nav >> text=Applications")
        admin.click("table >> text=wiki")
        admin.click("text=Add a policy")
        admin.fill('input[name="name"]', "partners in the office")
        admin.select_option('select[name="decision"]', "allow")
        fill_rule(admin, "include", "group", "Partners")
        fill_rule(admin, "require", "ip", "203.0.113.0/24")
        admin.click("button:has-text('Create policy')")
        admin.wait_for_selector("text=Policy partners in the office of wiki saved.")
        row = admin.locator("tr", has_text="partners in the office")
        assert "group: Partners" in row.inner_text()
        assert "ip: 203.0.113.0/24" in row.inner_text()
        wait_live(zg)

        # 3. the edge lets the partner in from the office ...
        partner = office.new_page()
        partner_pin_login(partner, zg, outbox)
        assert origin_json(partner)["email"] == PARTNER

        # ... and blocks the same session from elsewhere (the require rule)
        away.add_cookies(office.cookies())  # type: ignore[arg-type]
        response = away.new_page().goto(zg.url("wiki.localhost", "/handbook"))
        assert response is not None and response.status == 403

        # 4. the admin takes her out of the group: her next request is blocked
        admin.click("nav >> text=Groups")
        admin.click("table >> text=Partners")
        values = admin.locator('fieldset[data-section="include"] input[name="include_values"]')
        values.first.fill("bob@vendor.test")
        admin.click("button:has-text('Save group')")
        admin.wait_for_selector("text=Group Partners saved.")

        wait_live(zg)
        reply = partner.goto(zg.url("wiki.localhost", "/handbook"))
        assert reply is not None and reply.status == 403

        # 5. the access log page shows who was let in and who was blocked
        admin.click("nav >> text=Access log")
        admin.select_option('select[name="app"]', "wiki")
        admin.fill('input[name="email"]', PARTNER)
        admin.click("button:has-text('Filter')")
        admin.wait_for_url(re.compile(r"/admin/access-log\?.*email=alice"))
        filtered = admin.url

        def logged() -> str | None:
            admin.goto(filtered)
            text = admin.locator("main").inner_text()
            return text if "allow" in text and "block" in text and AWAY_IP in text else None

        text = wait_until(logged, timeout=10, interval=0.3)  # the log is written in batches
        assert PARTNER in text and OFFICE_IP in text
        assert "partners in the office" in text

        # and the admin log names who made the changes
        admin.click("nav >> text=Admin log")
        log_text = admin.locator("main").inner_text()
        assert ADMIN in log_text and "group Partners" in log_text
        assert "bob@vendor.test" in log_text
    finally:
        away.close()
        office.close()
        admin_ctx.close()
