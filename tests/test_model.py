# ruff: noqa: E501 - SPEC_EXAMPLE below is a full configuration kept as users write it, long lines included
"""Validation of the declarative configuration (docs/configuration.md).

Every invalid document must be rejected with a problem that names the object and the field
(``where``), points at the right line, and says why (``message``).
"""

from __future__ import annotations

import textwrap

import pytest

from zerogate.model import ConfigError, Loaded, Problem, load_text, validate_data

SOURCE = "x.yaml"


def doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def line_of(text: str, marker: str, nth: int = 1) -> int:
    """The 1-based line of the ``nth`` line of ``text`` holding ``marker``."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if marker in line]
    assert len(hits) >= nth, f"marker {marker!r} not found {nth} times"
    return hits[nth - 1]


def problems(text: str) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load_text(text, source=SOURCE)
    found = info.value.problems
    assert found, "ConfigError without problems"
    for p in found:
        assert p.source == SOURCE
        assert not p.warning
    return found


def one_problem(text: str) -> Problem:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def valid(text: str) -> Loaded:
    return load_text(text, source=SOURCE)


def assert_problem(
    p: Problem, *, where: list[str], line: int | None, message: list[str], text: str = ""
) -> None:
    for part in where:
        assert part in p.where, (part, p)
    for part in message:
        assert part in p.message, (part, p)
    assert p.line == line, (p, text)


# Pieces most documents need.
HEAD = """\
identity_providers:
  - name: okta
    type: oidc
    issuer: https://example.okta.com
    client_id: abc
  - name: otp
    type: onetimepin
service_tokens:
  - name: ci-bot
tunnels:
  - name: office
    routes: [intranet.example.com]
