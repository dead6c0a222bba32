"""zerogate's own cookies: how they are named, set, read back and cleared.

The rules every surface (edge, portal, admin) shares, so none of them has to import another:
host-only (no ``Domain``), ``HttpOnly``, ``SameSite=Lax`` unless told; under TLS also
``Secure``, named ``__Host-<name>`` with ``Path=/``. Whether cookies are TLS cookies is the
request's public scheme (:func:`secure_cookies`). Plain parsing of the ``Cookie`` header (a name
sent twice is none) is :func:`zerogate.net.http.cookies`.
"""

from __future__ import annotations

from http.cookies import SimpleCookie

from zerogate.net.asgi import Scope
from zerogate.net.http import cookies
from zerogate.runtime.request import RequestTrust, request_scheme

#: the portal's global session (the one ``/.zerogate/login`` sets on the portal host)
PORTAL_COOKIE = "__zg_portal"


def secure_cookies(rt: RequestTrust, scope: Scope) -> bool:
    """Whether zerogate's cookies are TLS cookies (``Secure``, ``__Host-`` names): when the
    request's public scheme is https (:func:`zerogate.runtime.request.request_scheme`: the
    scheme a URL ``portal`` pins for every host, else a trusted proxy's
    ``X-Forwarded-Proto``, else ``listen.tls``). Every place that sets or reads one asks this
    of the same request, so what is set over a scheme is read back over it. With a URL
    ``portal`` the answer is one for every host and request, so a browser always sees the
    same names."""
    return request_scheme(scope, rt) == "https"


#: the name prefix of zerogate's cookies under TLS: the browser keeps such a cookie only when
#: it is Secure, host-only and ``Path=/``, so no sibling host and no plain-HTTP page can set one
HOST_PREFIX = "__Host-"


def cookie_name(name: str, *, secure: bool) -> str:
    """The name a zerogate cookie has on the wire: ``__Host-`` + ``name`` under TLS."""
    return HOST_PREFIX + name if secure else name


def cookie(scope: Scope, name: str, *, secure: bool) -> str | None:
    """One of zerogate's cookies (``name`` as :func:`set_cookie` was given it, the same
    ``secure``): ``None`` when absent or sent more than once."""
    return cookies(scope).get(cookie_name(name, secure=secure))


def set_cookie(
    name: str,
    value: str,
    *,
    max_age: int | None = None,
    path: str = "/",
    secure: bool,
    same_site: str = "Lax",
) -> tuple[bytes, bytes]:
    """A ``Set-Cookie`` header for one of zerogate's cookies: host-only (no ``Domain``),
    HttpOnly, SameSite (Lax unless told); under TLS (``secure``) also ``Secure``, named
    ``__Host-<name>`` and with ``Path=/`` (the prefix demands it; ``path`` applies otherwise).
    Read it back with :func:`cookie` and the same ``secure``."""
    jar: SimpleCookie = SimpleCookie()
    if secure:
        name = cookie_name(name, secure=True)
        path = "/"
    jar[name] = value
    morsel = jar[name]
    morsel["path"] = path or "/"
    morsel["httponly"] = True
    morsel["samesite"] = same_site
    if secure:
        morsel["secure"] = True
    if max_age is not None:
        morsel["max-age"] = max_age
    return b"set-cookie", morsel.OutputString().encode("latin-1")


def clear_cookie(name: str, *, path: str = "/", secure: bool) -> tuple[bytes, bytes]:
    """Deletes a cookie :func:`set_cookie` set with the same ``path`` and ``secure``."""
    return set_cookie(name, "", max_age=0, path=path, secure=secure)
