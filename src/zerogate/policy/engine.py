"""Compile a configuration into an immutable snapshot and decide requests against it. No I/O.

A decision is set membership and radix-tree lookups: its cost does not grow with the number of
emails or ranges. ``decide`` takes the fast path; ``explain`` walks the very same compiled
matchers and records what each one found, for ``zerogate policy test`` and the admin tester.

Semantics (docs/configuration.md, ARCHITECTURE.md "The policy engine"):

* an application's ``bypass`` and ``service_auth`` policies run first, in listed order, then
  ``allow`` and ``block`` in listed order; the first match decides; nothing matched → block;
* a rule set matches when any include, all requires and no exclude match; inside require, a
  selector with several values must match every value;
* ``service_auth`` only matches a request presenting a service token, and user policies never
  see the token; ``bypass`` only looks at the request (ip, country, everyone);
* with no identity and no service token, a request that needs a login gets ``authenticate``.

The admin panel and API are a **built-in application** (``ADMIN_APPLICATION``, compiled into
``Snapshot.admin``, never routed): its one allow policy is the ``admins`` list
(``admin_application``), so the admins are decided by these very matchers, groups included.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import radix

from zerogate.model.objects import (
    ADMIN_APPLICATION,
    Application,
    Objects,
    Policy,
    Rule,
    RuleSet,
    UpstreamTimeouts,
)
from zerogate.model.paths import PathError, fold, normalise_path, under
from zerogate.model.values import ip_network, mailbox_of, normalise_ip, parse_duration
from zerogate.net.upstream import Timeouts
from zerogate.tunnel.routes import TunnelRoutes

Outcome = Literal["allow", "block", "bypass", "authenticate"]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the user is, as a login established it."""

    email: str
    idp: str | None = None
    idp_groups: frozenset[str] = frozenset()
    amr: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls,
        email: str,
        idp: str | None = None,
        idp_groups: Iterable[str] = (),
        amr: Iterable[str] = (),
    ) -> Identity:
        return cls(email.strip().lower(), idp, frozenset(idp_groups), frozenset(amr))


@dataclass(frozen=True, slots=True)
class Context:
    """What the request itself shows: client address, its country, a verified service token."""

    ip: str | None = None
    country: str | None = None
    service_token: str | None = None


class _Facts:
    """Everything a matcher may look at, precomputed once per decision."""

    __slots__ = (
        "amr",
        "country",
        "domain",
        "email",
        "idp",
        "idp_groups",
        "ip",
        "mailbox",
        "memo",
        "token",
    )

    def __init__(self, identity: Identity | None, ctx: Context, token: str | None) -> None:
        if identity is not None:
            self.email: str | None = identity.email
            # "ann+x@" is delivered to "ann@": email selectors match either (see mailbox_of)
            self.mailbox: str | None = mailbox_of(identity.email) if "+" in identity.email else None
            user, at, domain = identity.email.rpartition("@")
            self.domain: str | None = domain if at and user else None
            self.idp: str | None = identity.idp
            self.idp_groups: frozenset[str] = identity.idp_groups
            self.amr: frozenset[str] = identity.amr
        else:
            self.email = self.mailbox = self.domain = self.idp = None
            self.idp_groups = self.amr = frozenset()
        self.ip: str | None = normalise_ip(ctx.ip) if ctx.ip else None
        self.country: str | None = ctx.country.upper() if ctx.country else None
        self.token = token
        self.memo: dict[int, bool] = {}


# ---------------------------------------------------------------- matchers


class Matcher:
    """One selector (with its values) compiled; ``match`` is the hot path."""

    __slots__ = ()

    def match(self, f: _Facts) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def explain(self, f: _Facts) -> tuple[bool, list[Step]]:
        return self.match(f), []


def _show(values: Iterable[str], limit: int = 5) -> str:
    items = sorted(values)
    shown = ", ".join(items[:limit])
    return f"[{shown}{', …' if len(items) > limit else ''}]"


