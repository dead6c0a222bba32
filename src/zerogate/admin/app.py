"""The admin front door: every request for ``/api/v1`` and ``/admin`` on the portal host
passes here first (raw ASGI, a few dictionary lookups before the frameworks behind it).

1. ``GET /admin/login?rd=…`` — a stable sign-in address, open to everyone: a redirect to the
   portal's login for the built-in admin application (``runtime.admin_login``);
2. authenticate: ``Authorization: Bearer zga_…`` → an API token (wrong, expired or revoked →
   401 JSON); else the portal session cookie → its identity must pass the ``admins`` list, the
   built-in application's policy (not signed in → 302 to the portal's login page for a browser,
   401 JSON with ``login_url`` for an API client; signed in but not an admin → 403, HTML or
   JSON);
3. authorise: a read-only token gets 403 on every write method; an API write made with the
   session cookie needs the ``X-Zerogate-CSRF`` header (403 without it);
4. put the ``Principal`` (who, client address from ``resolve_client``, scope) into
   ``scope[SCOPE_KEY]`` and hand the request to the REST API (``/api/v1``, FastAPI) or the web
   panel (``/admin``, ``zerogate.admin.panel.create_panel``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from zerogate.admin.auth import (
    LOGIN_PATH,
    admin_login_url,
    admin_return,
    bearer,
    csrf_ok,
    identity_of,
    is_admin,
    login_url,
    session_claims,
)
from zerogate.admin.principal import SCOPE_KEY, Principal
from zerogate.admin.service import AdminService
from zerogate.model.paths import PathError, normalise_path
from zerogate.net import http
from zerogate.net.asgi import Receive, Scope, Send
from zerogate.net.headers import resolve_client
from zerogate.policy import Context
from zerogate.runtime.request import raw_path_of
from zerogate.runtime.services import Services
from zerogate.store import StoreError

log = logging.getLogger("zerogate.admin")

API_PREFIX = "/api/v1"
PANEL_PREFIX = "/admin"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

ASGIApp = Any


def _under(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in (API_PREFIX, PANEL_PREFIX))


def handles(raw_path: str) -> bool:
    """Whether a portal-host request (its raw path) belongs to the admin front door."""
    try:
        return _under(normalise_path(raw_path))
    except PathError:  # unsafe (%2F, %5C, NUL…): the front door answers 400 in its own format
        return raw_path.startswith((API_PREFIX + "/", PANEL_PREFIX + "/"))


def _tls_hosts(svc: Services) -> Callable[[], set[str]] | None:
    """With ``listen.tls.acme``: the hostnames automatic HTTPS certifies now (the
    certificate status lists those not ordered yet); else None."""
    tls = svc.runtime.settings.listen.tls
    if tls is None or tls.acme is None:
        return None
    from zerogate.autotls.manager import wanted_hostnames

    runtime = svc.runtime
    return lambda: wanted_hostnames(
        (app.host for app in runtime.snapshot.apps.values()), runtime.portal_host
    )


class AdminFrontDoor:
    """Authenticates, authorises and dispatches admin requests (see the module docstring)."""

    def __init__(self, svc: Services, service: AdminService | None = None) -> None:
        self.svc = svc
        from zerogate.dns.routes import RouteDns

        self.service = service or AdminService(
            svc.runtime.store,
            secret_env_prefix=svc.runtime.settings.secret_env_prefix,
            # checked at start by ``zerogate.server.run.serve`` (a missing secret refuses)
            dns=RouteDns.from_settings(svc.runtime.settings),
            on_change=svc.runtime.refresh,
            mail=svc.runtime.settings.email,
            tls_hosts=_tls_hosts(svc),
        )
        from zerogate.admin.api import create_api

        self.api: ASGIApp = create_api(
            self.service, secret=svc.runtime.secret, settings=svc.runtime.settings
        )
        self._panel: ASGIApp | None = None

    def panel(self) -> ASGIApp:
        """The panel's ASGI app, created on first use."""
        if self._panel is None:
            from zerogate.admin.panel import create_panel

            # the server's settings: the edge addresses of the connector tokens it shows
            self._panel = create_panel(
                self.service, secret=self.svc.runtime.secret, settings=self.svc.runtime.settings
            )
        return self._panel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        try:
            await self._handle(scope, receive, send)
        except (http.BadRequest, PathError) as exc:
            await _error(scope, send, 400, "bad request", str(exc))
        except StoreError as exc:
            log.warning("admin request failed: %s", exc)
            await _error(scope, send, 503, "store unavailable", str(exc))

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Who is asking (API token or an administrator's portal session), then the API or
        the panel; every refusal answered here, before any framework sees the request."""
        svc = self.svc
        raw = raw_path_of(scope)
        path = normalise_path(raw)
        # the frameworks route on the normalised path, percent-decoded as an ASGI ``path`` is
        # (so ``/api/v1/groups/Net%20Admins`` names the group "Net Admins"); an encoded ``/``
        # never gets here (``PathError``). Normalising is for deciding (API or panel, CSRF);
        # a path it changed beyond decoding (``ops.`` → ``ops``, ``a;b`` → ``a``)
        # would name another object than the one asked for, so it is refused below, after
        # authentication (an anonymous caller learns nothing from the difference).
        decoded = unquote(path)
        canonical = decoded == unquote(raw)
        if decoded != scope.get("path"):
            scope = {**scope, "path": decoded}
        method: str = scope.get("method", "GET")
        peer = scope.get("client") or ("", 0)
        client_ip = resolve_client(str(peer[0]), scope["headers"], svc.runtime.trusted).ip
        api = path == API_PREFIX or path.startswith(API_PREFIX + "/")

        if path == LOGIN_PATH and method in ("GET", "HEAD"):
            rd = admin_return(http.query(scope).get("rd", ""))
            await http.redirect(send, admin_login_url(scope, svc, rd))
            return
        token_text = bearer(scope)
        if token_text is not None:
            principal = await self._token_principal(send, token_text, method, client_ip)
        else:
            principal = await self._session_principal(scope, send, path, api, method, client_ip)
        if principal is None:
            return  # refused, and answered
        if not canonical:
            raise PathError(
                "the path is not in canonical form (no '.' or ' ' at a segment's end, no ';', "
                "'//', '.' or '..' segments); ask for the object by its exact name"
            )
        scope[SCOPE_KEY] = principal
        if api:
            await self.api(scope, receive, send)
            return
        await self.panel()(scope, receive, send)

    async def _token_principal(
        self, send: Send, token_text: str, method: str, client_ip: str
    ) -> Principal | None:
        """The principal of a Bearer API token; ``None`` once a refusal was answered."""
        token = await self.service.verify_api_token(token_text) if token_text else None
        if token is None:
            await http.respond_json(
                send,
                401,
                {
                    "error": "invalid token",
                    "detail": "the API token is wrong, expired or revoked; create one with "
                    "`zerogate api-token create NAME`",
                },
                [(b"www-authenticate", b'Bearer realm="zerogate", error="invalid_token"')],
            )
            return None
        if token.read_only and method in WRITE_METHODS:
            await http.respond_json(
                send,
                403,
                {"error": "forbidden", "detail": f"API token {token.name!r} is read-only"},
            )
            return None
        return Principal(
            who=f"api-token:{token.name}",
            source=client_ip,
            read_only=token.read_only,
            via="token",
            session_id=f"token:{token.token_id}",
            expires_at=token.expires_at,
        )

    async def _session_principal(
        self, scope: Scope, send: Send, path: str, api: bool, method: str, client_ip: str
    ) -> Principal | None:
        """The principal of an administrator's portal session (login, not an admin, CSRF:
        answered here, ``None``)."""
        svc = self.svc
        rt = svc.runtime
        claims = session_claims(scope, svc)
        if claims is None:
            query = scope.get("query_string")
            target = path + ("?" + query.decode("latin-1") if query else "")
            if not api and http.is_navigation(scope):
                await http.redirect(send, admin_login_url(scope, svc, target))
            else:
                await http.respond_json(
                    send,
                    401,
                    {
                        "error": "login required",
                        "detail": "sign in as an administrator, or send "
                        "Authorization: Bearer <API token>",
                        "login_url": login_url(scope, svc, target),
                    },
                    [(b"www-authenticate", b'Bearer realm="zerogate"')],
                )
            return None
        rt.seen(claims, client_ip, time.time())  # last seen: a mark written later
        country = rt.country(client_ip)
        identity = identity_of(claims)
        if not is_admin(rt.snapshot, identity, Context(ip=client_ip, country=country)):
            await _forbidden(
                scope,
                send,
                svc,
                api,
                f"{claims.email} is not an administrator of this gateway (from here)",
            )
            return None
        if api and method in WRITE_METHODS and not csrf_ok(scope, rt.secret, claims.jti):
            await http.respond_json(
                send,
                403,
                {
                    "error": "csrf",
                    "detail": "a write with the session cookie needs the X-Zerogate-CSRF "
                    "header; its value is csrf_token of GET /api/v1/session",
                },
            )
            return None
        return Principal(
            who=claims.email,
            source=client_ip,
            read_only=False,
            via="session",
            session_id=claims.jti,
            identity=identity,
            country=country,
            portal_session=sid if isinstance(sid := claims.extra.get("sid"), str) else None,
        )


async def _error(scope: Scope, send: Send, status: int, error: str, detail: str) -> None:
    await http.respond_json(send, status, {"error": error, "detail": detail})


async def _forbidden(scope: Scope, send: Send, svc: Services, api: bool, why: str) -> None:
    if api or http.wants_json(scope):
        await http.respond_json(send, 403, {"error": "forbidden", "detail": why})
        return
    page = svc.page(
        "message.html",
        title="Access denied",
        message=f"{why}.",
        detail="Ask an administrator to add you to the admins list.",
        link="/.zerogate/logout",
        link_text="Sign in as someone else",
        error=True,
    )
    await http.respond_html(send, 403, page)
