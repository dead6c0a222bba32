"""The README's demo as a new user meets it: `zerogate demo`, a browser, a PIN from the outbox."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from harness import free_port, wait_for_port, wait_until

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


DATA: dict[int, Path] = {}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    data = tmp_path_factory.mktemp("demo")
    DATA[port] = data
    log = open(data / "demo.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "zerogate", "demo", "--port", str(port), "--data-dir", str(data)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "120"},
    )
    try:
        wait_for_port(port, proc)
        yield port
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        text = (data / "demo.log").read_text(errors="replace")
        assert f"http://hello.localhost:{port}/" in text  # the URLs to open were printed


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def outbox_pin(ctx: BrowserContext, port: int, email: str) -> str:
    """The PIN mailed to ``email``, once the outbox page shows it (mail is sent in the
    background, after the page that asked for it answered)."""
    mailbox = ctx.new_page()
    pattern = re.compile(re.escape(email) + r"[\s\S]*?(\d{6})")

    def arrived() -> str | None:
        mailbox.goto(f"http://auth.localhost:{port}/.zerogate/outbox")
        match = pattern.search(mailbox.locator("body").inner_text())
        return match.group(1) if match else None

    pin = wait_until(arrived, timeout=10, what=f"a PIN for {email} in the outbox", interval=0.1)
    mailbox.close()
    return pin


def log_in(ctx: BrowserContext, page: Page, port: int, email: str) -> None:
    """From the login page ``page`` shows, log in as ``email`` with the PIN from the outbox."""
    page.fill('input[name="email"]', email)
    page.click("button[type=submit]")
    page.wait_for_selector('input[autocomplete="one-time-code"]')
    page.fill('input[autocomplete="one-time-code"]', outbox_pin(ctx, port, email))
    page.click("form[action='/.zerogate/login/otp/verify'] button[type=submit]")


def test_a_new_user_logs_in_with_a_pin_from_the_outbox(
    demo: int, browser: Browser, tmp_path: Path
) -> None:
    ctx = browser.new_context()
    ctx.set_default_timeout(15_000)
    page = ctx.new_page()
    page.goto(f"http://hello.localhost:{demo}/")
    page.wait_for_url(re.compile(r"auth\.localhost.*/\.zerogate/login\?flow="))
    page.screenshot(path=str(tmp_path / "login.png"))
    log_in(ctx, page, demo, "you@example.com")
    page.wait_for_url(f"http://hello.localhost:{demo}/")
    body = page.locator("body").inner_text()
    assert "hello, you@example.com" in body
    assert "The signature verified against /.zerogate/certs." in body
    page.screenshot(path=str(tmp_path / "app.png"))

    page.goto(f"http://hello.localhost:{demo}/finance")  # loopback is the demo's office
    assert "hello, you@example.com" in page.locator("body").inner_text()
    ctx.close()


def test_a_partner_is_refused_elsewhere_and_strangers_get_no_pin(
    demo: int, browser: Browser
) -> None:
    ctx = browser.new_context()
    ctx.set_default_timeout(15_000)
    page = ctx.new_page()
    page.goto(f"http://hello.localhost:{demo}/public/anything")
    assert "No identity (a bypass policy let this in)." in page.locator("body").inner_text()
    # a stranger asks for a PIN: the page looks the same, but no mail is sent
    page.goto(f"http://hello.localhost:{demo}/")
    page.fill('input[name="email"]', "stranger@nowhere.test")
    page.click("button[type=submit]")
    page.wait_for_selector('input[autocomplete="one-time-code"]')
    # a partner (allowed on hello, not on finance) logs in after the stranger asked: once the
    # partner's PIN arrived, the stranger's would have too
    page.goto(f"http://hello.localhost:{demo}/")
    log_in(ctx, page, demo, "alice@partner.test")
    page.wait_for_url(f"http://hello.localhost:{demo}/")
    assert "hello, alice@partner.test" in page.locator("body").inner_text()
    page.goto(f"http://auth.localhost:{demo}/.zerogate/outbox")
    outbox = page.locator("body").inner_text()
    assert "alice@partner.test" in outbox and "stranger@nowhere.test" not in outbox
    # the partner's session does not open finance (staff from the office only): 403, blocked
    refused = page.goto(f"http://hello.localhost:{demo}/finance")
    assert refused is not None and refused.status == 403
    body = page.locator("body").inner_text()
    assert "Access denied" in body and "hello, alice" not in body
    ctx.close()


def test_the_demo_origin_is_served_through_a_tunnel(demo: int) -> None:
    config = DATA[demo] / "demo.yaml"
    assert "tunnel: demo-office" in config.read_text()
    assert "origin:" not in config.read_text()  # no application reaches an origin directly

    def connected() -> bool:
        listed = subprocess.run(
            [sys.executable, "-m", "zerogate", "tunnel", "list", "--json", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert listed.returncode == 0, listed.stderr
        [tunnel] = json.loads(listed.stdout)["tunnels"]
        return bool(tunnel["name"] == "demo-office" and tunnel["connections"] >= 1)

    wait_until(connected, timeout=30, interval=0.5)
