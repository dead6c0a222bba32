"""The dashboard: counts, the applications, the tunnels' and the mail's health, the
certificates of automatic HTTPS, the latest blocks."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from zerogate.admin.panel.tunnels import TunnelViews

RECENT_BLOCKS = 20


class DashboardViews(TunnelViews):
    async def dashboard(self, request: Request) -> Response:
        apps = await self.service.items("applications")
        tunnels = await self.tunnel_rows()
        numbers = {
            "application": len(apps),
            "group": len(await self.service.items("groups")),
            "identity provider": len(await self.service.items("identity_providers")),
            "tunnel": len(tunnels),
            "service token": len(await self.service.items("service_tokens")),
            "admin": len((await self.service.admins())[0]),
        }
        # "1 identity provider", "2 identity providers"
        counts = {(thing if n == 1 else f"{thing}s"): n for thing, n in numbers.items()}
        blocks = await self.service.access_log(decision="block", limit=RECENT_BLOCKS)
        mail = await self.service.mail_health()
        certificates = await self.service.certificates()
        return self.render(
            request,
            "dashboard.html",
            title="Dashboard",
            apps=apps,
            tunnels=tunnels,
            counts=counts,
            blocks=blocks,
            mail=mail,
            certificates=certificates,
        )
