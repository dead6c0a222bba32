"""#15 "fail closed at start, mail that tells the truth": a server without ``-c`` or with a PIN
login and no way to send mail refuses to start; ``email: {outbox: true}`` is announced on the
login pages; ``zerogate email test`` reports what a real SMTP server said; SMTP with a username
needs TLS. Real server processes (``zg_harness``) and a real SMTP server (``zerogate.outbox``)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import free_port, wait_for
from zg_harness import (
    HttpBrowser,
    ThreadedOutbox,
    VerifyingOrigin,
    Zerogate,
    hidden_inputs,
    login_page,
    request_pin,
    run_cli,
    submit_pin,
)

BODY = """
identity_providers: [{{name: otp, type: onetimepin}}]
applications:
  - name: wiki
    domain: wiki.localhost
    origin: http://127.0.0.1:{origin_port}
    policies:
      - {{name: staff, decision: allow, include: [{{email_domain: [example.com]}}]}}
"""


def with_email(zg: Zerogate, body: str, email: str) -> None:
    """Write ``zg``'s config with ``email`` (a YAML line, or "" for none) instead of the
    harness's SMTP settings, and apply its objects."""
    zg.write(body)
    text = zg.config.read_text()
    text = re.sub(r"^email: .*\n", email + ("\n" if email else ""), text, flags=re.M)
    zg.config.write_text(text)
    result = zg.cli("apply", "-c", str(zg.config))
    assert result.returncode == 0, result.stderr


@pytest.fixture
def outbox() -> Iterator[ThreadedOutbox]:
    box = ThreadedOutbox().start()
    yield box
    box.stop()


def test_server_without_a_config_file_refuses_to_start(tmp_path: Path) -> None:
    result = run_cli("server")
    assert result.returncode == 2, result.stderr
    assert "needs its configuration file" in result.stderr
    assert "-c FILE" in result.stderr


@pytest.mark.e2e
def test_a_pin_login_without_a_way_to_send_mail_refuses_to_start(tmp_path: Path) -> None:
    zg = Zerogate(tmp_path, free_port(), free_port())
    with_email(zg, BODY.format(origin_port=free_port()), "")
    result = zg.cli("server", "-c", str(zg.config))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "login method 'otp' (type: onetimepin) mails a PIN" in result.stderr
    assert "email.smtp" in result.stderr and "outbox: true" in result.stderr


@pytest.mark.e2e
async def test_outbox_true_is_announced_and_its_codes_log_in(tmp_path: Path) -> None:
    zg = Zerogate(tmp_path, free_port(), free_port())
    origin = VerifyingOrigin(f"http://{zg.portal}/.zerogate/certs", f"https://{zg.portal}").start()
    try:
        with_email(zg, BODY.format(origin_port=origin.port), "email: {outbox: true}")
        zg.start()
        async with HttpBrowser() as browser:
            page = await login_page(browser, zg, "wiki.localhost")
            assert "This server does not send email" in page.reply.text
            assert "We will email you" not in page.reply.text
            asked = await request_pin(browser, zg, page.fields, "ann@example.com")
            assert asked.status == 200
            assert "appears in the server's local outbox" in asked.text
            assert "on its way" not in asked.text

            async def pin() -> str | None:
                shown = await browser.get(f"http://{zg.portal}/.zerogate/outbox")
                assert shown.status == 200
                found = re.search(r'<td>ann@example\.com</td>.*?class="pin">(\d{6})<', shown.text)
                return found.group(1) if found else None

            # the PIN is mailed after the page was answered: wait for the outbox page
            code = await wait_for(pin, timeout=10, what="the PIN on the outbox page")
            verified = await submit_pin(
                browser, zg, hidden_inputs(asked.text), "ann@example.com", code
            )
            assert verified.status == 302, verified.text[:500]
            assert verified.location is not None and "/.zerogate/authorized?code=" in (
                verified.location
            )
    finally:
        zg.stop()
        origin.stop()


@pytest.mark.e2e
async def test_with_smtp_the_pin_page_does_not_claim_the_mail_was_sent(
    tmp_path: Path, outbox: ThreadedOutbox
) -> None:
    """The page is answered before the PIN is mailed (in the background): it says the code
    is on its way, not that it was sent."""
    zg = Zerogate(tmp_path, free_port(), outbox.port)
    zg.apply(BODY.format(origin_port=free_port()))
    zg.start()
    try:
        async with HttpBrowser() as browser:
            page = await login_page(browser, zg, "wiki.localhost")
            assert "We will email you a 6-digit code" in page.reply.text
            assert "does not send email" not in page.reply.text
            mark = outbox.mark()
            asked = await request_pin(browser, zg, page.fields, "ann@example.com")
            assert "a 6-digit code is on its way" in asked.text
            assert "we have sent" not in asked.text
            assert (await outbox.wait_async("ann@example.com", after=mark)).pin is not None
            outbox_page = await browser.get(f"http://{zg.portal}/.zerogate/outbox")
            assert outbox_page.status == 404  # no outbox: nothing to show
    finally:
        zg.stop()


def _email_config(tmp_path: Path, smtp: str) -> Path:
    path = tmp_path / "mail.yaml"
    path.write_text(f'email: {{smtp: {smtp}, from: "Access <noreply@example.test>"}}\n')
    return path


