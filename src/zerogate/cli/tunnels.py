"""``zerogate tunnel ...``: tunnels, their routes, their connector tokens and connectors.

A tunnel is two things, like a service token: the configured object (name and ``routes``, the
hostnames it may serve; part of the objects ``apply`` manages) and its credential (a random
tunnel id and the SHA-256 of the secret, runtime state). ``create`` adds the object and makes a
credential, then prints the connector token once: it carries the tunnel id, the secret, the
edge addresses (``--edge`` or ``listen.tunnel``) and the fingerprint of the listener's
generated certificate (none when ``listen.tls`` is configured: the connector then verifies the
chain). Only the secret's hash is stored, so ``token`` can only make a new one (``--rotate``);
the old token's connections are closed by every server within about a second. ``delete``
refuses while an application uses the tunnel. ``list`` shows the connectors the servers
reported in the last :data:`SEEN_SECONDS` seconds.

Object changes go through ``apply`` with ``expect=`` (compare-and-set on the tunnel's version),
so a concurrent change is refused with a message instead of being overwritten. Connector tokens
are made by ``AdminService.create_tunnel_token``, the same code as the web panel and the API
(``POST /api/v1/tunnels/{name}/token``), which records each one in the admin log.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from zerogate.cli.helpers import (
    JsonOption,
    OptionalConfig,
    UserError,
    actor,
    check_name,
    fail,
    iso,
    load_settings,
    out,
    print_json,
    show_deleted,
    user_errors,
    when,
    with_objects,
    with_store,
)
from zerogate.cli.route_dns import route_dns, show_dns, sync_routes

if TYPE_CHECKING:
    from zerogate.admin.connector_tokens import ConnectorToken
    from zerogate.dns.routes import DnsReport
    from zerogate.model.objects import Objects, Settings
    from zerogate.store import Store, TunnelConnection, TunnelCredential

#: ``list`` shows connections some server reported within this many seconds
SEEN_SECONDS = 15

tunnel_app = typer.Typer(
    help="Tunnels: connectors next to private origins dial out to the edge.",
    no_args_is_help=True,
)

NameArgument = Annotated[str, typer.Argument(help="The tunnel's name.", show_default=False)]
EdgeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--edge",
        help="HOST:PORT the connector dials (repeatable) [default: listen.tunnel, or the "
        "portal's host with the tunnel port when it listens on every address].",
        show_default=False,
    ),
]


# ---------------------------------------------------------------- helpers


def _settings(config: Path | None) -> Settings:
    from zerogate.model.objects import Settings

    if config is None:
        return Settings()
    return load_settings(config).settings()


def _check_name(name: str) -> str:
    from zerogate.model.objects import Tunnel

    return check_name(Tunnel, name)


def _check_host(host: str, option: str) -> str:
    from zerogate.model.values import check_hostname

    try:
        return check_hostname(host, allow_wildcard=True)
    except ValueError as exc:
        raise UserError(f"{option}: {exc}") from None


def _edges(given: list[str] | None, settings: Settings) -> list[str]:
    from zerogate.tunnel.routes import token_edges
    from zerogate.tunnel.token import TokenError, TunnelToken, new_secret, new_tunnel_id

    edges = list(dict.fromkeys(given)) if given else token_edges(settings)
    try:
        TunnelToken(new_tunnel_id(), new_secret(), tuple(edges))
    except TokenError as exc:
        raise UserError(f"--edge: {exc}") from None
    return edges


def _with_tunnels(objects: Objects, tunnels: list[dict[str, Any]]) -> Objects:
    """``objects`` with its tunnels replaced (``with_objects``)."""
    return with_objects(objects, "tunnels", tunnels)


def _tunnel_doc(objects: Objects) -> list[dict[str, Any]]:
    return [t.model_dump(mode="json", by_alias=True) for t in objects.tunnels]


async def _apply(store: Store, objects: Objects, name: str, version: int | None) -> None:
    """Apply, refused if tunnel ``name`` is not at ``version`` any more (None: absent)."""
    from zerogate.store import StaleWrite

    try:
        await store.apply(
            objects,
            actor=actor(),
            source="cli",
            expect={("tunnel", name): version},
            origin="cli",
        )
    except StaleWrite as exc:
        raise UserError(str(exc)) from None


async def _object(store: Store, name: str) -> tuple[Objects, int | None]:
    objects, _ = await store.load()
    _, versions = await store.versions()
    return objects, versions.get(("tunnel", name))


def _users(objects: Objects, name: str) -> list[str]:
    """The applications whose requests go through tunnel ``name``."""
    from zerogate.tunnel.routes import TunnelRoutes

    routes = TunnelRoutes(objects)
    return [
        a.name for a in objects.applications if a.tunnel == name or routes.tunnel_for(a) == name
    ]


async def _new_token(
    store: Store, name: str, settings: Settings, edges: list[str]
) -> ConnectorToken:
    """A new connector token for tunnel ``name`` (``AdminService.create_tunnel_token``: the
    credential, the certificate fingerprint, the admin-log entry)."""
    from zerogate.admin.service import Actor, AdminError, AdminService

    try:
        return await AdminService(store).create_tunnel_token(
            name, actor=Actor(actor(), "cli"), settings=settings, edges=edges
        )
    except AdminError as exc:
        raise UserError(exc.message) from None


def _show_token(issued: ConnectorToken, as_json: bool, **extra: Any) -> None:
    command = issued.command()
    if as_json:
        print_json(
            {
                "name": issued.name,
                "id": issued.tunnel_id,
                "token": issued.token,
                "edges": list(issued.edges),
                "fingerprint": issued.fingerprint,
                "command": command,
                **extra,
            }
        )
        return
    out.print(f"  tunnel id:    {issued.tunnel_id}")
    out.print(f"  edges:        {', '.join(issued.edges)}")
    out.print(f"  certificate:  {issued.fingerprint or 'verified by its chain (listen.tls)'}")
    out.print("\nConnector token:\n")
    out.print(f"  {issued.token}")
    out.print("\nRun the connector next to the origin (--url: where it sends the requests):\n")
    out.print(f"  {escape(command)}")
    out.print(
        "\n[yellow]The token is shown only this once[/yellow]: the store keeps only a hash of "
        f"its secret. Lost it? `zerogate tunnel token {escape(issued.name)} --rotate` makes a "
        "new one."
    )


# ---------------------------------------------------------------- commands


@tunnel_app.command("create")
def tunnel_create(
    name: NameArgument,
    config: OptionalConfig = None,
    route: Annotated[
        list[str] | None,
        typer.Option(
            "--route",
            help="A hostname the tunnel serves (repeatable); applications on it use the tunnel.",
            show_default=False,
        ),
    ] = None,
    edge: EdgeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create a tunnel and print its connector token (only this once)."""
    with user_errors():
        name = _check_name(name)
        routes = [_check_host(host, "--route") for host in route or []]
        settings = _settings(config)
        edges = _edges(edge, settings)

    dns = route_dns(settings)

    async def work(store: Store) -> tuple[ConnectorToken, list[str], bool]:
        if any(c.name == name for c in await store.tunnel_credentials()):
            raise UserError(
                f"tunnel {name!r} already exists; `zerogate tunnel token {name} --rotate` "
                "makes a new connector token"
            )
        objects, version = await _object(store, name)
        tunnels = _tunnel_doc(objects)
        existing = next((t for t in tunnels if t["name"] == name), None)
        if existing is None:
            tunnels.append({"name": name, "routes": routes})
        else:
            existing["routes"] += [r for r in routes if r not in existing["routes"]]
        wanted = _with_tunnels(objects, tunnels)
        _, report = await sync_routes(
            dns, objects, wanted, lambda: _apply(store, wanted, name, version)
        )
        show_dns(dns, report)
        tunnel = next(t for t in wanted.tunnels if t.name == name)
        issued = await _new_token(store, name, settings, edges)
        return issued, tunnel.routes, existing is None

    issued, final_routes, added = with_store(config, work)
    if not as_json:
        what = "created" if added else "now has a connector token"
        where = f" (routes: {', '.join(final_routes)})" if final_routes else " (no routes yet)"
        out.print(f"[green]Tunnel {escape(name)} {what}[/green]{escape(where)}.")
        if not final_routes:
            out.print(
                f"Route a hostname to it with `zerogate tunnel route {escape(name)} HOST`, and "
                "give its application `tunnel: " + escape(name) + "`."
            )
    _show_token(issued, as_json, routes=final_routes)


