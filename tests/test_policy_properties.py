"""Property tests of the policy engine: it agrees with a naive reference evaluator
(``reference_engine.py``) on random valid configurations, and obeys the algebra the policy
semantics imply.

Configurations are generated as plain documents and validated with ``validate_data``, so every
generated configuration is one a user could write. The generator keeps the validation rules in
mind: bypass policies use only ip/country/everyone (directly and through groups), service_auth
policies no user selectors, allow/block policies no token selectors directly (a group they use
may hold them), groups only reference earlier groups (no cycles).
"""

from __future__ import annotations

import copy
import random
from functools import cache
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference_engine import Reference, reference_route
from zerogate.model import Objects, validate_data
from zerogate.model.paths import PathError, normalise_path
from zerogate.policy import Context, Identity, Snapshot, compile_snapshot

Doc = dict[str, Any]
Req = dict[str, Any]

# ---------------------------------------------------------------- pools

EMAILS = [
    "alice@example.com",
    "bob@example.com",
    "carol@partner.test",
    "dave@evil-example.com",
    "erin@sub.example.com",
]
DOMAINS = ["example.com", "partner.test", "sub.example.com", "evil-example.com"]
RANGES = [
    "10.0.0.0/8",
    "10.1.0.0/16",
    "192.168.1.0/24",
    "203.0.113.7",
    "0.0.0.0/0",
    "2001:db8::/32",
    "2001:db8:1::/48",
    "::ffff:172.16.0.0/108",
]
COUNTRIES = ["DE", "US", "FR"]
IDPS = ["okta", "otp"]
IDP_GROUPS = ["eng", "ops", "sales"]
AMRS = ["mfa", "pwd", "hwk"]
TOKENS = ["ci", "deploy"]

# None: no user session. An identity without '@' is left out on purpose: see
# test_policy.py::test_email_domain_needs_an_at_sign.
REQUEST_EMAILS = [
    None,
    None,
    *EMAILS,
    "Alice@Example.COM",
    "mallory@evil.test",
    "x@evil.test@example.com",
]
CLIENT_IPS = [
    None,
    "10.1.2.3",
    "10.200.0.1",
    "192.168.1.5",
    "203.0.113.7",
    "203.0.113.8",
    "8.8.8.8",
    "172.16.3.4",
    "::ffff:10.1.2.3",
    "::ffff:172.16.3.4",
    "2001:db8:1::5",
    "2001:db8:ffff::1",
    "2001:db9::1",
    "not-an-ip",
]
REQUEST_COUNTRIES = [None, "DE", "US", "FR", "de", "JP"]
REQUEST_IDPS = [None, "okta", "otp", "github"]
REQUEST_TOKENS = [None, "ci", "deploy"]

CONTEXT = ("everyone", "ip", "country")
IDENTITY = ("email", "email_domain", "login_method", "idp_group", "auth_method")
SERVICE = ("service_token", "any_service_token")
POOLS: dict[str, list[str]] = {
    "email": EMAILS,
    "email_domain": DOMAINS,
    "ip": RANGES,
    "country": COUNTRIES,
    "login_method": IDPS,
    "idp_group": IDP_GROUPS,
    "auth_method": AMRS,
    "service_token": TOKENS,
}

# what each kind of policy (or group flavour) may use directly, and which group flavours
DIRECT = {
    "bypass": CONTEXT,
    "service_auth": CONTEXT + SERVICE,
    "allow": CONTEXT + IDENTITY,
    "block": CONTEXT + IDENTITY,
    # group flavours
    "context": CONTEXT,
    "service": CONTEXT + SERVICE,
    "any": CONTEXT + IDENTITY + SERVICE,
}
GROUP_FLAVOURS = {
    "bypass": ("context",),
    "service_auth": ("context", "service"),
    "allow": ("context", "service", "any"),
    "block": ("context", "service", "any"),
    "context": ("context",),
    "service": ("context", "service"),
    "any": ("context", "service", "any"),
}

GROUP_KINDS = ("context", "service", "any")

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]
#: the comparison with the reference is the strongest check: it gets the most examples
REFERENCE_SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=_HEALTH)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=_HEALTH)

# ---------------------------------------------------------------- strategies