def test_email_test_sends_and_prints_what_the_server_said(
    tmp_path: Path, outbox: ThreadedOutbox
) -> None:
    config = _email_config(tmp_path, f"{{host: 127.0.0.1, port: {outbox.port}, timeout: 5s}}")
    mark = outbox.mark()
    result = run_cli("email", "test", "--to", "ops@example.com", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "accepted the test message for ops@example.com" in result.stdout
    assert f"127.0.0.1:{outbox.port}" in result.stdout
    assert re.search(r"greeting\s+220 ", result.stdout), result.stdout
    message = outbox.wait("ops@example.com", after=mark)
    assert message.subject == "zerogate test email"
    as_json = run_cli("email", "test", "--to", "ops@example.com", "-c", str(config), "--json")
    data = json.loads(as_json.stdout)
    assert data["sent"] is True and data["tls"] == "none"
    assert data["greeting"].startswith("220 ")
    assert data["reply"]


def test_email_test_fails_with_the_reason(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    config = _email_config(tmp_path, f"{{host: 127.0.0.1, port: {port}, timeout: 5s}}")
    result = run_cli("email", "test", "--to", "ops@example.com", "-c", str(config))
    assert result.returncode == 1, result.stdout
    assert "was not sent" in result.stderr
    assert f"SMTP 127.0.0.1:{port}: connection refused" in result.stderr


def test_email_test_refuses_a_bad_address_and_an_outbox_config(tmp_path: Path) -> None:
    config = _email_config(tmp_path, "{host: 127.0.0.1, port: 25}")
    bad = run_cli("email", "test", "--to", "ops@example.com, eve@evil.test", "-c", str(config))
    assert bad.returncode == 2 and "--to:" in bad.stderr
    (tmp_path / "outbox.yaml").write_text("email: {outbox: true}\n")
    box = run_cli("email", "test", "--to", "ops@example.com", "-c", str(tmp_path / "outbox.yaml"))
    assert box.returncode == 2 and "sends no email" in box.stderr


def test_smtp_auth_without_tls_is_refused_by_the_config_check(tmp_path: Path) -> None:
    insecure = _email_config(
        tmp_path, "{host: smtp.example.com, port: 25, username: app, password_env: SMTP_PW}"
    )
    result = run_cli("check", "-c", str(insecure))
    assert result.returncode == 2
    assert "email.smtp: username is set but the connection is not encrypted" in result.stderr
    assert "allow_insecure_auth: true" in result.stderr
    for ok in ("starttls: true", "tls: true, port: 465", "allow_insecure_auth: true"):
        fine = _email_config(
            tmp_path,
            f"{{host: smtp.example.com, {ok}, username: app, password_env: SMTP_PW}}",
        )
        assert run_cli("check", "-c", str(fine)).returncode == 0, ok
    both = tmp_path / "both.yaml"
    both.write_text("email: {outbox: true, smtp: {host: smtp.example.com}}\n")
    refused = run_cli("check", "-c", str(both))
    assert refused.returncode == 2 and "choose one way to send mail" in refused.stderr


def test_acme_names_the_wildcards_it_cannot_certify_without_dns() -> None:
    from zerogate.model import load_text
    from zerogate.server.run import acme_problem

    body = (
        "listen: {tls: {acme: {email: ops@example.com}}}\n"
        "applications:\n"
        "  - {name: a, domain: a.example.com, origin: 'http://127.0.0.1:9', policies: "
        "[{name: p, decision: allow, include: [{everyone: true}]}]}\n"
        "  - {name: w, domain: '*.dev.example.com/x', origin: 'http://127.0.0.1:9', policies: "
        "[{name: p, decision: allow, include: [{everyone: true}]}]}\n"
    )
    config = load_text(body).config
    problem = acme_problem(config.settings(), config.objects())
    assert problem is not None and "*.dev.example.com can only" in problem
    assert "dns.rfc2136" in problem and "a.example.com" not in problem
    plain = load_text(body.replace("acme: {email: ops@example.com}", "cert: a, key: b")).config
    assert acme_problem(plain.settings(), plain.objects()) is None


def test_email_test_records_its_outcome_for_the_mail_health(
    tmp_path: Path, outbox: ThreadedOutbox
) -> None:
    """`zerogate email test` writes a `mail` row, as the portal does after a PIN email: the
    dashboard's and the API's mail health show the test's success, then its failure."""
    import asyncio

    from zerogate.admin.service import AdminService, MailHealth
    from zerogate.store import Store, storage_url

    url = storage_url("sqlite:///zg.db", base_dir=tmp_path)

    async def health() -> MailHealth:
        store = await Store.open(url)
        try:
            return await AdminService(store).mail_health()
        finally:
            await store.close()

    asyncio.run(health())  # the store exists (as after the first apply)
    config = tmp_path / "mail.yaml"
    smtp = f"{{host: 127.0.0.1, port: {outbox.port}, timeout: 5s}}"
    config.write_text(
        "storage: sqlite:///zg.db\n"
        f'email: {{smtp: {smtp}, from: "Access <noreply@example.test>"}}\n'
    )
    sent = run_cli("email", "test", "--to", "ops@example.com", "-c", str(config))
    assert sent.returncode == 0 and "not recorded" not in sent.stderr, sent.stderr
    got = asyncio.run(health())
    assert got.outcome == "sent" and got.last_sent_at is not None
    assert got.detail is not None and got.detail.startswith("test message: ")
    port = free_port()  # nothing listens there
    config.write_text(config.read_text().replace(str(outbox.port), str(port)))
    failed = run_cli("email", "test", "--to", "ops@example.com", "-c", str(config))
    assert failed.returncode == 1
    got = asyncio.run(health())
    assert got.outcome == "failed" and got.healthy is False
    assert got.last_error is not None and "connection refused" in got.last_error
    # no store yet: the test still runs, and says the outcome was not recorded
    config.write_text(config.read_text().replace("zg.db", "none-yet.db"))
    noted = run_cli("email", "test", "--to", "ops@example.com", "-c", str(config))
    assert noted.returncode == 1 and "was not recorded" in " ".join(noted.stderr.split())
    assert not (tmp_path / "none-yet.db").exists()
