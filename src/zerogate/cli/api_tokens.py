"""``zerogate api-token ...``: Bearer tokens for the admin REST API (``/api/v1``).

The same code as the API's ``/api/v1/api-tokens`` (``AdminService``): a token is
``zga_<id>_<secret>``, the store keeps the SHA-256 of the secret, the text is printed once.
``--read-only`` tokens may only read; ``--expires`` bounds its life. Creating and revoking are
recorded in the admin log as ``cli:<login name>``. Running servers see a revocation on the
token's next request (every request looks the token up).

Registered on the main app by ``cli/main.py``.
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
    when,
    with_store,
)

if TYPE_CHECKING:
    from zerogate.store import ApiToken, Store

api_token_app = typer.Typer(
    help="Bearer tokens for the admin REST API (the secret is shown once).",
    no_args_is_help=True,
)

NameArgument = Annotated[str, typer.Argument(help="The API token's name.", show_default=False)]


def _errors(exc: Exception) -> UserError:
    from zerogate.admin.service import AdminError

    assert isinstance(exc, AdminError)
    if exc.problems:
        return UserError(*(f"{p.where}: {p.message}" for p in exc.problems))
    return UserError(exc.message)


def _row(token: ApiToken, now: datetime) -> dict[str, object]:
    return {
        "name": token.name,
        "read_only": token.read_only,
        "created_by": token.created_by,
        "created_at": iso(token.created_at),
        "expires_at": iso(token.expires_at),
        "last_used_at": iso(token.last_used_at),
        "expired": token.expires_at is not None and token.expires_at <= now,
    }


@api_token_app.command("create")
def api_token_create(
    name: NameArgument,
    config: OptionalConfig = None,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="The token may only read (GET).")
    ] = False,
    expires: Annotated[
        str | None,
        typer.Option(
            "--expires",
            help="How long the token is valid, e.g. 30d or 12h [default: until revoked].",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create an API token and print it (only this once)."""
    from zerogate.admin.service import Actor, AdminError, AdminService

    async def work(store: Store) -> tuple[ApiToken, str]:
        try:
            return await AdminService(store).create_api_token(
                name, read_only=read_only, expires=expires, actor=Actor(actor(), "cli")
            )
        except AdminError as exc:
            raise _errors(exc) from None

    token, text = with_store(config, work)
    if as_json:
        print_json({**_row(token, datetime.now(UTC)), "token": text})
        return
    scope = "read-only" if token.read_only else "read-write"
    out.print(f"[green]API token {escape(token.name)} created[/green] ({scope}).")
    out.print(f"  token:    {text}")
    out.print(f"  expires:  {when(token.expires_at) if token.expires_at else 'never'}")
    out.print("\nSend it with every request to the admin API:")
    out.print(f"  Authorization: Bearer {text}")
    out.print(
        "\n[yellow]The token is shown only this once[/yellow]: the store keeps only a hash of "
        "its secret. Lost it? Revoke it and create another."
    )


@api_token_app.command("list")
def api_token_list(config: OptionalConfig = None, as_json: JsonOption = False) -> None:
    """The API tokens: scope, creator, expiry and last use (never a secret)."""
    from zerogate.admin.service import AdminService

    async def work(store: Store) -> list[ApiToken]:
        return await AdminService(store).api_tokens()

    tokens = with_store(config, work)
    now = datetime.now(UTC)
    if as_json:
        print_json({"api_tokens": [_row(t, now) for t in tokens]})
        return
    if not tokens:
        out.print("No API tokens. Create one with `zerogate api-token create NAME`.")
        return
    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("name", overflow="fold")
    table.add_column("scope", no_wrap=True)
    table.add_column("created by", overflow="fold")
    table.add_column("expires (UTC)", no_wrap=True)
    table.add_column("last used (UTC)", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for token in tokens:
        expired = token.expires_at is not None and token.expires_at <= now
        table.add_row(
            escape(token.name),
            "read-only" if token.read_only else "read-write",
            escape(token.created_by),
            when(token.expires_at, seconds=False, zone=False) if token.expires_at else "never",
            when(token.last_used_at, seconds=False, zone=False),
            "[red]expired[/red]" if expired else "[green]valid[/green]",
        )
    out.print(table)


@api_token_app.command("revoke")
def api_token_revoke(
    name: NameArgument, config: OptionalConfig = None, as_json: JsonOption = False
) -> None:
    """Revoke an API token: it stops working on its next request."""
    from zerogate.admin.service import Actor, AdminError, AdminService

    async def work(store: Store) -> None:
        try:
            await AdminService(store).revoke_api_token(name, Actor(actor(), "cli"))
        except AdminError as exc:
            raise _errors(exc) from None

    with_store(config, work)
    if as_json:
        print_json({"name": name, "revoked": True})
        return
    out.print(f"[green]API token {escape(name)} revoked.[/green]")
