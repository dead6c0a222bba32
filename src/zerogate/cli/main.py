"""The ``zerogate`` command: parses arguments, wires the parts together, prints results.

Data goes to stdout (tables, or one JSON document with ``--json``); messages go to stderr.
A user error (bad file, bad argument) exits with code 2 and a one-line message per problem,
never a traceback; an environment error (store unreachable) exits with code 1.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from zerogate import __version__
from zerogate.cli import (
    api_tokens,
    apps,
    certs,
    connector,
    logs,
    mail,
    nodes,
    sessions,
    tokens,
    tunnels,
)
from zerogate.cli.helpers import (
    ConfigOption,
    JsonOption,
    OptionalConfig,
    UserError,
    actor,
    err,
    fail,
    load_config,
    out,
    print_json,
    report_config_error,
    run,
    store_url,
)
from zerogate.model.objects import Objects

app = typer.Typer(
    name="zerogate",
    help="zerogate: a self-hosted zero-trust access gateway.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
policy_app = typer.Typer(help="Ask the policy engine.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")


def _counts(objects: Objects) -> dict[str, int]:
    return {
        "applications": len(objects.applications),
        "groups": len(objects.groups),
        "identity_providers": len(objects.identity_providers),
        "tunnels": len(objects.tunnels),
        "service_tokens": len(objects.service_tokens),
        "policies": sum(len(a.policies) for a in objects.applications),
    }


# ---------------------------------------------------------------- check

_SINGULAR = {
    "applications": "application",
    "groups": "group",
    "policies": "policy",
    "identity_providers": "identity provider",
    "tunnels": "tunnel",
    "service_tokens": "service token",
}


def _plural(n: int, key: str) -> str:
    return f"{n} {key.replace('_', ' ') if n != 1 else _SINGULAR[key]}"


@app.command()
def check(config: ConfigOption, as_json: JsonOption = False) -> None:
    """Validate a configuration file; report every problem with object, field and line.

    A file whose objects name ones it does not list (an application on a tunnel made with
    `zerogate tunnel create`) is checked together with the objects its store keeps, as
    `zerogate apply` would; when the store cannot be read, the note says why."""
    loaded, kept = _load_with_kept(config, prune=False)
    counts = _counts(loaded.config)
    if as_json:
        print_json(
            {
                "valid": True,
                "counts": counts,
                "warnings": [str(w) for w in loaded.warnings],
                "with_stored": kept,
            }
        )
        return
    summary = ", ".join(_plural(n, k) for k, n in counts.items() if n)
    out.print(f"[green]✓[/green] {config} is valid" + (f": {summary}" if summary else ""))
    if kept:
        out.print(f"  together with what its store keeps: {escape(', '.join(kept))}")


# ---------------------------------------------------------------- apply / export

_ACTION_STYLE = {"add": ("+", "green"), "change": ("~", "yellow"), "remove": ("-", "red")}


def _plan_table(plan: Any) -> Table:
    table = Table(title=None, show_edge=False, box=None, pad_edge=False)
    table.add_column("")
    table.add_column("kind", no_wrap=True)
    table.add_column("name", overflow="fold")
    table.add_column("changed")
    for change in plan.changes:
        sign, style = _ACTION_STYLE[change.action]
        detail = ", ".join(change.fields)
        if change.action == "remove" and change.origin:
            detail = f"removed (last changed: {change.origin})"
        table.add_row(
            f"[{style}]{sign}[/{style}]",
            change.kind.replace("_", " "),
            escape(change.name),
            detail,
        )
    return table


def _kept_line(kept: Any) -> str:
    return f"{kept.kind.replace('_', ' ')} {kept.name} ({kept.origin})"


def _show_kept_and_removed(plan: Any) -> None:
    """Every removal named (with where the object was last changed), and what was kept."""
    removals = plan.removals
    if removals:
        names = ", ".join(
            f"{c.kind.replace('_', ' ')} {c.name}" + (f" ({c.origin})" if c.origin else "")
            for c in removals
        )
        out.print(f"[red]Removes {len(removals)}:[/red] {escape(names)}")
    if plan.kept:
        out.print(
            f"[yellow]Kept, not in the file:[/yellow] "
            f"{escape(', '.join(_kept_line(k) for k in plan.kept))}"
        )
        out.print("  (made outside the file; `zerogate apply --prune` removes them)")


def _plan_json(plan: Any, dry_run: bool, prune: bool = False) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "prune": prune,
        "changes": [
            {
                "action": c.action,
                "kind": c.kind,
                "name": c.name,
                "fields": list(c.fields),
                **({"changed_via": c.origin} if c.action == "remove" else {}),
            }
            for c in plan.changes
        ],
        "kept": [{"kind": k.kind, "name": k.name, "changed_via": k.origin} for k in plan.kept],
        "version_before": plan.version_before,
        "version_after": plan.version_after,
    }


def _load_for_apply(path: Path, prune: bool) -> Any:
    """The file, validated; when its objects name objects it does not list (an application
    on a tunnel made with `zerogate tunnel create`), validated again together with those the
    store keeps (all but --prune keeps them), so either order of the README's steps works."""
    return _load_with_kept(path, prune)[0]