def _connectors(rows: list[TunnelConnection]) -> list[dict[str, Any]]:
    """Connections grouped by connector id: one entry per connector."""
    grouped: dict[str, list[TunnelConnection]] = {}
    for row in rows:
        grouped.setdefault(row.connector_id, []).append(row)
    result = []
    for connector_id, conns in grouped.items():
        result.append(
            {
                "connector_id": connector_id,
                "version": conns[0].version,
                "addresses": sorted({c.address.rpartition(":")[0] or c.address for c in conns}),
                "connections": len(conns),
                "edges": len({c.edge_id for c in conns}),
                "since": iso(min(c.since for c in conns)),
            }
        )
    return result


@tunnel_app.command("list")
def tunnel_list(config: OptionalConfig = None, as_json: JsonOption = False) -> None:
    """The tunnels with their routes, applications and connected connectors."""

    async def work(
        store: Store,
    ) -> tuple[Objects, list[TunnelCredential], list[TunnelConnection]]:
        objects, _ = await store.load()
        seen_after = datetime.now(UTC) - timedelta(seconds=SEEN_SECONDS)
        return (
            objects,
            await store.tunnel_credentials(),
            await store.tunnel_connections(seen_after=seen_after),
        )

    objects, creds, conns = with_store(config, work)
    by_name = {c.name: c for c in creds}
    names = [t.name for t in objects.tunnels]
    names += sorted(n for n in by_name if n not in names)
    routes = {t.name: t.routes for t in objects.tunnels}
    rows = []
    for name in names:
        cred = by_name.get(name)
        connectors = _connectors([c for c in conns if c.tunnel == name])
        rows.append(
            {
                "name": name,
                "id": cred.tunnel_id if cred else None,
                "routes": routes.get(name, []),
                "applications": _users(objects, name),
                "token_rotated_at": iso(cred.rotated_at) if cred else None,
                "connections": sum(c["connections"] for c in connectors),
                "connectors": connectors,
            }
        )
    if as_json:
        print_json({"tunnels": rows})
        return
    if not rows:
        out.print("No tunnels. Create one with `zerogate tunnel create NAME --route HOST`.")
        return
    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("tunnel", overflow="fold")
    table.add_column("routes", overflow="fold")
    table.add_column("applications", overflow="fold")
    table.add_column("connector", overflow="fold")
    table.add_column("version")
    table.add_column("address")
    table.add_column("conns", justify="right", no_wrap=True)
    table.add_column("since (UTC)", no_wrap=True)
    for row in rows:
        first = [
            escape(row["name"]),
            escape(", ".join(row["routes"])) or "—",
            escape(", ".join(row["applications"])) or "—",
        ]
        if row["id"] is None:
            table.add_row(*first, "[yellow]no token[/yellow]", "", "", "", "")
            continue
        if not row["connectors"]:
            table.add_row(*first, "[red]no connector[/red]", "", "", "0", "")
            continue
        for index, connector in enumerate(row["connectors"]):
            since = datetime.fromisoformat(connector["since"].replace("Z", "+00:00"))
            table.add_row(
                *(first if index == 0 else ["", "", ""]),
                escape(connector["connector_id"]),
                escape(connector["version"]),
                escape(", ".join(connector["addresses"])),
                str(connector["connections"]),
                when(since, zone=False),
            )
    out.print(table)