class _Everyone(Matcher):
    __slots__ = ()

    def match(self, f: _Facts) -> bool:
        return True

    def describe(self) -> str:
        return "everyone"


class _InSet(Matcher):
    """A single-valued fact (email, domain, idp, country, token) in a set of values."""

    __slots__ = ("attr", "label", "values")

    def __init__(self, label: str, attr: str, values: Iterable[str]) -> None:
        self.label = label
        self.attr = attr
        self.values = frozenset(values)

    def match(self, f: _Facts) -> bool:
        return getattr(f, self.attr) in self.values

    def describe(self) -> str:
        return f"{self.label} {_show(self.values)}"


class _Email(_InSet):
    __slots__ = ()

    def match(self, f: _Facts) -> bool:
        return f.email in self.values or (f.mailbox is not None and f.mailbox in self.values)


class _Domain(_InSet):
    __slots__ = ()

    def match(self, f: _Facts) -> bool:
        return f.domain in self.values


class _Idp(_InSet):
    __slots__ = ()

    def match(self, f: _Facts) -> bool:
        return f.idp in self.values


class _Country(_InSet):
    __slots__ = ()

    def match(self, f: _Facts) -> bool:
        return f.country in self.values


class _Token(_InSet):
    __slots__ = ()

    def match(self, f: _Facts) -> bool:
        return f.token in self.values


class _Overlaps(Matcher):
    """A multi-valued fact (IdP groups, amr) sharing a value with the set."""

    __slots__ = ("attr", "label", "values")

    def __init__(self, label: str, attr: str, values: Iterable[str]) -> None:
        self.label = label
        self.attr = attr
        self.values = frozenset(values)

    def match(self, f: _Facts) -> bool:
        facts: frozenset[str] = getattr(f, self.attr)
        return not self.values.isdisjoint(facts)

    def describe(self) -> str:
        return f"{self.label} {_show(self.values)}"


class _AnyToken(Matcher):
    __slots__ = ()

    def match(self, f: _Facts) -> bool:
        return f.token is not None

    def describe(self) -> str:
        return "any_service_token"


class _Ip(Matcher):
    __slots__ = ("count", "ranges", "tree")

    def __init__(self, ranges: Iterable[str]) -> None:
        self.tree = radix.Radix()
        self.ranges = sorted(set(ranges))
        for text in self.ranges:
            self.tree.add(str(ip_network(text)))
        self.count = len(self.ranges)

    def match(self, f: _Facts) -> bool:
        return f.ip is not None and self.tree.search_best(f.ip) is not None

    def describe(self) -> str:
        return f"ip {_show(self.ranges)}"


class _GroupRef(Matcher):
    __slots__ = ("group",)

    def __init__(self, group: CompiledGroup) -> None:
        self.group = group

    def match(self, f: _Facts) -> bool:
        memo = f.memo
        key = self.group.index
        hit = memo.get(key)
        if hit is None:
            hit = memo[key] = self.group.rules.match(f)
        return hit

    def describe(self) -> str:
        return f"group {self.group.name!r}"

    def explain(self, f: _Facts) -> tuple[bool, list[Step]]:
        return self.group.explain_rules.explain(f)


class _AnyOf(Matcher):
    __slots__ = ("parts",)

    def __init__(self, parts: list[Matcher]) -> None:
        self.parts = tuple(parts)

    def match(self, f: _Facts) -> bool:
        for p in self.parts:  # noqa: SIM110 - a plain loop is faster than any() here
            if p.match(f):
                return True
        return False

    def describe(self) -> str:
        return " or ".join(p.describe() for p in self.parts)

    def explain(self, f: _Facts) -> tuple[bool, list[Step]]:
        steps: list[Step] = []
        for part in self.parts:
            ok, inner = part.explain(f)
            steps.append(Step("any of", part.describe(), ok, tuple(inner)))
            if ok:
                return True, steps
        return False, steps


