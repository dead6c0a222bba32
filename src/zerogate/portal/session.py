"""The portal's global session, shared by every way of signing in (the PIN flow in
``portal/handlers.py``, OIDC in ``portal/oidc.py``) and read by the admin front door: its
cookie, how long it lasts, how it is read back (verified and unrevoked), and the hand-over that
ends every login (a one-time code for the application, or back to the admin page asked for).
Reading the session back is ``runtime.sessions.portal_session`` (re-exported here), which the
admin front door shares.

Both login modules import this one; neither imports the other's internals back (handlers
routes to oidc, oidc no longer reaches into handlers).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from zerogate.identity import Claims, issue_portal_token
from zerogate.identity.flow import CODE_SECONDS, Flow, code_hash
from zerogate.model.values import parse_duration
from zerogate.net import http
from zerogate.net.asgi import Scope, Send
from zerogate.policy.engine import CompiledApp
from zerogate.runtime import cookies
from zerogate.runtime.admin_login import admin_return, is_admin_app
from zerogate.runtime.cookies import PORTAL_COOKIE, secure_cookies
from zerogate.runtime.services import Services
from zerogate.runtime.sessions import portal_session
from zerogate.runtime.state import PORTAL_AUDIENCE
from zerogate.store import Session

__all__ = [
    "PORTAL_COOKIE",
    "hand_over",
    "portal_session",
    "session_cookie",
    "session_id",
    "session_seconds",
    "start_session",
]


def session_seconds(svc: Services) -> int:
    """How long a portal session lasts (``session_duration``)."""
    return int(parse_duration(svc.runtime.settings.session_duration).total_seconds())


def session_cookie(scope: Scope, svc: Services, token: str) -> tuple[bytes, bytes]:
    """The ``Set-Cookie`` that makes ``token`` (a portal JWT) this browser's session."""
    return cookies.set_cookie(
        PORTAL_COOKIE,
        token,
        max_age=session_seconds(svc),
        secure=secure_cookies(svc.runtime, scope),
    )


async def start_session(
    scope: Scope,
    svc: Services,
    ip: str | None,
    *,
    email: str,
    idp: str,
    groups: list[str] | None = None,
    amr: list[str] | None = None,
    now: float,
    extra: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """A new portal session: its row in the store (``store.sessions``: who, how, the
    browser's User-Agent, the address, since, until) and its portal token, whose ``sid``
    claim names the row (so it can be listed and ended). ``(session id, token)``."""
    rt = svc.runtime
    seconds = session_seconds(svc)
    sid = secrets.token_urlsafe(12)  # 96 bits: a name to end it by, not a credential
    at = datetime.fromtimestamp(now, UTC)
    agent = http.header_text(scope, b"user-agent") or None
    await rt.store.add_session(
        Session(
            id=sid,
            email=email,
            idp=idp,
            user_agent=agent,
            ip=ip,
            created_at=at,
            seen_at=at,
            expires_at=at + timedelta(seconds=seconds),
        )
    )
    token = issue_portal_token(
        rt.keyset,
        issuer=rt.issuer,
        audience=PORTAL_AUDIENCE,
        email=email,
        sub=email,
        idp=idp,
        groups=groups,
        amr=amr,
        ttl_seconds=seconds,
        now=now,
        extra={**(extra or {}), "sid": sid},
    )
    return sid, token


def session_id(claims: Claims) -> str | None:
    """The session a token belongs to (its ``sid`` claim), if it names one."""
    sid = claims.extra.get("sid")
    return sid if isinstance(sid, str) else None


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
    *,
    sid: str | None = None,
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
            **({"sid": sid} if sid else {}),
        },
        expires_at=datetime.now(UTC) + timedelta(seconds=CODE_SECONDS),
    )
    parts = urlsplit(flow.rd)
    target = f"{parts.scheme}://{parts.netloc}/.zerogate/authorized?" + urlencode({"code": code})
    await http.redirect(send, target, headers or [])
