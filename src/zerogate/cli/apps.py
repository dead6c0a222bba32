"""``zerogate app ...``: what the stored applications are, and what their origins need to
verify the identity zerogate sends them (audience, issuer, key set URL).

Registered on the main app by ``cli/main.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from zerogate.cli.helpers import JsonOption, OptionalConfig, fail, out, print_json, with_store

if TYPE_CHECKING:
    from zerogate.model.objects import Application, ConfigFile, Objects
    from zerogate.store import Store

app_app = typer.Typer(
    help="The stored applications and the values their origins verify tokens with.",
    no_args_is_help=True,
)


def _settings(config: Any) -> ConfigFile | None:
    from zerogate.cli.helpers import load_config

    return load_config(config).config if config is not None else None


def describe(application: Application, settings: ConfigFile | None) -> dict[str, Any]:
    """One application as JSON: where it sends requests and how an origin verifies them."""
    from zerogate.model.objects import Settings

    issuer = (settings or Settings()).issuer
    return {
        "name": application.name,
        "domain": application.domain,
        "origin": application.origin,
        "tunnel": application.tunnel,
        "audience": application.audience_tag,
        "audience_stored": application.audience is not None,
        "issuer": issuer,
        "jwks_url": f"{issuer}/.zerogate/certs",
        "policies": [{"name": p.name, "decision": p.decision} for p in application.policies],
    }


def _load(config: Any) -> tuple[Objects, ConfigFile | None]:
    settings = _settings(config)

    async def work(store: Store) -> Objects:
        objects, _ = await store.load()
        return objects

    return with_store(config, work, settings=settings), settings


@app_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="The application's name.")],
    config: OptionalConfig = None,
    as_json: JsonOption = False,
) -> None:
    """One application: domain, upstream, policies, and the audience (aud), issuer (iss)
    and key set its origin verifies Zerogate-Jwt-Assertion with."""
    objects, settings = _load(config)
    found = next((a for a in objects.applications if a.name == name), None)
    if found is None:
        known = ", ".join(a.name for a in objects.applications) or "none is stored"

        fail(f"unknown application {escape(repr(name))} (stored: {escape(known)})")
    data = describe(found, settings)
    if as_json:
        print_json(data)
        return
    rows = [
        ("name", data["name"]),
        ("domain", data["domain"]),
        ("origin" if data["origin"] else "tunnel", data["origin"] or data["tunnel"] or "—"),
        ("audience (aud)", data["audience"]),
        ("issuer (iss)", data["issuer"]),
        ("keys (JWKS)", data["jwks_url"]),
        (
            "policies",
            ", ".join(f"{p['name']} ({p['decision']})" for p in data["policies"]) or "none",
        ),
    ]
    table = Table(show_header=False, show_edge=False, box=None, pad_edge=False)
    table.add_column(no_wrap=True, style="bold")
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, escape(str(value)))
    out.print(table)
    if config is None:
        out.print("[dim](issuer from the default portal; pass -c FILE for your server's)[/dim]")


@app_app.command("list")
def list_apps(config: OptionalConfig = None, as_json: JsonOption = False) -> None:
    """Every stored application with its domain and audience."""
    objects, settings = _load(config)
    data = [describe(a, settings) for a in objects.applications]
    if as_json:
        print_json({"applications": data})
        return
    if not data:
        out.print("No applications are stored.")
        return
    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("name", overflow="fold")
    table.add_column("domain", overflow="fold")
    table.add_column("audience", no_wrap=True)  # 32 characters, copied whole
    for row in data:
        table.add_row(escape(row["name"]), escape(row["domain"]), row["audience"])
    out.print(table)


__all__ = ["app_app", "describe"]