class _AllOf(Matcher):
    """Require with several values: every value must match."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[Matcher]) -> None:
        self.parts = tuple(parts)

    def match(self, f: _Facts) -> bool:
        for p in self.parts:  # noqa: SIM110 - a plain loop is faster than all() here
            if not p.match(f):
                return False
        return True

    def describe(self) -> str:
        return " and ".join(p.describe() for p in self.parts)

    def explain(self, f: _Facts) -> tuple[bool, list[Step]]:
        steps: list[Step] = []
        for part in self.parts:
            ok, inner = part.explain(f)
            steps.append(Step("all of", part.describe(), ok, tuple(inner)))
            if not ok:
                return False, steps
        return True, steps


# ---------------------------------------------------------------- rule sets


@dataclass(frozen=True, slots=True)
class Step:
    """One check made while deciding: where, what, and whether it matched."""

    section: str
    check: str
    matched: bool
    inner: tuple[Step, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "section": self.section,
            "check": self.check,
            "matched": self.matched,
        }
        if self.inner:
            out["inner"] = [s.as_dict() for s in self.inner]
        return out


class CompiledRules:
    __slots__ = ("exclude", "include", "require")

    def __init__(
        self, include: list[Matcher], require: list[Matcher], exclude: list[Matcher]
    ) -> None:
        self.include = tuple(include)
        self.require = tuple(require)
        self.exclude = tuple(exclude)

    def match(self, f: _Facts) -> bool:
        for m in self.include:
            if m.match(f):
                break
        else:
            return False
        for m in self.require:
            if not m.match(f):
                return False
        for m in self.exclude:  # noqa: SIM110 - the loop is the hot path, kept explicit
            if m.match(f):
                return False
        return True

    def explain(self, f: _Facts) -> tuple[bool, list[Step]]:
        steps: list[Step] = []
        matched_include = False
        for m in self.include:
            ok, inner = m.explain(f)
            steps.append(Step("include", m.describe(), ok, tuple(inner)))
            if ok:
                matched_include = True
                break
        if not matched_include:
            return False, steps
        for m in self.require:
            ok, inner = m.explain(f)
            steps.append(Step("require", m.describe(), ok, tuple(inner)))
            if not ok:
                return False, steps
        for m in self.exclude:
            ok, inner = m.explain(f)
            steps.append(Step("exclude", m.describe(), ok, tuple(inner)))
            if ok:
                return False, steps
        return True, steps


@dataclass(slots=True, eq=False)
class CompiledGroup:
    index: int
    name: str
    rules: CompiledRules = field(default_factory=lambda: CompiledRules([], [], []))
    explain_rules: CompiledRules = field(default_factory=lambda: CompiledRules([], [], []))


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    name: str
    decision: str
    rules: CompiledRules  # fast form: include-only groups flattened, selectors merged by kind
    explain_rules: CompiledRules  # the rules as written, for explanations
    model: Policy
    outcome: Outcome  # what a match decides: allow (allow, service_auth), block, bypass
    reason: str


def compile_timeouts(model: UpstreamTimeouts | None) -> Timeouts | None:
    """The ``timeouts`` of an application (or ``upstream_timeouts`` of the settings) in seconds."""
    if model is None:
        return None

    def seconds(value: str | None) -> float | None:
        return None if value is None else parse_duration(value).total_seconds()

    return Timeouts(seconds(model.connect), seconds(model.response), seconds(model.idle))


class CompiledApp:
    """An application's policies, compiled, with its fixed verdicts built once."""

    __slots__ = (
        "__weakref__",
        "audience",
        "fast_main",
        "fast_pre",
        "has_allow",
        "host",
        "main",
        "model",
        "name",
        "path",
        "pre",
        "timeouts",
        "tunnel",
        "v_deny",
        "v_login",
        "v_nobody",
        "v_token_refused",
    )

    def __init__(self, model: Application, policies: list[CompiledPolicy]) -> None:
        self.name = model.name
        self.host = model.host
        self.path = model.path
        self.model = model
        #: ``aud`` of this application's tokens; its cookie's name is made of it
        self.audience = model.audience_tag
        #: the tunnel this application's requests go through (``TunnelRoutes``), set by the
        #: snapshot; ``None`` for an ``origin:`` application or one no tunnel routes
        self.tunnel: str | None = None
        #: the application's own upstream timeouts (``None``: the settings' apply)
        self.timeouts = compile_timeouts(model.timeouts)
        #: bypass + service_auth, then allow + block, each in listed order
        self.pre = tuple(p for p in policies if p.decision in ("bypass", "service_auth"))
        self.main = tuple(p for p in policies if p.decision in ("allow", "block"))
        self.has_allow = any(p.decision == "allow" for p in policies)
        self.fast_pre = tuple(
            (
                p.rules,
                p.decision == "bypass",
                Verdict(p.outcome, self, p.name, p.reason, kept_by_app=True),
            )
            for p in self.pre
        )
        self.fast_main = tuple(
            (p.rules, Verdict(p.outcome, self, p.name, p.reason, kept_by_app=True))
            for p in self.main
        )
        self.v_deny = Verdict(
            "block", self, None, "no policy matched (deny by default)", kept_by_app=True
        )
        self.v_login = Verdict("authenticate", self, None, "login required", kept_by_app=True)
        self.v_nobody = Verdict(
            "block", self, None, "no allow policy: nobody can log in", kept_by_app=True
        )
        self.v_token_refused = Verdict(
            "block", self, None, "no service_auth policy accepts this token", kept_by_app=True
        )

    def __repr__(self) -> str:
        return f"CompiledApp({self.name!r}, {self.host + self.path!r})"


