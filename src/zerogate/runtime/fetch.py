"""The network of ``identity.oidc`` (which does no I/O itself): its ``Fetch`` made of the one
bounded client in ``net.client``, for the portal's logins and the panel's "test connection"."""

from __future__ import annotations

from zerogate.identity.oidc import Fetch, FetchError, HttpRequest, HttpResponse
from zerogate.net.client import FetchFailed, fetch


def oidc_fetch(timeout: float, max_bytes: int) -> Fetch:
    """A ``Fetch`` with these limits; redirects only on the request's own origin, and only for
    GETs (a token exchange is never redirected)."""

    async def one(request: HttpRequest) -> HttpResponse:
        try:
            got = await fetch(
                request.method,
                request.url,
                headers=request.headers,
                body=request.body,
                timeout=timeout,
                max_bytes=max_bytes,
            )
        except FetchFailed as exc:
            raise FetchError(str(exc)) from None
        return HttpResponse(got.status, got.body, got.content_type)

    return one
