"""A deliberately naive reference evaluator of the policy semantics, for the property tests.

It works directly on the validated pydantic objects with plain loops and the ``ipaddress``
module: no radix tree, no precompilation, no memoisation, nothing shared with
``zerogate.policy``. It is slow and obviously right; the compiled engine must agree with it.

The rules (as ``zerogate.policy.engine`` and docs/configuration.md state them):

* a rule set matches when any include matches, all requires match and no exclude matches;
* a rule with several values matches if any value does (include, exclude), or only if every
  value does (require);
* an application's ``bypass`` and ``service_auth`` policies come first, in listed order, then
  ``allow`` and ``block`` in listed order; the first match decides;
* ``bypass`` looks only at the request (no identity, no token); ``service_auth`` only applies to
  a request presenting a service token and never sees the user's session; allow and block see
  the user's session but never the token;
* with no identity: a token that no service_auth policy accepted is blocked; otherwise a login
  is needed (``authenticate``) when the application has an allow policy, else ``block``;
* with an identity, no match means ``block`` (deny by default).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from zerogate.model import Application, Objects, Rule, RuleSet


@dataclass(frozen=True)
class Request:
    """Everything a rule may look at. ``email`` is None when there is no user session."""

    email: str | None = None
    idp: str | None = None
    idp_groups: frozenset[str] = field(default_factory=frozenset)
    amr: frozenset[str] = field(default_factory=frozenset)
    ip: str | None = None
    country: str | None = None
    token: str | None = None


def _client_address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        addr = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _in_range(client: str | None, value: str) -> bool:
    addr = _client_address(client)
    if addr is None:
        return False
    net = ipaddress.ip_network(value, strict=False)
    mapped = net.network_address.ipv4_mapped if isinstance(net, ipaddress.IPv6Network) else None
    if mapped is not None and net.prefixlen >= 96:
        # an IPv4-mapped range means the IPv4 range (the model already normalises these)
        net = ipaddress.ip_network(f"{mapped}/{net.prefixlen - 96}")
    if addr.version != net.version:
        return False
    return addr in net


class Reference:
    def __init__(self, objects: Objects) -> None:
        self.objects = objects

    def group(self, name: str) -> RuleSet:
        for g in self.objects.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    # ------------------------------------------------------------ one value

    def value_matches(self, selector: str, value: str | None, req: Request) -> bool:
        if selector == "everyone":
            return True
        if selector == "any_service_token":
            return req.token is not None
        assert value is not None
        if selector == "email":
            if req.email is None:
                return False
            # "ann+tag@x" is ann@x's mailbox: it matches "ann@x" too
            local, _, domain = req.email.lower().partition("@")
            mailbox = local.split("+")[0] + "@" + domain if local.split("+")[0] else None
            return value.lower() in (req.email.lower(), mailbox)
        if selector == "email_domain":
            if req.email is None or "@" not in req.email:
                return False
            return req.email.lower().split("@")[-1] == value.lower()
        if selector == "group":
            return self.ruleset_matches(self.group(value), req)
        if selector == "ip":
            return _in_range(req.ip, value)
        if selector == "country":
            return req.country is not None and req.country.upper() == value.upper()
        if selector == "login_method":
            return req.idp == value
        if selector == "idp_group":
            return value in req.idp_groups
        if selector == "auth_method":
            return value in req.amr
        if selector == "service_token":
            return req.token == value
        raise AssertionError(f"unknown selector {selector}")

    # ------------------------------------------------------------ rules

    def rule_matches(self, rule: Rule, req: Request, *, every_value: bool) -> bool:
        selector = rule.selector
        values = rule.values
        if not values:  # everyone, any_service_token
            return self.value_matches(selector, None, req)
        results = [self.value_matches(selector, v, req) for v in values]
        return all(results) if every_value else any(results)

    def ruleset_matches(self, rs: RuleSet, req: Request) -> bool:
        included = False
        for rule in rs.include:
            if self.rule_matches(rule, req, every_value=False):
                included = True
        if not included:
            return False
        for rule in rs.require:
            if not self.rule_matches(rule, req, every_value=True):
                return False
        excluded = False
        for rule in rs.exclude:
            if self.rule_matches(rule, req, every_value=False):
                excluded = True
        return not excluded

    # ------------------------------------------------------------ decisions

    def app(self, name: str) -> Application:
        for a in self.objects.applications:
            if a.name == name:
                return a
        raise KeyError(name)

    def decide(
        self,
        app_name: str,
        *,
        email: str | None,
        idp: str | None = None,
        idp_groups: frozenset[str] = frozenset(),
        amr: frozenset[str] = frozenset(),
        ip: str | None = None,
        country: str | None = None,
        token: str | None = None,
    ) -> tuple[str, str | None]:
        """(decision, deciding policy name or None)."""
        app = self.app(app_name)
        request_only = Request(ip=ip, country=country)
        token_request = Request(ip=ip, country=country, token=token)
        for policy in app.policies:
            if policy.decision == "bypass" and self.ruleset_matches(policy, request_only):
                return "bypass", policy.name
            if (
                policy.decision == "service_auth"
                and token is not None
                and self.ruleset_matches(policy, token_request)
            ):
                return "allow", policy.name
        if email is None:
            if token is not None:
                return "block", None
            if any(p.decision == "allow" for p in app.policies):
                return "authenticate", None
            return "block", None
        session = Request(
            email=email.strip().lower(),
            idp=idp,
            idp_groups=idp_groups,
            amr=amr,
            ip=ip,
            country=country,
        )
        for policy in app.policies:
            if policy.decision in ("allow", "block") and self.ruleset_matches(policy, session):
                return policy.decision, policy.name
        return "block", None


# ---------------------------------------------------------------- routing


def _on_boundary(path: str, prefix: str) -> bool:
    return prefix == "" or path == prefix or path.startswith(prefix + "/")


def reference_route(objects: Objects, host: str, normalised_path: str) -> str | None:
    """The application for a Host header and an already normalised request path:
    exact host names first, then ``*.`` names covering exactly one more label; within
    a host name the longest path prefix on a segment boundary wins; case-insensitive."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1:].split("]")[0]
    elif name.count(":") == 1:
        name = name.split(":")[0]
    name = name.rstrip(".")
    path = normalised_path.lower()

    def best(candidates: list[Application]) -> str | None:
        found = [a for a in candidates if _on_boundary(path, a.path)]
        if not found:
            return None
        return max(found, key=lambda a: len(a.path)).name

    exact = [a for a in objects.applications if a.host == name]
    chosen = best(exact)
    if chosen is not None:
        return chosen
    first, dot, parent = name.partition(".")
    if not dot or not first:
        return None
    return best([a for a in objects.applications if a.host == "*." + parent])
