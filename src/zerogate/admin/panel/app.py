"""The panel put together: the views of every area and, in one place, their routes."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from zerogate.admin.panel.admins import AdminViews
from zerogate.admin.panel.applications import ApplicationViews
from zerogate.admin.panel.base import MAX_FORM_BYTES, FormHandler, Handler
from zerogate.admin.panel.dashboard import DashboardViews
from zerogate.admin.panel.logs import LogViews
from zerogate.admin.panel.nodes import NodeViews
from zerogate.admin.panel.objects import GroupViews, IdentityProviderViews, aiohttp_fetch
from zerogate.admin.panel.sessions import SessionViews
from zerogate.admin.panel.tester import TesterViews
from zerogate.admin.panel.tokens import ApiTokenViews, ServiceTokenViews
from zerogate.admin.service import AdminService
from zerogate.identity.oidc import Fetch
from zerogate.model.objects import Settings


class Panel(
    DashboardViews,
    ApplicationViews,
    GroupViews,
    IdentityProviderViews,
    ServiceTokenViews,
    AdminViews,
    ApiTokenViews,
    LogViews,
    NodeViews,
    TesterViews,
    SessionViews,
):
    """The panel's handlers; ``app`` is the Starlette application."""

    def __init__(
        self,
        service: AdminService,
        secret: bytes,
        *,
        fetch: Fetch,
        settings: Settings | None,
    ) -> None:
        super().__init__(service, secret, fetch=fetch, settings=settings)
        self.app = Starlette(routes=self._routes(), max_body_size=MAX_FORM_BYTES)

    def _routes(self) -> list[Route]:
        get: list[tuple[str, Handler]] = [
            ("/admin", self.dashboard),
            ("/admin/", self.dashboard),
            ("/admin/applications", self.applications),
            ("/admin/applications/edit", self.application_edit),
            ("/admin/policies/edit", self.policy_edit),
            ("/admin/groups", self.groups),
            ("/admin/groups/edit", self.group_edit),
            ("/admin/identity-providers", self.idps),
            ("/admin/identity-providers/edit", self.idp_edit),
            ("/admin/tunnels", self.tunnels),
            ("/admin/tunnels/edit", self.tunnel_edit),
            ("/admin/nodes", self.nodes),
            ("/admin/service-tokens", self.service_tokens),
            ("/admin/admins", self.admins),
            ("/admin/api-tokens", self.api_tokens),
            ("/admin/sessions", self.sessions),
            ("/admin/access-log", self.access_log),
            ("/admin/access-log/export", self.access_log_export),
            ("/admin/admin-log", self.admin_log),
            ("/admin/policy-test", self.policy_test),
            ("/admin/static/{name}", self.static_file),
        ]
        post: list[tuple[str, FormHandler]] = [
            ("/admin/applications/save", self.application_save),
            ("/admin/applications/delete", self.application_delete),
            ("/admin/policies/save", self.policy_save),
            ("/admin/policies/delete", self.policy_delete),
            ("/admin/policies/move", self.policy_move),
            ("/admin/groups/save", self.group_save),
            ("/admin/groups/delete", self.group_delete),
            ("/admin/identity-providers/save", self.idp_save),
            ("/admin/identity-providers/delete", self.idp_delete),
            ("/admin/identity-providers/test", self.idp_test),
            ("/admin/tunnels/save", self.tunnel_save),
            ("/admin/tunnels/delete", self.tunnel_delete),
            ("/admin/tunnels/token", self.tunnel_token),
            ("/admin/service-tokens/save", self.service_token_save),
            ("/admin/service-tokens/delete", self.service_token_delete),
            ("/admin/service-tokens/rotate", self.service_token_rotate),
            ("/admin/admins/save", self.admins_save),
            ("/admin/api-tokens/save", self.api_token_save),
            ("/admin/api-tokens/revoke", self.api_token_revoke),
            ("/admin/sessions/end", self.session_end),
        ]
        self.pages = frozenset(path for path, _ in get)
        routes = [Route(path, self._reading(h), methods=["GET", "HEAD"]) for path, h in get]
        routes += [Route(path, self._writing(h), methods=["POST"]) for path, h in post]
        return routes


def create_panel(
    service: AdminService,
    *,
    secret: bytes,
    settings: Settings | None = None,
    fetch: Fetch | None = None,
) -> Starlette:
    """The panel as an ASGI app for every ``/admin*`` request on the portal host.

    ``secret`` keys the CSRF tokens and flash cookies. ``settings`` (the server's) give
    connector tokens their edge addresses (``listen.tunnel``) and say whether the listener
    uses the generated certificate, whose fingerprint they pin; without them a token names no
    edge and the page says to add ``--edge``. ``fetch`` replaces the HTTP client of "test
    connection" (tests)."""
    panel = Panel(service, secret, fetch=fetch or aiohttp_fetch, settings=settings)
    return panel.app