class Verdict:
    """The decision for one request, with the deciding policy and (when asked) why."""

    __slots__ = ("_app", "decision", "policy", "reason", "steps")

    def __init__(
        self,
        decision: Outcome,
        application: CompiledApp | None,
        policy: str | None,
        reason: str,
        steps: tuple[dict[str, Any], ...] = (),
        *,
        kept_by_app: bool = False,
    ) -> None:
        self.decision: Outcome = decision
        # ``kept_by_app``: one of the application's ready-made verdicts refers to it weakly,
        # as a strong reference back would make every compiled snapshot a reference cycle
        # (left to the cyclic collector, whose full passes over a large configuration stall
        # the event loop); a verdict made for one request holds its application
        self._app: weakref.ref[CompiledApp] | CompiledApp | None = (
            weakref.ref(application) if kept_by_app and application is not None else application
        )
        self.policy = policy
        self.reason = reason
        self.steps = steps

    @property
    def application(self) -> CompiledApp | None:
        app = self._app
        return app() if isinstance(app, weakref.ref) else app

    def __repr__(self) -> str:
        app = self.application.name if self.application else None
        return f"Verdict({self.decision!r}, app={app!r}, policy={self.policy!r})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "application": self.application.name if self.application else None,
            "decision": self.decision,
            "policy": self.policy,
            "reason": self.reason,
            "steps": list(self.steps),
        }


_SIMPLE: Mapping[str, Callable[[list[str]], Matcher]] = {
    "email": lambda v: _Email("email", "email", v),
    "email_domain": lambda v: _Domain("email_domain", "domain", v),
    "country": lambda v: _Country("country", "country", v),
    "login_method": lambda v: _Idp("login_method", "idp", v),
    "service_token": lambda v: _Token("service_token", "token", v),
    "idp_group": lambda v: _Overlaps("idp_group", "idp_groups", v),
    "auth_method": lambda v: _Overlaps("auth_method", "amr", v),
    "ip": lambda v: _Ip(v),
}


#: merged in this order (cheapest first) when include-only groups are flattened
_MERGE_ORDER = (
    "email",
    "email_domain",
    "login_method",
    "country",
    "service_token",
    "idp_group",
    "auth_method",
    "ip",
)


