"""``zerogate logs``: the access log (logins and requests) or, with ``--admin``, the admin audit
log (every change to the configured objects), newest first.

Registered on the main app by ``cli/main.py``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from zerogate.cli.helpers import (
    JsonOption,
    OptionalConfig,
    fail,
    iso,
    out,
    print_json,
    when,
    with_store,
)

if TYPE_CHECKING:
    from zerogate.store import AccessEvent, AdminLogEntry, Store

KINDS = ("request", "login", "gap", "mail")
_DECISION_STYLE = {"allow": "green", "bypass": "cyan", "block": "red"}
_ACTION_STYLE = {"add": "green", "change": "yellow", "remove": "red"}
SUMMARY_CHARS = 90
VALUE_CHARS = 32


def parse_since(text: str, now: datetime) -> datetime:
    """``--since``: ``model.values.parse_since``, or the message and exit 2."""
    from zerogate.model.values import parse_since as since

    try:
        return since(text, now)
    except ValueError as exc:
        fail(f"--since: {escape(str(exc))}")


def _short(value: Any) -> str:
    if value is None:
        return "—"
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"


def summary(entry: AdminLogEntry) -> str:
    """A short ``field: before → after`` line for one admin change."""
    before = entry.before or {}
    after = entry.after or {}
    if entry.action == "add":
        parts = [f"{k}={_short(v)}" for k, v in after.items() if k != "name"]
    elif entry.action == "remove":
        parts = [f"{k}={_short(v)}" for k, v in before.items() if k != "name"]
    else:
        keys = [k for k in {**before, **after} if before.get(k) != after.get(k)]
        parts = [f"{k}: {_short(before.get(k))} → {_short(after.get(k))}" for k in keys]
    text = ", ".join(parts)
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


def _event_json(event: AccessEvent) -> dict[str, Any]:
    return {**asdict(event), "at": iso(event.at)}


def _admin_json(entry: AdminLogEntry) -> dict[str, Any]:
    return {**asdict(entry), "at": iso(entry.at), "summary": summary(entry)}


def _access_table(events: list[AccessEvent]) -> Table:
    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("time (UTC)", no_wrap=True)
    for column in ("kind", "decision", "app", "email", "idp", "ip", "policy", "request"):
        table.add_column(column, overflow="fold")
    for event in events:
        style = _DECISION_STYLE.get(event.decision)
        decision = escape(event.decision)
        if style:
            decision = f"[{style}]{decision}[/{style}]"
        ip = (event.ip or "—") + (f" ({event.country})" if event.country else "")
        request = " ".join(
            part
            for part in (event.method, (event.host or "") + (event.path or ""), event.detail)
            if part
        )
        table.add_row(
            when(event.at, zone=False),
            event.kind,
            decision,
            escape(event.app or "—"),
            escape(event.email or "—"),
            escape(event.idp or "—"),
            escape(ip),
            escape(event.policy or "—"),
            escape(request or "—"),
        )
    return table


def _admin_table(entries: list[AdminLogEntry]) -> Table:
    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("time (UTC)", no_wrap=True)
    for column in ("who", "from", "action", "object", "version", "change"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        style = _ACTION_STYLE.get(entry.action)
        action = escape(entry.action)
        if style:
            action = f"[{style}]{action}[/{style}]"
        what = " ".join(p for p in ((entry.kind or "").replace("_", " "), entry.name) if p)
        table.add_row(
            when(entry.at, zone=False),
            escape(entry.actor),
            escape(entry.source or "—"),
            action,
            escape(what or "—"),
            str(entry.version) if entry.version is not None else "—",
            escape(summary(entry)),
        )
    return table


def logs_command(
    config: OptionalConfig = None,
    app_name: Annotated[str | None, typer.Option("--app", help="Only this application.")] = None,
    email: Annotated[str | None, typer.Option("--email", help="Only this user.")] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="A duration (1h, 7d) back from now, or an ISO time (UTC)."),
    ] = None,
    decision: Annotated[
        str | None, typer.Option("--decision", help="Only this decision (allow, block, ...).")
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            help="Only logins, requests, gaps a crash left, or PIN mail sends"
            " (login|request|gap|mail).",
        ),
    ] = None,
    admin: Annotated[
        bool, typer.Option("--admin", help="The admin audit log instead of the access log.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many rows.")] = 50,
    as_json: JsonOption = False,
) -> None:
    """The access log (logins and requests), newest first; --admin: the admin audit log."""
    if kind is not None and kind not in KINDS:
        fail(f"--kind: {escape(repr(kind))} is not one of {', '.join(KINDS)}")
    if admin:
        given = [
            option
            for option, value in (
                ("--app", app_name),
                ("--email", email),
                ("--decision", decision),
                ("--kind", kind),
            )
            if value is not None
        ]
        if given:
            fail(f"{', '.join(given)} filter the access log; with --admin use --since and --limit")
    start = parse_since(since, datetime.now(UTC)) if since is not None else None

    if admin:

        async def admin_work(store: Store) -> list[AdminLogEntry]:
            return await store.admin_log(limit=limit)

        entries = with_store(config, admin_work)
        if start is not None:  # newest first: the entries since ``start`` are a prefix
            entries = [entry for entry in entries if entry.at >= start]
        if as_json:
            print_json({"admin_log": [_admin_json(entry) for entry in entries]})
        elif entries:
            out.print(_admin_table(entries))
        else:
            out.print("No admin-log entries" + (" in that time." if start else " yet."))
        return

    async def access_work(store: Store) -> list[AccessEvent]:
        return await store.access_log(
            app=app_name, email=email, since=start, decision=decision, kind=kind, limit=limit
        )

    events = with_store(config, access_work)
    if as_json:
        print_json({"access_log": [_event_json(event) for event in events]})
    elif events:
        out.print(_access_table(events))
    else:
        out.print("No access-log entries match.")