def _values(selector: str, pool: tuple[str, ...], single: bool) -> st.SearchStrategy[Any]:
    one = st.sampled_from(pool)
    if single:
        return one.map(lambda v: {selector: [v]})
    # several values, or a scalar where a list is expected (the model accepts both)
    return st.one_of(
        one.map(lambda v: {selector: v}),
        st.lists(one, min_size=1, max_size=3).map(lambda vs: {selector: vs}),
    )


@cache
def _rule_strategy(
    kind: str, usable: tuple[str, ...], single: bool
) -> st.SearchStrategy[dict[str, Any]]:
    options: list[st.SearchStrategy[dict[str, Any]]] = []
    for selector in DIRECT[kind]:
        if selector in ("everyone", "any_service_token"):
            option = st.just({selector: True})
        else:
            option = _values(selector, tuple(POOLS[selector]), single)
        # token selectors weighted up where they may appear: they are rarer than user ones
        options.extend([option] * (2 if selector in SERVICE else 1))
    if usable:
        # weighted up: groups are where the interesting interactions are
        options.extend([_values("group", usable, single)] * 3)
    return st.one_of(options)


def rules(
    kind: str, groups: dict[str, str], *, single: bool = False
) -> st.SearchStrategy[dict[str, Any]]:
    """One rule a ``kind`` policy (or group flavour) may hold; ``groups`` maps name → flavour."""
    usable = tuple(sorted(n for n, flavour in groups.items() if flavour in GROUP_FLAVOURS[kind]))
    return _rule_strategy(kind, usable, single)


@cache
def _ruleset_strategy(kind: str, usable: tuple[tuple[str, str], ...]) -> st.SearchStrategy[Doc]:
    one = rules(kind, dict(usable))
    return st.fixed_dictionaries(
        {"include": st.lists(one, min_size=1, max_size=3 if kind in GROUP_KINDS else 2)},
        optional={"require": st.lists(one, max_size=1), "exclude": st.lists(one, max_size=1)},
    )


def rulesets(kind: str, groups: dict[str, str]) -> st.SearchStrategy[Doc]:
    return _ruleset_strategy(kind, tuple(sorted(groups.items())))


DECISIONS = st.sampled_from(["allow", "allow", "block", "block", "bypass", "service_auth"])
FLAVOURS = st.sampled_from(GROUP_KINDS)


@st.composite
def configs(draw: st.DrawFn) -> Doc:
    groups: dict[str, str] = {}  # name → flavour, in definition order
    group_docs: list[Doc] = []
    for index, flavour in enumerate(draw(st.lists(FLAVOURS, max_size=4))):
        name = f"G{index}"
        # only groups defined before: no cycles
        group_docs.append({"name": name, **draw(rulesets(flavour, dict(groups)))})
        groups[name] = flavour
    apps: list[Doc] = []
    for a in range(draw(st.integers(1, 2))):
        policies = []
        for p, decision in enumerate(draw(st.lists(DECISIONS, max_size=5))):
            policies.append(
                {"name": f"p{p}", "decision": decision, **draw(rulesets(decision, groups))}
            )
        apps.append(
            {
                "name": f"app{a}",
                "domain": f"app{a}.example.com",
                "origin": "http://10.0.0.5:8080",
                "policies": policies,
            }
        )
    return {
        "identity_providers": [{"name": n, "type": "onetimepin"} for n in IDPS],
        "service_tokens": [{"name": n} for n in TOKENS],
        "groups": group_docs,
        "applications": apps,
    }


REQUESTS_PER_EXAMPLE = 40


def make_requests(seed: int) -> list[Req]:
    """Many random requests from one drawn seed: far cheaper than drawing each field, and the
    assertion messages show the failing request."""
    rnd = random.Random(seed)
    return [
        {
            "email": rnd.choice(REQUEST_EMAILS),
            "idp": rnd.choice(REQUEST_IDPS),
            "idp_groups": frozenset(g for g in IDP_GROUPS if rnd.random() < 0.5),
            "amr": frozenset(a for a in AMRS if rnd.random() < 0.5),
            "ip": rnd.choice(CLIENT_IPS),
            "country": rnd.choice(REQUEST_COUNTRIES),
            "token": rnd.choice(REQUEST_TOKENS),
        }
        for _ in range(REQUESTS_PER_EXAMPLE)
    ]


request_lists = st.integers(0, 2**32 - 1).map(make_requests)

# ---------------------------------------------------------------- helpers


def load(doc: Doc) -> Objects:
    return validate_data(copy.deepcopy(doc), source="generated").config.objects()