class _Compiler:
    """Two forms of every rule set: the *fast* one (include-only groups flattened into their
    members, the values of each kind merged into one set or radix tree) used by ``decide``, and
    the rules *as written* used by ``explain``. Property tests keep the two equal."""

    def __init__(self, objects: Objects) -> None:
        self.models = {g.name: g for g in objects.groups}
        self._flat: dict[str, tuple[dict[str, set[str]], dict[str, Matcher], set[str]]] = {}
        self.groups: dict[str, CompiledGroup] = {
            g.name: CompiledGroup(i, g.name) for i, g in enumerate(objects.groups)
        }
        for g in objects.groups:
            self.groups[g.name].rules = self.fast(g)
            self.groups[g.name].explain_rules = self.ruleset(g)

    # ---------------------------------------------------------- as written

    def one(self, selector: str, values: list[str]) -> Matcher:
        if selector == "everyone":
            return _Everyone()
        if selector == "any_service_token":
            return _AnyToken()
        if selector == "group":
            refs: list[Matcher] = [_GroupRef(self.groups[name]) for name in values]
            return refs[0] if len(refs) == 1 else _AnyOf(refs)
        return _SIMPLE[selector](values)

    def rule(self, rule: Rule, section: str) -> Matcher:
        selector, values = rule.selector, rule.values
        if section == "require" and len(set(values)) > 1:
            return _AllOf([self.one(selector, [v]) for v in dict.fromkeys(values)])
        return self.one(selector, values)

    def ruleset(self, rs: RuleSet) -> CompiledRules:
        return CompiledRules(
            [self.rule(r, "include") for r in rs.include],
            [self.rule(r, "require") for r in rs.require],
            [self.rule(r, "exclude") for r in rs.exclude],
        )

    # ---------------------------------------------------------- fast

    def _terms(
        self,
        selector: str,
        values: list[str],
        merged: dict[str, set[str]],
        others: dict[str, Matcher],
        flags: set[str],
    ) -> None:
        """Add the alternatives of one any-of rule to ``merged`` / ``others`` / ``flags``."""
        if selector == "everyone":
            flags.add("everyone")
        elif selector == "any_service_token":
            flags.add("any_service_token")
        elif selector == "group":
            for name in values:
                model = self.models[name]
                if model.require or model.exclude:
                    others.setdefault(name, _GroupRef(self.groups[name]))
                    continue
                # an include-only group is exactly the union of its includes
                g_merged, g_others, g_flags = self._group_terms(name)
                for kind, items in g_merged.items():
                    merged.setdefault(kind, set()).update(items)
                for key, matcher in g_others.items():
                    others.setdefault(key, matcher)
                flags |= g_flags
        else:
            merged.setdefault(selector, set()).update(values)

    def _group_terms(self, name: str) -> tuple[dict[str, set[str]], dict[str, Matcher], set[str]]:
        """The flattened alternatives of an include-only group, computed once."""
        hit = self._flat.get(name)
        if hit is None:
            merged: dict[str, set[str]] = {}
            others: dict[str, Matcher] = {}
            flags: set[str] = set()
            for inner in self.models[name].include:
                self._terms(inner.selector, inner.values, merged, others, flags)
            hit = self._flat[name] = (merged, others, flags)
        return hit

    def any_of(self, rules: list[tuple[str, list[str]]]) -> Matcher:
        merged: dict[str, set[str]] = {}
        others: dict[str, Matcher] = {}
        flags: set[str] = set()
        for selector, values in rules:
            self._terms(selector, values, merged, others, flags)
        if "everyone" in flags:
            return _Everyone()
        parts: list[Matcher] = [_AnyToken()] if "any_service_token" in flags else []
        parts += [_SIMPLE[k](sorted(merged[k])) for k in _MERGE_ORDER if k in merged]
        parts += others.values()
        return parts[0] if len(parts) == 1 else _AnyOf(parts)

    def fast(self, rs: RuleSet) -> CompiledRules:
        require: list[Matcher] = []
        for r in rs.require:
            values = list(dict.fromkeys(r.values))
            if len(values) > 1:
                require.append(_AllOf([self.any_of([(r.selector, [v])]) for v in values]))
            else:
                require.append(self.any_of([(r.selector, r.values)]))
        return CompiledRules(
            [self.any_of([(r.selector, r.values) for r in rs.include])] if rs.include else [],
            require,
            [self.any_of([(r.selector, r.values) for r in rs.exclude])] if rs.exclude else [],
        )

    def app(self, app: Application) -> CompiledApp:
        policies = [
            CompiledPolicy(
                p.name,
                p.decision,
                self.fast(p),
                self.ruleset(p),
                p,
                "allow" if p.decision == "service_auth" else p.decision,
                f"{p.decision} policy matched",
            )
            for p in app.policies
        ]
        return CompiledApp(app, policies)


