"""Access groups and identity providers (with the OIDC "test connection")."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from zerogate.admin import panel_forms as forms
from zerogate.admin.panel.base import PanelBase, Refused
from zerogate.admin.principal import Principal
from zerogate.admin.service import Item
from zerogate.identity.oidc import (
    FetchError,
    HttpRequest,
    OidcError,
    discovery_url,
    parse_discovery,
)
from zerogate.model.loader import Problem
from zerogate.runtime.fetch import oidc_fetch

#: how long "test connection" waits for the provider
TEST_TIMEOUT_SECONDS = 5.0
TEST_MAX_BYTES = 1024 * 1024


#: "test connection": short timeout, bounded size, no cookies, redirects on the same origin only
aiohttp_fetch = oidc_fetch(TEST_TIMEOUT_SECONDS, TEST_MAX_BYTES)


class GroupViews(PanelBase):
    async def groups(self, request: Request) -> Response:
        return self.render(
            request, "groups.html", title="Access groups", groups=await self.service.items("groups")
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
        target = "/admin/identity-providers/edit?" + urlencode({"name": saved.name})
        return self.redirect(target, f"Identity provider {saved.name} saved.")

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
        result = await self.test_oidc(item.spec)
        return await self._idp_page(request, item=item, form=forms.idp_form(item.spec), test=result)

    async def test_oidc(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        issuer = str(spec["issuer"])
        url = discovery_url(issuer)
        result: dict[str, Any] = {"ok": False, "url": url, "checks": []}
        checks: list[tuple[bool, str]] = result["checks"]
        try:
            response = await self.fetch(HttpRequest("GET", url, {"Accept": "application/json"}))
        except FetchError as exc:
            checks.append((False, f"could not reach the provider: {exc}"))
            return result
        if response.status != 200:
            checks.append((False, f"{url} answered HTTP {response.status}"))
            return result
        try:
            doc = response.json()
        except (ValueError, UnicodeDecodeError):
            checks.append((False, "the discovery document is not JSON"))
            return result
        if not isinstance(doc, dict):
            checks.append((False, "the discovery document is not a JSON object"))
            return result
        try:
            meta = parse_discovery(doc, issuer)
        except OidcError as exc:
            checks.append((False, str(exc)))
            return result
        checks.append((True, f"discovery document found; issuer {meta.issuer} matches"))
        result["endpoints"] = {
            "authorization": meta.authorization_endpoint,
            "token": meta.token_endpoint,
            "userinfo": meta.userinfo_endpoint or "—",
            "jwks": meta.jwks_uri,
        }
        result["algorithms"] = sorted(meta.id_token_algorithms)
        try:
            keys = await self.fetch(HttpRequest("GET", meta.jwks_uri))
            found = keys.json().get("keys") if keys.status == 200 else None
        except (FetchError, ValueError, UnicodeDecodeError, AttributeError):
            found = None
        if isinstance(found, list):
            checks.append((True, f"signing keys (JWKS): {len(found)}"))
        else:
            checks.append((False, f"could not read the signing keys at {meta.jwks_uri}"))
        env = spec.get("client_secret_env")
        if env and not self.service.secret_env_allowed(str(env)):
            checks.append(
                (
                    False,
                    f"client secret variable not checked: the panel looks only at variables "
                    f"starting with {self.service.secret_env_prefix}",
                )
            )
        elif env:
            present = bool(os.environ.get(str(env)))
            checks.append(
                (
                    present,
                    f"client secret variable {env} is {'set' if present else 'NOT set'} "
                    "on this server",
                )
            )
        result["ok"] = all(ok for ok, _ in checks)
        return result
