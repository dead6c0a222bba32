"""Issue #16 in a real browser (Playwright driving Debian's chromium) against a real
``zerogate server``: the portal's sessions page (one's own sessions, this device marked, ending
another device's signs it out), the admin panel's sessions page, the portal's app launcher,
signing out from the launcher and from the admin panel, and the ownership badges and the "the
next apply overwrites this" warning — on a phone-sized viewport too, where nothing may scroll
sideways."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from harness import free_port
from zg_harness import ThreadedOutbox, VerifyingOrigin, Zerogate

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
ADMIN = "admin@example.test"
USER = "ann@example.test"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


def config(origin_port: int) -> str:
    return f"""
admins: [{ADMIN}]
identity_providers: [{{name: otp, type: onetimepin}}]
groups:
  - name: Staff
    include: [{{email_domain: [example.test]}}]
applications:
  - name: wiki
    domain: wiki.localhost
    origin: http://127.0.0.1:{origin_port}
    policies:
      - {{name: staff, decision: allow, include: [{{group: [Staff]}}]}}
  - name: payroll
    domain: payroll.localhost
    origin: http://127.0.0.1:{origin_port}
    policies:
      - {{name: hr, decision: allow, include: [{{email: [hr@example.test]}}]}}
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
    ).start()
    zerogate = Zerogate(tmp_path_factory.mktemp("zg-own"), port, outbox.port)
    try:
        zerogate.apply(config(origin.port))
        zerogate.start()
        yield zerogate
    finally:
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


def context(browser: Browser, viewport: dict[str, int]) -> BrowserContext:
    ctx = browser.new_context(viewport=viewport)  # type: ignore[arg-type]
    ctx.set_default_timeout(15_000)
    return ctx


def no_sideways_scroll(page: Page) -> None:
    """Usable on this viewport: nothing makes the page wider than the screen."""
    width, inner = page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
    assert width <= inner, f"{page.url}: {width}px wide on a {inner}px screen"


def pin_login(page: Page, outbox: ThreadedOutbox, email: str, done: re.Pattern[str]) -> None:
    """The portal's PIN login, from its login page to ``done``."""
    page.wait_for_url(re.compile(r"/\.zerogate/login\?flow="))
    mark = outbox.mark()
    page.fill('form[action="/.zerogate/login/otp"] input[name="email"]', email)
    page.click('form[action="/.zerogate/login/otp"] button[type=submit]')
    page.wait_for_selector('input[autocomplete="one-time-code"]')
    message = outbox.wait(email, after=mark)
    assert message.pin is not None
    page.fill('input[autocomplete="one-time-code"]', message.pin)
    page.click('form[action="/.zerogate/login/otp/verify"] button[type=submit]')
    page.wait_for_url(done)


def admin_page(
    browser: Browser, zg: Zerogate, outbox: ThreadedOutbox, viewport: dict[str, int]
) -> Page:
    page = context(browser, viewport).new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(zg.url("auth.localhost", "/admin"))
    pin_login(page, outbox, ADMIN, re.compile(r"/admin/?$"))
    return page


def user_page(
    browser: Browser, zg: Zerogate, outbox: ThreadedOutbox, viewport: dict[str, int]
) -> Page:
    page = context(browser, viewport).new_page()
    page.goto(zg.url("wiki.localhost", "/"))
    pin_login(page, outbox, USER, re.compile(r"wiki\.localhost"))
    return page


def fill_rule(page: Page, section: str, selector: str, values: str) -> None:
    """Fill the last (blank) row of a section of the rule builder."""
    rows = page.locator(f'fieldset[data-section="{section}"] .rule')
    row = rows.nth(rows.count() - 1)
    row.locator("select").select_option(selector)
    row.locator("input").fill(values)


def test_ownership_badges_and_the_overwrite_warning(
    browser: Browser, zg: Zerogate, outbox: ThreadedOutbox
) -> None:
    # a group made in the panel survives the next apply from the file, which says so
    page = admin_page(browser, zg, outbox, DESKTOP)
    page.goto(zg.url("auth.localhost", "/admin/groups/edit"))
    page.fill('input[name="name"]', "Partners")
    fill_rule(page, "include", "email", "p@partner.test")
    page.click("button:has-text('Create group')")
    page.wait_for_selector("text=Group Partners saved.")
    applied = zg.cli("apply", "-c", str(zg.config))
    assert applied.returncode == 0, applied.stderr
    assert "Kept, not in the file: group Partners (panel)" in " ".join(applied.stdout.split())
    page.context.close()

    for viewport in (DESKTOP, PHONE):
        page = admin_page(browser, zg, outbox, viewport)
        page.goto(zg.url("auth.localhost", "/admin/groups"))
        staff = page.locator("tr", has=page.locator("a", has_text="Staff"))
        partners = page.locator("tr", has=page.locator("a", has_text="Partners"))
        assert staff.locator(".badge.owner").inner_text() == "file"
        assert partners.locator(".badge.owner").inner_text() == "panel"
        no_sideways_scroll(page)

        page.click("a:has-text('Staff')")
        warning = page.locator("#file-managed")
        warning.wait_for()
        assert "next apply from the file will overwrite an edit made here" in " ".join(
            warning.inner_text().split()
        )
        no_sideways_scroll(page)

        page.goto(zg.url("auth.localhost", "/admin/groups/edit?name=Partners"))
        assert page.locator("#file-managed").count() == 0
        assert "keeps it unless --prune" in " ".join(page.locator("#owner").inner_text().split())
        no_sideways_scroll(page)
        page.context.close()


