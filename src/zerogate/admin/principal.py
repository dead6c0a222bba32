"""Who is calling the admin API or panel, as the admin front door established it.

The front door (``zerogate.admin.app``) authenticates every request (a Bearer API token, or the
portal session of someone on the ``admins`` list) and puts a ``Principal`` into the ASGI scope
under ``SCOPE_KEY`` before the API or the panel sees the request; they never authenticate
themselves and refuse to run without one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from zerogate.policy import Context, Identity

SCOPE_KEY = "zerogate.admin"


@dataclass(frozen=True)
class Principal:
    #: an email for a browser session, ``api-token:NAME`` for an API token
    who: str
    #: the client address (after the trusted-proxy rules), as the admin log records it
    source: str | None
    read_only: bool
    via: Literal["session", "token"]
    #: stable for one login session (binds the panel's CSRF tokens to it)
    session_id: str
    #: a session's login (email, IdP, IdP groups, amr) as the admins list decided it; ``None``
    #: for an API token
    identity: Identity | None = None
    #: the client's country (GeoIP), for deciding the admins list again (lock-out guard)
    country: str | None = None
    #: when the API token ends (``None``: a session, or a token that never expires); a token
    #: it creates may not outlive it
    expires_at: datetime | None = None
    #: the portal session a browser signed in with (its ``sid``; ``None`` for an API token or
    #: a session from before sessions were recorded)
    portal_session: str | None = None

    def context(self) -> Context:
        """The request context the admins list was decided with."""
        return Context(ip=self.source, country=self.country)


def principal_of(scope: Mapping[str, Any]) -> Principal:
    """The scope's principal; ``RuntimeError`` if the front door did not set one (a wiring
    bug: failing loudly beats serving an admin page unauthenticated)."""
    principal = scope.get(SCOPE_KEY)
    if not isinstance(principal, Principal):
        raise RuntimeError("admin request without an authenticated principal")
    return principal