def _load_with_kept(path: Path, prune: bool) -> tuple[Any, list[str]]:
    """``_load_for_apply``'s work: the loaded file, the stored objects (``kind name``) it was
    validated with (none when valid alone). When the store cannot help, the file's problems
    are reported (exit 2) after a note saying why."""
    from zerogate.model import ConfigError, load_file
    from zerogate.model.loader import load_unchecked

    try:
        load_file(path)
    except ConfigError as exc:
        first = exc
    else:
        return load_config(path), []  # valid alone: its warnings shown once
    config = load_unchecked(path)
    if prune or config is None:
        report_config_error(path, first)
    try:
        url = store_url(config, path)
    except UserError as exc:
        _report_without_store(path, first, "; ".join(exc.messages))
    from zerogate.store.engine import sqlite_file

    file = sqlite_file(url)
    if file is not None and not file.exists():  # a store not made yet keeps nothing
        _report_without_store(path, first, f"its store {file} does not exist yet")

    async def kept_document() -> tuple[dict[str, Any], str | None]:
        from zerogate.store import Store, StoreError

        try:
            store = await Store.open(url)
        except StoreError as exc:
            return {}, f"its store could not be opened ({exc})"
        try:
            return await store.kept_document(config.objects(), prune=prune), None
        except StoreError as exc:
            return {}, f"its store could not be read ({exc})"
        finally:
            await store.close()

    kept, why_not = run(kept_document)
    if why_not is not None:
        _report_without_store(path, first, why_not)
    if not any(kept.values()):
        report_config_error(path, first)
    names = [
        f"{kind.removesuffix('s').replace('_', ' ')} {item.get('name')}"
        if isinstance(item, dict)
        else f"admin {item}"
        for kind, items in kept.items()
        for item in items
    ]
    return load_config(path, kept=kept), names


def _report_without_store(path: Path, exc: Any, why: str) -> NoReturn:
    """The file's problems, after a note that the stored objects it may name (made with
    `zerogate tunnel create`, the panel or the API) were not consulted, and why (only when
    the file names something it does not list: other problems need no store)."""
    if any(p.message.startswith("unknown ") for p in exc.problems):
        err.print(
            f"[yellow]note:[/yellow] objects {escape(str(path))} names but does not list could "
            f"not be looked up in the store: {escape(why)}"
        )
    report_config_error(path, exc)