"""


def app_with(policies: str, *, groups: str = "") -> str:
    """A document with one application ``wiki`` holding ``policies`` (block YAML, 6 spaces)."""
    text = HEAD
    if groups:
        text += "groups:\n" + textwrap.indent(textwrap.dedent(groups).strip("\n"), "  ") + "\n"
    text += (
        "applications:\n"
        "  - name: wiki\n"
        "    domain: wiki.example.com\n"
        "    origin: http://10.0.0.5:8080\n"
        "    policies:\n" + textwrap.indent(textwrap.dedent(policies).strip("\n"), "      ") + "\n"
    )
    return text


# ================================================================ unknown keys


def test_unknown_top_level_key_with_hint() -> None:
    text = doc("""
        portal: auth.example.com
        aplications: []
    """)
    p = one_problem(text)
    assert p.where == "aplications"
    assert p.line == 2
    assert "unknown key 'aplications'" in p.message
    assert "did you mean 'applications'" in p.message


def test_unknown_application_key_with_hint() -> None:
    text = doc("""
        applications:
          - name: wiki
            domain: wiki.example.com
            origin: http://10.0.0.5:8080
            polices: []
    """)
    p = one_problem(text)
    assert_problem(
        p,
        where=["application 'wiki'", "polices"],
        line=5,
        message=["unknown key 'polices'", "did you mean 'policies'"],
    )


def test_unknown_rule_key_with_hint() -> None:
    text = app_with("""
        - name: staff
          decision: allow
          include:
            - emial: [a@example.com]
    """)
    p = one_problem(text)
    assert_problem(
        p,
        where=["application 'wiki'", "policy 'staff'", "include[0].emial"],
        line=line_of(text, "emial"),
        message=["unknown key 'emial'", "did you mean 'email'"],
    )


def test_unknown_group_key_with_hint() -> None:
    text = doc("""
        groups:
          - name: Staff
            include: [{email_domain: example.com}]
            exclud: [{email: a@example.com}]
    """)
    p = one_problem(text)
    assert_problem(
        p,
        where=["group 'Staff'", "exclud"],
        line=4,
        message=["unknown key 'exclud'", "did you mean 'exclude'"],
    )


def test_unknown_identity_provider_key_with_hint() -> None:
    text = doc("""
        identity_providers:
          - name: okta
            type: oidc
            issuer: https://example.okta.com
            client_id: abc
            client_secert_env: OKTA_SECRET
    """)
    p = one_problem(text)
    assert_problem(
        p,
        where=["identity provider 'okta'", "client_secert_env"],
        line=6,
        message=["unknown key 'client_secert_env'", "did you mean 'client_secret_env'"],
    )


@pytest.mark.parametrize(
    ("rule", "key", "hint"),
    [("domain: example.com", "domain", "email_domain"), ("groups: [Staff]", "groups", "group")],
)
def test_unknown_rule_key_hint_names_a_selector(rule: str, key: str, hint: str) -> None:
    text = doc(f"""
        groups:
          - name: Staff
            include:
              - {rule}
    """)
    p = one_problem(text)
    assert p.where == f"group 'Staff' › include[0].{key}"
    assert f"unknown key '{key}'" in p.message
    assert f"did you mean '{hint}'?" in p.message


def test_unknown_key_is_never_suggested_as_itself() -> None:
    text = doc("""
        tunnels:
          - name: office
            origin: http://10.0.0.5:8080
    """)
    p = one_problem(text)
    assert p.where == "tunnel 'office' › origin"
    assert "unknown key 'origin'" in p.message
    assert "did you mean 'origin'" not in p.message


def test_unknown_key_without_close_match_has_no_hint() -> None:
    text = doc("""
        tunnels:
          - name: office
            zzzzqqq: 1
    """)
    p = one_problem(text)
    assert_problem(p, where=["tunnel 'office'", "zzzzqqq"], line=3, message=["unknown key"])
    assert "did you mean" not in p.message


# ================================================================ duplicate names

DUPLICATES = {
    "groups": (
        """
        groups:
          - name: Finance
            include: [{email: a@example.com}]
          - name: finance
            include: [{email: b@example.com}]
        """,
        "group 'finance'",
    ),
    "applications": (
        """
        applications:
          - name: wiki
            domain: wiki.example.com
            origin: http://10.0.0.5:8080
          - name: Wiki
            domain: wiki2.example.com
            origin: http://10.0.0.5:8080
        """,
        "application 'Wiki'",
    ),
    "identity_providers": (
        """
        identity_providers:
          - name: otp
            type: onetimepin
          - name: otp
            type: onetimepin
        """,
        "identity provider 'otp'",
    ),
    "tunnels": (
        """
        tunnels:
          - name: office
          - name: office
        """,
        "tunnel 'office'",
    ),
    "service_tokens": (
        """
        service_tokens:
          - name: ci-bot
          - name: ci-bot
        """,
        "service token 'ci-bot'",
    ),
}


@pytest.mark.parametrize("kind", sorted(DUPLICATES))
def test_duplicate_names(kind: str) -> None:
    body, who = DUPLICATES[kind]
    text = doc(body)
    p = one_problem(text)
    assert p.where == f"{who} › name"
    assert "duplicate name" in p.message
    assert "item 1" in p.message  # points at the first one
    second_name_line = [i + 1 for i, ln in enumerate(text.splitlines()) if "name:" in ln][1]
    assert p.line == second_name_line


def test_duplicate_policy_names_within_an_application() -> None:
    text = app_with("""
        - name: staff
          decision: allow
          include: [{email_domain: example.com}]
        - name: staff
          decision: block
          include: [{everyone: true}]
    """)
    p = one_problem(text)
    assert p.where == "application 'wiki' › policy 'staff' › name"
    assert "duplicate name 'staff'" in p.message
    assert p.line == line_of(text, "name: staff", 2)


def test_same_policy_name_in_two_applications_is_fine() -> None:
    text = doc("""
        applications:
          - name: a
            domain: a.example.com
            origin: http://10.0.0.5:8080
            policies: [{name: staff, decision: allow, include: [{everyone: true}]}]
          - name: b
            domain: b.example.com
            origin: http://10.0.0.5:8080
            policies: [{name: staff, decision: allow, include: [{everyone: true}]}]
    """)
    loaded = valid(text)
    assert [a.name for a in loaded.config.applications] == ["a", "b"]


def test_two_applications_with_the_same_domain() -> None:
    text = doc("""
        applications:
          - name: a
            domain: wiki.example.com/admin
            origin: http://10.0.0.5:8080
          - name: b
            domain: WIKI.example.com/admin/
            origin: http://10.0.0.5:8080
    """)
    p = one_problem(text)
    assert_problem(
        p,
        where=["application 'b'", "domain"],
        line=6,
        message=["already the domain of application 'a'"],
    )


# ================================================================ unknown references


def test_unknown_group_in_policy() -> None:
    text = app_with(
        """
        - name: staff
          decision: allow
          include:
            - group:
                - Finance
                - Financ
    """,
        groups="""
        - name: Finance
          include: [{email: a@example.com}]
    """,
    )
    p = one_problem(text)
    assert p.where == "application 'wiki' › policy 'staff' › include[0].group[1]"
    assert p.line == line_of(text, "- Financ", 2)
    assert "unknown group 'Financ'" in p.message
    assert "did you mean 'Finance'" in p.message


def test_unknown_group_in_group_require() -> None:
    text = doc("""
        groups:
          - name: Staff
            include: [{email_domain: example.com}]
            require:
              - group: [Ofice Networks]
          - name: Office Networks
            include: [{ip: 10.0.0.0/8}]
    """)
    p = one_problem(text)
    assert p.where == "group 'Staff' › require[0].group[0]"
    assert p.line == 5
    assert "unknown group 'Ofice Networks'" in p.message
    assert "did you mean 'Office Networks'" in p.message


def test_group_reference_is_case_sensitive() -> None:
    text = app_with(
        """
        - {name: p, decision: allow, include: [{group: [finance]}]}
    """,
        groups="""
        - {name: Finance, include: [{email: a@example.com}]}
    """,
    )
    p = one_problem(text)
    assert "unknown group 'finance'" in p.message
    assert "did you mean 'Finance'" in p.message


def test_unknown_login_method_in_policy() -> None:
    text = app_with("""
        - name: staff
          decision: allow
          include:
            - login_method: [okat]
    """)
    p = one_problem(text)
    assert p.where == "application 'wiki' › policy 'staff' › include[0].login_method[0]"
    assert p.line == line_of(text, "login_method")
    assert "unknown identity provider 'okat'" in p.message
    assert "did you mean 'okta'" in p.message


def test_unknown_login_method_in_group() -> None:
    text = HEAD + doc("""
        groups:
          - name: Staff
            include: [{email_domain: example.com}]
            exclude:
              - login_method: [github]
    """)
    p = one_problem(text)
    assert p.where == "group 'Staff' › exclude[0].login_method[0]"
    assert p.line == line_of(text, "login_method")
    assert "unknown identity provider 'github'" in p.message


def test_unknown_identity_provider_of_application() -> None:
    text = HEAD + doc("""
        applications:
          - name: wiki
            domain: wiki.example.com
            origin: http://10.0.0.5:8080
            identity_providers:
              - okta
              - tp
    """)
    p = one_problem(text)
    assert p.where.startswith("application 'wiki' › ")
    assert p.line == line_of(text, "- tp")
    assert "unknown identity provider 'tp'" in p.message
    assert "did you mean 'otp'" in p.message


def test_unknown_identity_provider_of_application_names_the_field() -> None:
    text = HEAD + doc("""
        applications:
          - name: wiki
            domain: wiki.example.com
            origin: http://10.0.0.5:8080
            identity_providers:
              - okta
              - tp
    """)
    p = one_problem(text)
    assert p.where == "application 'wiki' › identity_providers[1]"


def test_empty_identity_provider_list_of_application() -> None:
    text = HEAD + doc("""
        applications:
          - name: wiki
            domain: wiki.example.com
            origin: http://10.0.0.5:8080
            identity_providers: []
    """)
    p = one_problem(text)
    assert p.where == "application 'wiki' › identity_providers"
    assert "at least one identity provider" in p.message


def test_unknown_tunnel() -> None:
    text = HEAD + doc("""
        applications:
          - name: wiki
            domain: wiki.example.com
            tunnel: ofice
    """)
    p = one_problem(text)
    assert p.where == "application 'wiki' › tunnel"
    assert p.line == line_of(text, "tunnel: ofice")
    assert "unknown tunnel 'ofice'" in p.message
    assert "did you mean 'office'" in p.message


def test_unknown_service_token() -> None:
    text = app_with("""
        - name: bots
          decision: service_auth
          include:
            - service_token: [ci-bott]
    """)
    p = one_problem(text)
    assert p.where == "application 'wiki' › policy 'bots' › include[0].service_token[0]"
    assert p.line == line_of(text, "service_token: [ci-bott]")
    assert "unknown service token 'ci-bott'" in p.message
    assert "did you mean 'ci-bot'" in p.message


def test_unknown_admin_group() -> None:
    text = doc("""
        admins:
          - ops@example.com
          - group:Admins
    """)
    p = one_problem(text)
    assert p.where == "admins[1]"
    assert p.line == 3
    assert "unknown group 'Admins'" in p.message


# ================================================================ group cycles


def test_group_referring_to_itself() -> None:
    text = doc("""
        groups:
          - name: A
            include: [{email: a@example.com}]
            exclude: [{group: [A]}]
    """)
    p = one_problem(text)
    assert p.where == "group 'A'"
    assert p.line == 2
    assert "cycle" in p.message and "A → A" in p.message


def test_two_groups_referring_to_each_other() -> None:
    text = doc("""
        groups:
          - name: A
            include: [{group: [B]}]
          - name: B
            include: [{email: b@example.com}]
            require: [{group: [A]}]
    """)
    p = one_problem(text)
    assert p.where == "group 'A'"
    assert p.line == 2
    assert "A → B → A" in p.message


def test_cycle_through_three_groups() -> None:
    text = doc("""
        groups:
          - name: Start
            include: [{group: [A]}]
          - name: A
            include: [{group: [B]}]
          - name: B
            include: [{group: [C]}]
          - name: C
            include: [{email: c@example.com}]
            exclude: [{group: [A]}]
    """)
    p = one_problem(text)
    assert p.where == "group 'A'"
    assert p.line == 4
    assert "cycle" in p.message
    assert "A → B → C → A" in p.message
    assert "Start" not in p.message


def test_a_diamond_is_not_a_cycle() -> None:
    text = doc("""
        groups:
          - {name: Top, include: [{group: [L, R]}]}
          - {name: L, include: [{group: [Base]}]}
          - {name: R, include: [{group: [Base]}]}
          - {name: Base, include: [{email: a@example.com}]}
    """)
    assert len(valid(text).config.groups) == 4


# ================================================================ values


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("10.0.0.300", "is not an IP address or CIDR range"),
        ("not-an-ip", "is not an IP address or CIDR range"),
        ("10.0.0.0/33", "is not an IP address or CIDR range"),
        ("10.0.0.1/8", "has host bits set; did you mean 10.0.0.0/8?"),
        ("2001:db8::1/32", "has host bits set; did you mean 2001:db8::/32?"),
        ("2001:db8::g", "is not an IP address or CIDR range"),
    ],
)
def test_bad_ip_ranges(value: str, why: str) -> None:
    text = doc(f"""
        groups:
          - name: Nets
            include:
              - ip:
                  - 10.0.0.0/8
                  - "{value}"
    """)
    p = one_problem(text)
    assert p.where == "group 'Nets' › include[0].ip[1]"
    assert p.line == 6
    assert value in p.message
    assert why in p.message


def test_bad_ip_range_in_trusted_proxies() -> None:
    p = one_problem("trusted_proxies: [10.0.0.1/8]\n")
    assert p.where == "trusted_proxies[0]"
    assert p.line == 1
    assert "host bits set" in p.message


@pytest.mark.parametrize("value", ["UK", "Germany", "D", "XX", "123"])
def test_bad_country_codes(value: str) -> None:
    text = doc(f"""
        groups:
          - name: Here
            include:
              - country: [DE, "{value}"]
    """)
    p = one_problem(text)
    assert p.where == "group 'Here' › include[0].country[1]"
    assert p.line == 4
    assert "ISO 3166-1 alpha-2" in p.message
    assert value in p.message


def test_country_codes_are_upper_cased() -> None:
    loaded = valid("groups: [{name: Here, include: [{country: [de, Us]}]}]\n")
    assert loaded.config.groups[0].include[0].country == ["DE", "US"]


@pytest.mark.parametrize("value", ["not-an-email", "a@b", "@example.com", "a b@example.com"])
def test_bad_emails(value: str) -> None:
    text = doc(f"""
        groups:
          - name: G
            include:
              - email: ["{value}"]
    """)
    p = one_problem(text)
    assert p.where == "group 'G' › include[0].email[0]"
    assert p.line == 4
    assert "is not an email address" in p.message


def test_email_domain_with_at_sign() -> None:
    p = one_problem("groups: [{name: G, include: [{email_domain: ['@example.com']}]}]\n")
    assert p.where == "group 'G' › include[0].email_domain[0]"
    assert "without '@'" in p.message


# ================================================================ policies


def test_policy_without_include() -> None:
    text = app_with("""
        - name: office-only
          decision: allow
          require: [{ip: 10.0.0.0/8}]
    """)
    p = one_problem(text)
    assert p.where == "application 'wiki' › policy 'office-only'"
    assert p.line == line_of(text, "name: office-only")
    assert "at least one include" in p.message


def test_policy_with_empty_include() -> None:
    text = app_with("""
        - name: office
          decision: allow
          include: []
    """)
    p = one_problem(text)
    assert "policy 'office'" in p.where
    assert "at least one include" in p.message


def test_group_without_include() -> None:
    text = doc("""
        groups:
          - name: Lonely
            require: [{ip: 10.0.0.0/8}]
    """)
    p = one_problem(text)
    assert p.where == "group 'Lonely'"
    assert p.line == 2
    assert "at least one include" in p.message


def test_unknown_decision() -> None:
    text = app_with("""
        - name: p
          decision: permit
          include: [{everyone: true}]
    """)
    p = one_problem(text)
    assert p.where == "application 'wiki' › policy 'p' › decision"
    assert p.line == line_of(text, "decision: permit")
    assert "permit" in p.message
    for decision in ("allow", "block", "bypass", "service_auth"):
        assert decision in p.message


@pytest.mark.parametrize(
    ("rule", "selector"),
    [
        ("{email: [a@example.com]}", "email"),
        ("{email_domain: [example.com]}", "email_domain"),
        ("{login_method: [okta]}", "login_method"),
        ("{idp_group: [eng]}", "idp_group"),
        ("{auth_method: [mfa]}", "auth_method"),
        ("{service_token: [ci-bot]}", "service_token"),
        ("{any_service_token: true}", "any_service_token"),
    ],
)
def test_bypass_with_identity_selector(rule: str, selector: str) -> None:
    text = app_with(f"""
        - name: health
          decision: bypass
          include:
            - {rule}
    """)
    p = one_problem(text)
    assert p.where == f"application 'wiki' › policy 'health' › include[0].{selector}"
    assert p.line == line_of(text, rule)
    assert "bypass policy cannot use" in p.message
    assert repr(selector) in p.message


def test_bypass_with_identity_selector_in_require_and_exclude() -> None:
    text = app_with("""
        - name: health
          decision: bypass
          include:
            - ip: 10.0.0.0/8
          require:
            - auth_method: [mfa]
          exclude:
            - email: [a@example.com]
    """)
    found = problems(text)
    assert {p.where for p in found} == {
        "application 'wiki' › policy 'health' › require[0].auth_method",
        "application 'wiki' › policy 'health' › exclude[0].email",
    }
    by_where = {p.where: p for p in found}
    assert by_where["application 'wiki' › policy 'health' › require[0].auth_method"].line == (
        line_of(text, "auth_method")
    )
    assert by_where["application 'wiki' › policy 'health' › exclude[0].email"].line == (
        line_of(text, "- email:")
    )


def test_bypass_with_identity_selector_through_a_group() -> None:
    text = app_with(
        """
        - name: health
          decision: bypass
          include:
            - group: [Staff]
    """,
        groups="""
        - name: Staff
          include: [{email_domain: example.com}]
    """,
    )
    p = one_problem(text)
    assert p.where == "application 'wiki' › policy 'health' › include[0].group"
    assert p.line == line_of(text, "group: [Staff]")
    assert "bypass policy cannot use" in p.message
    assert "'email_domain'" in p.message
    assert "through group 'Staff'" in p.message


def test_bypass_with_identity_selector_through_nested_groups() -> None:
    text = app_with(
        """
        - name: health
          decision: bypass
          include:
            - group: [Outer]
    """,
        groups="""
        - name: Outer
          include: [{ip: 10.0.0.0/8}]
          exclude: [{group: [Inner]}]
        - name: Inner
          include: [{idp_group: [contractors]}]
    """,
    )
    p = one_problem(text)
    assert p.where == "application 'wiki' › policy 'health' › include[0].group"
    assert "'idp_group'" in p.message
    assert "through group 'Outer'" in p.message


def test_bypass_with_context_selectors_is_valid() -> None:
    text = app_with(
        """
        - name: health
          decision: bypass
          include: [{ip: 10.0.0.0/8}, {group: [Office]}, {everyone: true}]
          require: [{country: [DE]}]
          exclude: [{ip: 10.9.0.0/16}]
    """,
        groups="""
        - {name: Office, include: [{ip: 203.0.113.0/24}], require: [{country: DE}]}
    """,
    )
    policy = valid(text).config.applications[0].policies[0]
    assert policy.decision == "bypass"


@pytest.mark.parametrize(
    ("rule", "selector"),
    [
        ("{email: [a@example.com]}", "email"),
        ("{email_domain: [example.com]}", "email_domain"),
        ("{login_method: [okta]}", "login_method"),
        ("{idp_group: [eng]}", "idp_group"),
        ("{auth_method: [mfa]}", "auth_method"),
    ],
)
def test_service_auth_with_user_selector(rule: str, selector: str) -> None:
    text = app_with(f"""
        - name: bots
          decision: service_auth
          include:
            - {{service_token: [ci-bot]}}
          require:
            - {rule}
    """)
    p = one_problem(text)
    assert p.where == f"application 'wiki' › policy 'bots' › require[0].{selector}"
    assert p.line == line_of(text, rule)
    assert "service_auth policy cannot use the user selector" in p.message
    assert repr(selector) in p.message


def test_service_auth_with_user_selector_through_a_group() -> None:
    text = app_with(
        """
        - name: bots
          decision: service_auth
          include:
            - group: [Staff]
    """,
        groups="""
        - name: Staff
          include: [{email: a@example.com}]
    """,
    )
    p = one_problem(text)
    assert p.where == "application 'wiki' › policy 'bots' › include[0].group"
    assert "service_auth policy cannot use the user selector 'email'" in p.message
    assert "through group 'Staff'" in p.message


@pytest.mark.parametrize("decision", ["allow", "block"])
@pytest.mark.parametrize(
    ("rule", "selector"),
    [
        ("{service_token: [ci-bot]}", "service_token"),
        ("{any_service_token: true}", "any_service_token"),
    ],
)
def test_allow_and_block_with_service_token_directly(
    decision: str, rule: str, selector: str
) -> None:
    text = app_with(f"""
        - name: p
          decision: {decision}
          include:
            - {rule}
    """)
    p = one_problem(text)
    assert p.where == f"application 'wiki' › policy 'p' › include[0].{selector}"
    assert p.line == line_of(text, rule)
    assert "only matches in a service_auth policy" in p.message
    assert decision in p.message


def test_rule_with_two_selectors() -> None:
    text = app_with("""
        - name: p
          decision: allow
          include:
            - {email: [a@example.com], ip: [10.0.0.0/8]}
    """)
    p = one_problem(text)
    assert p.where == "application 'wiki' › policy 'p' › include[0]"
    assert p.line == line_of(text, "{email: [a@example.com], ip")
    assert "exactly one selector" in p.message
    assert "email, ip" in p.message


def test_rule_with_no_selector() -> None:
    text = app_with("""
        - name: p
          decision: allow
          include:
            - {}
    """)
    p = one_problem(text)
    assert p.where == "application 'wiki' › policy 'p' › include[0]"
    assert p.line == line_of(text, "- {}")
    assert "exactly one selector" in p.message


def test_rule_that_is_not_a_mapping() -> None:
    text = app_with("""
        - name: p
          decision: allow
          include:
            - email
    """)
    p = one_problem(text)
    assert "policy 'p'" in p.where and "include[0]" in p.where
    assert p.line == line_of(text, "- email")
    assert "mapping with one selector" in p.message


def test_everyone_false_is_rejected() -> None:
    text = app_with("""
        - {name: p, decision: allow, include: [{everyone: false}]}
    """)
    p = one_problem(text)
    assert "include[0].everyone" in p.where


def test_session_duration_on_bypass_is_rejected() -> None:
    text = app_with("""
        - name: p
          decision: bypass
          session_duration: 1h
          include: [{ip: 10.0.0.0/8}]
    """)
    p = one_problem(text)
    assert p.where == "application 'wiki' › policy 'p'"
    assert "session_duration has no meaning on a bypass policy" in p.message


# ================================================================ applications


@pytest.mark.parametrize(
    ("domain", "why"),
    [
        ("*.*.a.com", "wildcard must be the whole first label"),
        ("a.*.com", "wildcard must be the whole first label"),
        ("*a.com", "wildcard must be the whole first label"),
        ("*.com", "at least two labels"),
        ("*", "at least two labels"),
        ("wiki.example.com:8443", "a port is not part of an application domain"),
        ("wiki.example.com:8443/admin", "a port is not part of an application domain"),
        ("https://wiki.example.com", "without a scheme"),
        ("wiki.example.com/a*", "wildcards are only allowed"),
        ("wiki.example.com/a?b", "no query or fragment"),
        ("wiki.example.com/a%2Fb", "encoded slash"),
        ("wiki_1.example.com", "not a valid hostname"),
        ("-wiki.example.com", "not a valid hostname"),
    ],
)
def test_bad_application_domains(domain: str, why: str) -> None:
    text = doc(f"""
        applications:
          - name: wiki
            origin: http://10.0.0.5:8080
            domain: "{domain}"
    """)
    p = one_problem(text)
    assert p.where == "application 'wiki' › domain"
    assert p.line == 4
    assert why in p.message


def test_domain_is_normalised() -> None:
    loaded = valid(
        doc("""
        applications:
          - name: a
            domain: Wiki.Example.COM./Admin/./x/../
            origin: http://10.0.0.5:8080
          - name: b
            domain: "*.Dev.Example.com"
            origin: http://10.0.0.5:8080
          - name: c
            domain: wiki.example.com/%61pi
            origin: http://10.0.0.5:8080
    """)
    )
    a, b, c = loaded.config.applications
    assert a.domain == "wiki.example.com/admin"
    assert (a.host, a.path) == ("wiki.example.com", "/admin")
    assert (b.host, b.path) == ("*.dev.example.com", "")
    assert c.path == "/api"


def test_application_without_origin_or_tunnel() -> None:
    text = doc("""
        portal: auth.example.com
        applications:
          - name: wiki
            domain: wiki.example.com
    """)
    p = one_problem(text)
    assert p.where == "application 'wiki'"
    assert p.line == 3
    assert "no origin" in p.message
    assert "origin" in p.message and "tunnel" in p.message


def test_application_routed_by_a_tunnel_needs_no_origin() -> None:
    text = HEAD + doc("""
        applications:
          - name: intranet
            domain: intranet.example.com
            policies: [{name: all, decision: allow, include: [{everyone: true}]}]
    """)
    assert valid(text).config.applications[0].tunnel is None


def test_application_with_origin_and_tunnel() -> None:
    text = HEAD + doc("""
        applications:
          - name: wiki
            domain: wiki.example.com
            origin: http://10.0.0.5:8080
            tunnel: office
    """)
    p = one_problem(text)
    assert "application 'wiki'" in p.where
    assert p.line == line_of(text, "- name: wiki")
    assert "either origin or tunnel" in p.message


def test_application_with_origin_on_a_tunnel_routed_host() -> None:
    text = HEAD + doc("""
        applications:
          - name: intranet
            domain: intranet.example.com
            origin: http://10.0.0.5:8080
    """)
    p = one_problem(text)
    assert p.where == "application 'intranet' › origin"
    assert p.line == line_of(text, "origin: http://10.0.0.5:8080")
    assert "routed to tunnel 'office'" in p.message


@pytest.mark.parametrize(
    "origin", ["ftp://10.0.0.5", "10.0.0.5:8080", "http://10.0.0.5:99999", "http://x/?a=1"]
)
def test_bad_origin(origin: str) -> None:
    text = doc(f"""
        applications:
          - name: wiki
            domain: wiki.example.com
            origin: "{origin}"
    """)
    p = one_problem(text)
    assert p.where == "application 'wiki' › origin"
    assert p.line == 4
    assert origin in p.message


def test_two_tunnels_routing_the_same_host() -> None:
    text = doc("""
        tunnels:
          - name: office
            routes: [intranet.example.com]
          - name: lab
            routes:
              - lab.example.com
              - Intranet.Example.com
        applications:
          - name: intranet
            domain: intranet.example.com
            tunnel: office
          - name: lab
            domain: lab.example.com
            tunnel: lab
    """)
    found = problems(text)
    routes = [p for p in found if "routes" in p.where]
    assert len(routes) == 1, found
    p = routes[0]
    assert p.where == "tunnel 'lab' › routes[1]"
    assert p.line == 7
    assert "'intranet.example.com' is already routed to tunnel 'office'" in p.message


def test_application_tunnel_differs_from_route() -> None:
    text = doc("""
        tunnels:
          - {name: office, routes: [intranet.example.com]}
          - {name: lab}
        applications:
          - name: intranet
            domain: intranet.example.com
            tunnel: lab
    """)
    p = one_problem(text)
    assert p.where == "application 'intranet' › tunnel"
    assert p.line == 7
    assert "routed to tunnel 'office', not 'lab'" in p.message


# ================================================================ durations


@pytest.mark.parametrize("value", ["24 hours", "1 day", "forever", "0s", "-1h", "1y", "''", "h"])
def test_bad_durations(value: str) -> None:
    text = doc(f"""
        service_tokens:
          - name: ci-bot
            duration: {value}
        applications:
          - name: wiki
            domain: wiki.example.com
            origin: http://10.0.0.5:8080
            session_duration: 24h
    """)
    p = one_problem(text)
    assert p.where == "service token 'ci-bot' › duration"
    assert p.line == 3
    assert "duration" in p.message


@pytest.mark.parametrize("value", ["99999999999w", "9999999999999999d"])
def test_absurdly_long_duration_is_a_problem_not_a_crash(value: str) -> None:
    text = doc(f"""
        service_tokens:
          - name: ci-bot
            duration: {value}
    """)
    p = one_problem(text)
    assert p.where == "service token 'ci-bot' › duration"
    assert p.line == 3
    assert value in p.message


def test_bad_application_and_policy_session_durations() -> None:
    text = app_with("""
        - name: p
          decision: allow
          session_duration: 1 week
          include: [{everyone: true}]
    """).replace(
        "    origin: http://10.0.0.5:8080\n",
        "    origin: http://10.0.0.5:8080\n    session_duration: 10x\n",
    )
    found = problems(text)
    assert {p.where for p in found} == {
        "application 'wiki' › session_duration",
        "application 'wiki' › policy 'p' › session_duration",
    }
    for p in found:
        assert "is not a duration" in p.message
    lines = {p.where: p.line for p in found}
    assert lines["application 'wiki' › session_duration"] == line_of(text, "session_duration: 10x")
    assert lines["application 'wiki' › policy 'p' › session_duration"] == line_of(
        text, "session_duration: 1 week"
    )


@pytest.mark.parametrize("value", ["30m", "24h", "1h30m", "7d", "2w", "90s", "1.5h", "24H"])
def test_good_durations(value: str) -> None:
    loaded = valid(f"service_tokens: [{{name: ci-bot, duration: {value}}}]\n")
    assert loaded.config.service_tokens[0].duration == value.lower()


# ================================================================ document level


def test_duplicate_yaml_keys() -> None:
    text = doc("""
        portal: auth.example.com
        groups:
          - name: A
            include: [{everyone: true}]
        portal: other.example.com
    """)
    p = one_problem(text)
    assert p.line == 5
    assert "duplicate key" in p.message
    assert "portal" in p.message


def test_duplicate_keys_inside_an_object() -> None:
    text = doc("""
        groups:
          - name: A
            include: [{everyone: true}]
            name: B
    """)
    p = one_problem(text)
    assert p.line == 4
    assert "duplicate key" in p.message


def test_invalid_yaml_reports_the_line() -> None:
    text = doc("""
        portal: auth.example.com
        groups:
          - name: a
           x: y
        applications: []
    """)
    p = one_problem(text)
    assert p.line == 4
    assert p.message.startswith("invalid YAML")


def test_tab_indentation_reports_the_line() -> None:
    p = one_problem("portal: auth.example.com\ngroups:\n\t- name: a\n")
    assert p.line == 3
    assert "invalid YAML" in p.message


@pytest.mark.parametrize("text", ["- a\n- b\n", "hello\n", "42\n"])
def test_document_that_is_not_a_mapping(text: str) -> None:
    p = one_problem(text)
    assert p.line == 1
    assert "must be a mapping" in p.message


def test_validate_data_rejects_non_mapping_without_line() -> None:
    with pytest.raises(ConfigError) as info:
        validate_data(["a"])
    assert info.value.problems[0].line is None
    assert "must be a mapping" in info.value.problems[0].message


def test_every_problem_is_reported_at_once() -> None:
    text = doc("""
        groups:
          - name: A
            include: [{ip: [10.0.0.1/8]}]
          - name: B
            include: [{country: [UK]}]
        tunnels:
          - {name: t, colour: red}
    """)
    found = problems(text)
    assert [p.where for p in found] == [
        "group 'A' › include[0].ip[0]",
        "group 'B' › include[0].country[0]",
        "tunnel 't' › colour",
    ]
    assert [p.line for p in found] == [3, 5, 7]
    assert str(found[0]).startswith("x.yaml:3: group 'A' › include[0].ip[0]: ")


def test_config_error_message_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        load_text("aplications: []\ngroup: []\n", source=SOURCE)
    text = str(info.value)
    assert "x.yaml:1:" in text and "x.yaml:2:" in text


def test_validate_data_reports_cross_object_problems_without_lines() -> None:
    with pytest.raises(ConfigError) as info:
        validate_data(
            {
                "applications": [
                    {
                        "name": "wiki",
                        "domain": "wiki.example.com",
                        "origin": "http://10.0.0.5:8080",
                        "policies": [
                            {"name": "p", "decision": "allow", "include": [{"group": ["Nope"]}]}
                        ],
                    }
                ]
            }
        )
    (p,) = info.value.problems
    assert p.where == "application 'wiki' › policy 'p' › include[0].group[0]"
    assert p.line is None
    assert "unknown group 'Nope'" in p.message


# ================================================================ valid documents

# A full configuration with every kind of object, written as a user would (comments included);
# the group "Finance" is defined because its policies reference it (an unknown group is an error).
SPEC_EXAMPLE = """\
portal: auth.example.com          # host of the login portal (host:port allowed for local use)
listen:
  http: 0.0.0.0:443               # edge + portal
  tls: {cert: /etc/zerogate/edge.crt, key: /etc/zerogate/edge.key}   # omit for plain HTTP (local use)
  tunnel: 0.0.0.0:7844            # where connectors dial in, always TLS (a generated certificate when none is given)
