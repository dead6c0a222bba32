"""The portal's global session, shared by every way of signing in (the PIN flow in
``portal/handlers.py``, OIDC in ``portal/oidc.py``) and read by the admin front door: its
cookie, how long it lasts, how it is read back (verified and unrevoked), and the hand-over that
ends every login (a one-time code for the application, or back to the admin page asked for).

Both login modules import this one; neither imports the other's internals back (handlers
routes to oidc, oidc no longer reaches into handlers).
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode, urlsplit

from zerogate.edge import http
from zerogate.edge.asgi_types import Scope, Send
from zerogate.edge.flow import Flow
from zerogate.edge.pipeline import CODE_SECONDS, code_hash, secure_cookies
from zerogate.identity import Claims, TokenError
from zerogate.model.values import parse_duration
from zerogate.policy.engine import CompiledApp
from zerogate.portal.admin_login import admin_return, is_admin_app
from zerogate.runtime import PORTAL_AUDIENCE
from zerogate.services import Services

PORTAL_COOKIE = "__zg_portal"


def session_seconds(svc: Services) -> int:
    """How long a portal session lasts (``session_duration``)."""
    return int(parse_duration(svc.runtime.settings.session_duration).total_seconds())


def session_cookie(svc: Services, token: str) -> tuple[bytes, bytes]:
    """The ``Set-Cookie`` that makes ``token`` (a portal JWT) this browser's session."""
    return http.set_cookie(
        PORTAL_COOKIE, token, max_age=session_seconds(svc), secure=secure_cookies(svc.runtime)
    )


def portal_session(scope: Scope, svc: Services) -> Claims | None:
    """The verified, unrevoked portal session (``None`` when absent, repeated or invalid)."""
    rt = svc.runtime
    token = http.cookie(scope, PORTAL_COOKIE, secure=secure_cookies(rt))
    if not token:
        return None
    try:
        claims = rt.verifier("portal").verify(token, PORTAL_AUDIENCE, now=time.time())
    except TokenError:
        return None
    if rt.is_revoked(claims.email, claims.iat):
        return None
    return claims


async def hand_over(
    send: Send,
    svc: Services,
    flow: Flow,
    app: CompiledApp,
    email: str,
    idp: str,
    groups: list[str],
    amr: list[str],
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """A one-time code for the application, then off to its ``/.zerogate/authorized``; for
    the built-in admin application (on this very host, whose session the portal cookie is),
    straight back to the admin page asked for."""
    if is_admin_app(app):
        await http.redirect(send, admin_return(flow.rd), headers or [])
        return
    code = secrets.token_urlsafe(32)
    await svc.runtime.store.put_code(
        code_hash(code),
        {
            "app": app.name,
            "email": email,
            "idp": idp,
            "groups": groups,
            "amr": amr,
            "state": flow.state_hash,
            "rd": flow.rd,
        },
        expires_at=datetime.now(UTC) + timedelta(seconds=CODE_SECONDS),
    )
    parts = urlsplit(flow.rd)
    target = f"{parts.scheme}://{parts.netloc}/.zerogate/authorized?" + urlencode({"code": code})
    await http.redirect(send, target, headers or [])
