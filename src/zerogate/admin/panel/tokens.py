"""Service tokens and the admin API's tokens; a secret is the POST's own answer, once."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from zerogate.admin import panel_forms as forms
from zerogate.admin.panel.base import PanelBase
from zerogate.admin.principal import Principal
from zerogate.model.loader import Problem
from zerogate.store import ServiceCredential


class ServiceTokenViews(PanelBase):
    async def service_tokens(
        self,
        request: Request,
        *,
        form: dict[str, str] | None = None,
        status: int = 200,
        error: str | None = None,
        problems: Sequence[Problem] = (),
    ) -> Response:
        items = await self.service.items("service_tokens")
        creds = await self.service.service_credentials()
        now = datetime.now(UTC)
        rows = [
            {
                "item": item,
                "cred": creds.get(item.name),
                "expired": item.name in creds and creds[item.name].expires_at <= now,
            }
            for item in items
        ]
        return self.render(
            request,
            "service_tokens.html",
            status,
            title="Service tokens",
            rows=rows,
            form=form or {"name": "", "duration": "8760h"},
            error=error,
            problems=problems,
        )

    async def service_token_save(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        spec = forms.service_token_spec(fields)
        form = {"name": spec["name"], "duration": forms.first(fields, "duration")}
        created = await self._attempt(
            self.service.create_service_token(spec, self.actor(principal, fields)),
            partial(self.service_tokens, request, form=form),
            what="service token",
            update=False,
        )
        if isinstance(created, Response):
            return created
        item, cred, secret = created
        return self._service_secret_page(request, item.name, cred, secret, created=True)

    def _service_secret_page(
        self, request: Request, name: str, cred: ServiceCredential, secret: str, *, created: bool
    ) -> Response:
        return self.render(
            request,
            "service_token_secret.html",
            title=f"Service token {name}",
            name=name,
            created=created,
            cred=cred,
            secret=secret,
        )

    async def service_token_rotate(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        name = forms.first(fields, "name")
        cred, secret = await self.service.rotate_service_token(name, self.actor(principal, fields))
        return self._service_secret_page(request, name, cred, secret, created=False)

    async def service_token_delete(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        return await self._delete(request, fields, principal, "service_tokens", "service token")


class ApiTokenViews(PanelBase):
    async def api_tokens(
        self,
        request: Request,
        *,
        form: dict[str, Any] | None = None,
        status: int = 200,
        error: str | None = None,
        problems: Sequence[Problem] = (),
    ) -> Response:
        """The admin API's Bearer tokens (never a secret) and the form for a new one."""
        now = datetime.now(UTC)
        rows = [
            {"token": t, "expired": t.expires_at is not None and t.expires_at <= now}
            for t in await self.service.api_tokens()
        ]
        return self.render(
            request,
            "api_tokens.html",
            status,
            title="API tokens",
            rows=rows,
            form=form or {"name": "", "read_only": False, "expires": "30d"},
            error=error,
            problems=problems,
        )

    async def api_token_save(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        name = forms.first(fields, "name")
        read_only = forms.first(fields, "read_only") == "1"
        expires = forms.first(fields, "expires") or None
        form = {"name": name, "read_only": read_only, "expires": expires or ""}
        created = await self._attempt(
            self.service.create_api_token(
                name, read_only=read_only, expires=expires, actor=self.actor(principal, fields)
            ),
            partial(self.api_tokens, request, form=form),
            what="API token",
            update=False,
        )
        if isinstance(created, Response):
            return created
        token, text = created
        return self.render(
            request,
            "api_token_secret.html",
            title=f"API token {token.name}",
            token=token,
            text=text,
        )

    async def api_token_revoke(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        name = forms.first(fields, "name")
        await self.service.revoke_api_token(name, self.actor(principal, fields))
        return self.redirect("/admin/api-tokens", f"API token {name} is revoked.")