def compiled(doc: Doc) -> tuple[Snapshot, Reference]:
    objects = load(doc)
    return compile_snapshot(objects), Reference(objects)


def identity_of(req: Req) -> Identity | None:
    if req["email"] is None:
        return None
    return Identity.of(req["email"], req["idp"], req["idp_groups"], req["amr"])


def context_of(req: Req) -> Context:
    return Context(ip=req["ip"], country=req["country"], service_token=req["token"])


def engine(snap: Snapshot, app: str, req: Req) -> tuple[str, str | None]:
    verdict = snap.decide(snap.apps[app], identity_of(req), context_of(req))
    return verdict.decision, verdict.policy


def reference(ref: Reference, app: str, req: Req) -> tuple[str, str | None]:
    return ref.decide(
        app,
        email=req["email"],
        idp=req["idp"],
        idp_groups=req["idp_groups"],
        amr=req["amr"],
        ip=req["ip"],
        country=req["country"],
        token=req["token"],
    )


def outcomes(doc: Doc, reqs: list[Req]) -> list[tuple[str, str | None]]:
    snap = compile_snapshot(load(doc))
    return [engine(snap, app["name"], r) for app in doc["applications"] for r in reqs]


def policy_slots(doc: Doc, decisions: tuple[str, ...]) -> list[tuple[int, int]]:
    return [
        (a, p)
        for a, app in enumerate(doc["applications"])
        for p, policy in enumerate(app["policies"])
        if policy["decision"] in decisions
    ]


def group_flavours(doc: Doc) -> dict[str, str]:
    """Each group's flavour from the selectors it reaches (to draw rules that may use it)."""
    reach: dict[str, set[str]] = {}
    for g in doc["groups"]:
        used: set[str] = set()
        for section in ("include", "require", "exclude"):
            for rule in g.get(section, []):
                ((selector, values),) = rule.items()
                if selector == "group":
                    for name in values if isinstance(values, list) else [values]:
                        used |= reach[name]
                else:
                    used.add(selector)
        reach[g["name"]] = used
    return {
        name: "any" if used & set(IDENTITY) else "service" if used & set(SERVICE) else "context"
        for name, used in reach.items()
    }


# ---------------------------------------------------------------- (a) engine == reference


@REFERENCE_SETTINGS
@given(configs(), request_lists)
def test_engine_agrees_with_reference(doc: Doc, reqs: list[Req]) -> None:
    snap, ref = compiled(doc)
    for app in doc["applications"]:
        for req in reqs:
            assert engine(snap, app["name"], req) == reference(ref, app["name"], req), req


def test_reference_agrees_on_a_hand_written_case() -> None:
    # guards against the reference and the generator both being vacuous
    doc: Doc = {
        "identity_providers": [{"name": "otp", "type": "onetimepin"}],
        "service_tokens": [{"name": "ci"}],
        "groups": [{"name": "Office", "include": [{"ip": ["10.0.0.0/8", "192.168.0.0/16"]}]}],
        "applications": [
            {
                "name": "app",
                "domain": "app.example.com",
                "origin": "http://10.0.0.5:8080",
                "policies": [
                    {
                        "name": "bots",
                        "decision": "service_auth",
                        "include": [{"service_token": "ci"}],
                    },
                    {
                        "name": "staff",
                        "decision": "allow",
                        "include": [{"email_domain": "example.com"}],
                        "require": [{"group": ["Office"]}],
                        "exclude": [{"email": "bob@example.com"}],
                    },
                ],
            }
        ],
    }
    snap, ref = compiled(doc)
    base: Req = {
        "email": "alice@example.com",
        "idp": None,
        "idp_groups": frozenset(),
        "amr": frozenset(),
        "ip": "192.168.9.9",
        "country": None,
        "token": None,
    }
    cases = [
        (base, ("allow", "staff")),
        ({**base, "ip": "8.8.8.8"}, ("block", None)),
        ({**base, "email": "bob@example.com"}, ("block", None)),
        ({**base, "email": None}, ("authenticate", None)),
        ({**base, "email": None, "token": "ci"}, ("allow", "bots")),
    ]
    for req, expected in cases:
        assert reference(ref, "app", req) == expected
        assert engine(snap, "app", req) == expected


# ---------------------------------------------------------------- (b) explain == decide


