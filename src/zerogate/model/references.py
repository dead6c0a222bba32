"""Validation across objects: names, references, cycles, what each kind of policy may use.

``check_objects`` returns every problem at once, each with the location (a key path into the
YAML document) that ``errors.format_issue`` turns into "object › field (line N)". No I/O.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from zerogate.model.objects import (
    ADMIN_APPLICATION,
    IDENTITY_SELECTORS,
    SERVICE_SELECTORS,
    Group,
    Objects,
    RuleSet,
)

Loc = tuple[str | int, ...]
_NOT_IN_BYPASS = IDENTITY_SELECTORS | SERVICE_SELECTORS


@dataclass(frozen=True)
class Issue:
    """A problem at a location of the document; ``warning`` issues do not stop ``apply``."""

    loc: Loc
    message: str
    warning: bool = False


@dataclass
class _Checker:
    objects: Objects
    issues: list[Issue] = field(default_factory=list)

    def error(self, loc: Loc, message: str) -> None:
        self.issues.append(Issue(loc, message))

    def warn(self, loc: Loc, message: str) -> None:
        self.issues.append(Issue(loc, message, warning=True))


def _hint(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _duplicates(check: _Checker, kind: str, names: Sequence[str], loc: Loc) -> None:
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        key = name.casefold()
        if key in seen:
            check.error(
                (*loc, index, "name"),
                f"duplicate name {name!r} (also item {seen[key] + 1} of {loc[-1]})",
            )
        else:
            seen[key] = index


def _group_selectors(groups: dict[str, Group]) -> dict[str, frozenset[str]]:
    """For each group, every selector it uses directly or through nested groups."""
    result: dict[str, frozenset[str]] = {}

    def visit(name: str, stack: tuple[str, ...]) -> frozenset[str]:
        if name in result:
            return result[name]
        group = groups.get(name)
        if group is None or name in stack:
            return frozenset()
        used: set[str] = set()
        for _, _, rule in group.rules():
            used.add(rule.selector)
            if rule.selector == "group":
                for inner in rule.values:
                    used |= visit(inner, (*stack, name))
        result[name] = frozenset(used)
        return result[name]

    for name in groups:
        visit(name, ())
    return result


def _find_cycles(groups: dict[str, Group]) -> list[list[str]]:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on stack, 2 = done

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        stack.append(name)
        for _, _, rule in groups[name].rules():
            if rule.selector != "group":
                continue
            for inner in rule.values:
                if inner not in groups:
                    continue
                if state.get(inner) == 1:
                    cycles.append([*stack[stack.index(inner) :], inner])
                elif inner not in state:
                    visit(inner, stack)
        stack.pop()
        state[name] = 2

    for name in groups:
        if name not in state:
            visit(name, [])
    return cycles


def _check_rule_refs(check: _Checker, ruleset: RuleSet, loc: Loc) -> None:
    objs = check.objects
    groups = {g.name for g in objs.groups}
    idps = {p.name for p in objs.identity_providers}
    tokens = {t.name for t in objs.service_tokens}
    for section, index, rule in ruleset.rules():
        where = (*loc, section, index, rule.selector)
        if rule.selector == "group":
            known, kind = groups, "group"
        elif rule.selector == "login_method":
            known, kind = idps, "identity provider"
        elif rule.selector == "service_token":
            known, kind = tokens, "service token"
        else:
            continue
        for pos, name in enumerate(rule.values):
            if name not in known:
                check.error((*where, pos), f"unknown {kind} {name!r}{_hint(name, known)}")


def check_objects(objects: Objects) -> list[Issue]:
    """Every cross-object problem in ``objects`` (empty when it is consistent)."""
    check = _Checker(objects)
    for kind in ("identity_providers", "groups", "applications", "tunnels", "service_tokens"):
        _duplicates(check, kind, [o.name for o in getattr(objects, kind)], (kind,))

    groups = {g.name: g for g in objects.groups}
    idps = {p.name for p in objects.identity_providers}
    tunnels = {t.name for t in objects.tunnels}

    for index, group in enumerate(objects.groups):
        _check_rule_refs(check, group, ("groups", index))
    for cycle in _find_cycles(groups):
        index = next(i for i, g in enumerate(objects.groups) if g.name == cycle[0])
        check.error(
            ("groups", index), "groups refer to each other in a cycle: " + " → ".join(cycle)
        )

    used_by_group = _group_selectors(groups)

    def selectors_of(ruleset: RuleSet) -> list[tuple[Loc, str, str | None]]:
        """(location, selector, via-group or None) for every selector a rule set reaches."""
        found: list[tuple[Loc, str, str | None]] = []
        for section, idx, rule in ruleset.rules():
            here: Loc = (section, idx, rule.selector)
            found.append((here, rule.selector, None))
            if rule.selector == "group":
                for name in rule.values:
                    found.extend((here, s, name) for s in sorted(used_by_group.get(name, ())))
        return found

    for admin_index, admin in enumerate(objects.admins):
        if admin.startswith("group:") and admin[6:] not in groups:
            name = admin[6:]
            check.error(("admins", admin_index), f"unknown group {name!r}{_hint(name, groups)}")

    routed: dict[str, str] = {}
    for t_index, tunnel in enumerate(objects.tunnels):
        for r_index, host in enumerate(tunnel.routes):
            if host in routed and routed[host] != tunnel.name:
                check.error(
                    ("tunnels", t_index, "routes", r_index),
                    f"{host!r} is already routed to tunnel {routed[host]!r}",
                )
            routed.setdefault(host, tunnel.name)

    domains: dict[str, str] = {}
    app_hosts: set[str] = set()
    audiences: dict[str, str] = {}
    for a_index, app in enumerate(objects.applications):
        aloc: Loc = ("applications", a_index)
        app_hosts.add(app.host)
        other = audiences.setdefault(app.audience_tag[:16], app.name)
        if other != app.name:
            check.error(
                (*aloc, "audience"),
                f"the audience {app.audience_tag!r} is application {other!r}'s already "
                "(each application's tokens must name it alone)",
            )
        if app.name.casefold() == ADMIN_APPLICATION:
            check.error(
                (*aloc, "name"),
                f"{app.name!r} is reserved for the built-in application of the admin panel "
                "and API (its policy is the admins list); choose another name",
            )
        if app.domain in domains:
            check.error(
                (*aloc, "domain"),
                f"{app.domain!r} is already the domain of application {domains[app.domain]!r}",
            )
        domains.setdefault(app.domain, app.name)
        if app.tunnel is not None and app.tunnel not in tunnels:
            check.error(
                (*aloc, "tunnel"), f"unknown tunnel {app.tunnel!r}{_hint(app.tunnel, tunnels)}"
            )
        route = routed.get(app.host)
        if route is not None and app.tunnel is not None and route != app.tunnel:
            check.error(
                (*aloc, "tunnel"),
                f"{app.host!r} is routed to tunnel {route!r}, not {app.tunnel!r}",
            )
        if route is None and app.tunnel is not None and app.tunnel in tunnels:
            # a tunnel serves only the hostnames routed to it (its connectors never see others)
            check.error(
                (*aloc, "tunnel"),
                f"{app.host!r} is not among the routes of tunnel {app.tunnel!r}: add it to the "
                f"tunnel's routes (`zerogate tunnel route {app.tunnel} {app.host}`)",
            )
        if route is not None and app.origin is not None:
            check.error(
                (*aloc, "origin"),
                f"{app.host!r} is routed to tunnel {route!r}; remove origin or the route",
            )
        if app.origin is None and app.tunnel is None and route is None:
            check.error(aloc, "no origin: set origin (a URL) or tunnel (a tunnel's name)")
        if app.identity_providers is not None:
            if not app.identity_providers:
                check.error((*aloc, "identity_providers"), "list at least one identity provider")
            for i, name in enumerate(app.identity_providers):
                if name not in idps:
                    check.error(
                        (*aloc, "identity_providers", i),
                        f"unknown identity provider {name!r}{_hint(name, idps)}",
                    )
        _duplicates(check, "policies", [p.name for p in app.policies], (*aloc, "policies"))
        if not app.policies:
            check.warn(aloc, "has no policies: every request will be blocked")
        for p_index, policy in enumerate(app.policies):
            ploc: Loc = (*aloc, "policies", p_index)
            _check_rule_refs(check, policy, ploc)
            for where, selector, via in selectors_of(policy):
                through = f" (through group {via!r})" if via else ""
                if (
                    policy.decision == "bypass"
                    and selector in IDENTITY_SELECTORS | SERVICE_SELECTORS
                ):
                    check.error(
                        (*ploc, *where),
                        f"a bypass policy cannot use the identity selector {selector!r}{through}: "
                        "bypass lets requests in without login; use ip, country or everyone",
                    )
                elif policy.decision == "service_auth" and selector in IDENTITY_SELECTORS:
                    check.error(
                        (*ploc, *where),
                        f"a service_auth policy cannot use the user selector {selector!r}{through}:"
                        " it only ever matches service tokens",
                    )
                elif (
                    policy.decision in ("allow", "block")
                    and selector in SERVICE_SELECTORS
                    and via is None
                ):
                    check.error(
                        (*ploc, *where),
                        f"{selector!r} only matches in a service_auth policy "
                        f"(this policy's decision is {policy.decision})",
                    )
    for host, tunnel_name in routed.items():
        if host not in app_hosts:
            t_index = next(i for i, t in enumerate(objects.tunnels) if t.name == tunnel_name)
            check.warn(
                ("tunnels", t_index, "routes"),
                f"{host!r} has no application: the edge answers 404 for it until one is added",
            )
    return check.issues


#: which rule selector names an object of each kind
_SELECTOR_OF = {
    "group": "group",
    "identity_provider": "login_method",
    "service_token": "service_token",
}


def references_to(objects: Objects, kind: str, name: str) -> list[str]:
    """Where ``objects`` refer to the ``kind`` object ``name`` (``group``,
    ``identity_provider``, ``service_token``, ``tunnel``), in words: ``application 'wiki' ›
    policy 'staff'``, ``group 'Office'``, ``the admins list``. Empty when nothing does."""
    selector = _SELECTOR_OF.get(kind)
    found: list[str] = []

    def names_it(ruleset: RuleSet) -> bool:
        return selector is not None and any(
            name in (getattr(rule, selector) or []) for _, _, rule in ruleset.rules()
        )

    if kind == "group":
        if f"group:{name}" in objects.admins:
            found.append("the admins list")
        found += [f"group {g.name!r}" for g in objects.groups if g.name != name and names_it(g)]
    for app in objects.applications:
        if kind == "identity_provider" and name in (app.identity_providers or []):
            found.append(f"application {app.name!r} (its login methods)")
        if kind == "tunnel" and app.tunnel == name:
            found.append(f"application {app.name!r}")
        found += [
            f"application {app.name!r} › policy {p.name!r}" for p in app.policies if names_it(p)
        ]
    return found
