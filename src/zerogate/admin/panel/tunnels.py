"""Tunnels: their connector connections, and connector tokens shown once."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from zerogate.admin import panel_forms as forms
from zerogate.admin.panel.base import PanelBase
from zerogate.admin.principal import Principal
from zerogate.admin.service import Item
from zerogate.model.loader import Problem


class TunnelViews(PanelBase):
    async def tunnel_rows(self) -> list[dict[str, Any]]:
        items = await self.service.items("tunnels")
        connections = await self.service.connections()
        credentials = {c.name for c in await self.service.store.tunnel_credentials()}
        rows = []
        for item in items:
            mine = [c for c in connections if c.tunnel == item.name]
            rows.append(
                {
                    "item": item,
                    "connections": mine,
                    "connectors": sorted({c.connector_id for c in mine}),
                    "edges": sorted({c.edge_id for c in mine}),
                    "healthy": bool(mine),
                    "has_token": item.name in credentials,
                }
            )
        return rows

    async def tunnels(self, request: Request) -> Response:
        return self.render(
            request, "tunnels.html", title="Tunnels", tunnels=await self.tunnel_rows()
        )

    async def _tunnel_page(
        self,
        request: Request,
        *,
        item: Item | None,
        form: dict[str, str],
        status: int = 200,
        error: str | None = None,
        problems: Sequence[Problem] = (),
    ) -> Response:
        connections = await self.service.connections(tunnel=item.name) if item else []
        return self.render(
            request,
            "tunnel.html",
            status,
            title=f"Tunnel {item.name}" if item else "New tunnel",
            item=item,
            form=form,
            error=error,
            problems=problems,
            connections=connections,
        )

    async def tunnel_edit(self, request: Request) -> Response:
        name = request.query_params.get("name")
        if name is None:
            return await self._tunnel_page(request, item=None, form={"name": "", "routes": ""})
        item = await self.service.get("tunnels", name)
        form = {"name": item.name, "routes": ", ".join(item.spec.get("routes", []))}
        return await self._tunnel_page(request, item=item, form=form)

    async def tunnel_save(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        original = forms.first(fields, "original")
        item = await self.service.get("tunnels", original) if original else None
        spec = forms.tunnel_spec(fields)
        form = {"name": spec["name"], "routes": forms.first(fields, "routes")}
        again = partial(self._tunnel_page, request, item=item, form=form)
        saved = await self._save("tunnels", "tunnel", item, spec, fields, principal, again)
        if isinstance(saved, Response):
            return saved
        if item is not None:
            return self.redirect("/admin/tunnels", f"Tunnel {saved.name} saved.")
        return await self._show_connector_token(request, saved.name, principal, created=True)

    async def _show_connector_token(
        self, request: Request, name: str, principal: Principal, *, created: bool
    ) -> Response:
        """A new connector token (``AdminService.create_tunnel_token``), shown this once."""
        issued = await self.service.create_tunnel_token(
            name, actor=self.actor(principal), settings=self.settings
        )
        return self.render(
            request,
            "tunnel_token.html",
            title=f"Tunnel {name}",
            name=issued.name,
            created=created,
            token=issued.token,
            command=issued.command(),
            edges=issued.edges,
        )

    async def tunnel_token(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        """A new connector token for an existing tunnel (the old one stops working)."""
        item = await self.service.get("tunnels", forms.first(fields, "name"))
        return await self._show_connector_token(request, item.name, principal, created=False)

    async def tunnel_delete(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        return await self._delete(request, fields, principal, "tunnels", "tunnel")