@SETTINGS
@given(configs(), request_lists)
def test_explain_agrees_with_decide(doc: Doc, reqs: list[Req]) -> None:
    snap = compile_snapshot(load(doc))
    for app in doc["applications"]:
        compiled_app = snap.apps[app["name"]]
        for req in reqs:
            decided = snap.decide(compiled_app, identity_of(req), context_of(req))
            explained = snap.explain(compiled_app, identity_of(req), context_of(req))
            assert (explained.decision, explained.policy) == (decided.decision, decided.policy)
            matched = [s["policy"] for s in explained.steps if s["matched"]]
            # the steps show the deciding policy as the one (and last) that matched
            assert matched == ([decided.policy] if decided.policy else [])
            if decided.policy:
                assert explained.steps[-1]["policy"] == decided.policy


# ---------------------------------------------------------------- (c) adding an exclude


@SETTINGS
@given(configs(), request_lists, st.data())
def test_adding_an_exclude_never_turns_a_block_into_an_allow(
    doc: Doc, reqs: list[Req], data: st.DataObject
) -> None:
    slots = policy_slots(doc, ("allow",))
    if not slots:
        return
    a, p = data.draw(st.sampled_from(slots))
    flavours = group_flavours(doc)
    changed = copy.deepcopy(doc)
    policy = changed["applications"][a]["policies"][p]
    policy.setdefault("exclude", []).append(data.draw(rules("allow", flavours)))
    app = doc["applications"][a]["name"]
    snap_before, snap_after = compile_snapshot(load(doc)), compile_snapshot(load(changed))
    for req in reqs:
        before = engine(snap_before, app, req)
        after = engine(snap_after, app, req)
        if after[0] == "allow":
            assert before[0] == "allow", (before, after, req)
        if before != after:
            # only the policy that got the exclude can have stopped matching
            assert before == ("allow", policy["name"]), (before, after, req)


# ---------------------------------------------------------------- (d) include order


@SETTINGS
@given(configs(), request_lists, st.randoms(use_true_random=False))
def test_include_order_does_not_change_the_result(doc: Doc, reqs: list[Req], rnd: Any) -> None:
    shuffled = copy.deepcopy(doc)
    for group in shuffled["groups"]:
        rnd.shuffle(group["include"])
    for app in shuffled["applications"]:
        for policy in app["policies"]:
            rnd.shuffle(policy["include"])
            for section in ("include", "require", "exclude"):  # values in a rule, too
                for rule in policy.get(section, []):
                    for values in rule.values():
                        if isinstance(values, list):
                            rnd.shuffle(values)
    assert outcomes(doc, reqs) == outcomes(shuffled, reqs)


# ---------------------------------------------------------------- (e) require group = inline


@SETTINGS
@given(configs(), request_lists, st.data())
def test_requiring_a_group_equals_inlining_it(
    doc: Doc, reqs: list[Req], data: st.DataObject
) -> None:
    slots = policy_slots(doc, ("allow", "block", "bypass", "service_auth"))
    if not slots:
        return
    a, p = data.draw(st.sampled_from(slots))
    decision = doc["applications"][a]["policies"][p]["decision"]
    flavours = group_flavours(doc)
    # The group's rules must stay valid when written into the policy itself, so they are drawn
    # with the policy's own restrictions. Its one include rule has a single value: in a
    # policy's require, several values would mean "all of them", in a group's include "any".
    include = data.draw(rules(decision, flavours, single=True))
    require = data.draw(st.lists(rules(decision, flavours), max_size=2))
    exclude = data.draw(st.lists(rules(decision, flavours), max_size=2))

    with_group = copy.deepcopy(doc)
    group: Doc = {"name": "Inlined", "include": [include], "require": require, "exclude": exclude}
    with_group["groups"].append(group)
    target = with_group["applications"][a]["policies"][p]
    target.setdefault("require", []).append({"group": ["Inlined"]})

    inlined = copy.deepcopy(doc)
    target = inlined["applications"][a]["policies"][p]
    target.setdefault("require", []).extend([include, *require])
    target.setdefault("exclude", []).extend(exclude)

    assert outcomes(with_group, reqs) == outcomes(inlined, reqs)


# ---------------------------------------------------------------- (f) include group = inline


