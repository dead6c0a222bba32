"""``zerogate logs``: the access log (logins and requests) or, with ``--admin``, the admin audit
log (every change to the configured objects), newest first.

Registered on the main app by ``cli/main.py``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict, replace
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
    from zerogate.store import AccessEvent, AccessFilter, AdminLogEntry, Store

#: ``zerogate.store.ACCESS_DECISIONS`` (a test keeps them equal; the store is imported only
#: when a command runs, so ``zerogate --help`` stays quick)
DECISIONS = (
    "allow",
    "block",
    "authenticate",
    "pin sent",
    "logout",
    "gap",
    "sent",
    "failed",
    "issued",
)

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
    from zerogate.store import access_event_dict

    return access_event_dict(event)


def _admin_json(entry: AdminLogEntry) -> dict[str, Any]:
    return {**asdict(entry), "at": iso(entry.at), "summary": summary(entry)}


def _decision(event: AccessEvent, *, markup: bool) -> str:
    text = event.decision + (f" ×{event.count}" if event.count > 1 else "")
    style = _DECISION_STYLE.get(event.decision)
    if not markup or not style:
        return escape(text) if markup else text
    return f"[{style}]{escape(text)}[/{style}]"


def _result(event: AccessEvent) -> str:
    """``502 12ms``: the status the client got and how long it took, or ``—``."""
    parts = []
    if event.status is not None:
        parts.append(str(event.status))
    if event.duration_ms is not None:
        parts.append(
            f"{event.duration_ms:.0f}ms"
            if event.duration_ms >= 10
            else f"{event.duration_ms:.1f}ms"
        )
    return " ".join(parts) or "—"


def _request(event: AccessEvent) -> str:
    return " ".join(
        part
        for part in (event.method, (event.host or "") + (event.path or ""), event.detail)
        if part
    )


def _who(event: AccessEvent) -> str:
    who = event.email or "—"
    return f"{who} ({event.idp})" if event.idp and event.email else who


def _ip(event: AccessEvent) -> str:
    return (event.ip or "—") + (f" ({event.country})" if event.country else "")


def _access_table(events: list[AccessEvent]) -> Table:
    """For a terminal: the columns that tell what happened first; long text folds inside its
    column, so 80 columns stay readable."""
    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("decision", no_wrap=True)
    table.add_column("result", no_wrap=True)
    for column in ("app", "who", "ip", "request", "policy"):
        table.add_column(column, overflow="fold", ratio=3 if column == "request" else 1)
    for event in events:
        table.add_row(
            when(event.at, zone=False),
            _decision(event, markup=True),
            _result(event),
            escape(event.app or "—"),
            escape(_who(event)),
            escape(_ip(event)),
            escape(_request(event) or "—"),
            escape(event.policy or "—"),
        )
    return table


def _access_line(event: AccessEvent) -> str:
    """One event as one tab-separated line (for pipes and ``--follow``): time, kind,
    decision, result, app, who, ip, policy, request."""
    fields = (
        when(event.at, zone=False),
        event.kind,
        _decision(event, markup=False),
        _result(event),
        event.app or "-",
        _who(event),
        _ip(event),
        event.policy or "-",
        _request(event) or "-",
    )
    return "\t".join(f.replace("\t", " ").replace("\n", " ") for f in fields)


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
        str | None,
        typer.Option("--decision", help=f"Only this decision: {', '.join(DECISIONS)}."),
    ] = None,
    kind: Annotated[
        str | None,
        typer.Option(
            "--kind",
            help="Only logins, requests, gaps a crash left, PIN mail sends, or certificate"
            " orders (login|request|gap|mail|tls).",
        ),
    ] = None,
    ip: Annotated[str | None, typer.Option("--ip", help="Only this client address.")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="Only this status (502) or class (5xx).")
    ] = None,
    admin: Annotated[
        bool, typer.Option("--admin", help="The admin audit log instead of the access log.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many rows.")] = 50,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            "-f",
            help="Keep printing new access-log rows as they are written (oldest first, one "
            "line each; with --json one JSON object a line) until interrupted.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The access log (logins and requests), newest first; --admin: the admin audit log."""
    if admin:
        given = [
            option
            for option, value in (
                ("--app", app_name),
                ("--email", email),
                ("--decision", decision),
                ("--kind", kind),
                ("--ip", ip),
                ("--status", status),
            )
            if value is not None
        ]
        if follow:
            given.append("--follow")
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

    from zerogate.store import access_filter

    try:
        where = access_filter(
            now=datetime.now(UTC),
            app=app_name,
            email=email,
            since=start,
            decision=decision,
            kind=kind,
            ip=ip,
            status=status,
        )
    except ValueError as exc:
        fail(f"--{escape(str(exc))}")

    if follow:
        try:
            with_store(config, lambda store: _follow(store, where, limit, as_json=as_json))
        except KeyboardInterrupt:  # Ctrl-C is how a follow ends
            raise typer.Exit(0) from None
        return

    async def access_work(store: Store) -> list[AccessEvent]:
        return await store.access_log(where, limit=limit)

    events = with_store(config, access_work)
    if as_json:
        print_json({"access_log": [_event_json(event) for event in events]})
    elif events and not sys.stdout.isatty():
        for event in events:
            _print_line(_access_line(event))
    elif events:
        out.print(_access_table(events))
    else:
        out.print("No access-log entries match.")


#: ``--follow`` reads again every this many seconds; and re-reads this many ids below the
#: newest it printed: on PostgreSQL two writers' transactions may commit in the other order
#: than their ids were handed out, so a smaller id can appear after a larger one was read
FOLLOW_INTERVAL = 1.0
FOLLOW_OVERLAP = 500


def _print_line(text: str) -> None:
    sys.stdout.write(text + "\n")


async def _follow(store: Store, where: AccessFilter, limit: int, *, as_json: bool) -> None:
    """The newest ``limit`` matching rows, oldest first, then every new one as it appears."""

    def show(event: AccessEvent) -> None:
        if as_json:
            _print_line(json.dumps(_event_json(event), separators=(",", ":")))
        else:
            _print_line(_access_line(event))

    recent = await store.access_log(where, limit=limit)
    for event in reversed(recent):
        show(event)
    sys.stdout.flush()
    from zerogate.store import AccessFilter

    newest = await store.access_log(AccessFilter(), limit=1)  # whatever matches or not
    top = newest[0].id or 0 if newest else 0
    seen: set[int] = {event.id for event in recent if event.id is not None}
    try:
        while True:
            await asyncio.sleep(FOLLOW_INTERVAL)
            low = max(0, top - FOLLOW_OVERLAP)
            rows = await store.access_log(replace(where, after_id=low), limit=5000)
            for event in rows:
                if event.id is None or event.id in seen or event.id <= low:
                    continue
                seen.add(event.id)
                show(event)
                top = max(top, event.id)
            sys.stdout.flush()
            seen = {i for i in seen if i > top - FOLLOW_OVERLAP}
    except (asyncio.CancelledError, KeyboardInterrupt):
        return
