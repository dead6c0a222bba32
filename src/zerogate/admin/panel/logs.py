"""The access log (filters, pages, CSV / JSON-lines export) and the admin activity log."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from zerogate.admin import panel_forms as forms
from zerogate.admin.api.logs import export_response
from zerogate.admin.panel.base import PanelBase
from zerogate.store import ACCESS_DECISIONS, ACCESS_KINDS, AccessFilter, access_filter, cursor_of

LOG_LIMIT = 200
LOG_DECISIONS = ACCESS_DECISIONS
FILTERS = ("app", "email", "decision", "kind", "ip", "status", "since", "until")


class LogViews(PanelBase):
    def _filters(self, request: Request) -> tuple[dict[str, str], AccessFilter | None, str | None]:
        q = request.query_params
        filters = {key: q.get(key, "").strip()[:300] for key in FILTERS}
        try:
            where = access_filter(now=datetime.now(UTC), cursor=q.get("cursor") or None, **filters)
        except ValueError as exc:
            return filters, None, str(exc)
        return filters, where, None

    async def access_log(self, request: Request) -> Response:
        filters, where, error = self._filters(request)
        events = []
        more = False
        if where is not None:
            events = await self.service.access_log(where, limit=LOG_LIMIT + 1)
            more = len(events) > LOG_LIMIT
            events = events[:LOG_LIMIT]
        given = {key: value for key, value in filters.items() if value}
        older = (
            "/admin/access-log?" + urlencode({**given, "cursor": cursor_of(events[-1])})
            if more
            else None
        )
        return self.render(
            request,
            "access_log.html",
            400 if error else 200,
            title="Access log",
            filters=filters,
            events=events,
            error=error,
            apps=await self.names("applications"),
            decisions=LOG_DECISIONS,
            kinds=ACCESS_KINDS,
            limit=LOG_LIMIT,
            paged="cursor" in request.query_params,
            newest="/admin/access-log?" + urlencode(given),
            older=older,
            export_csv="/admin/access-log/export?" + urlencode({**given, "format": "csv"}),
            export_jsonl="/admin/access-log/export?" + urlencode({**given, "format": "jsonl"}),
        )

    async def access_log_export(self, request: Request) -> Response:
        filters, where, error = self._filters(request)
        fmt = request.query_params.get("format", "csv")
        if where is None or fmt not in ("csv", "jsonl"):
            return self.render(
                request,
                "access_log.html",
                400,
                title="Access log",
                filters=filters,
                events=[],
                error=error or f"format: {fmt[:20]!r} is not one of csv, jsonl",
                apps=await self.names("applications"),
                decisions=LOG_DECISIONS,
                kinds=ACCESS_KINDS,
                limit=LOG_LIMIT,
            )
        return export_response(self.service, where, fmt)

    async def admin_log(self, request: Request) -> Response:
        entries = await self.service.admin_log(LOG_LIMIT)
        rows = [{"entry": e, "diff": forms.spec_diff(e.before, e.after)} for e in entries]
        return self.render(
            request, "admin_log.html", title="Admin activity", rows=rows, limit=LOG_LIMIT
        )
