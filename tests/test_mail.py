"""The PIN email and the Mailer, against real SMTP servers on loopback (``zerogate.outbox``)."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import trustme
from aiosmtpd.smtp import SMTP, Envelope, Session

from harness import free_port
from zerogate.mail import Mailer, MailError, PinEmail, render_pin_email, transport_of
from zerogate.model.objects import EmailSettings, Smtp
from zerogate.outbox import Outbox

SENDER = "zerogate <noreply@zerogate.example>"
PASSWORD_ENV = "ZEROGATE_TEST_SMTP_PASSWORD"


def pin_email(to: str = "alice@example.com", app: str = "Wiki", pin: str = "493027") -> PinEmail:
    return PinEmail(
        to=to, pin=pin, app_name=app, confirm_url="https://auth.example.com/otp/confirm?t=abc"
    )


@pytest.fixture
async def outbox() -> AsyncIterator[Outbox]:
    async with Outbox() as box:
        yield box


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


# -- rendering ----------------------------------------------------------------------------


def test_render_pin_email_layout() -> None:
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    message = render_pin_email(pin_email(), sender=SENDER, now=now)
    assert message["Subject"] == "Your sign-in code for Wiki"
    assert "493027" not in message["Subject"]
    assert message["From"] == SENDER
    assert message["To"] == "alice@example.com"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Date"] == "Thu, 02 Jan 2025 03:04:05 +0000"
    assert message["Message-ID"].endswith("@zerogate.example>")
    assert message.get_content_type() == "multipart/alternative"
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    assert text_part is not None and html_part is not None
    text, html = text_part.get_content(), html_part.get_content()
    assert "\n    493027\n" in text
    assert "expires in 10 minutes" in text
    assert "https://auth.example.com/otp/confirm?t=abc" in text
    assert ">493027</p>" in html
    assert 'href="https://auth.example.com/otp/confirm?t=abc"' in html


def test_render_escapes_everything_user_configured() -> None:
    hostile = PinEmail(
        to="alice@example.com",
        pin="111111",
        app_name='<script>alert("x")</script> & Co\r\nBcc: eve@example.com',
        confirm_url='https://auth.example.com/confirm?a=1&b="><script>',
    )
    message = render_pin_email(hostile, sender=SENDER)
    html_part = message.get_body(preferencelist=("html",))
    assert html_part is not None
    html = html_part.get_content()
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; Co" in html
    assert 'href="https://auth.example.com/confirm?a=1&amp;b=&#34;&gt;&lt;script&gt;"' in html
    # no header injection: the line break became a space inside the subject
    assert message["Bcc"] is None
    assert "\n" not in message["Subject"]
    assert message["Subject"].endswith("& Co Bcc: eve@example.com")


@pytest.mark.parametrize("url", ["javascript:alert(1)", "data:text/html,x", "/relative"])
def test_render_refuses_non_http_confirm_url(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        render_pin_email(
            PinEmail(to="a@example.com", pin="123456", app_name="x", confirm_url=url),
            sender=SENDER,
        )


# -- sending to the outbox ----------------------------------------------------------------


async def test_pin_email_reaches_a_real_smtp_server(outbox: Outbox) -> None:
    mailer = Mailer(Smtp(host="127.0.0.1", port=outbox.port), SENDER)
    await mailer.send(render_pin_email(pin_email(), sender=SENDER), "alice@example.com")
    got = await outbox.wait_for("Alice@Example.com", timeout=5)
    assert got.to == "alice@example.com"
    assert got.sender == "noreply@zerogate.example"
    assert got.subject == "Your sign-in code for Wiki"
    assert "493027" not in got.subject
    assert got.pin == "493027"
    assert "493027" in got.text
    assert ">493027</p>" in got.html
    assert "Confirm sign-in" in got.html


async def test_hostile_app_name_is_escaped_in_the_delivered_html(outbox: Outbox) -> None:
    mailer = Mailer(Smtp(host="127.0.0.1", port=outbox.port), SENDER)
    await mailer.send(
        render_pin_email(pin_email(app="<script>x()</script>"), sender=SENDER), "alice@example.com"
    )
    got = await outbox.wait_for("alice@example.com", timeout=5)
    assert "<script>" not in got.html
    assert "&lt;script&gt;x()&lt;/script&gt;" in got.html
    page = outbox.render_html()
    assert "<script>" not in page
    assert "493027" in page


async def test_mailer_without_smtp_delivers_to_the_outbox(outbox: Outbox) -> None:
    mailer = Mailer(None, SENDER, outbox=outbox)
    assert mailer.server.port == outbox.port
    await mailer.send(render_pin_email(pin_email(pin="000042"), sender=SENDER), "alice@example.com")
    assert (await outbox.wait_for("alice@example.com", timeout=5)).pin == "000042"


async def test_a_mailer_without_a_server_or_an_outbox_fails_every_send() -> None:
    with pytest.raises(MailError, match=r"no way to send mail: set email\.smtp") as failed:
        await Mailer(None, SENDER).send(
            render_pin_email(pin_email(), sender=SENDER), "alice@example.com"
        )
    assert failed.value.server_down


async def test_stopped_outbox_is_a_mail_error() -> None:
    box = Outbox()
    with pytest.raises(MailError, match="outbox is not running"):
        await Mailer(None, SENDER, outbox=box).send(
            render_pin_email(pin_email(), sender=SENDER), "alice@example.com"
        )


# -- failures are MailError with a reason -------------------------------------------------


async def test_connection_refused() -> None:
    port = free_port()
    mailer = Mailer(Smtp(host="127.0.0.1", port=port, timeout="2s"), SENDER)
    with pytest.raises(MailError, match="connection refused") as caught:
        await mailer.send(render_pin_email(pin_email(), sender=SENDER), "alice@example.com")
    assert not isinstance(caught.value, OSError)
    assert f"127.0.0.1:{port}" in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_silent_server_times_out_within_the_timeout() -> None:
    async def accept_and_say_nothing(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(accept_and_say_nothing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        mailer = Mailer(Smtp(host="127.0.0.1", port=port, timeout="0.5s"), SENDER)
        started = time.monotonic()
        with pytest.raises(MailError, match=r"timed out after 0\.5s"):
            await mailer.send(render_pin_email(pin_email(), sender=SENDER), "alice@example.com")
        assert time.monotonic() - started < 1.5
    finally:
        server.close()
        await server.wait_closed()


async def test_recipient_refused() -> None:
    class RefuseRecipients:
        async def handle_RCPT(
            self,
            server: SMTP,
            session: Session,
            envelope: Envelope,
            address: str,
            rcpt_options: list[str],
        ) -> str:
            return "550 5.1.1 no such user"

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(RefuseRecipients(), hostname="refuser", loop=loop), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    try:
        mailer = Mailer(Smtp(host="127.0.0.1", port=port), SENDER)
        with pytest.raises(MailError, match=r"recipient refused \(alice@example.com: 550"):
            await mailer.send(render_pin_email(pin_email(), sender=SENDER), "alice@example.com")
    finally:
        server.close()
        await server.wait_closed()


# -- authentication -------------------------------------------------------------------------


@pytest.fixture
async def auth_outbox() -> AsyncIterator[Outbox]:
    async with Outbox(credentials={"mailer": "s3cret pass"}) as box:
        yield box


def auth_smtp(port: int) -> Smtp:
    return Smtp(
        host="127.0.0.1",
        port=port,
        username="mailer",
        password_env=PASSWORD_ENV,
        allow_insecure_auth=True,  # a loopback test server without TLS
    )


async def test_auth_with_the_password_from_the_environment(
    auth_outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "s3cret pass")
    await Mailer(auth_smtp(auth_outbox.port), SENDER).send(
        render_pin_email(pin_email(), sender=SENDER), "alice@example.com"
    )
    assert (await auth_outbox.wait_for("alice@example.com", timeout=5)).pin == "493027"


async def test_auth_with_a_wrong_password(
    auth_outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    with pytest.raises(MailError, match="authentication failed for mailer: 535"):
        await Mailer(auth_smtp(auth_outbox.port), SENDER).send(
            render_pin_email(pin_email(), sender=SENDER), "alice@example.com"
        )
    assert auth_outbox.messages() == []


async def test_server_requires_auth_but_none_configured(auth_outbox: Outbox) -> None:
    with pytest.raises(MailError, match="530"):
        await Mailer(Smtp(host="127.0.0.1", port=auth_outbox.port), SENDER).send(
            render_pin_email(pin_email(), sender=SENDER), "alice@example.com"
        )


async def test_missing_password_variable_is_named(
    auth_outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    mailer = Mailer(auth_smtp(auth_outbox.port), SENDER)
    with pytest.raises(MailError, match=PASSWORD_ENV):
        mailer.check()
    with pytest.raises(MailError, match=PASSWORD_ENV):
        await mailer.send(render_pin_email(pin_email(), sender=SENDER), "alice@example.com")


def test_username_without_password_env_is_a_mail_error() -> None:
    with pytest.raises(MailError, match="password_env is not"):
        Mailer(Smtp(host="127.0.0.1", username="mailer", starttls=True), SENDER).check()


# -- TLS ----------------------------------------------------------------------------------


async def test_starttls_with_a_private_ca_and_auth(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "s3cret pass")
    async with Outbox(tls_context=server_tls, credentials={"mailer": "s3cret pass"}) as box:
        smtp = Smtp(
            host="127.0.0.1",
            port=box.port,
            starttls=True,
            username="mailer",
            password_env=PASSWORD_ENV,
        )
        await Mailer(smtp, SENDER, tls_context=client_tls).send(
            render_pin_email(pin_email(), sender=SENDER), "alice@example.com"
        )
        assert (await box.wait_for("alice@example.com", timeout=5)).pin == "493027"


async def test_starttls_rejects_an_untrusted_certificate(server_tls: ssl.SSLContext) -> None:
    async with Outbox(tls_context=server_tls) as box:
        smtp = Smtp(host="127.0.0.1", port=box.port, starttls=True, timeout="5s")
        with pytest.raises(MailError, match="certificate"):
            await Mailer(smtp, SENDER).send(
                render_pin_email(pin_email(), sender=SENDER), "alice@example.com"
            )
        assert box.messages() == []


async def test_plaintext_against_a_server_requiring_starttls(server_tls: ssl.SSLContext) -> None:
    async with Outbox(tls_context=server_tls) as box:
        with pytest.raises(MailError, match="530"):
            await Mailer(Smtp(host="127.0.0.1", port=box.port), SENDER).send(
                render_pin_email(pin_email(), sender=SENDER), "alice@example.com"
            )


async def test_implicit_tls(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    async with Outbox(tls_context=server_tls, implicit_tls=True) as box:
        smtp = Smtp(host="127.0.0.1", port=box.port, tls=True)
        await Mailer(smtp, SENDER, tls_context=client_tls).send(
            render_pin_email(pin_email(), sender=SENDER), "alice@example.com"
        )
        assert (await box.wait_for("alice@example.com", timeout=5)).pin == "493027"


# -- the outbox itself ----------------------------------------------------------------------


async def test_outbox_wait_for_waits_and_times_out(outbox: Outbox) -> None:
    mailer = Mailer(None, SENDER, outbox=outbox)
    with pytest.raises(TimeoutError):
        await outbox.wait_for("alice@example.com", timeout=0.1)
    waiter = asyncio.create_task(outbox.wait_for("alice@example.com", timeout=5))
    await asyncio.sleep(0)
    assert not waiter.done()
    await mailer.send(render_pin_email(pin_email(pin="111111"), sender=SENDER), "alice@example.com")
    assert (await waiter).pin == "111111"
    # a fresh PIN: ``after`` skips what was already there
    mark = outbox.mark()
    waiter = asyncio.create_task(outbox.wait_for("alice@example.com", timeout=5, after=mark))
    await mailer.send(
        render_pin_email(pin_email(to="bob@example.com"), sender=SENDER), "bob@example.com"
    )
    await mailer.send(render_pin_email(pin_email(pin="222222"), sender=SENDER), "alice@example.com")
    assert (await waiter).pin == "222222"


async def test_outbox_keeps_the_last_n_and_lists_newest_first() -> None:
    async with Outbox(keep=2) as box:
        mailer = Mailer(None, SENDER, outbox=box)
        for pin in ("100001", "100002", "100003"):
            await mailer.send(
                render_pin_email(pin_email(pin=pin), sender=SENDER), "alice@example.com"
            )
        assert [m.pin for m in box.messages()] == ["100002", "100003"]
        page = box.render_html()
        assert "100001" not in page
        assert page.index("100003") < page.index("100002")


async def test_outbox_stop_closes_idle_connections(outbox: Outbox) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", outbox.port)
    assert (await reader.readline()).startswith(b"220 ")
    await asyncio.wait_for(outbox.stop(), timeout=2)
    assert await asyncio.wait_for(reader.read(), timeout=2) == b""
    writer.close()
    assert not outbox.running


def test_empty_outbox_page() -> None:
    assert "No mail yet" in Outbox().render_html()


# -- how mail leaves (the dashboard's mail health) -------------------------------------------


@pytest.mark.parametrize(
    ("settings", "mode", "words"),
    [
        (
            {
                "smtp": {
                    "host": "smtp.example.com",
                    "starttls": True,
                    "username": "a@b.c",
                    "password_env": "P",
                }
            },
            "smtp",
            "SMTP smtp.example.com:587 (STARTTLS, as a@b.c)",
        ),
        ({"smtp": {"host": "mx", "port": 465, "tls": True}}, "smtp", "SMTP mx:465 (implicit TLS)"),
        ({"smtp": {"host": "relay", "port": 25}}, "smtp", "SMTP relay:25 (no TLS)"),
        ({"outbox": True}, "outbox", "stays in this server"),
        ({}, "none", "no way to send mail"),
    ],
)
def test_transport_of_says_how_mail_leaves(
    settings: dict[str, object], mode: str, words: str
) -> None:
    got_mode, got_words = transport_of(EmailSettings.model_validate(settings))
    assert got_mode == mode
    assert words in got_words
