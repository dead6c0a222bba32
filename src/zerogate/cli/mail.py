"""``zerogate email test --to ADDR -c FILE``: send one message the way PIN emails go and print
what the SMTP server said, so an operator learns that mail works before a user needs a PIN.

It uses the file's ``email`` settings and the very ``Mailer`` the portal uses (same TLS,
authentication and timeout). Success prints the server, the TLS mode, the login, the
greeting and the server's reply to the message (exit 0); a failure prints ``MailError``'s
reason (exit 1: the mail server or the network, not the command line). With
``email.outbox: true`` there is nothing to test (the outbox lives inside the server): exit 2.

The outcome is also written to the store as a ``mail`` row of the access log, as the portal
writes one after each PIN email, so the dashboard's and the API's mail health show it; a store
that cannot be reached is noted on stderr and changes nothing else.
"""

from __future__ import annotations

import asyncio
import email.utils
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from zerogate.cli.helpers import (
    ConfigOption,
    JsonOption,
    UserError,
    err,
    fail,
    load_config,
    out,
    print_json,
    store_url,
)
from zerogate.model.objects import ConfigFile

email_app = typer.Typer(help="Outgoing mail (PIN emails).", no_args_is_help=True)


def test_message(sender: str, to: str, now: datetime) -> EmailMessage:
    """The test email: plain text, the same headers as a PIN email."""
    message = EmailMessage()
    message["Subject"] = "zerogate test email"
    message["From"] = sender
    local, _, domain = to.partition("@")
    message["To"] = Address(username=local, domain=domain)
    message["Date"] = email.utils.format_datetime(now)
    sender_domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or "zerogate.localhost"
    message["Message-ID"] = email.utils.make_msgid(domain=sender_domain)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(
        "This is a test message from zerogate (`zerogate email test`).\n\n"
        "It reached you, so PIN emails from this server can reach you too.\n"
    )
    return message


def _record(loaded: ConfigFile, path: Path, to: str, outcome: str, detail: str) -> None:
    """The test's outcome as a ``mail`` row in the store's access log (what the portal writes
    after a PIN email): the dashboard's and the API's mail health. Never fails the command."""
    from zerogate.store import AccessEvent, Store, StoreError

    event = AccessEvent(
        at=datetime.now(UTC),
        kind="mail",
        app=None,
        email=to,
        idp=None,
        ip=None,
        country=None,
        decision=outcome,
        policy=None,
        detail=detail,
    )

    async def write() -> None:
        from zerogate.store.engine import sqlite_file

        url = store_url(loaded, path)
        file = sqlite_file(url)
        if file is not None and not file.exists():  # a test makes no store
            raise UserError(f"the store {file} does not exist yet")
        store = await Store.open(url)
        try:
            await store.write_access([event])
        finally:
            await store.close()

    try:
        asyncio.run(write())
    except (StoreError, UserError) as exc:
        err.print(
            f"[yellow]note:[/yellow] the outcome was not recorded for the dashboard's mail "
            f"health: {escape(str(exc))}"
        )


@email_app.command("test")
def email_test(
    config: ConfigOption,
    to: Annotated[
        str,
        typer.Option("--to", help="The address to send the test message to.", show_default=False),
    ],
    as_json: JsonOption = False,
) -> None:
    """Send a test message with the file's email settings and show what the server said."""
    from zerogate.mail import Mailer, MailError
    from zerogate.model.values import check_email

    try:
        address = check_email(to)
    except ValueError as exc:
        fail(f"--to: {escape(str(exc))}")
    loaded = load_config(config).config
    settings = loaded.settings()
    smtp = settings.email.smtp
    if smtp is None:
        if settings.email.outbox:
            fail(
                "email.outbox: true: this configuration sends no email (PIN codes stay in the "
                "server's local outbox); set email.smtp to send mail"
            )
        fail("email.smtp is not set: this configuration has no way to send mail")
    mailer = Mailer(smtp, settings.email.from_)
    message = test_message(settings.email.from_, address, datetime.now(UTC))
    try:
        delivery = asyncio.run(mailer.send(message, address))
    except MailError as exc:
        _record(loaded, config, address, "failed", f"test message: {exc}")
        if as_json:
            print_json({"sent": False, "to": address, "error": str(exc)})
            raise typer.Exit(1) from None
        fail(f"the test message to {escape(address)} was not sent: {escape(str(exc))}", code=1)
    _record(loaded, config, address, "sent", f"test message: {delivery.reply}")
    if as_json:
        print_json(
            {
                "sent": True,
                "to": address,
                "server": delivery.server,
                "tls": delivery.tls,
                "authenticated_as": delivery.authenticated_as,
                "greeting": delivery.greeting,
                "reply": delivery.reply,
            }
        )
        return
    table = Table(show_header=False, show_edge=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("server", escape(delivery.server))
    table.add_row("TLS", escape(delivery.tls))
    table.add_row("login", escape(delivery.authenticated_as or "none"))
    table.add_row("greeting", escape(delivery.greeting))
    table.add_row("reply", escape(delivery.reply))
    out.print(f"[green]✓ The SMTP server accepted the test message for {escape(address)}.[/green]")
    out.print(table)
    out.print("Check that it arrived (and not in the spam folder).")
