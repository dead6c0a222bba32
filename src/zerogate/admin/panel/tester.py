"""The policy tester page."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from zerogate.admin import panel_forms as forms
from zerogate.admin.panel.base import PanelBase
from zerogate.admin.service import AdminError
from zerogate.model.loader import Problem


class TesterViews(PanelBase):
    async def policy_test(self, request: Request) -> Response:
        q = request.query_params
        names = ("app", "url", "email", "ip", "country", "idp", "idp_groups", "service_token")
        form = {key: q.get(key, "").strip() for key in names}
        verdict = None
        error = None
        problems: list[Problem] = []
        status = 200
        if q.get("run"):
            try:
                result = await self.service.policy_test(
                    app=None if form["url"] else (form["app"] or None),
                    url=form["url"] or None,
                    email=form["email"] or None,
                    idp=form["idp"] or None,
                    idp_groups=tuple(forms.split_values(form["idp_groups"])),
                    ip=form["ip"] or None,
                    country=form["country"] or None,
                    service_token=form["service_token"] or None,
                )
                verdict = result.as_dict()
            except AdminError as exc:  # every unusable input, each with why (as the API says)
                error, problems, status = exc.message, list(exc.problems), 400
            except ValueError as exc:  # an unsafe path in the URL, a bad address
                error, status = str(exc), 400
        return self.render(
            request,
            "policy_test.html",
            status,
            title="Policy tester",
            form=form,
            verdict=verdict,
            error=error,
            problems=problems,
            apps=await self.names("applications"),
            idps=await self.names("identity_providers"),
            tokens=await self.names("service_tokens"),
        )
