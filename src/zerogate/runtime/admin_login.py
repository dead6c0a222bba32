"""The built-in admin application's part of the portal login.

The admin panel (``/admin``) and REST API (``/api/v1``) on the portal host are protected like an
application: ``compile_snapshot`` turns the ``admins`` list into the one allow policy of the
built-in application ``ADMIN_APPLICATION`` (``Snapshot.admin``), and a browser signs in through
the portal's own login (``/.zerogate/login?flow=…``, ``portal.handlers`` and ``portal.oidc``):
every identity provider is offered, and a PIN is only sent to an address the admins list could
allow from that network, exactly as for any application.

What differs from an application on its own host: the built-in one lives on the portal host, so
the session it needs is the portal session the login has just set. No one-time code is handed
over; the login ends with a redirect to the page asked for, a *path* on the portal host under
``/admin`` or ``/api/v1`` (``admin_return``), checked when the flow is signed and again at the
end (never another host: no open redirect). Its flow carries no state-cookie hash: there is no
hand-over for one to protect, and the portal's forms (double-submit CSRF) and the OIDC callback
(browser-bound state) already refuse a login started elsewhere.
"""

from __future__ import annotations

import time
from urllib.parse import urlencode, urlsplit

from zerogate.identity.flow import FLOW_SECONDS, Flow, sign_flow
from zerogate.model.objects import ADMIN_APPLICATION
from zerogate.model.paths import PathError, normalise_path, under
from zerogate.net.asgi import Scope
from zerogate.policy.engine import CompiledApp
from zerogate.runtime.request import portal_origin
from zerogate.runtime.services import Services

#: the paths of the built-in admin application on the portal host
ADMIN_PREFIXES = ("/admin", "/api/v1")
#: the stable sign-in address: starts a fresh login flow (an API's 401 names it)
ADMIN_LOGIN_PATH = "/admin/login"
DEFAULT_RETURN = "/admin/"
MAX_RETURN = 2000


def is_admin_app(app: CompiledApp) -> bool:
    """Whether ``app`` is the built-in admin application (its name is reserved)."""
    return app.name == ADMIN_APPLICATION


def admin_return(target: str) -> str:
    """``target`` when it is a path on this host under ``/admin`` or ``/api/v1``; otherwise
    ``/admin/``. Never a scheme, host, ``//``, backslash or control character (no open
    redirect), and the path must stay inside after normalisation (no ``/admin/../x``)."""
    if not target or len(target) > MAX_RETURN:
        return DEFAULT_RETURN
    if "\\" in target or any(ord(c) < 0x21 or ord(c) == 0x7F for c in target):
        return DEFAULT_RETURN
    if not target.startswith("/") or target.startswith("//"):
        return DEFAULT_RETURN
    try:
        parts = urlsplit(target)
    except ValueError:
        return DEFAULT_RETURN
    if parts.scheme or parts.netloc:
        return DEFAULT_RETURN
    try:
        path = normalise_path(parts.path)
    except PathError:
        return DEFAULT_RETURN
    if not any(under(path, prefix) for prefix in ADMIN_PREFIXES):
        return DEFAULT_RETURN
    if under(path, ADMIN_LOGIN_PATH):  # would only start another login
        return DEFAULT_RETURN
    return path + (f"?{parts.query}" if parts.query else "")


def admin_login_url(scope: Scope, svc: Services, target: str, now: float | None = None) -> str:
    """The portal's login page for the built-in admin application, coming back to ``target``
    (made safe by ``admin_return``) afterwards."""
    rt = svc.runtime
    expires = int(time.time() if now is None else now) + FLOW_SECONDS
    flow = Flow(app=ADMIN_APPLICATION, rd=admin_return(target), state_hash="", expires=expires)
    return f"{portal_origin(scope, rt)}/.zerogate/login?" + urlencode(
        {"flow": sign_flow(rt.secret, flow)}
    )
