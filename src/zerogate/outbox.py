"""The demo's local mail outbox: a real SMTP server on loopback that keeps mail in memory.

When no ``email.smtp`` server is configured (a local trial, the demo), zerogate starts an
``Outbox`` and the ``Mailer`` delivers the PIN email to it over SMTP, exactly as it would to a
real server. The received PINs are then shown on a small page (``render_html``). The tests use
the same class as their SMTP server: with ``credentials`` it requires AUTH, with
``tls_context`` it offers (and requires) STARTTLS, or speaks TLS from the first byte with
``implicit_tls=True``.

It is asyncio-native: ``aiosmtpd.smtp.SMTP`` protocols served by ``loop.create_server`` on the
running loop (no ``Controller`` thread). It keeps the last ``keep`` messages, one entry per
recipient, each with the sender, recipient, subject, text and HTML bodies, the time received,
and the PIN if the text body has a line holding only a 6-digit number (the PIN email's layout).
Nothing is written to disk, and it listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import re
import ssl
import warnings
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

__all__ = ["Message", "Outbox"]

_PIN_LINE = re.compile(r"^[ \t]*(\d{6})[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class Message:
    """One received message, as seen by one recipient."""

    #: increases by one per stored entry; see ``Outbox.mark``
    seq: int
    sender: str
    to: str
    subject: str
    text: str
    html: str
    received_at: datetime
    #: the 6-digit PIN on a line of its own in the text body, if any
    pin: str | None


def _part(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    if part is None:
        return ""
    content = part.get_content()
    return content.replace("\r\n", "\n") if isinstance(content, str) else ""


def parse_message(
    raw: bytes, *, sender: str, recipients: list[str], first_seq: int
) -> list[Message]:
    """Turn one SMTP delivery into one ``Message`` per recipient."""
    parsed = BytesParser(policy=default_policy).parsebytes(raw)
    assert isinstance(parsed, EmailMessage)
    text = _part(parsed, "plain")
    match = _PIN_LINE.search(text)
    now = datetime.now(UTC)
    return [
        Message(
            seq=first_seq + i,
            sender=sender,
            to=rcpt,
            subject=str(parsed.get("Subject", "")),
            text=text,
            html=_part(parsed, "html"),
            received_at=now,
            pin=match.group(1) if match else None,
        )
        for i, rcpt in enumerate(recipients)
    ]


class _Handler:
    """aiosmtpd handler: every accepted message goes to the outbox."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address.casefold() in self._outbox.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        if raw is None:
            return "554 no message"
        await self._outbox._deliver(raw, envelope.mail_from or "", list(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


class Outbox:
    """An in-memory SMTP server; ``async with Outbox() as outbox: ... outbox.port``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keep: int = 100,
        credentials: Mapping[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        hostname: str = "zerogate-outbox",
    ) -> None:
        """
        ``credentials``: user name -> password; when given, AUTH (PLAIN/LOGIN) is required
        before MAIL, and allowed over plaintext unless a ``tls_context`` is given.
        ``tls_context``: a server-side context; STARTTLS is offered and required, or, with
        ``implicit_tls``, the connection is TLS from the first byte.
        """
        if implicit_tls and tls_context is None:
            raise ValueError("implicit_tls needs a tls_context")
        self.host = host
        self._port = port
        self._keep = keep
        self._credentials = dict(credentials) if credentials is not None else None
        self._tls_context = tls_context
        self._implicit_tls = implicit_tls
        self._hostname = hostname
        #: recipients (lower-case) answered "550 mailbox unavailable" at RCPT, as a real server
        #: does for an unknown mailbox (tests of per-recipient failures)
        self.refuse: set[str] = set()
        self._messages: deque[Message] = deque(maxlen=keep)
        self._seq = 0
        self._changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the picked one when constructed with port 0)."""
        if self._server is None:
            raise RuntimeError("the outbox is not started")
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol,
            host=self.host,
            port=self._port,
            ssl=self._tls_context if self._implicit_tls else None,
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for session in list(self._sessions):
            if session.transport is not None:
                session.transport.close()
        await server.wait_closed()

    async def __aenter__(self) -> Outbox:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _protocol(self) -> SMTP:
        starttls = self._tls_context if not self._implicit_tls else None
        options: dict[str, Any] = {}
        if self._credentials is not None:
            options.update(
                auth_required=True,
                # Loopback tests and demos authenticate in the clear; with TLS, only after it.
                auth_require_tls=self._tls_context is not None,
                authenticator=self._authenticate,
            )
        with warnings.catch_warnings():
            # "Requiring AUTH while not requiring TLS": deliberate here, see above.
            warnings.simplefilter("ignore", UserWarning)
            session = SMTP(
                _Handler(self),
                hostname=self._hostname,
                tls_context=starttls,
                require_starttls=starttls is not None,
                loop=asyncio.get_running_loop(),
                **options,
            )
        self._sessions.add(session)
        return session

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if self._credentials is None or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        expected = self._credentials.get(user)
        ok = expected is not None and hmac.compare_digest(
            expected.encode("utf-8"), auth_data.password
        )
        # handled=False: aiosmtpd then answers "535 ... credentials invalid" itself
        return AuthResult(success=ok, handled=False)

    # -- the mailbox -----------------------------------------------------------------------

    async def _deliver(self, raw: bytes, sender: str, recipients: list[str]) -> None:
        received = parse_message(raw, sender=sender, recipients=recipients, first_seq=self._seq + 1)
        async with self._changed:
            self._messages.extend(received)
            self._seq += len(received)
            self._changed.notify_all()

    def messages(self) -> list[Message]:
        """The kept messages, oldest first."""
        return list(self._messages)

    def mark(self) -> int:
        """The ``seq`` of the newest message so far; pass it as ``after`` to ``wait_for``."""
        return self._seq

    def clear(self) -> None:
        self._messages.clear()

    def _newest_for(self, to: str, after: int) -> Message | None:
        wanted = to.casefold()
        for message in reversed(self._messages):
            if message.seq <= after:
                return None
            if message.to.casefold() == wanted:
                return message
        return None

    # ASYNC109: a deadline parameter on purpose, like asyncio.wait_for
    async def wait_for(self, to: str, timeout: float, *, after: int = 0) -> Message:  # noqa: ASYNC109
        """The newest message to ``to`` (case-insensitive) with ``seq > after``.

        Returns at once if there is one already; else waits for a delivery. Raises
        ``TimeoutError`` after ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self._newest_for(to, after) is not None)
            found = self._newest_for(to, after)
            assert found is not None
            return found

    def render_html(self) -> str:
        """A small page listing the received PINs, newest first (everything escaped)."""
        rows = []
        for message in reversed(self._messages):
            rows.append(
                "<tr>"
                f"<td>{html.escape(message.received_at.strftime('%Y-%m-%d %H:%M:%S UTC'))}</td>"
                f"<td>{html.escape(message.to)}</td>"
                f"<td>{html.escape(message.subject)}</td>"
                f'<td class="pin">{html.escape(message.pin or "—")}</td>'
                "</tr>"
            )
        body = (
            "<table><thead><tr><th>received</th><th>to</th><th>subject</th><th>PIN</th></tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table>"
            if rows
            else "<p>No mail yet. Ask for a sign-in code, then reload this page.</p>"
        )
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            "<title>zerogate outbox</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2rem;color:#1f2328}"
            "table{border-collapse:collapse}td,th{padding:.4rem .8rem;text-align:left;"
            "border-bottom:1px solid #d0d7de}"
            ".pin{font-family:monospace;font-size:1.4rem;letter-spacing:.2rem}"
            "</style></head><body><h1>zerogate outbox</h1>"
            "<p>Mail sent by this zerogate (no SMTP server is configured). "
            "Newest first; kept in memory only.</p>"
            f"{body}</body></html>\n"
        )