class _HostApps:
    """The applications of one host: longest path prefix first, found by segment count."""

    __slots__ = ("by_prefix", "depths", "only")

    def __init__(self, apps: list[CompiledApp]) -> None:
        self.by_prefix = {app.path: app for app in apps}
        # depth = number of segments of the prefix ("" = 0, "/a" = 1, "/a/b" = 2), deepest first
        self.depths = sorted({app.path.count("/") for app in apps}, reverse=True)
        self.only = apps[0] if len(apps) == 1 else None

    def find(self, path: str) -> CompiledApp | None:
        only = self.only
        if only is not None:
            return only if under(path, only.path) else None
        segments = path.split("/")  # "/a/b" -> ["", "a", "b"]
        for depth in self.depths:
            if depth < len(segments):
                app = self.by_prefix.get("/".join(segments[: depth + 1]))
                if app is not None:
                    return app
        return None


#: the built-in admin application is never routed: its domain is only a placeholder
ADMIN_DOMAIN = "zerogate-admin.invalid"


def admin_application(objects: Objects) -> Application:
    """The built-in application of the admin panel and API: one allow policy including the
    ``admins`` list (emails → ``email``, ``group:NAME`` → ``group``), every login method, the
    global session length. No admins → no policy → nobody (fail closed). A ``group:`` entry
    naming no group (only possible in unvalidated objects) matches nobody."""
    known = {g.name for g in objects.groups}
    emails = [a for a in objects.admins if not a.startswith("group:")]
    groups = [a[len("group:") :] for a in objects.admins if a.startswith("group:")]
    include: list[dict[str, Any]] = []
    if emails:
        include.append({"email": emails})
    if any(g in known for g in groups):
        include.append({"group": [g for g in groups if g in known]})
    policies = [{"name": "admins", "decision": "allow", "include": include}] if include else []
    return Application.model_validate(
        {
            "name": ADMIN_APPLICATION,
            "domain": ADMIN_DOMAIN,
            "origin": "http://127.0.0.1:9",
            "policies": policies,
        }
    )


