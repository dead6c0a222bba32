"""Applications and the policies inside them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from zerogate.admin import panel_forms as forms
from zerogate.admin.panel.base import PanelBase
from zerogate.admin.principal import Principal
from zerogate.admin.service import Conflict, Invalid, Item, LockOut, NotFound
from zerogate.model.loader import Problem
from zerogate.model.objects import default_audience

DECISIONS = ("allow", "block", "bypass", "service_auth")


class ApplicationViews(PanelBase):
    # -- applications ------------------------------------------------------------------------

    async def applications(self, request: Request) -> Response:
        return self.render(
            request,
            "applications.html",
            title="Applications",
            apps=await self.service.items("applications"),
        )

    async def _application_page(
        self,
        request: Request,
        *,
        item: Item | None,
        form: dict[str, Any],
        status: int = 200,
        error: str | None = None,
        problems: Sequence[Problem] = (),
    ) -> Response:
        return self.render(
            request,
            "application.html",
            status,
            title=f"Application {item.name}" if item else "New application",
            item=item,
            form=form,
            error=error,
            problems=problems,
            idps=await self.names("identity_providers"),
            tunnels=await self.names("tunnels"),
            audience=(item.spec.get("audience") or default_audience(item.name)) if item else None,
            issuer=self.issuer,
        )

    @staticmethod
    def application_form(spec: Mapping[str, Any]) -> dict[str, Any]:
        target = "origin" if "origin" in spec else "tunnel" if "tunnel" in spec else "none"
        return {
            "name": spec.get("name", ""),
            "domain": spec.get("domain", ""),
            "target": target,
            "origin": spec.get("origin", ""),
            "tunnel": spec.get("tunnel", ""),
            "idp_mode": "some" if spec.get("identity_providers") is not None else "all",
            "identity_providers": list(spec.get("identity_providers") or []),
            "session_duration": spec.get("session_duration", ""),
        }

    async def application_edit(self, request: Request) -> Response:
        name = request.query_params.get("name")
        if name is None:
            return await self._application_page(
                request, item=None, form=self.application_form({"origin": ""})
            )
        item = await self.service.get("applications", name)
        return await self._application_page(
            request, item=item, form=self.application_form(item.spec)
        )

    async def application_save(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        original = forms.first(fields, "original")
        item = await self.service.get("applications", original) if original else None
        spec = forms.application_spec(fields, item.spec if item else None)
        form = self.application_form(spec)
        again = partial(self._application_page, request, item=item, form=form)
        saved = await self._save(
            "applications", "application", item, spec, fields, principal, again
        )
        if isinstance(saved, Response):
            return saved
        target = "/admin/applications/edit?" + urlencode({"name": saved.name})
        return self.redirect(target, f"Application {saved.name} saved.")

    async def application_delete(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        return await self._delete(request, fields, principal, "applications", "application")

    # -- policies ----------------------------------------------------------------------------

    async def _policy_page(
        self,
        request: Request,
        *,
        app: Item,
        original: str | None,
        form: dict[str, Any],
        rules: forms.RuleForm,
        status: int = 200,
        error: str | None = None,
        problems: Sequence[Problem] = (),
        app_version: int | None = None,
    ) -> Response:
        count = len(app.spec.get("policies", [])) + (0 if original else 1)
        return self.render(
            request,
            "policy.html",
            status,
            title=f"Policy {original}" if original else "New policy",
            app=app,
            app_version=app.version if app_version is None else app_version,
            original=original,
            form=form,
            rules=rules,
            positions=list(range(1, count + 1)),
            decisions=DECISIONS,
            error=error,
            problems=problems,
            hints=await self.hints(),
        )

    async def policy_edit(self, request: Request) -> Response:
        app = await self.service.get("applications", request.query_params.get("app", ""))
        name = request.query_params.get("name")
        policies = app.spec.get("policies", [])
        if name is None:
            form = {"name": "", "decision": "allow", "session_duration": "", "position": 0}
            form["position"] = len(policies) + 1
            return await self._policy_page(
                request,
                app=app,
                original=None,
                form=form,
                rules=forms.RuleForm().with_blank_rows(),
            )
        index = next((i for i, p in enumerate(policies) if p.get("name") == name), None)
        if index is None:
            raise NotFound(f"application {app.name!r} has no policy named {name!r}")
        spec = policies[index]
        form = {
            "name": spec["name"],
            "decision": spec.get("decision", "allow"),
            "session_duration": spec.get("session_duration", ""),
            "position": index + 1,
        }
        rules = forms.rules_from_spec(spec).with_blank_rows()
        return await self._policy_page(request, app=app, original=name, form=form, rules=rules)

    async def policy_save(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        app = await self.service.get("applications", forms.first(fields, "app"))
        original = forms.first(fields, "original") or None
        app_version = self.version(fields, "app_version")
        spec, rules = forms.policy_spec(fields)
        position = forms.parse_int(forms.first(fields, "position"))
        form = {
            "name": spec["name"],
            "decision": spec["decision"],
            "session_duration": spec.get("session_duration", ""),
            "position": position or len(app.spec.get("policies", [])) + 1,
        }
        page: dict[str, Any] = {
            "app": app,
            "original": original,
            "form": form,
            "app_version": app_version,
        }
        show = partial(self._policy_page, request, **page)
        again = self._rules_again(show, rules)
        adding = forms.first(fields, "add")
        if adding:  # "add a rule" without JavaScript: show the form again with one more row
            return await show(rules=rules.with_blank_rows(adding))
        local = forms.form_rule_errors(rules)
        if local:
            problems = [Problem("", message) for message in local]
            return await again(status=422, error="The policy is not complete.", problems=problems)
        saved = await self._attempt(
            self.service.put_policy(
                app.name,
                spec,
                app_version=app_version,
                actor=self.actor(principal, fields),
                replace=original,
                position=position - 1 if position else None,
            ),
            again,
            what="application",
            update=True,
        )
        if isinstance(saved, Response):
            return saved
        target = "/admin/applications/edit?" + urlencode({"name": app.name})
        return self.redirect(target, f"Policy {spec['name']} of {app.name} saved.")

    async def policy_delete(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        app, name = forms.first(fields, "app"), forms.first(fields, "name")
        target = "/admin/applications/edit?" + urlencode({"name": app})
        try:
            await self.service.delete_policy(
                app,
                name,
                app_version=self.version(fields, "app_version"),
                actor=self.actor(principal, fields),
            )
        except Conflict:
            return self.error_page(
                request,
                409,
                f"The application {app!r} was changed by someone else since you opened it — "
                "reload and check before deleting the policy.",
            )
        except LockOut:
            raise
        except Invalid as exc:
            problems = "; ".join(str(p) for p in exc.problems)
            return self.redirect(target, f"Cannot delete policy {name}: {problems}", "error")
        return self.redirect(target, f"Policy {name} of {app} deleted.")

    async def policy_move(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        app = await self.service.get("applications", forms.first(fields, "app"))
        name = forms.first(fields, "name")
        policies = app.spec.get("policies", [])
        index = next((i for i, p in enumerate(policies) if p.get("name") == name), None)
        if index is None:
            raise NotFound(f"application {app.name!r} has no policy named {name!r}")
        step = -1 if forms.first(fields, "direction") == "up" else 1
        position = min(max(index + step, 0), len(policies) - 1)
        target = "/admin/applications/edit?" + urlencode({"name": app.name})
        try:
            await self.service.put_policy(
                app.name,
                policies[index],
                app_version=self.version(fields, "app_version"),
                actor=self.actor(principal, fields),
                replace=name,
                position=position,
            )
        except Conflict:
            return self.error_page(
                request,
                409,
                f"The application {app.name!r} was changed by someone else since you opened "
                "it — reload and try again.",
            )
        return self.redirect(target, f"Policy {name} moved {'up' if step < 0 else 'down'}.")
