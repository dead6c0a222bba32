"""The portal's home is an app launcher: the applications this person may open now, judged by
the same policies with their identity and network; administration for administrators."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import free_port
from zg_harness import HttpBrowser, ThreadedOutbox, VerifyingOrigin, Zerogate, login

pytestmark = pytest.mark.e2e

CONFIG = """
identity_providers: [{{name: otp, type: onetimepin}}]
admins: [ops@example.com]
applications:
  - name: wiki
    domain: wiki.localhost
    origin: http://127.0.0.1:{port}
    policies:
      - {{name: staff, decision: allow, include: [{{email_domain: [example.com]}}]}}
  - name: payroll
    domain: payroll.localhost
    origin: http://127.0.0.1:{port}
    policies:
      - {{name: hr, decision: allow, include: [{{email: [hr@example.com]}}]}}
  - name: office
    domain: wiki.localhost/office
    origin: http://127.0.0.1:{port}
    policies:
      - {{name: in the office, decision: allow, include: [{{email_domain: [example.com]}}],
          require: [{{ip: [203.0.113.0/24]}}]}}
  - name: status
    domain: status.localhost
    origin: http://127.0.0.1:{port}
    policies:
      - {{name: public, decision: bypass, include: [{{everyone: true}}]}}
  - name: dev
    domain: "*.dev.localhost"
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
    port = free_port()
    origin = VerifyingOrigin(
        f"http://auth.localhost:{port}/.zerogate/certs", f"https://auth.localhost:{port}"
    ).start()
    zerogate = Zerogate(Path(tmp_path_factory.mktemp("zg-home")), port, outbox.port)
    try:
        zerogate.apply(CONFIG.format(port=origin.port))
        zerogate.start()
        yield zerogate
    finally:
        zerogate.stop()
        origin.stop()


def links(page: str) -> dict[str, str]:
    return {name: url for url, name in re.findall(r'<a href="([^"]+)">([^<]+)</a>', page)}


async def test_the_launcher_lists_what_this_person_may_open_from_here(
    zg: Zerogate, outbox: ThreadedOutbox
) -> None:
    async with HttpBrowser() as browser:
        anonymous = await browser.get(zg.url("auth.localhost", "/"))
        assert anonymous.status == 200 and "not signed in" in anonymous.text
        await login(browser, zg, outbox, "wiki.localhost", "ann@example.com")
        home = await browser.get(zg.url("auth.localhost", "/"))
        assert home.status == 200, home.text[:300]
        found = links(home.text)
        # allowed (wiki) and bypass (status); not payroll (policy), not office (network),
        # not the wildcard (no one host), no administration for a non-admin
        assert found.get("wiki") == zg.url("wiki.localhost", "/")
        assert found.get("status") == zg.url("status.localhost", "/")
        assert "payroll" not in found and "office" not in found and "dev" not in found
        assert "Administration" not in found
        assert found.get("Sign out") == "/.zerogate/logout"
        assert "ann@example.com" in home.text


async def test_an_administrator_also_sees_administration(
    zg: Zerogate, outbox: ThreadedOutbox
) -> None:
    async with HttpBrowser() as browser:
        await login(browser, zg, outbox, "wiki.localhost", "ops@example.com")
        found = links((await browser.get(zg.url("auth.localhost", "/"))).text)
        assert found.get("Administration") == "/admin/" and "wiki" in found
