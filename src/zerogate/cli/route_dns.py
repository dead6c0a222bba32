"""DNS records for tunnel routes in the CLI (``tunnel create --route``, ``tunnel route``,
``tunnel delete``, ``apply``): the ``dns`` settings, ``RouteDns.sync`` around the store
write, and how its outcome is shown. A conflict (a name holding records zerogate did not make)
exits 2, a DNS server failure exits 1; either way nothing was changed (see
``zerogate.dns.routes``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import typer
from rich.markup import escape

from zerogate.cli.helpers import UserError, err

if TYPE_CHECKING:
    from zerogate.dns.routes import DnsReport, RouteDns
    from zerogate.model.objects import Objects, Settings

T = TypeVar("T")


def route_dns(settings: Settings) -> RouteDns | None:
    """The file's ``dns`` settings at work (None without them); a missing secret exits 2."""
    from zerogate.dns.routes import DnsError, RouteDns

    try:
        return RouteDns.from_settings(settings)
    except DnsError as exc:
        raise UserError(str(exc)) from None


async def sync_routes(
    dns: RouteDns | None,
    before: Objects,
    after: Objects,
    write: Callable[[], Awaitable[T]],
) -> tuple[T, DnsReport | None]:
    """``write()`` with the DNS records of the routes changed first (``RouteDns.sync``)."""
    if dns is None:
        return await write(), None
    from zerogate.dns.routes import DnsConflict, DnsError

    try:
        return await dns.sync(before, after, write)
    except DnsConflict as exc:
        raise UserError(str(exc)) from None
    except DnsError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        err.print("[red]The DNS update failed; the configuration was not changed.[/red]")
        raise typer.Exit(1) from None


def show_dns(dns: RouteDns | None, report: DnsReport | None) -> None:
    """What the DNS update did, on stderr (messages; the data stays on stdout)."""
    if dns is None or report is None:
        return
    for line in report.lines(dns.target.describe()):
        err.print(escape(line))
