"""Who may use the admin API and panel: the checks the front door (``admin.app``) makes.

- **API tokens** (``Authorization: Bearer zga_…``): verified by ``AdminService.verify_api_token``
  (SHA-256 of the secret compared in constant time, expiry, revocation = the row is gone).
- **Admin sessions**: the portal's global session cookie (``__zg_portal``, named
  ``__Host-__zg_portal`` under TLS, and none when sent twice; the one ``/.zerogate/login``
  sets), read and verified by ``portal_session`` (signature, type, expiry, revocation),
  whose identity passes the ``admins`` list. The list is the one allow policy of the
  built-in application ``ADMIN_APP`` that ``compile_snapshot`` adds (``Snapshot.admin``):
  emails, and ``group:NAME`` entries decided by the policy engine with the request's context,
  so a group's IP, country or IdP-group selectors apply to the admin as they would to any
  application. No admins → nobody.
- **CSRF** for API writes made with the cookie: the ``X-Zerogate-CSRF`` header must hold
  ``csrf_token(secret, session)`` (given by ``GET /api/v1/session``); Bearer requests need none.
- **Signing in** is the portal's own login for that built-in application
  (``runtime.admin_login``): every identity provider, the PIN rule of every application, and back
  to a *local* ``/admin`` or ``/api/v1`` path (``admin_return``: never another host).
  ``/admin/login?rd=…`` is a stable address that starts it.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlencode

from zerogate.identity import Claims
from zerogate.model.objects import ADMIN_APPLICATION
from zerogate.net import http
from zerogate.net.asgi import Scope
from zerogate.policy import Context, Identity, Snapshot
from zerogate.runtime.admin_login import ADMIN_LOGIN_PATH, admin_login_url, admin_return
from zerogate.runtime.request import portal_origin
from zerogate.runtime.services import Services
from zerogate.runtime.sessions import portal_session

#: the built-in application whose one allow policy is the ``admins`` list (access-log name)
ADMIN_APP = ADMIN_APPLICATION
CSRF_HEADER = "x-zerogate-csrf"
LOGIN_PATH = ADMIN_LOGIN_PATH

__all__ = [
    "ADMIN_APP",
    "CSRF_HEADER",
    "LOGIN_PATH",
    "admin_login_url",
    "admin_return",
    "bearer",
    "csrf_ok",
    "csrf_token",
    "identity_of",
    "is_admin",
    "login_url",
    "session_claims",
]


# ---------------------------------------------------------------- admins list


def is_admin(snapshot: Snapshot, identity: Identity, ctx: Context) -> bool:
    """Whether ``identity`` is an administrator from here: the built-in admin application's
    decision, by the same engine (and on the same compiled groups) as every application."""
    return snapshot.decide(snapshot.admin, identity, ctx).decision == "allow"


def identity_of(claims: Claims) -> Identity:
    return Identity.of(claims.email, claims.idp, claims.groups or (), claims.amr or ())


# ---------------------------------------------------------------- tokens and CSRF


def bearer(scope: Scope) -> str | None:
    """The Bearer token of the request, ``""`` for a malformed Authorization header, ``None``
    when there is none."""
    value = http.header_text(scope, b"authorization")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return ""
    return token.strip()


def csrf_token(secret: bytes, session_id: str) -> str:
    """The CSRF token of one admin session: bound to the session and the server secret."""
    mac = hmac.new(secret, b"zerogate-admin-csrf\x00" + session_id.encode(), hashlib.sha256)
    return mac.hexdigest()


def csrf_ok(scope: Scope, secret: bytes, session_id: str) -> bool:
    sent = http.header_text(scope, CSRF_HEADER.encode())
    return bool(sent) and hmac.compare_digest(
        sent.encode("latin-1"), csrf_token(secret, session_id).encode()
    )


def session_claims(scope: Scope, svc: Services) -> Claims | None:
    """The portal session (verified: signature, type, expiry, revocation), or ``None``."""
    return portal_session(scope, svc)


# ---------------------------------------------------------------- signing in


def login_url(scope: Scope, svc: Services, target: str) -> str:
    """The stable sign-in address for ``target`` (an API's 401 names it): ``/admin/login?rd=…``,
    which starts the portal's login for the built-in admin application."""
    return f"{portal_origin(scope, svc.runtime)}{LOGIN_PATH}?" + urlencode(
        {"rd": admin_return(target)}
    )
