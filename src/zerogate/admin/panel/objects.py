"""Access groups and identity providers (with the OIDC "test connection")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from zerogate.admin import panel_forms as forms
from zerogate.admin.idp_check import aiohttp_fetch, callback_url, check_oidc
from zerogate.admin.panel.base import PanelBase, Refused
from zerogate.admin.principal import Principal
from zerogate.admin.service import Actor, Invalid, Item
from zerogate.model.loader import Problem

__all__ = ["GroupViews", "IdentityProviderViews", "aiohttp_fetch"]


class GroupViews(PanelBase):
    async def groups(self, request: Request) -> Response:
        groups = await self.service.items("groups")
        return self.render(
            request,
            "groups.html",
            title="Access groups",
            groups=groups,
            used_by=await self.service.usages("group", [g.name for g in groups]),
        )

    async def _group_page(
        self,
        request: Request,
        *,
        item: Item | None,
        name: str,
        rules: forms.RuleForm,
        version: int | None = None,
        status: int = 200,
        error: str | None = None,
        problems: Sequence[Problem] = (),
    ) -> Response:
        return self.render(
            request,
            "group.html",
            status,
            title=f"Group {item.name}" if item else "New group",
            item=item,
            version=item.version if version is None and item else version,
            name=name,
            rules=rules,
            error=error,
            problems=problems,
            hints=await self.hints(),
        )

    async def group_edit(self, request: Request) -> Response:
        name = request.query_params.get("name")
        if name is None:
            return await self._group_page(
                request, item=None, name="", rules=forms.RuleForm().with_blank_rows()
            )
        item = await self.service.get("groups", name)
        rules = forms.rules_from_spec(item.spec).with_blank_rows()
        return await self._group_page(request, item=item, name=item.name, rules=rules)

    async def group_save(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        original = forms.first(fields, "original")
        item = await self.service.get("groups", original) if original else None
        spec, rules = forms.group_spec(fields)
        version = self.version(fields) if item else None
        page: dict[str, Any] = {"item": item, "name": spec["name"], "version": version}
        show = partial(self._group_page, request, **page)
        again = self._rules_again(show, rules)
        adding = forms.first(fields, "add")
        if adding:
            return await show(rules=rules.with_blank_rows(adding))
        local = forms.form_rule_errors(rules)
        if local:
            problems = [Problem("", message) for message in local]
            return await again(status=422, error="The group is not complete.", problems=problems)
        saved = await self._save("groups", "group", item, spec, fields, principal, again)
        if isinstance(saved, Response):
            return saved
        return self.redirect("/admin/groups", f"Group {saved.name} saved.")

    async def group_delete(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        return await self._delete(request, fields, principal, "groups", "group")


class IdentityProviderViews(PanelBase):
    async def idps(self, request: Request) -> Response:
        return self.render(
            request,
            "idps.html",
            title="Identity providers",
            idps=await self.service.items("identity_providers"),
        )

    async def _idp_page(
        self,
        request: Request,
        *,
        item: Item | None,
        form: dict[str, str],
        status: int = 200,
        error: str | None = None,
        problems: Sequence[Problem] = (),
        test: dict[str, Any] | None = None,
    ) -> Response:
        base = f"{request.url.scheme}://{request.url.netloc}"
        callback = f"{base}/.zerogate/oidc/{form['name'] or 'NAME'}/callback"
        return self.render(
            request,
            "idp.html",
            status,
            title=f"Identity provider {item.name}" if item else "New identity provider",
            item=item,
            form=form,
            error=error,
            problems=problems,
            test=test,
            callback=callback,
            secret_stored=item is not None
            and item.name in await self.service.oidc_secrets_stored(),
        )

    async def idp_edit(self, request: Request) -> Response:
        name = request.query_params.get("name")
        if name is None:
            form = forms.idp_form({"type": request.query_params.get("type", "oidc")})
            return await self._idp_page(request, item=None, form=form)
        item = await self.service.get("identity_providers", name)
        return await self._idp_page(request, item=item, form=forms.idp_form(item.spec))

    async def idp_save(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        original = forms.first(fields, "original")
        item = await self.service.get("identity_providers", original) if original else None
        spec = forms.idp_spec(fields)
        form = forms.idp_form(spec)
        again = partial(self._idp_page, request, item=item, form=form)
        saved = await self._save(
            "identity_providers", "identity provider", item, spec, fields, principal, again
        )
        if isinstance(saved, Response):
            return saved
        note = ""
        if saved.spec.get("type") == "oidc":
            secret = forms.first(fields, "client_secret")
            actor = Actor.of(principal)
            try:
                if secret:
                    await self.service.set_oidc_secret(saved.name, secret, actor)
                    note = " The client secret is stored."
                elif forms.first(fields, "remove_client_secret"):
                    await self.service.set_oidc_secret(saved.name, None, actor)
                    note = " The stored client secret was removed."
            except Invalid as exc:
                note = f" The client secret was not stored: {exc.message}"
        target = "/admin/identity-providers/edit?" + urlencode({"name": saved.name})
        return self.redirect(target, f"Identity provider {saved.name} saved.{note}")

    async def idp_delete(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        return await self._delete(
            request, fields, principal, "identity_providers", "identity provider"
        )

    async def idp_test(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        """Fetch the stored provider's discovery document (and JWKS) and say what was found."""
        item = await self.service.get("identity_providers", forms.first(fields, "name"))
        if item.spec.get("type") != "oidc":
            raise Refused(400, "Only OpenID Connect providers have a connection to test.")
        result = await self.check_oidc(item.spec)
        return await self._idp_page(request, item=item, form=forms.idp_form(item.spec), test=result)

    async def check_oidc(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        callback = callback_url(self.settings, str(spec["name"]))
        return await check_oidc(self.service, self.fetch, spec, callback=callback)
