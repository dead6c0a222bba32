"""Portal sessions: everyone's active sessions (device, address, since, last seen), filtered
by address, each with a button that ends it (CSRF like every panel form)."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from zerogate.admin import panel_forms as forms
from zerogate.admin.panel.base import PanelBase
from zerogate.admin.principal import Principal, principal_of
from zerogate.runtime.devices import device_of

SESSIONS_LIMIT = 500


class SessionViews(PanelBase):
    async def sessions(self, request: Request) -> Response:
        email = request.query_params.get("email", "").strip()[:320]
        found = await self.service.sessions(email=email or None, limit=SESSIONS_LIMIT)
        current = principal_of(request.scope).portal_session
        rows = [
            {
                "id": s.id,
                "email": s.email,
                "idp": s.idp,
                "device": device_of(s.user_agent),
                "user_agent": s.user_agent or "",
                "ip": s.ip or "—",
                "since": s.created_at,
                "seen": s.seen_at,
                "current": s.id == current,
            }
            for s in found
        ]
        return self.render(
            request,
            "sessions.html",
            title="Sessions",
            rows=rows,
            email=email,
            limit=SESSIONS_LIMIT,
        )

    async def session_end(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        session_id = forms.first(fields, "session")
        ended = await self.service.end_session(session_id, self.actor(principal, fields))
        back = forms.first(fields, "email")
        target = "/admin/sessions" + ("?" + urlencode({"email": back}) if back else "")
        device = device_of(ended.user_agent)
        return self.redirect(target, f"The session of {ended.email} ({device}) is ended.")