class Snapshot:
    """An immutable, compiled configuration: route a request, then decide it."""

    def __init__(self, objects: Objects, version: int = 0) -> None:
        compiler = _Compiler(objects)
        self.objects = objects
        self.version = version
        #: the built-in admin application (not routed; ``application`` finds it by name)
        self.admin: CompiledApp = compiler.app(admin_application(objects))
        self.apps: dict[str, CompiledApp] = {}
        routes = TunnelRoutes(objects)
        exact: dict[str, list[CompiledApp]] = {}
        wildcard: dict[str, list[CompiledApp]] = {}
        for model in objects.applications:
            app = compiler.app(model)
            app.tunnel = routes.tunnel_for(model)
            self.apps[app.name] = app
            if app.host.startswith("*."):
                wildcard.setdefault(app.host[2:], []).append(app)
            else:
                exact.setdefault(app.host, []).append(app)
        self._exact = {h: _HostApps(a) for h, a in exact.items()}
        self._wildcard = {h: _HostApps(a) for h, a in wildcard.items()}
        self.groups = compiler.groups

    # -------------------------------------------------------------- routing

    @staticmethod
    def normalise_host(host: str) -> str:
        """Lower-case, port and trailing dot removed (``[::1]:8080`` → ``::1``)."""
        h = host.strip().lower()
        if h.startswith("["):
            return h[1:].partition("]")[0]
        if h.count(":") == 1:
            h = h.partition(":")[0]
        return h.rstrip(".")

    def route(self, host: str, path: str = "/") -> CompiledApp | None:
        """The application for a Host header and raw path; raises ``PathError`` on an unsafe
        path. Exact hosts before ``*.`` hosts; within a host the longest path prefix wins."""
        h = self.normalise_host(host)
        norm = fold(normalise_path(path))
        apps = self._exact.get(h)
        if apps is not None:
            app = apps.find(norm)
            if app is not None:
                return app
        first, dot, parent = h.partition(".")
        if dot and first:
            apps = self._wildcard.get(parent)
            if apps is not None:
                return apps.find(norm)
        return None

    def application(self, name: str) -> CompiledApp | None:
        """A configured application, or the built-in admin one, by name (what a login flow
        names; ``ADMIN_APPLICATION`` is reserved, so the two never collide)."""
        if name == ADMIN_APPLICATION:
            return self.admin
        return self.apps.get(name)

    # -------------------------------------------------------------- deciding

    def decide(self, app: CompiledApp, identity: Identity | None, ctx: Context) -> Verdict:
        """The decision for a routed request (fast path, no explanation)."""
        token = ctx.service_token
        if app.fast_pre:
            f = _Facts(None, ctx, token)
            for rules, bypass, verdict in app.fast_pre:
                if (bypass or token is not None) and rules.match(f):
                    return verdict
        if identity is None:
            if token is not None:
                return app.v_token_refused
            return app.v_login if app.has_allow else app.v_nobody
        f = _Facts(identity, ctx, None)
        for rules, verdict in app.fast_main:
            if rules.match(f):
                return verdict
        return app.v_deny

    def explain(self, app: CompiledApp, identity: Identity | None, ctx: Context) -> Verdict:
        """Like ``decide``, recording every check; the outcome is always the same."""
        token = ctx.service_token
        steps: list[dict[str, Any]] = []

        def record(p: CompiledPolicy, f: _Facts, skipped: str | None = None) -> bool:
            if skipped is not None:
                steps.append(
                    {
                        "policy": p.name,
                        "decision": p.decision,
                        "matched": False,
                        "skipped": skipped,
                        "checks": [],
                    }
                )
                return False
            ok, checks = p.explain_rules.explain(f)
            steps.append(
                {
                    "policy": p.name,
                    "decision": p.decision,
                    "matched": ok,
                    "checks": [c.as_dict() for c in checks],
                }
            )
            return ok

        def verdict(outcome: Outcome, policy: str | None, reason: str) -> Verdict:
            return Verdict(outcome, app, policy, reason, tuple(steps))

        if app.pre:
            f = _Facts(None, ctx, token)
            for p in app.pre:
                if p.decision == "bypass":
                    if record(p, f):
                        return verdict("bypass", p.name, "bypass policy matched")
                elif token is None:
                    record(p, f, "no service token presented")
                elif record(p, f):
                    return verdict("allow", p.name, "service token accepted")
        if identity is None:
            if token is not None:
                return verdict("block", None, "no service_auth policy accepts this token")
            if app.has_allow:
                return verdict("authenticate", None, "login required")
            return verdict("block", None, "no allow policy: nobody can log in")
        f = _Facts(identity, ctx, None)
        for p in app.main:
            if record(p, f):
                return verdict(p.outcome, p.name, p.reason)
        return verdict("block", None, "no policy matched (deny by default)")

    def check(
        self,
        host: str,
        path: str,
        identity: Identity | None,
        ctx: Context,
        *,
        explain: bool = False,
    ) -> Verdict:
        """Route and decide in one call, as the edge does."""
        try:
            app = self.route(host, path)
        except PathError as exc:
            return Verdict("block", None, None, f"path rejected: {exc}")
        if app is None:
            return Verdict("block", None, None, "no application matches this host and path")
        return (self.explain if explain else self.decide)(app, identity, ctx)


def compile_snapshot(objects: Objects, version: int = 0) -> Snapshot:
    """Compile validated objects into a snapshot."""
    return Snapshot(objects, version)