@SETTINGS
@given(configs(), request_lists, st.data())
def test_including_a_group_equals_inlining_its_includes(
    doc: Doc, reqs: list[Req], data: st.DataObject
) -> None:
    slots = policy_slots(doc, ("allow", "block", "bypass", "service_auth"))
    if not slots:
        return
    a, p = data.draw(st.sampled_from(slots))
    decision = doc["applications"][a]["policies"][p]["decision"]
    flavours = group_flavours(doc)
    includes = data.draw(st.lists(rules(decision, flavours), min_size=1, max_size=3))
    replace = data.draw(st.booleans())

    with_group = copy.deepcopy(doc)
    with_group["groups"].append({"name": "Inlined", "include": includes})
    target = with_group["applications"][a]["policies"][p]
    ref = {"group": ["Inlined"]}
    target["include"] = [ref] if replace else [*target["include"], ref]

    inlined = copy.deepcopy(doc)
    target = inlined["applications"][a]["policies"][p]
    target["include"] = list(includes) if replace else [*target["include"], *includes]

    assert outcomes(with_group, reqs) == outcomes(inlined, reqs)


# ---------------------------------------------------------------- (g) adding an include


@SETTINGS
@given(configs(), request_lists, st.data())
def test_adding_an_include_never_turns_an_allow_into_a_block(
    doc: Doc, reqs: list[Req], data: st.DataObject
) -> None:
    slots = policy_slots(doc, ("allow",))
    if not slots:
        return
    a, p = data.draw(st.sampled_from(slots))
    flavours = group_flavours(doc)
    changed = copy.deepcopy(doc)
    policy = changed["applications"][a]["policies"][p]
    policy["include"].append(data.draw(rules("allow", flavours)))
    app = doc["applications"][a]["name"]
    snap_before, snap_after = compile_snapshot(load(doc)), compile_snapshot(load(changed))
    for req in reqs:
        before = engine(snap_before, app, req)
        after = engine(snap_after, app, req)
        if before[0] == "allow":
            assert after[0] == "allow", (before, after, req)
        if before != after:
            # only the policy that got the include can have started matching
            assert after == ("allow", policy["name"]), (before, after, req)


# ---------------------------------------------------------------- routing == reference router

APP_HOSTS = ["a.example.com", "*.example.com", "b.a.example.com", "*.a.example.com"]
APP_PATHS = ["", "/admin", "/admin/api", "/Docs", "/a%3a", "/admin/api/v1"]
REQUEST_HOSTS = [
    "a.example.com",
    "A.Example.COM:8443",
    "a.example.com.",
    "b.a.example.com",
    "x.a.example.com",
    "x.b.a.example.com",
    "x.example.com:80",
    "example.com",
    # ".example.com" is left out: see test_policy.py::test_wildcard_needs_a_non_empty_label
    "[2001:db8::1]:443",
    "other.test",
]
PATH_PIECES = ["/", "//", ".", "..", "admin", "ADMIN", "%61dmin", "api", "v1", "docs", "a%3A", "x"]


@st.composite
def routing_configs(draw: st.DrawFn) -> Doc:
    domains = draw(
        st.lists(
            st.tuples(st.sampled_from(APP_HOSTS), st.sampled_from(APP_PATHS)),
            min_size=1,
            max_size=8,
            unique_by=lambda hp: (hp[0], hp[1].lower()),
        )
    )
    return {
        "applications": [
            {"name": f"app{i}", "domain": host + path, "origin": "http://10.0.0.5:8080"}
            for i, (host, path) in enumerate(domains)
        ]
    }


@settings(max_examples=300, deadline=None, suppress_health_check=_HEALTH)
@given(
    routing_configs(),
    st.lists(
        st.tuples(
            st.sampled_from(REQUEST_HOSTS),
            st.lists(st.sampled_from(PATH_PIECES), max_size=6).map(lambda ps: "/" + "/".join(ps)),
        ),
        min_size=1,
        max_size=10,
    ),
)
def test_routing_agrees_with_a_naive_router(doc: Doc, reqs: list[tuple[str, str]]) -> None:
    objects = load(doc)
    snap = compile_snapshot(objects)
    for host, path in reqs:
        try:
            norm = normalise_path(path)
        except PathError:
            continue
        app = snap.route(host, path)
        assert (app.name if app else None) == reference_route(objects, host, norm), (host, path)
        # routing the raw path and its normalised form is the same thing
        again = snap.route(host, norm)
        assert (again.name if again else None) == (app.name if app else None)
