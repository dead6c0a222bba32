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
from playwright.sync_api import Browser, sync_playwright

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


def test_a_new_user_logs_in_with_a_pin_from_the_outbox(
    demo: int, browser: Browser, tmp_path: Path
) -> None:
    ctx = browser.new_context()
    ctx.set_default_timeout(15_000)
    page = ctx.new_page()
    page.goto(f"http://hello.localhost:{demo}/")
    page.wait_for_url(re.compile(r"auth\.localhost.*/\.zerogate/login\?flow="))
    page.screenshot(path=str(tmp_path / "login.png"))
    page.fill('input[name="email"]', "you@example.com")
    page.click("button[type=submit]")
    page.wait_for_selector('input[autocomplete="one-time-code"]')

    mailbox = ctx.new_page()
    pin = None
    for _ in range(50):  # the outbox page shows the PIN as soon as the mail arrived
        mailbox.goto(f"http://auth.localhost:{demo}/.zerogate/outbox")
        match = re.search(r"you@example\.com[\s\S]*?(\d{6})", mailbox.locator("body").inner_text())
        if match:
            pin = match.group(1)
            break
        mailbox.wait_for_timeout(100)
    assert pin is not None, "no PIN reached the outbox"

    page.fill('input[autocomplete="one-time-code"]', pin)
    page.click("form[action='/.zerogate/login/otp/verify'] button[type=submit]")
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
    page = ctx.new_page()
    page.goto(f"http://hello.localhost:{demo}/public/anything")
    assert "No identity (a bypass policy let this in)." in page.locator("body").inner_text()
    page.goto(f"http://hello.localhost:{demo}/")
    page.fill('input[name="email"]', "stranger@nowhere.test")
    page.click("button[type=submit]")
    page.wait_for_selector('input[autocomplete="one-time-code"]')
    page.goto(f"http://auth.localhost:{demo}/.zerogate/outbox")
    assert "stranger@nowhere.test" not in page.locator("body").inner_text()
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
