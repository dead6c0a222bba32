"""README "Running it for real", run as written (issue #15): its YAML file and every command of
its shell block, in order, in one bash, then the PIN login it promises, in Chromium.

What stands in for the reader's machine, each replaced in the README's own text (and each
replacement must match exactly once, so the test breaks when the README changes under it):
``/etc/zerogate`` is a temporary folder; port 443 a free loopback port (the portal URL carries
it); ``smtp.example.com:587`` a real SMTP server (aiosmtpd via ``zerogate.outbox``) that
requires STARTTLS and the password typed at the ``read`` prompt, with a test CA the zerogate
processes trust through ``SSL_CERT_FILE``; the app at port 3000 a test origin; the DNS records
Chromium's host resolver rules (``*.example.com`` → 127.0.0.1); the certificates of step 3 a
test CA's, put where step 3 says.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from playwright.sync_api import sync_playwright

from harness import free_port, wait_for_port
from zerogate.outbox import Outbox
from zg_harness import ThreadedOutbox, VerifyingOrigin

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
SECTION = "## Running it for real"
PASSWORD = "correct horse battery staple"


def section(text: str, title: str) -> str:
    start = text.index(title + "\n")
    end = text.find("\n## ", start + len(title))
    return text[start : end if end >= 0 else None]


def fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.S | re.M)


def replace_once(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert text.count(old) == 1, f"the README no longer has {old!r} exactly once"
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def smtp(ca: trustme.CA) -> Iterator[ThreadedOutbox]:
    """The reader's SMTP account: STARTTLS required, then AUTH as access@example.com."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    box = ThreadedOutbox()
    box.outbox = Outbox(port=0, credentials={"access@example.com": PASSWORD}, tls_context=context)
    box.start()
    yield box
    box.stop()


def test_the_readme_walkthrough_ends_in_a_pin_login(
    tmp_path: Path, ca: trustme.CA, smtp: ThreadedOutbox
) -> None:
    readme = section((ROOT / "README.md").read_text(encoding="utf-8"), SECTION)
    [config] = fenced(readme, "yaml")
    [commands] = fenced(readme, "sh")
    etc = tmp_path / "etc-zerogate"
    etc.mkdir()
    port = free_port()
    origin = VerifyingOrigin(f"https://auth.example.com:{port}/.zerogate/certs", "-").start()
    places = {"/etc/zerogate": str(etc)}

    # step 3: the certificates, where the README puts them
    (etc / "tls").mkdir()
    cert = ca.issue_cert("auth.example.com", "wiki.example.com")
    cert.cert_chain_pems[0].write_to_path(str(etc / "tls" / "fullchain.pem"))
    cert.private_key_pem.write_to_path(str(etc / "tls" / "privkey.pem"))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    # step 4: the file, with this machine's ports and SMTP server
    (etc / "zerogate.yaml").write_text(
        replace_once(
            config,
            {
                "portal: https://auth.example.com\n": f"portal: https://auth.example.com:{port}\n",
                '"0.0.0.0:443"': f'"127.0.0.1:{port}"',
                "host: smtp.example.com, port: 587": f"host: 127.0.0.1, port: {smtp.port}",
                "http://127.0.0.1:3000": f"http://127.0.0.1:{origin.port}",
            },
        )
    )

    # step 5: the commands, in one shell, the way a reader pastes them
    script = "set -euo pipefail\n" + replace_once(commands, places)
    log = tmp_path / "walkthrough.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ZEROGATE_")},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "SSL_CERT_FILE": str(ca_file),
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    mark = smtp.mark()
    with open(log, "wb") as output:
        shell = subprocess.Popen(
            ["bash", "-c", script],
            stdin=subprocess.PIPE,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
            start_new_session=True,  # its own process group: the server and its workers
        )
    try:
        assert shell.stdin is not None
        shell.stdin.write(PASSWORD.encode() + b"\n")  # typed at the `read -rs` prompt
        shell.stdin.close()
        wait_for_port(port, shell, timeout=90)
        text = log.read_text(errors="replace")
        # `email test` went through the reader's SMTP server, over STARTTLS, logged in
        test_mail = smtp.wait("you@example.com", after=mark)
        assert "STARTTLS" in text and "access@example.com" in text, text
        assert (etc / "secrets.key").stat().st_mode & 0o077 == 0
        assert (etc / "zerogate.db").is_file()

        # step 6: the sign-in, in a browser that resolves the names to this machine
        after_test = test_mail.seq
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--host-resolver-rules=MAP *.example.com 127.0.0.1",
                ],
            )
            try:
                context = browser.new_context(ignore_https_errors=True)
                context.set_default_timeout(20_000)
                page = context.new_page()
                page.goto(f"https://wiki.example.com:{port}/")
                page.wait_for_url(
                    re.compile(rf"https://auth\.example\.com:{port}/\.zerogate/login\?")
                )
                page.fill('input[name="email"]', "you@example.com")
                page.click("button[type=submit]")
                page.wait_for_selector('input[autocomplete="one-time-code"]')
                message = smtp.wait("you@example.com", after=after_test)
                assert message.pin is not None
                page.fill('input[autocomplete="one-time-code"]', message.pin)
                page.click("button[type=submit]")
                page.wait_for_url(f"https://wiki.example.com:{port}/")
                assert '"email": "you@example.com"' in page.content()
            finally:
                browser.close()
        assert origin.seen and origin.seen[-1]["email"] == "you@example.com"
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGINT)
            try:
                shell.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(shell.pid, signal.SIGKILL)
                shell.wait(5)
        origin.stop()
