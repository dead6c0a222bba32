"""The dashboard: counts, the applications, the tunnels' and the mail's health, the latest
blocks."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from zerogate.admin.panel.tunnels import TunnelViews

RECENT_BLOCKS = 20


class DashboardViews(TunnelViews):
    async def dashboard(self, request: Request) -> Response:
        apps = await self.service.items("applications")
        tunnels = await self.tunnel_rows()
        counts = {
            "applications": len(apps),
            "groups": len(await self.service.items("groups")),
            "identity providers": len(await self.service.items("identity_providers")),
            "tunnels": len(tunnels),
            "service tokens": len(await self.service.items("service_tokens")),
            "admins": len((await self.service.admins())[0]),
        }
        blocks = await self.service.access_log(decision="block", limit=RECENT_BLOCKS)
        mail = await self.service.mail_health()
        return self.render(
            request,
            "dashboard.html",
            title="Dashboard",
            apps=apps,
            tunnels=tunnels,
            counts=counts,
            blocks=blocks,
            mail=mail,
        )
