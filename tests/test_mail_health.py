"""Mail health on the dashboard and in the admin API (issue #15): how PIN mail leaves, the
latest send's outcome and the latest failure with its time, for a real SMTP server that
works and then goes away. Every process writes ``mail`` rows to the access log, so what one
node saw every node's dashboard shows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import free_port, wait_for
from zerogate.admin.service import Actor, AdminService
from zg_harness import (
    HttpBrowser,
    ThreadedOutbox,
    VerifyingOrigin,
    Zerogate,
    login,
    login_page,
    open_store,
    request_pin,
)

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
    zerogate = Zerogate(Path(tmp_path_factory.mktemp("zg-mail")), port, outbox.port)
    try:
        zerogate.apply(CONFIG.format(port=origin.port))
        zerogate.start()
        yield zerogate
    finally:
        zerogate.stop()
        origin.stop()


async def api_token(zg: Zerogate) -> str:
    async with open_store(zg) as store:
        _, text = await AdminService(store).create_api_token(
            "health", read_only=True, expires="1d", actor=Actor("test")
        )
    return text


async def health(browser: HttpBrowser, zg: Zerogate, token: str) -> dict[str, Any]:
    reply = await browser.get(
        f"http://{zg.portal}/api/v1/mail-health",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
    )
    assert reply.status == 200, reply.text[:300]
    data: dict[str, Any] = json.loads(reply.text)
    return data


async def test_the_dashboard_and_the_api_show_a_send_and_then_a_failure(
    zg: Zerogate, outbox: ThreadedOutbox
) -> None:
    token = await api_token(zg)
    async with HttpBrowser() as api:
        before = await health(api, zg, token)
        assert before["mode"] == "smtp"
        assert before["transport"] == f"SMTP 127.0.0.1:{outbox.port} (no TLS)"
        assert before["outcome"] is None and before["healthy"] is None

        async with HttpBrowser() as admin:
            # a PIN login sends one message: the latest outcome is "sent"
            await login(admin, zg, outbox, "wiki.localhost", "ops@example.com")

            async def sent() -> dict[str, Any] | None:
                got = await health(api, zg, token)
                return got if got["outcome"] == "sent" else None

            ok = await wait_for(sent, timeout=15, what="the send in the mail health")
            assert ok["healthy"] is True and ok["last_sent_at"] is not None
            assert "accepted" in ok["detail"], ok  # the SMTP server's own reply
            assert ok["last_error"] is None
            page = await admin.get(f"http://{zg.portal}/admin/")
            assert page.status == 200, page.text[:300]
            assert 'id="mail-health"' in page.text
            assert f"SMTP 127.0.0.1:{outbox.port}" in page.text
            assert ">sent<" in page.text

            # the SMTP server goes away: the next PIN cannot be sent
            asyncio.run_coroutine_threadsafe(outbox.outbox.stop(), outbox.loop).result(10)
            try:
                async with HttpBrowser() as someone:
                    page_fields = (await login_page(someone, zg, "wiki.localhost")).fields
                    await request_pin(someone, zg, page_fields, "ann@example.com")

                async def failed() -> dict[str, Any] | None:
                    got = await health(api, zg, token)
                    return got if got["outcome"] == "failed" else None

                bad = await wait_for(failed, timeout=15, what="the failure in the mail health")
            finally:
                asyncio.run_coroutine_threadsafe(outbox.outbox.start(), outbox.loop).result(10)
            assert bad["healthy"] is False
            assert f"127.0.0.1:{outbox.port}" in bad["last_error"], bad
            assert bad["last_error_at"] is not None
            assert bad["last_sent_at"] == ok["last_sent_at"]  # the earlier success stays
            page = await admin.get(f"http://{zg.portal}/admin/")
            assert ">failed<" in page.text
            assert bad["last_error"] in page.text.replace("&#39;", "'")
    # the same rows on the command line
    listed = zg.cli("logs", "--kind", "mail", "-c", str(zg.config))
    assert listed.returncode == 0, listed.stderr
    assert "failed" in listed.stdout and "sent" in listed.stdout, listed.stdout
