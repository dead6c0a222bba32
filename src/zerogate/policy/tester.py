"""The policy tester: decide one imagined request and explain why (pure, no I/O).

``zerogate policy test`` and the admin service's tester (API and panel) both call this, so they
check their inputs alike and route with the same engine as the edge. The caller loads the
objects, compiles the snapshot and, if it wants, fills in the country from GeoIP between
``check_query`` and ``run_query``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from zerogate.model import values
from zerogate.model.loader import Problem
from zerogate.policy.engine import Context, Identity, Snapshot, Verdict

__all__ = ["PolicyQuery", "QueryError", "check_query", "run_query"]


@dataclass(frozen=True)
class PolicyQuery:
    """One imagined request: exactly one of ``app`` (a name, ``zerogate-admin`` included)
    and ``url`` (routed by host and path as the edge does). ``host`` and ``path`` are what
    ``check_query`` routes by (``path`` is only reported with ``app``)."""

    app: str | None = None
    url: str | None = None
    email: str | None = None
    idp: str | None = None
    idp_groups: tuple[str, ...] = ()
    amr: tuple[str, ...] = ()
    ip: str | None = None
    country: str | None = None
    service_token: str | None = None
    host: str = ""
    path: str = "/"


class QueryError(ValueError):
    """The query cannot be answered; ``problems`` name each input (``where`` is the
    query's field name) and say why."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{p.where}: {p.message}" for p in problems))
        self.problems = problems


def check_query(snapshot: Snapshot, query: PolicyQuery) -> PolicyQuery:
    """``query`` with its values normalised (email, country) and ``host``/``path`` taken
    from ``url``; ``QueryError`` lists every unusable input."""
    objects = snapshot.objects
    problems: list[Problem] = []
    email, country, host, path = query.email, query.country, "", query.path
    if (query.app is None) == (query.url is None):
        problems.append(Problem("app", "give exactly one of app (a name) or url"))
    if email is not None:
        try:
            email = values.check_email(email)
        except ValueError as exc:
            problems.append(Problem("email", str(exc)))
    elif query.idp or query.idp_groups or query.amr:
        problems.append(Problem("email", "idp, idp groups and amr describe a login: give it"))
    if query.idp is not None and query.idp not in {p.name for p in objects.identity_providers}:
        problems.append(Problem("idp", f"unknown identity provider {query.idp!r}"))
    if query.ip is not None and values.normalise_ip(query.ip) is None:
        problems.append(Problem("ip", f"{query.ip!r} is not an IP address"))
    if country is not None:
        try:
            country = values.check_country(country)
        except ValueError as exc:
            problems.append(Problem("country", str(exc)))
    token = query.service_token
    if token is not None and token not in {t.name for t in objects.service_tokens}:
        problems.append(Problem("service_token", f"unknown service token {token!r}"))
    if query.app is not None and query.url is None and snapshot.application(query.app) is None:
        problems.append(Problem("app", f"unknown application {query.app!r}"))
    if query.url is not None:
        url = query.url
        try:
            parts = urlsplit(url if "://" in url else f"https://{url}")
            hostname = parts.hostname
        except ValueError as exc:
            problems.append(Problem("url", f"{url!r}: {exc}"))
        else:
            if not hostname:
                problems.append(Problem("url", f"{url!r} has no host"))
            host = parts.netloc.rpartition("@")[2]
            path = parts.path or "/"
    if problems:
        raise QueryError(problems)
    return replace(query, email=email, country=country, host=host, path=path)


def run_query(snapshot: Snapshot, query: PolicyQuery) -> Verdict:
    """The verdict, with every check explained, for a query ``check_query`` returned."""
    email = query.email
    identity = Identity.of(email, query.idp, query.idp_groups, query.amr) if email else None
    ctx = Context(ip=query.ip, country=query.country, service_token=query.service_token)
    if query.url is not None:
        return snapshot.check(query.host, query.path, identity, ctx, explain=True)
    target = snapshot.application(query.app or "")
    if target is None:
        raise QueryError([Problem("app", f"unknown application {query.app!r}")])
    return snapshot.explain(target, identity, ctx)
