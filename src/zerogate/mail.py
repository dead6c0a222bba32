"""Sending the one-time PIN email over SMTP with aiosmtplib.

This module owns two things: *rendering* the PIN email (``render_pin_email``, a pure function)
and *sending* any message (``Mailer.send``). It keeps no state between sends and decides
nothing about who may get a PIN; the portal does that (see ``zerogate.identity.otp``).

The email:

- Subject ``Your sign-in code for <app>``. The PIN is never in the subject: subjects show on
  lock screens and in notification previews.
- ``multipart/alternative``: a plain-text part with the PIN alone on its own line, and an HTML
  part with the PIN in large type and a button to ``confirm_url``. That URL opens a
  confirmation page with a POST button, never a direct login, so a mail scanner that fetches
  links does not use the PIN up. Everything user-configured (the application name) is escaped
  in the HTML and stripped of control characters in headers.
- ``Date``, ``Message-ID``, ``Auto-Submitted: auto-generated`` (RFC 3834, so vacation
  responders stay quiet) and ``X-Auto-Response-Suppress: All`` (the same for Exchange).

Sending (``Mailer``):

- ``email.smtp`` set: host, port, ``tls`` (implicit TLS, usually port 465) or ``starttls``
  (upgrade, usually port 587) or neither (plaintext: ``starttls: false`` means *no* upgrade,
  not "opportunistic"), ``username`` + the password read from the environment variable named by
  ``password_env`` at every send (so a rotated secret needs no restart), and ``timeout``, which
  bounds the *whole* exchange (connect, greeting, EHLO, TLS, AUTH, MAIL, RCPT, DATA).
- ``email.outbox: true`` (no ``email.smtp``): mail goes over SMTP to the in-process outbox
  (``zerogate.outbox.Outbox``), so the demo and tests exercise the very same code path.
- Certificates are checked against the system trust store. There is no ``ca_file`` setting yet
  (that would be a model change); code and tests that need a private CA pass ``tls_context``.
- ``send(message, to)`` delivers to exactly one envelope recipient, ``to``, a canonical address
  (``zerogate.model.values.check_email``) passed to the SMTP client explicitly: the ``To:``
  header is built from that address's parts and never parsed back for recipients.
- ``send`` raises ``MailError`` (one line saying what went wrong: connection refused,
  authentication failed, timed out, recipient refused, certificate not trusted, missing
  password variable) and nothing else; cancellation still propagates. ``server_down`` tells
  the two kinds apart: the server could not be used at all (connect, TLS, AUTH, sender
  refused: mail is down for everybody) or only this message failed (recipient refused, data
  refused, an error during this transaction: nobody else is affected).

The portal should send in the background, not while the login page waits: the page must look
the same, and take the same time, whether or not a PIN was sent (the page says the same thing
whether or not the address may log in, so it tells no one which addresses may).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
import re
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiosmtplib
import jinja2

from zerogate.model.objects import EmailSettings, Smtp
from zerogate.model.values import check_email, parse_duration

if TYPE_CHECKING:
    from zerogate.outbox import Outbox

__all__ = [
    "Delivery",
    "MailError",
    "Mailer",
    "PinEmail",
    "render_pin_email",
    "transport_of",
]

log = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


class MailError(Exception):
    """Sending failed; ``str(error)`` is one line saying why (and which server).

    ``server_down``: True when the SMTP server could not be used at all (so no address gets
    mail: "mail is down"), False when only this message or recipient failed (which must never
    affect anybody else)."""

    def __init__(self, message: str, *, server_down: bool = True) -> None:
        super().__init__(message)
        self.server_down = server_down


@dataclass(frozen=True)
class Delivery:
    """What the SMTP server said while accepting one message (``Mailer.send``)."""

    server: str
    #: ``implicit TLS``, ``STARTTLS`` or ``none``
    tls: str
    greeting: str
    authenticated_as: str | None
    #: the reply to the end of DATA, e.g. ``250 2.0.0 Ok: queued as 4XyZ``
    reply: str


@dataclass(frozen=True)
class PinEmail:
    """What goes into one PIN email."""

    to: str
    pin: str
    app_name: str
    confirm_url: str
    expires_minutes: int = 10


_TEXT = """\
Your sign-in code for {app}:

    {pin}

Enter it on the sign-in page. It works once and expires in {minutes} minutes.

Or confirm in your browser:
{url}

If you did not try to sign in to {app}, ignore this email: nobody can sign in without
the code.
"""

_HTML = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
    """\
