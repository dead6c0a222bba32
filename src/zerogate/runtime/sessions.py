"""The portal's global session, read the same way by the portal and the admin front door.

The cookie (:data:`zerogate.runtime.cookies.PORTAL_COOKIE`) holds a portal JWT; it counts only
when its signature, type and expiry check out, its email was not revoked after it was issued
and its session (the ``sid`` claim, ``store.sessions``) was not ended.
"""

from __future__ import annotations

import time

from zerogate.identity import Claims, TokenError
from zerogate.net.asgi import Scope
from zerogate.runtime.cookies import PORTAL_COOKIE, cookie, secure_cookies
from zerogate.runtime.services import Services
from zerogate.runtime.state import PORTAL_AUDIENCE


def portal_session(scope: Scope, svc: Services) -> Claims | None:
    """The verified, unrevoked portal session (``None`` when absent, repeated or invalid)."""
    rt = svc.runtime
    token = cookie(scope, PORTAL_COOKIE, secure=secure_cookies(rt, scope))
    if not token:
        return None
    try:
        claims = rt.verifier("portal").verify(token, PORTAL_AUDIENCE, now=time.time())
    except TokenError:
        return None
    if rt.rejects(claims):  # logged out everywhere, or this session ended
        return None
    return claims
