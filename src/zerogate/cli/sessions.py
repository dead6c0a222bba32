"""``zerogate sessions ...``: the portal sessions (one per sign-in) and ending one.

The same code as the admin API's ``/api/v1/sessions`` and the panel (``AdminService``): an
ended session's tokens stop working on every server within a second; ending is recorded in
the admin log as ``cli:<login name>``. "Log out everywhere" of an address stays the portal's
sign-out. Registered on the main app by ``cli/main.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from zerogate.cli.helpers import (
    JsonOption,
    OptionalConfig,
    UserError,
    actor,
    iso,
    out,
    print_json,
    with_store,
)
from zerogate.runtime.devices import device_of

if TYPE_CHECKING:
    from zerogate.store import Session, Store

sessions_app = typer.Typer(
    help="Portal sessions: who is signed in where; end one.", no_args_is_help=True
)


def _row(session: Session) -> dict[str, object]:
    return {
        "id": session.id,
        "email": session.email,
        "idp": session.idp,
        "device": device_of(session.user_agent),
        "user_agent": session.user_agent,
        "ip": session.ip,
        "created_at": iso(session.created_at),
        "last_seen_at": iso(session.seen_at),
        "expires_at": iso(session.expires_at),
    }


def _short(value: datetime) -> str:
    """``12-08 14:05`` (the year only when it is not this one): a table cell of 11 columns."""
    value = value.astimezone(UTC)
    if value.year != datetime.now(UTC).year:
        return value.strftime("%Y-%m-%d")
    return value.strftime("%m-%d %H:%M")


@sessions_app.command("list")
def sessions_list(
    config: OptionalConfig = None,
    email: Annotated[
        str | None,
        typer.Option("--email", help="Only this address's sessions (and its subaddresses')."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """The active sessions, most recently seen first: device, address, since, last seen."""
    from zerogate.admin.service import AdminService

    async def work(store: Store) -> list[Session]:
        return await AdminService(store).sessions(email=email)

    found = with_store(config, work)
    if as_json:
        print_json({"sessions": [_row(s) for s in found]})
        return
    if not found:
        out.print("No active sessions." if email is None else f"No active sessions of {email}.")
        return
    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("id", no_wrap=True)
    table.add_column("email", overflow="fold", ratio=3)
    table.add_column("device", overflow="fold", ratio=2)
    table.add_column("address", overflow="fold", ratio=2)
    table.add_column("since UTC", no_wrap=True)
    table.add_column("seen UTC", no_wrap=True)
    for s in found:
        table.add_row(
            s.id,
            escape(s.email),
            escape(device_of(s.user_agent)),
            escape(s.ip or "—"),
            _short(s.created_at),
            _short(s.seen_at),
        )
    out.print(table)


@sessions_app.command("end")
def sessions_end(
    session_id: Annotated[
        str, typer.Argument(help="The session's id (`zerogate sessions list`).", show_default=False)
    ],
    config: OptionalConfig = None,
    as_json: JsonOption = False,
) -> None:
    """End a session: it is signed out of every application within a second."""
    from zerogate.admin.service import Actor, AdminError, AdminService

    async def work(store: Store) -> Session:
        try:
            return await AdminService(store).end_session(session_id, Actor(actor(), "cli"))
        except AdminError as exc:
            raise UserError(exc.message) from None

    ended = with_store(config, work)
    if as_json:
        print_json({"ended": _row(ended)})
        return
    out.print(
        f"[green]Session {escape(ended.id)} of {escape(ended.email)} "
        f"({escape(device_of(ended.user_agent))}) ended.[/green]"
    )
