"""``zerogate certs list``: the certificates of automatic HTTPS (``listen.tls.acme``, issue #15).

One row per hostname: its state (``valid``; ``renewing`` once two thirds of its lifetime have
passed, when the server orders the next one; ``expired``; ``missing``: an order failed and
no certificate is stored), the issuer, the validity and the latest failed order since the
certificate was stored — what the admin API (``GET /api/v1/certificates``) and the dashboard
show too (``AdminService.certificates``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from zerogate.cli.helpers import (
    JsonOption,
    OptionalConfig,
    iso,
    load_settings,
    out,
    print_json,
    when,
    with_store,
)

if TYPE_CHECKING:
    from zerogate.admin.service import CertificateStatus
    from zerogate.store import Store

certs_app = typer.Typer(
    help="The certificates of automatic HTTPS (listen.tls.acme).", no_args_is_help=True
)

_STATE_STYLE = {"valid": "green", "renewing": "yellow", "expired": "red", "missing": "red"}


@certs_app.command("list")
def certs_list(config: OptionalConfig = None, as_json: JsonOption = False) -> None:
    """Each hostname's certificate: state, issuer, valid until, renewal and the last error."""
    from zerogate.admin.service import AdminService

    settings = load_settings(config) if config is not None else None
    server = settings.settings() if settings is not None else None
    tls = server.listen.tls if server is not None else None

    async def read(store: Store) -> list[CertificateStatus]:
        if server is None or tls is None or tls.acme is None:  # no hostnames to certify
            return await AdminService(store).certificates()
        from zerogate.autotls.manager import wanted_hostnames
        from zerogate.policy import compile_snapshot

        objects, _ = await store.load()
        apps = compile_snapshot(objects).apps.values()
        hosts = wanted_hostnames((a.host for a in apps), server.portal_address)
        return await AdminService(store, tls_hosts=lambda: hosts).certificates()

    found = with_store(config, read, settings=settings)
    if as_json:
        print_json(
            {
                "certificates": [
                    {
                        key: iso(value) if key.endswith(("_at", "_before", "_after")) else value
                        for key, value in vars(c).items()
                    }
                    for c in found
                ]
            }
        )
        return
    if not found:
        out.print(
            "No certificates. With listen.tls.acme set, the server orders them at start "
            "for the portal and every application hostname."
        )
        return
    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("host", overflow="fold")
    table.add_column("state")
    table.add_column("issuer", overflow="fold")
    table.add_column("until (UTC)")
    table.add_column("renews (UTC)")
    table.add_column("last error", overflow="fold")
    for c in found:
        style = _STATE_STYLE.get(c.state, "default")
        table.add_row(
            escape(c.host),
            f"[{style}]{c.state}[/{style}]",
            escape(c.issuer or "—"),
            when(c.not_after, seconds=False, zone=False),
            when(c.renew_at, seconds=False, zone=False),
            escape(f"{when(c.last_error_at, seconds=False)}: {c.last_error}")
            if c.last_error
            else "—",
        )
    out.print(table)
