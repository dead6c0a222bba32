"""The tunnel's reason to exist, end to end: an origin that **no one outside its network can
reach** is served to a logged-in browser through the connector.

The origin and the connector run inside their own network namespace (``ip netns``). The origin
listens on the namespace's loopback only; the namespace's one link to the outside is a veth pair
to the host, over which the connector dials the edge's tunnel port (and the origin fetches the
edge's JWKS to verify the assertion, as an origin on another network would). The test first
proves the edge's namespace cannot open a connection to the origin, then logs in with a PIN in
Playwright-driven chromium and reads the origin's page through the tunnel.

Needs root (``ip netns``); CI runs as root, and a missing capability fails the test there.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from harness import free_port, wait_for_port, wait_until
from zg_harness import ThreadedOutbox, Zerogate

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
HERE = Path(__file__).resolve().parent
ZEROGATE = [sys.executable, "-m", "zerogate"]


@dataclass
class Netns:
    """A network namespace joined to the host by one veth pair (host_ip <-> ns_ip, a /30)."""

    name: str
    host_if: str
    host_ip: str
    ns_ip: str

    def popen(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.name, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "NO_COLOR": "1"},
            )

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"ip {' '.join(args)}: {result.stderr.strip()}"


@pytest.fixture(scope="module")
def netns() -> Iterator[Netns]:
    tag = secrets.token_hex(3)
    octet = 16 + secrets.randbelow(200)
    ns = Netns(f"zg{tag}", f"zgh{tag}", f"10.231.{octet}.1", f"10.231.{octet}.2")
    _ip("netns", "add", ns.name)
    try:
        _ip("link", "add", ns.host_if, "type", "veth", "peer", "name", f"zgn{tag}")
        _ip("link", "set", f"zgn{tag}", "netns", ns.name)
        _ip("addr", "add", f"{ns.host_ip}/30", "dev", ns.host_if)
        _ip("link", "set", ns.host_if, "up")
        _ip("-n", ns.name, "addr", "add", f"{ns.ns_ip}/30", "dev", f"zgn{tag}")
        _ip("-n", ns.name, "link", "set", f"zgn{tag}", "up")
        _ip("-n", ns.name, "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns.name], check=False)
        subprocess.run(["ip", "link", "del", ns.host_if], capture_output=True, check=False)


CONFIG = """
identity_providers: [{name: otp, type: onetimepin}]
tunnels:
  - {name: office, routes: [intranet.localhost]}
applications:
  - name: intranet
    domain: intranet.localhost
    tunnel: office
    policies:
      - {name: staff, decision: allow, include: [{email_domain: [example.com]}]}
"""


@pytest.fixture(scope="module")
def outbox() -> Iterator[ThreadedOutbox]:
    box = ThreadedOutbox().start()
    yield box
    box.stop()


@dataclass
class Served:
    zg: Zerogate
    origin_port: int
    connector: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, netns: Netns, outbox: ThreadedOutbox
) -> Iterator[Served]:
    workdir = tmp_path_factory.mktemp("netns")
    # browsers reach the edge on every address (the namespace's origin fetches the JWKS over
    # the veth link); connectors dial the host end of the veth pair
    zg = Zerogate(workdir, free_port(), outbox.port, http_host="0.0.0.0")
    zg.tunnel_listen = f"{netns.host_ip}:{free_port()}"
    zg.apply(CONFIG)
    zg.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        made = zg.cli("tunnel", "token", "office", "--rotate", "--json", "-c", str(zg.config))
        assert made.returncode == 0, made.stderr
        token = json.loads(made.stdout)["token"]
        origin_port = free_port()
        procs.append(
            netns.popen(
                [
                    sys.executable,
                    str(HERE / "netns_origin.py"),
                    str(origin_port),
                    f"http://{netns.host_ip}:{zg.port}/.zerogate/certs",
                    zg.portal,
                    f"https://{zg.portal}",
                ],
                workdir / "origin.log",
            )
        )
        probe = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"]
        wait_until(
            lambda: netns.run([*probe, f"http://127.0.0.1:{origin_port}/"]).stdout == "200",
            timeout=20,
        )
        connector = netns.popen(
            [
                *ZEROGATE,
                "connector",
                "run",
                "--token",
                token,
                "--url",
                f"http://127.0.0.1:{origin_port}",
            ],
            workdir / "connector.log",
        )
        procs.append(connector)
        yield Served(zg, origin_port, connector)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        zg.stop()


def test_the_edge_cannot_reach_the_origin(served: Served, netns: Netns) -> None:
    for address in ("127.0.0.1", netns.ns_ip):
        with pytest.raises(OSError), socket.create_connection((address, served.origin_port), 2):
            pass
    # while inside the namespace the origin answers
    inside = netns.run(["curl", "-s", f"http://127.0.0.1:{served.origin_port}/x"])
    assert "id=path>/x<" in inside.stdout


def test_a_logged_in_browser_reaches_the_origin_through_the_tunnel(
    served: Served, outbox: ThreadedOutbox
) -> None:
    zg = served.zg
    wait_for_port(zg.port, zg.proc)
    with sync_playwright() as p:
        browser: Browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            target = zg.url("intranet.localhost", "/reports/q3?view=full")
            page.goto(target)
            # the policy check comes first: no session, so the portal's login page
            page.wait_for_url(re.compile(rf"http://auth\.localhost:{zg.port}/\.zerogate/login"))
            mark = outbox.mark()
            page.fill('input[name="email"]', "ann@example.com")
            page.click("button[type=submit]")
            page.wait_for_selector('input[autocomplete="one-time-code"]')
            pin = outbox.wait("ann@example.com", after=mark).pin
            assert pin is not None
            page.fill('input[autocomplete="one-time-code"]', pin)
            page.click("form[action='/.zerogate/login/otp/verify'] button[type=submit]")
            page.wait_for_url(target)

            # the connector may still be dialling when the login ends: the edge's 502 page
            # then says so, and a reload after the connector registered reaches the origin
            def through() -> bool:
                if page.locator("#who").count():
                    return True
                page.reload()
                return False

            wait_until(through, timeout=20, interval=0.5)
            assert page.inner_text("#who") == "ann@example.com"
            assert page.inner_text("#jwt") == "verified"
            assert page.inner_text("#sub") == "ann@example.com"
            assert page.inner_text("#path") == "/reports/q3?view=full"
        finally:
            browser.close()
    assert served.connector.poll() is None