@app.command()
def apply(
    config: ConfigOption,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the plan, change nothing.")
    ] = False,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune",
            help="Also remove stored objects the file does not list that were made in the "
            "panel, the API or a command (kept and reported without it).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Show the plan for a configuration file and apply it to the store in one transaction.

    Objects the file does not list are removed when an earlier apply from a file made them;
    those made in the panel, the API or by a command (`tunnel create`) are kept and reported,
    unless --prune. Every removal is listed."""
    loaded = _load_for_apply(config, prune)
    url = store_url(loaded.config, config)
    objects = loaded.config.objects()
    from zerogate.cli.route_dns import route_dns, show_dns, sync_routes

    try:
        dns = None if dry_run else route_dns(loaded.config.settings())
    except UserError as exc:
        fail(*exc.messages)
    report = None

    async def go() -> Any:
        nonlocal report
        from zerogate.store import KeptInvalid, Store

        if dry_run:  # a dry run creates nothing: not even the store's file
            fresh = Store.plan_if_missing(url, objects)
            if fresh is not None:
                return fresh
        store = await Store.open(url)
        try:
            try:
                if dry_run:
                    return await store.plan(objects, prune=prune)
                before, _ = await store.load()
                after = objects
                if dns is not None:  # the routes of kept tunnels stay too
                    from zerogate.model.loader import with_kept

                    kept = await store.kept_document(objects, prune=prune)
                    doc = objects.model_dump(mode="json", by_alias=True, exclude_none=True)
                    after = Objects.model_validate(with_kept(doc, kept)[0])
                # tunnel routes added or removed: their DNS records first (cli/route_dns.py)
                plan, report = await sync_routes(
                    dns,
                    before,
                    after,
                    lambda: store.apply(objects, actor=actor(), source="cli", prune=prune),
                )
                return plan
            except KeptInvalid as exc:
                raise UserError(str(exc), *(str(p) for p in exc.problems)) from None
        finally:
            await store.close()

    plan = run(go)
    show_dns(dns, report)
    if as_json:
        print_json(_plan_json(plan, dry_run, prune))
        return
    if plan.empty:
        out.print(
            f"No changes: the store already matches {config} (version {plan.version_before})."
        )
        _show_kept_and_removed(plan)
        return
    out.print(_plan_table(plan))
    out.print()
    _show_kept_and_removed(plan)
    n = len(plan.changes)
    what = f"{n} change{'s' if n != 1 else ''}"
    if dry_run:
        out.print(f"Dry run: {what} would be applied; nothing was written.")
    else:
        out.print(
            f"[green]Applied {what}[/green]: configuration version "
            f"{plan.version_before} → {plan.version_after}."
        )


@app.command()
def export(
    config: OptionalConfig = None,
    as_json: JsonOption = False,
) -> None:
    """Print the stored objects as YAML (the same shape `apply` reads). Never prints secrets."""
    from zerogate.model.dump import dump_yaml, objects_document

    settings = load_config(config).config if config is not None else None
    url = store_url(settings, config)

    async def go() -> tuple[Objects, int]:
        from zerogate.store import Store

        store = await Store.open(url)
        try:
            return await store.load()
        finally:
            await store.close()

    objects, version = run(go)
    if as_json:
        print_json({"version": version, **objects_document(objects)})
    else:
        sys.stdout.write(
            dump_yaml(objects, header=f"zerogate export, configuration version {version}")
        )


# ---------------------------------------------------------------- policy test


def _check_label(check_: dict[str, Any]) -> str:
    from rich.markup import escape

    mark = "[green]✓[/green]" if check_["matched"] else "[red]✗[/red]"
    return f"{mark} {escape(check_['section'])}: {escape(check_['check'])}"


def _add_checks(tree: Tree, checks: list[dict[str, Any]]) -> None:
    for check_ in checks:
        _add_checks(tree.add(_check_label(check_)), check_.get("inner", []))


#: the ``zerogate policy test`` option for each field of a ``PolicyQuery``
_POLICY_TEST_OPTIONS = {
    "app": "--app",
    "url": "--url",
    "email": "--email",
    "idp": "--idp",
    "idp_groups": "--idp-group",
    "amr": "--amr",
    "ip": "--ip",
    "country": "--country",
    "service_token": "--service-token",
}


@policy_app.command("test")
def policy_test(
    config: ConfigOption,
    app_name: Annotated[str | None, typer.Option("--app", help="Application name.")] = None,
    path: Annotated[str, typer.Option("--path", help="Request path (with --app).")] = "/",
    url: Annotated[
        str | None, typer.Option("--url", help="Route by host and path as the edge does.")
    ] = None,
    email: Annotated[str | None, typer.Option("--email", help="The user's email.")] = None,
    ip: Annotated[str | None, typer.Option("--ip", help="The client address.")] = None,
    idp: Annotated[str | None, typer.Option("--idp", help="Login method (IdP name).")] = None,
    idp_group: Annotated[
        list[str] | None, typer.Option("--idp-group", help="A group from the IdP (repeatable).")
    ] = None,
    amr: Annotated[
        list[str] | None, typer.Option("--amr", help="An auth method, e.g. mfa (repeatable).")
    ] = None,
    country: Annotated[
        str | None, typer.Option("--country", help="ISO country code (default: from GeoIP).")
    ] = None,
    service_token: Annotated[
        str | None, typer.Option("--service-token", help="Present this service token.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Decide one request against the file's policies and explain why."""
    from rich.markup import escape

    from zerogate.policy import compile_snapshot
    from zerogate.policy.tester import PolicyQuery, QueryError, check_query, run_query

    if (app_name is None) == (url is None):
        fail("give exactly one of --app NAME or --url URL")
    loaded = load_config(config)
    snapshot = compile_snapshot(loaded.config.objects())
    query = PolicyQuery(
        app=app_name,
        url=url,
        path=path,
        email=email,
        idp=idp,
        idp_groups=tuple(idp_group or ()),
        amr=tuple(amr or ()),
        ip=ip,
        country=country,
        service_token=service_token,
    )
    try:
        query = check_query(snapshot, query)
    except QueryError as exc:
        fail(*(f"{_POLICY_TEST_OPTIONS[p.where]}: {p.message}" for p in exc.problems))
    if query.country is None and ip is not None and loaded.config.geoip is not None:
        from zerogate.geoip import GeoIp, GeoIpError

        db = Path(loaded.config.geoip.database)
        if not db.is_absolute():
            db = config.parent / db
        try:
            geo = GeoIp(db)
        except GeoIpError as exc:
            fail(str(exc))
        query = replace(query, country=geo.country(ip))
        geo.close()
    verdict = run_query(snapshot, query)
    email, country, host, path = query.email, query.country, query.host, query.path

    # the API's names (POST /api/v1/policy-test): application, decision, policy, reason, steps;
    # and the request in the names the API takes
    result = verdict.as_dict()
    result["request"] = {
        "app": app_name,
        "url": url,
        "host": host or None,
        "path": path,
        "email": email,
        "idp": idp,
        "idp_groups": idp_group or [],
        "amr": amr or [],
        "ip": ip,
        "country": country,
        "service_token": service_token,
    }
    if as_json:
        print_json(result)
        return
    colour = {"allow": "green", "bypass": "cyan", "authenticate": "yellow"}.get(
        verdict.decision, "red"
    )
    who = email or (f"service token {service_token}" if service_token else "no identity")
    app_label = result["application"] or "(no application)"
    out.print(
        f"[bold {colour}]{verdict.decision.upper()}[/bold {colour}]  "
        f"{app_label} · policy: {verdict.policy or '—'} · {who}"
        + (f" from {ip}" if ip else "")
        + (f" ({country})" if country else "")
    )
    out.print(f"  {verdict.reason}")
    if verdict.steps:
        tree = Tree("policies evaluated, in order", guide_style="dim")
        for step in verdict.steps:
            mark = "[green]✓ match[/green]" if step["matched"] else "[dim]· no match[/dim]"
            label = f"{mark} {escape(step['policy'])} [dim]({step['decision']})[/dim]"
            if step.get("skipped"):
                label += f" [dim]— skipped: {escape(step['skipped'])}[/dim]"
            _add_checks(tree.add(label), step["checks"])
        out.print(tree)