<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Your sign-in code for {{ app }}</title></head>
<body style="margin:0;padding:24px;background:#f4f5f7;font-family:-apple-system,\
'Segoe UI',Roboto,Helvetica,Arial,sans-serif;color:#1f2328">
<table role="presentation" width="100%" cellpadding="0" cellspacing="0"><tr><td align="center">
<table role="presentation" cellpadding="0" cellspacing="0" \
style="max-width:480px;width:100%;background:#ffffff;border-radius:8px;padding:32px">
<tr><td>
<p style="margin:0 0 16px;font-size:16px">Your sign-in code for <strong>{{ app }}</strong>:</p>
<p style="margin:0 0 24px;font-size:36px;font-weight:700;letter-spacing:8px;\
font-family:'SFMono-Regular',Consolas,'Liberation Mono',monospace">{{ pin }}</p>
<p style="margin:0 0 24px;font-size:14px">Enter it on the sign-in page. \
It works once and expires in {{ minutes }} minutes.</p>
<p style="margin:0 0 24px"><a href="{{ url }}" style="display:inline-block;\
padding:12px 20px;background:#1f6feb;color:#ffffff;text-decoration:none;border-radius:6px;\
font-weight:600">Confirm sign-in</a></p>
<p style="margin:0;font-size:12px;color:#57606a">If you did not try to sign in to {{ app }}, \
ignore this email: nobody can sign in without the code.</p>
</td></tr></table>
</td></tr></table>
</body>
</html>
"""
)


def _one_line(text: str) -> str:
    """Collapse control characters and line breaks (header injection, odd rendering)."""
    return " ".join(_CONTROL.sub(" ", text).split())


def _domain_of(sender: str) -> str:
    """The domain part of ``"Name <user@example.com>"`` (for the Message-ID)."""
    _, addr = email.utils.parseaddr(sender)
    domain = addr.rpartition("@")[2].strip()
    return domain or "zerogate.localhost"


def render_pin_email(msg: PinEmail, *, sender: str, now: datetime | None = None) -> EmailMessage:
    """Build the PIN email: text + HTML alternatives, PIN in the body only.

    Raises ``ValueError`` for a ``confirm_url`` that is not http(s) or for header values that
    cannot be encoded (an address with a line break): those are caller bugs, not mail errors.
    """
    scheme = urlsplit(msg.confirm_url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"confirm_url must be an http(s) URL, not {msg.confirm_url!r}")
    if not msg.pin.isascii() or not msg.pin.isdigit():
        raise ValueError("pin must be digits")
    app = _one_line(msg.app_name) or "zerogate"
    when = now if now is not None else datetime.now(UTC)

    message = EmailMessage()
    message["Subject"] = f"Your sign-in code for {app}"
    message["From"] = sender
    # built from the parts of the canonical address: the header is never re-parsed for
    # recipients, and the grammar leaves nothing a parser could read as another mailbox
    local, _, domain = check_email(msg.to).partition("@")
    if f"{local}@{domain}" != msg.to:
        raise ValueError(f"the recipient must be a canonical address, not {msg.to!r}")
    message["To"] = Address(username=local, domain=domain)
    message["Date"] = email.utils.format_datetime(when)
    message["Message-ID"] = email.utils.make_msgid(domain=_domain_of(sender))
    message["Auto-Submitted"] = "auto-generated"
    message["X-Auto-Response-Suppress"] = "All"
    message.set_content(
        _TEXT.format(app=app, pin=msg.pin, minutes=msg.expires_minutes, url=msg.confirm_url)
    )
    html = _HTML.render(app=app, pin=msg.pin, minutes=msg.expires_minutes, url=msg.confirm_url)
    message.add_alternative(html, subtype="html")
    return message


def transport_of(settings: EmailSettings) -> tuple[str, str]:
    """``(mode, words)``: how PIN mail leaves a server with these settings, for the dashboard
    and the admin API. ``mode`` is ``smtp``, ``outbox`` (kept inside the server: nobody gets
    it) or ``none`` (no way to send: a PIN login refuses to start)."""
    smtp = settings.smtp
    if smtp is not None:
        tls = "implicit TLS" if smtp.tls else "STARTTLS" if smtp.starttls else "no TLS"
        who = f", as {smtp.username}" if smtp.username else ""
        return "smtp", f"SMTP {smtp.host}:{smtp.port} ({tls}{who})"
    if settings.outbox:
        return "outbox", "the local outbox (a trial: mail stays in this server)"
    return "none", "no way to send mail (set email.smtp)"


class Mailer:
    """Sends messages to one SMTP server (or to the local outbox when ``smtp`` is None; with
    neither, every ``send`` fails with ``MailError``: a server refuses to start that way while a
    PIN login is configured, see ``zerogate.server.run.mail_problem``).

    ``tls_context``: the TLS settings for ``tls``/``starttls`` (for instance trusting a private
    CA); by default the system trust store with hostname checks.
    """

    def __init__(
        self,
        smtp: Smtp | None,
        sender: str,
        *,
        outbox: Outbox | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self._smtp = smtp
        self._outbox = outbox
        self._tls_context = tls_context
        self.sender = sender

    @property
    def server(self) -> Smtp:
        """The SMTP server this mailer talks to (the outbox's address when none is set)."""
        if self._smtp is not None:
            return self._smtp
        assert self._outbox is not None
        return Smtp(host=self._outbox.host, port=self._outbox.port)

    def check(self) -> None:
        """Raise ``MailError`` now if a send would fail on configuration (at startup)."""
        if self._smtp is not None:
            self._credentials(self._smtp)

    @staticmethod
    def _credentials(smtp: Smtp) -> tuple[str | None, str | None]:
        if smtp.username is None and smtp.password_env is None:
            return None, None
        if smtp.username is None:
            raise MailError("email.smtp: password_env is set but username is not")
        if smtp.password_env is None:
            raise MailError("email.smtp: username is set but password_env is not")
        password = os.environ.get(smtp.password_env)
        if not password:
            raise MailError(
                f"email.smtp: the environment variable {smtp.password_env} "
                "(password_env) is not set or empty"
            )
        return smtp.username, password

    @property
    def envelope_sender(self) -> str | None:
        """The ``MAIL FROM`` address: the address of the ``from`` setting (None: none in it)."""
        return email.utils.parseaddr(self.sender)[1] or None

    async def send(self, message: EmailMessage, to: str) -> Delivery:
        """Send ``message`` to the one envelope recipient ``to`` (a canonical address, see
        ``check_email``); the headers are never read for recipients. Raise ``MailError`` on any
        failure; its ``server_down`` says whether the SMTP server could not be used at all
        (connection, TLS, authentication, sender refused) or only this message failed.
        Returns what the server said (``Delivery``)."""
        try:
            canonical: str | None = check_email(to)
        except ValueError:
            canonical = None
        if canonical != to:
            raise MailError(f"not a canonical email address: {to[:100]!r}", server_down=False)
        if self._smtp is None and self._outbox is None:
            raise MailError(
                "no way to send mail: set email.smtp (or email.outbox: true for a local trial)"
            )
        if self._smtp is None and self._outbox is not None and not self._outbox.running:
            raise MailError("the local outbox is not running")
        smtp = self.server
        where = f"{smtp.host}:{smtp.port}"
        client, username, timeout = self._client(smtp)
        connected = False
        try:
            async with asyncio.timeout(timeout):
                greeting = await self._connect(client, smtp, where, username, timeout)
                connected = True
                errors, reply = await self._transfer(client, message, to, where, timeout)
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await client.quit()
        except TimeoutError as exc:  # the whole exchange took too long
            # past the greeting, TLS and login, it is this message's (a slow recipient
            # check, say), not the server's: other addresses still get mail
            raise MailError(
                f"SMTP {where}: timed out after {timeout:g}s", server_down=not connected
            ) from exc
        finally:
            client.close()
        if errors:
            refused = "; ".join(
                f"{rcpt}: {resp.code} {_one_line(resp.message)}" for rcpt, resp in errors.items()
            )
            raise MailError(f"SMTP {where}: recipient refused ({refused})", server_down=False)
        return Delivery(
            server=where,
            tls="implicit TLS" if smtp.tls else "STARTTLS" if smtp.starttls else "none",
            greeting=greeting,
            authenticated_as=username,
            reply=reply,
        )

    def _client(self, smtp: Smtp) -> tuple[aiosmtplib.SMTP, str | None, float]:
        username, password = self._credentials(smtp)
        timeout = parse_duration(smtp.timeout).total_seconds()
        client = aiosmtplib.SMTP(
            hostname=smtp.host,
            port=smtp.port,
            username=username,
            password=password,
            use_tls=smtp.tls,
            start_tls=smtp.starttls,
            timeout=timeout,
            tls_context=self._tls_context if (smtp.tls or smtp.starttls) else None,
        )
        return client, username, timeout

    async def probe(self) -> None:
        """Whether mail can be sent at all: connect, greet, TLS, log in, quit — what ``send``
        does before a message, and nothing about any address. ``MailError`` (always
        ``server_down``) when not. The portal runs it for addresses that get no mail, so the
        answer "email is not working" depends on the server, never on who asked."""
        if self._smtp is None:
            if self._outbox is None:
                raise MailError("no way to send mail: set email.smtp (or email.outbox: true)")
            if not self._outbox.running:
                raise MailError("the local outbox is not running")
            return
        smtp = self._smtp
        where = f"{smtp.host}:{smtp.port}"
        client, username, timeout = self._client(smtp)
        try:
            async with asyncio.timeout(timeout):
                await self._connect(client, smtp, where, username, timeout)
                with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                    await client.quit()
        except TimeoutError as exc:
            raise MailError(f"SMTP {where}: timed out after {timeout:g}s") from exc
        finally:
            client.close()

    @staticmethod
    async def _connect(
        client: aiosmtplib.SMTP, smtp: Smtp, where: str, username: str | None, limit: float
    ) -> str:
        """Connect, greet, TLS, AUTH: a failure here means no mail goes anywhere. Returns the
        server's greeting."""
        try:
            greeting = await client.connect()
            return f"{greeting.code} {_one_line(greeting.message)}"
        except aiosmtplib.SMTPTimeoutError as exc:
            raise MailError(f"SMTP {where}: timed out after {limit:g}s") from exc
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise MailError(
                f"SMTP {where}: authentication failed for {username}: "
                f"{exc.code} {_one_line(exc.message)}"
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise MailError(f"SMTP {where}: {exc.code} {_one_line(exc.message)}") from exc
        except aiosmtplib.SMTPNotSupported as exc:
            raise MailError(f"SMTP {where}: {_one_line(exc.message)}") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:  # OSError: SSLError, refused, ...
            reason = _describe(exc)
            if smtp.tls and "WRONG_VERSION_NUMBER" in reason:
                reason += " (tls: true is implicit TLS, usually port 465; for 587 use starttls)"
            raise MailError(f"SMTP {where}: {reason}") from exc
        except Exception as exc:  # the contract: MailError and nothing else
            log.exception("unexpected error connecting to %s", where)
            raise MailError(f"SMTP {where}: {type(exc).__name__}: {_describe(exc)}") from exc

    async def _transfer(
        self,
        client: aiosmtplib.SMTP,
        message: EmailMessage,
        to: str,
        where: str,
        limit: float,
    ) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
        """MAIL, RCPT, DATA for this one message: a failure here is this message's own (only a
        refused sender is the server's, as it would refuse every message). Returns the refused
        recipients and the server's reply to the message."""
        try:
            errors, reply = await client.send_message(
                message, sender=self.envelope_sender, recipients=[to]
            )
        except aiosmtplib.SMTPSenderRefused as exc:
            raise MailError(
                f"SMTP {where}: MAIL FROM <{exc.sender}> refused: "
                f"{exc.code} {_one_line(exc.message)}"
            ) from exc
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = "; ".join(
                f"{r.recipient}: {r.code} {_one_line(r.message)}" for r in exc.recipients
            )
            raise MailError(
                f"SMTP {where}: recipient refused ({refused})", server_down=False
            ) from exc
        except aiosmtplib.SMTPTimeoutError as exc:
            raise MailError(f"SMTP {where}: timed out after {limit:g}s", server_down=False) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise MailError(
                f"SMTP {where}: {exc.code} {_one_line(exc.message)}", server_down=False
            ) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise MailError(f"SMTP {where}: {_describe(exc)}", server_down=False) from exc
        except Exception as exc:  # the contract: MailError and nothing else
            log.exception("unexpected error sending mail to %s", where)
            raise MailError(
                f"SMTP {where}: {type(exc).__name__}: {_describe(exc)}", server_down=False
            ) from exc
        return dict(errors), _one_line(reply)


def _describe(exc: BaseException) -> str:
    """One line for an exception, preferring its cause (aiosmtplib wraps OSError and SSLError)."""
    cause = exc.__cause__ or exc.__context__
    for err in (exc, cause):
        if isinstance(err, ssl.SSLCertVerificationError):
            return f"TLS failed: certificate not trusted ({_one_line(err.verify_message or '')})"
        if isinstance(err, ssl.SSLError):
            reason = err.reason or _one_line(str(err))
            return f"TLS failed: {reason}"
        if isinstance(err, ConnectionRefusedError):
            return "connection refused"
        if isinstance(err, OSError) and not isinstance(err, aiosmtplib.SMTPException):
            return f"cannot connect: {_one_line(err.strerror or str(err))}"
    text = _one_line(str(exc))
    if not text and cause is not None:
        return _one_line(str(cause)) or type(cause).__name__
    return text or type(exc).__name__