@tunnel_app.command("route")
def tunnel_route(
    name: NameArgument,
    host: Annotated[str, typer.Argument(help="The hostname to route.", show_default=False)],
    config: OptionalConfig = None,
    as_json: JsonOption = False,
) -> None:
    """Route a hostname to a tunnel: its application may then use the tunnel."""
    with user_errors():
        host = _check_host(host, "HOST")
        dns = route_dns(_settings(config))

    async def work(store: Store) -> tuple[list[str], bool, DnsReport | None]:
        objects, version = await _object(store, name)
        tunnels = _tunnel_doc(objects)
        tunnel = next((t for t in tunnels if t["name"] == name), None)
        if tunnel is None:
            raise UserError(f"unknown tunnel {name!r}")
        changed = host not in tunnel["routes"]
        if changed:
            tunnel["routes"].append(host)
        wanted = _with_tunnels(objects, tunnels)

        async def write() -> None:
            if changed:
                await _apply(store, wanted, name, version)

        # also when already routed: a re-run makes a missing record (idempotent)
        _, report = await sync_routes(dns, objects, wanted, write)
        return next(t.routes for t in wanted.tunnels if t.name == name), changed, report

    routes, changed, report = with_store(config, work)
    show_dns(dns, report)
    if as_json:
        print_json(
            {
                "name": name,
                "routes": routes,
                "changed": changed,
                **({"dns": report.as_dict()} if report is not None else {}),
            }
        )
        return
    if changed:
        out.print(f"[green]{escape(host)} is routed to tunnel {escape(name)}.[/green]")
        out.print(
            "Its application uses the tunnel when it has `tunnel: "
            + escape(name)
            + "` (or neither origin nor tunnel)."
        )
    else:
        out.print(f"{escape(host)} was already routed to tunnel {escape(name)}.")