storage: sqlite:///var/lib/zerogate/zerogate.db   # or postgresql://...
email:
  smtp: {host: smtp.example.com, port: 587, starttls: true, username: ..., password_env: SMTP_PASSWORD}
  from: "Access <noreply@example.com>"
admins: [ops@example.com]          # who may use the admin UI and API (emails or group:NAME)

identity_providers:
  - {name: okta, type: oidc, issuer: https://example.okta.com, client_id: abc, client_secret_env: OKTA_SECRET, groups_claim: groups}
  - {name: otp, type: onetimepin}

groups:
  - name: Third-Party Partners
    include: [{email: [alice@partner.test, bob@vendor.test]}]
  - name: Office Networks
    include: [{ip: [203.0.113.0/24, "2001:db8::/48"]}]
  - name: Finance                     # referenced by policy 'office only for finance'
    include: [{idp_group: [finance]}]

applications:
  - name: wiki
    domain: wiki.example.com            # or "wiki.example.com/admin", or "*.dev.example.com"
    origin: http://10.0.0.5:8080        # or  tunnel: office
    identity_providers: [okta, otp]     # login methods offered on this app's login page (default: all)
    session_duration: 24h
    policies:
      - name: staff and partners
        decision: allow
        include: [{email_domain: [example.com]}, {group: [Third-Party Partners]}]
      - name: office only for finance
        decision: allow
        include: [{group: [Finance]}]
        require: [{group: [Office Networks]}]
      - {name: health check, decision: bypass, include: [{ip: [10.0.0.0/8]}]}

tunnels:
  - {name: office, routes: [intranet.example.com]}
service_tokens:
  - {name: ci-bot, duration: 8760h}
"""


def test_spec_example_validates() -> None:
    loaded = valid(SPEC_EXAMPLE)
    cfg = loaded.config
    assert cfg.portal == "auth.example.com"
    assert cfg.listen.http == "0.0.0.0:443"
    assert cfg.listen.tls is not None and cfg.listen.tls.cert == "/etc/zerogate/edge.crt"
    assert cfg.email.from_ == "Access <noreply@example.com>"
    assert cfg.email.smtp is not None and cfg.email.smtp.starttls is True
    assert cfg.admins == ["ops@example.com"]
    assert [p.name for p in cfg.identity_providers] == ["okta", "otp"]
    assert [g.name for g in cfg.groups] == ["Third-Party Partners", "Office Networks", "Finance"]
    (wiki,) = cfg.applications
    assert [p.name for p in wiki.policies] == [
        "staff and partners",
        "office only for finance",
        "health check",
    ]
    assert wiki.identity_providers == ["okta", "otp"]
    assert cfg.tunnels[0].routes == ["intranet.example.com"]
    assert cfg.service_tokens[0].duration == "8760h"
    objects = cfg.objects()
    assert [a.name for a in objects.applications] == ["wiki"]
    # the tunnel route has no application yet: a warning, not an error
    assert any("intranet.example.com" in w.message for w in loaded.warnings)
    assert all(w.warning for w in loaded.warnings)


def test_spec_example_without_finance_names_the_missing_group() -> None:
    text = SPEC_EXAMPLE.replace(
        "  - name: Finance                     # referenced by policy 'office only for finance'\n"
        "    include: [{idp_group: [finance]}]\n",
        "",
    )
    p = one_problem(text)
    assert p.where == "application 'wiki' › policy 'office only for finance' › include[0].group[0]"
    assert p.line == line_of(text, "include: [{group: [Finance]}]")
    assert "unknown group 'Finance'" in p.message


def test_only_groups_and_applications_is_valid() -> None:
    loaded = valid(
        doc("""
        groups:
          - name: Staff
            include: [{email_domain: example.com}]
        applications:
          - name: wiki
            domain: wiki.example.com
            origin: http://127.0.0.1:9000
            policies:
              - {name: staff, decision: allow, include: [{group: [Staff]}]}
    """)
    )
    cfg = loaded.config
    assert loaded.warnings == []
    # defaults that suit a local trial
    assert cfg.listen.http == "127.0.0.1:8080"
    assert cfg.storage is None
    assert cfg.tunnels == [] and cfg.service_tokens == [] and cfg.identity_providers == []


def test_empty_document_is_valid() -> None:
    loaded = valid("")
    assert loaded.config.applications == []
    assert loaded.warnings == []


def test_scalars_are_accepted_where_lists_are_expected() -> None:
    loaded = valid(
        doc("""
        identity_providers: [{name: otp, type: onetimepin}]
        service_tokens: [{name: ci-bot}]
        groups:
          - name: G
            include:
              - email: a@example.com
              - email_domain: example.com
              - ip: 10.0.0.0/8
              - country: de
              - login_method: otp
              - idp_group: eng
              - auth_method: mfa
              - group: H
          - name: H
            include: [{ip: "2001:db8::/32"}]
        applications:
          - name: ci
            domain: ci.example.com
            origin: http://10.0.0.5:8080
            policies:
              - {name: bots, decision: service_auth, include: [{service_token: ci-bot}]}
    """)
    )
    rules = loaded.config.groups[0].include
    assert [r.values for r in rules] == [
        ["a@example.com"],
        ["example.com"],
        ["10.0.0.0/8"],
        ["DE"],
        ["otp"],
        ["eng"],
        ["mfa"],
        ["H"],
    ]
    assert loaded.config.applications[0].policies[0].include[0].values == ["ci-bot"]


def test_emails_domains_and_hosts_are_lower_cased() -> None:
    loaded = valid(
        doc("""
        admins: [Ops@Example.COM]
        groups:
          - name: G
            include:
              - email: [Alice@Partner.TEST]
              - email_domain: [Example.COM]
        tunnels:
          - {name: office, routes: [Intranet.Example.COM]}
        applications:
          - name: wiki
            domain: WIKI.Example.com
            origin: http://10.0.0.5:8080
          - name: intranet
            domain: INTRANET.example.com
    """)
    )
    cfg = loaded.config
    assert cfg.admins == ["ops@example.com"]
    assert cfg.groups[0].include[0].email == ["alice@partner.test"]
    assert cfg.groups[0].include[1].email_domain == ["example.com"]
    assert cfg.tunnels[0].routes == ["intranet.example.com"]
    assert [a.domain for a in cfg.applications] == ["wiki.example.com", "intranet.example.com"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("::ffff:192.168.1.1", "192.168.1.1/32"),
        ("10.0.0.5", "10.0.0.5/32"),
        ("2001:DB8::/32", "2001:db8::/32"),
        ("2001:db8::1", "2001:db8::1/128"),
        (" 10.0.0.0/8 ", "10.0.0.0/8"),
    ],
)
def test_ip_ranges_are_normalised(value: str, expected: str) -> None:
    loaded = valid(f'groups: [{{name: N, include: [{{ip: ["{value}"]}}]}}]\n')
    assert loaded.config.groups[0].include[0].ip == [expected]


def test_application_without_policies_is_a_warning() -> None:
    text = doc("""
        applications:
          - name: wiki
            domain: wiki.example.com
            origin: http://10.0.0.5:8080
          - name: other
            domain: other.example.com
            origin: http://10.0.0.5:8080
            policies: [{name: all, decision: allow, include: [{everyone: true}]}]
    """)
    loaded = valid(text)
    (w,) = loaded.warnings
    assert w.warning is True
    assert w.where == "application 'wiki'"
    assert w.line == 2
    assert w.source == SOURCE
    assert "no policies" in w.message


def test_tunnel_route_without_application_is_a_warning() -> None:
    loaded = valid("tunnels: [{name: office, routes: [intranet.example.com]}]\n")
    (w,) = loaded.warnings
    assert w.where == "tunnel 'office' › routes"
    assert "no application" in w.message


def test_warnings_do_not_hide_errors() -> None:
    text = doc("""
        applications:
          - name: wiki
            domain: wiki.example.com
          - name: other
            domain: other.example.com
            origin: http://10.0.0.5:8080
    """)
    found = problems(text)
    assert [p.where for p in found] == ["application 'wiki'"]


# ---------------------------------------------------------------- portal as a public URL (#15)


@pytest.mark.parametrize(
    ("given", "stored", "scheme", "address"),
    [
        ("auth.example.com", "auth.example.com", None, "auth.example.com"),
        ("Auth.Example.com:8443", "auth.example.com:8443", None, "auth.example.com:8443"),
        ("https://auth.example.com", "https://auth.example.com", "https", "auth.example.com"),
        ("HTTPS://Auth.example.com/", "https://auth.example.com", "https", "auth.example.com"),
        ("https://auth.example.com:443", "https://auth.example.com", "https", "auth.example.com"),
        (
            "https://auth.example.com:8443",
            "https://auth.example.com:8443",
            "https",
            "auth.example.com:8443",
        ),
        ("http://auth.localhost:80", "http://auth.localhost", "http", "auth.localhost"),
    ],
)
def test_portal_is_a_host_or_a_public_url(
    given: str, stored: str, scheme: str | None, address: str
) -> None:
    cfg = load_text(f'portal: "{given}"\n').config
    assert cfg.portal == stored
    assert (cfg.portal_scheme, cfg.portal_address) == (scheme, address)


@pytest.mark.parametrize(
    "given",
    [
        "ftp://auth.example.com",
        "https://",
        "https://auth.example.com/login",
        "https://auth.example.com?x=1",
        "https://user@auth.example.com",
        "https://auth.example.com:0",
        "https://auth.example.com:99999",
        "https://auth example.com",
        "https://auth.example.com#top",
        "https://auth.example.com\\\\evil.test",
    ],
)
def test_a_portal_url_with_anything_but_scheme_host_and_port_is_refused(given: str) -> None:
    assert one_problem(f'portal: "{given}"\n').where == "portal"


# -- listen.tls: certificate files or ACME ------------------------------------------------------


def test_listen_tls_acme_has_caddy_like_defaults() -> None:
    loaded = valid("listen: {tls: {acme: {email: Ops@Example.com}}}\n")
    tls = loaded.config.settings().listen.tls
    assert tls is not None and tls.acme is not None and tls.cert is None
    acme = tls.acme
    assert acme.email == "ops@example.com"
    assert acme.directory == "https://acme-v02.api.letsencrypt.org/directory"
    assert (acme.challenge, acme.http, acme.retry_after) == ("http-01", "0.0.0.0:80", "1m")


@pytest.mark.parametrize(
    ("tls", "says"),
    [
        ("{cert: a.pem, key: b.pem, acme: {email: a@b.c}}", "not both"),
        ("{cert: a.pem}", "give cert and key"),
        ("{}", "give cert and key"),
        ("{acme: {email: a@b.c, directory: 'http://ca.example/dir'}}", "https://"),
        ("{acme: {email: a@b.c, challenge: dns-01}}", "challenge"),
        ("{acme: {email: not-an-address}}", "email"),
    ],
)
def test_listen_tls_refuses_ambiguous_or_unsafe_settings(tls: str, says: str) -> None:
    found = problems(f"listen: {{tls: {tls}}}\n")
    assert any(says in str(p) for p in found), found