@app.command()
def demo(
    port: Annotated[int, typer.Option("--port", help="Port for the edge and portal.")] = 8080,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Where the demo keeps its store.")
    ] = None,
) -> None:
    """The one-command tour: a demo app behind zerogate, PIN login, a local mail outbox."""
    import os

    from zerogate.demo.run import run_demo

    folder = data_dir or Path(os.environ.get("ZEROGATE_DATA_DIR") or ".zerogate-demo")
    run_demo(folder.resolve(), port, err)


@app.command()
def server(
    config: Annotated[
        Path | None,
        typer.Option(
            "-c",
            "--config",
            help="The configuration file (required): listen addresses, portal, storage, email, "
            "logs; its objects are read from the store.",
        ),
    ] = None,
    apply_first: Annotated[
        bool, typer.Option("--apply", help="Apply the file's objects to the store first.")
    ] = False,
    workers: Annotated[
        int,
        typer.Option("--workers", min=1, help="Worker processes (one per core is a good start)."),
    ] = 1,
) -> None:
    """Run the gateway: the edge (every application host), the portal and its login pages,
    the admin panel and API (/admin, /api/v1 on the portal host), the tunnel listener for
    connectors (listen.tunnel) and, with listen.fast_path, the HTTP/1.1 front. Stops cleanly
    on SIGTERM or Ctrl-C, writing the queued access-log rows first."""
    from zerogate.server.run import serve

    if config is None:
        # fail closed: never a server on defaults with a fresh store nobody configured
        fail(
            "zerogate server needs its configuration file: zerogate server -c FILE "
            "(`zerogate demo` starts a local tour with its own)"
        )
    loaded = load_config(config)
    settings = loaded.config.settings()
    url = store_url(loaded.config, config)
    if apply_first:
        objects = loaded.config.objects()

        async def go() -> Any:
            from zerogate.store import Store

            store = await Store.open(url)
            try:
                return await store.apply(objects, actor=actor(), source="cli")
            finally:
                await store.close()

        plan = run(go)
        if not plan.empty:
            out.print(_plan_table(plan))
        _show_kept_and_removed(plan)
    scheme = "https" if settings.listen.tls else "http"
    public = settings.portal_scheme or scheme
    err.print(
        f"zerogate {__version__}: edge and portal on {scheme}://{settings.listen.http} "
        f"(portal {public}://{settings.portal_address}), {workers} worker(s), store {url}"
    )
    serve(config, settings, workers=workers)


@app.command()
def version() -> None:
    """Print zerogate's version."""
    out.print(__version__)


# ---------------------------------------------------------------- commands in their own modules

app.add_typer(tokens.service_token_app, name="service-token")
app.add_typer(tokens.keys_app, name="keys")
app.add_typer(api_tokens.api_token_app, name="api-token")
app.command("logs")(logs.logs_command)
app.add_typer(apps.app_app, name="app")
app.add_typer(tunnels.tunnel_app, name="tunnel")
app.add_typer(nodes.nodes_app, name="nodes")
app.add_typer(connector.connector_app, name="connector")
app.add_typer(mail.email_app, name="email")
app.add_typer(certs.certs_app, name="certs")
app.add_typer(sessions.sessions_app, name="sessions")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