@tunnel_app.command("delete")
def tunnel_delete(
    name: NameArgument, config: OptionalConfig = None, as_json: JsonOption = False
) -> None:
    """Delete a tunnel (refused while an application uses it); its connectors are disconnected."""
    with user_errors():
        dns = route_dns(_settings(config))

    async def work(store: Store) -> tuple[bool, bool]:
        had_credential = any(c.name == name for c in await store.tunnel_credentials())
        objects, version = await _object(store, name)
        tunnels = _tunnel_doc(objects)
        had_object = version is not None
        if not had_object and not had_credential:
            raise UserError(f"unknown tunnel {name!r}")
        users = _users(objects, name)
        if users:
            names = ", ".join(repr(u) for u in users)
            raise UserError(
                f"tunnel {name!r} is used by application {names}: give it another origin "
                "or delete it first"
            )
        if had_object:
            wanted = _with_tunnels(objects, [t for t in tunnels if t["name"] != name])
            # removing the object removes its credential in the same transaction; the DNS
            # records of its routes go first
            _, report = await sync_routes(
                dns, objects, wanted, lambda: _apply(store, wanted, name, version)
            )
            show_dns(dns, report)
        await store.delete_tunnel_credential(name)
        return had_object, had_credential

    show_deleted(
        "Tunnel",
        name,
        with_store(config, work),
        as_json,
        revoked="Its connector token no longer works; servers disconnect its connectors.",
        missing="a token",
    )


@tunnel_app.command("token")
def tunnel_token(
    name: NameArgument,
    config: OptionalConfig = None,
    rotate: Annotated[
        bool,
        typer.Option("--rotate", help="Make a new token; the old one stops working at once."),
    ] = False,
    edge: EdgeOption = None,
    as_json: JsonOption = False,
) -> None:
    """Make a new connector token (--rotate): the old one cannot be shown again."""
    if not rotate:
        fail(
            f"the connector token of tunnel {escape(name)!r} cannot be shown again: the store "
            "keeps only a hash of its secret; `zerogate tunnel token "
            f"{escape(name)} --rotate` makes a new one (the old one stops working and its "
            "connectors are disconnected)"
        )
    with user_errors():
        settings = _settings(config)
        edges = _edges(edge, settings)

    async def work(store: Store) -> ConnectorToken:
        _, version = await _object(store, name)
        if version is None:
            raise UserError(f"unknown tunnel {name!r}")
        return await _new_token(store, name, settings, edges)

    issued = with_store(config, work)
    rotated = issued.rotated
    if not as_json:
        if rotated:
            out.print(
                f"[green]Tunnel {escape(name)} has a new connector token.[/green] The old one no "
                "longer works; running servers disconnect its connectors within about a second."
            )
        else:
            out.print(f"[green]Tunnel {escape(name)} now has a connector token.[/green]")
    _show_token(issued, as_json, rotated=rotated)