def test_sessions_on_the_portal_and_in_the_panel_on_a_phone(
    browser: Browser, zg: Zerogate, outbox: ThreadedOutbox
) -> None:
    phone = user_page(browser, zg, outbox, PHONE)
    laptop = user_page(browser, zg, outbox, DESKTOP)

    phone.goto(zg.url("auth.localhost", "/"))
    phone.click("a:has-text('Your sessions')")
    phone.wait_for_url(re.compile(r"/\.zerogate/sessions$"))
    sessions = phone.locator("li.session")
    assert sessions.count() == 2
    current = phone.locator("li.session.current")
    assert current.count() == 1 and "this device" in current.inner_text()
    assert "Headless Chrome on Linux" in sessions.first.inner_text()
    no_sideways_scroll(phone)

    # end the laptop's session from the phone: the laptop is signed out of the wiki
    phone.locator("li.session:not(.current) button").click()
    phone.wait_for_selector("text=The session is ended.")
    assert phone.locator("li.session").count() == 1
    no_sideways_scroll(phone)
    laptop.goto(zg.url("wiki.localhost", "/"))
    laptop.wait_for_url(re.compile(r"/\.zerogate/login\?flow="))

    # an administrator ends the phone's, from the panel on a phone
    admin = admin_page(browser, zg, outbox, PHONE)
    admin.goto(zg.url("auth.localhost", "/admin/sessions?email=" + USER))
    rows = admin.locator("#sessions tbody tr")
    assert rows.count() == 1 and USER in rows.first.inner_text()
    no_sideways_scroll(admin)
    rows.first.locator("button:has-text('End')").click()
    admin.wait_for_selector(f"text=The session of {USER}")
    assert admin.locator("#sessions").count() == 0
    phone.goto(zg.url("wiki.localhost", "/"))
    phone.wait_for_url(re.compile(r"/\.zerogate/login\?flow="))
    # the administrator's own session is listed and marked
    admin.goto(zg.url("auth.localhost", "/admin/sessions"))
    assert "you, here" in admin.locator("#sessions").inner_text()
    no_sideways_scroll(admin)
    for page in (phone, laptop, admin):
        page.context.close()


def test_the_launcher_and_signing_out_on_a_phone(
    browser: Browser, zg: Zerogate, outbox: ThreadedOutbox
) -> None:
    """The portal's home lists what this person may open (wiki, not payroll), its link opens
    the application without another login, and its sign-out ends the sessions; the admin
    panel's header signs out too — at 390 px wide, with nothing scrolling sideways."""
    phone = user_page(browser, zg, outbox, PHONE)
    phone.goto(zg.url("auth.localhost", "/"))
    launcher = phone.locator("ul.launcher a")
    assert launcher.all_inner_texts() == ["wiki"]
    assert "Administration" not in phone.locator("main, body").first.inner_text()
    no_sideways_scroll(phone)
    launcher.first.click()
    phone.wait_for_url(re.compile(r"^http://wiki\.localhost:\d+/$"))  # single sign-on
    phone.goto(zg.url("auth.localhost", "/"))
    phone.click("a:has-text('Sign out')")
    phone.wait_for_url(re.compile(r"/\.zerogate/logout$"))
    no_sideways_scroll(phone)
    phone.click("button:has-text('Sign out of every application')")
    phone.wait_for_load_state()
    phone.goto(zg.url("wiki.localhost", "/"))
    phone.wait_for_url(re.compile(r"/\.zerogate/login\?flow="))
    phone.goto(zg.url("auth.localhost", "/"))
    assert phone.locator("ul.launcher").count() == 0
    assert "not signed in" in phone.content()

    admin = admin_page(browser, zg, outbox, PHONE)
    assert admin.locator("ul.launcher").count() == 0  # the panel, not the portal
    no_sideways_scroll(admin)
    admin.locator("header.top a.signout").click()
    admin.wait_for_url(re.compile(r"/\.zerogate/logout$"))
    admin.click("button:has-text('Sign out of every application')")
    admin.wait_for_load_state()
    admin.goto(zg.url("auth.localhost", "/admin"))
    admin.wait_for_url(re.compile(r"/\.zerogate/login\?flow="))
    for page in (phone, admin):
        page.context.close()
