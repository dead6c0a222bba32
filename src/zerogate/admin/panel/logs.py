"""The access log (with filters) and the admin activity log."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response

from zerogate.admin import panel_forms as forms
from zerogate.admin.panel.base import PanelBase
from zerogate.model.values import parse_since

LOG_LIMIT = 200
LOG_DECISIONS = ("allow", "block", "pin sent", "logout")


class LogViews(PanelBase):
    async def access_log(self, request: Request) -> Response:
        q = request.query_params
        filters = {key: q.get(key, "").strip() for key in ("app", "email", "decision", "since")}
        error = None
        since = None
        if filters["since"]:
            try:
                since = parse_since(filters["since"], datetime.now(UTC))
            except ValueError as exc:
                error = f"since: {exc}"
        events = []
        if error is None:
            events = await self.service.access_log(
                app=filters["app"] or None,
                email=filters["email"] or None,
                decision=filters["decision"] or None,
                since=since,
                limit=LOG_LIMIT,
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
            limit=LOG_LIMIT,
        )

    async def admin_log(self, request: Request) -> Response:
        entries = await self.service.admin_log(LOG_LIMIT)
        rows = [{"entry": e, "diff": forms.spec_diff(e.before, e.after)} for e in entries]
        return self.render(
            request, "admin_log.html", title="Admin activity", rows=rows, limit=LOG_LIMIT
        )
