"""The policy engine: routing, rule sets, policy order (semantics in ``zerogate.policy.engine``)."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from zerogate.model import ConfigError, load_text
from zerogate.policy import CompiledApp, Context, Identity, Snapshot, Verdict, compile_snapshot

HEAD = """\
identity_providers:
  - {name: okta, type: oidc, issuer: https://example.okta.com, client_id: abc}
  - {name: otp, type: onetimepin}
service_tokens:
  - {name: ci-bot}
  - {name: deploy}
"""


def snapshot(text: str) -> Snapshot:
    loaded = load_text(HEAD + textwrap.dedent(text).lstrip("\n"), source="t.yaml")
    return compile_snapshot(loaded.config.objects())


def one_app(policies: str, groups: str = "") -> tuple[Snapshot, CompiledApp]:
    """A snapshot with the application ``app`` on ``app.example.com`` holding ``policies``."""
    text = ""
    if groups:
        text += "groups:\n" + textwrap.indent(textwrap.dedent(groups).strip("\n"), "  ") + "\n"
    text += (
        "applications:\n"
        "  - name: app\n"
        "    domain: app.example.com\n"
        "    origin: http://10.0.0.5:8080\n"
        "    policies:\n" + textwrap.indent(textwrap.dedent(policies).strip("\n"), "      ") + "\n"
    )
    snap = snapshot(text)
    return snap, snap.apps["app"]


def user(email: str = "alice@example.com", **kwargs: Any) -> Identity:
    return Identity.of(email, **kwargs)


def outcome(
    snap: Snapshot, app: CompiledApp, identity: Identity | None, **ctx: Any
) -> tuple[str, str | None]:
    """(decision, policy) from decide(), checked against explain() on the way."""
    verdict = snap.decide(app, identity, Context(**ctx))
    explained = snap.explain(app, identity, Context(**ctx))
    assert (explained.decision, explained.policy) == (verdict.decision, verdict.policy)
    assert verdict.application is app
    return verdict.decision, verdict.policy


# ================================================================ rule sets


def test_deny_by_default() -> None:
    snap, app = one_app("""
        - {name: staff, decision: allow, include: [{email_domain: example.com}]}
    """)
    assert outcome(snap, app, user("mallory@evil.test")) == ("block", None)
    verdict = snap.decide(app, user("mallory@evil.test"), Context())
    assert "deny by default" in verdict.reason
    assert outcome(snap, app, user("alice@example.com")) == ("allow", "staff")


def test_include_is_or() -> None:
    snap, app = one_app("""
        - name: p
          decision: allow
          include:
            - email: [alice@partner.test, bob@vendor.test]
            - email_domain: example.com
    """)
    assert outcome(snap, app, user("alice@partner.test")) == ("allow", "p")
    assert outcome(snap, app, user("bob@vendor.test")) == ("allow", "p")
    assert outcome(snap, app, user("zed@example.com")) == ("allow", "p")
    assert outcome(snap, app, user("carol@partner.test")) == ("block", None)


def test_require_is_and() -> None:
    snap, app = one_app("""
        - name: p
          decision: allow
          include: [{email_domain: example.com}]
          require:
            - ip: 10.0.0.0/8
            - country: DE
    """)
    assert outcome(snap, app, user(), ip="10.1.2.3", country="DE") == ("allow", "p")
    assert outcome(snap, app, user(), ip="10.1.2.3", country="FR") == ("block", None)
    assert outcome(snap, app, user(), ip="192.0.2.1", country="DE") == ("block", None)
    assert outcome(snap, app, user(), country="DE") == ("block", None)  # no address known
    assert outcome(snap, app, user("x@other.test"), ip="10.1.2.3", country="DE") == (
        "block",
        None,
    )


def test_require_with_several_ip_ranges_needs_all_of_them() -> None:
    snap, app = one_app("""
        - name: p
          decision: allow
          include: [{everyone: true}]
          require:
            - ip: [10.0.0.0/8, 10.1.0.0/16]
    """)
    assert outcome(snap, app, user(), ip="10.1.2.3") == ("allow", "p")  # in both
    assert outcome(snap, app, user(), ip="10.2.0.1") == ("block", None)  # only in /8


def test_require_any_of_several_networks_through_a_group() -> None:
    snap, app = one_app(
        """
        - name: p
          decision: allow
          include: [{everyone: true}]
          require: [{group: [Office Networks]}]
    """,
        groups="""
        - name: Office Networks
          include: [{ip: [10.0.0.0/8, 192.168.0.0/16]}]
    """,
    )
    assert outcome(snap, app, user(), ip="10.9.9.9") == ("allow", "p")
    assert outcome(snap, app, user(), ip="192.168.3.3") == ("allow", "p")
    assert outcome(snap, app, user(), ip="172.16.0.1") == ("block", None)


def test_require_with_several_idp_groups_needs_all_of_them() -> None:
    snap, app = one_app("""
        - name: p
          decision: allow
          include: [{everyone: true}]
          require: [{idp_group: [eng, oncall]}]
    """)
    assert outcome(snap, app, user(idp_groups=["eng", "oncall", "x"])) == ("allow", "p")
    assert outcome(snap, app, user(idp_groups=["eng"])) == ("block", None)
    assert outcome(snap, app, user(idp_groups=["oncall"])) == ("block", None)


def test_include_with_several_idp_groups_needs_any() -> None:
    snap, app = one_app("""
        - {name: p, decision: allow, include: [{idp_group: [eng, oncall]}]}
    """)
    assert outcome(snap, app, user(idp_groups=["oncall"])) == ("allow", "p")
    assert outcome(snap, app, user(idp_groups=["sales"])) == ("block", None)
    assert outcome(snap, app, user()) == ("block", None)


def test_require_with_several_emails_never_matches() -> None:
    snap, app = one_app("""
        - name: p
          decision: allow
          include: [{everyone: true}]
          require: [{email: [alice@example.com, bob@example.com]}]
    """)
    assert outcome(snap, app, user("alice@example.com")) == ("block", None)
    assert outcome(snap, app, user("bob@example.com")) == ("block", None)


def test_require_with_a_repeated_value_is_one_value() -> None:
    snap, app = one_app("""
        - name: p
          decision: allow
          include: [{everyone: true}]
          require: [{email: [alice@example.com, Alice@Example.com]}]
    """)
    assert outcome(snap, app, user("alice@example.com")) == ("allow", "p")


def test_require_with_several_groups_needs_all_of_them() -> None:
    snap, app = one_app(
        """
        - name: p
          decision: allow
          include: [{everyone: true}]
          require: [{group: [Staff, Office]}]
    """,
        groups="""
        - {name: Staff, include: [{email_domain: example.com}]}
        - {name: Office, include: [{ip: 10.0.0.0/8}]}
    """,
    )
    assert outcome(snap, app, user(), ip="10.0.0.1") == ("allow", "p")
    assert outcome(snap, app, user(), ip="8.8.8.8") == ("block", None)
    assert outcome(snap, app, user("x@other.test"), ip="10.0.0.1") == ("block", None)


def test_exclude_is_not() -> None:
    snap, app = one_app("""
        - name: p
          decision: allow
          include: [{email_domain: example.com}]
          exclude:
            - email: [bob@example.com, carol@example.com]
            - ip: 10.66.0.0/16
    """)
    assert outcome(snap, app, user("alice@example.com")) == ("allow", "p")
    assert outcome(snap, app, user("bob@example.com")) == ("block", None)
    assert outcome(snap, app, user("carol@example.com")) == ("block", None)  # any value excludes
    assert outcome(snap, app, user("alice@example.com"), ip="10.66.1.1") == ("block", None)
    assert outcome(snap, app, user("alice@example.com"), ip="10.67.1.1") == ("allow", "p")


def test_everyone() -> None:
    snap, app = one_app("""
        - {name: p, decision: allow, include: [{everyone: true}]}
    """)
    assert outcome(snap, app, user("anyone@anywhere.test")) == ("allow", "p")


# ================================================================ policy order


def test_first_match_wins_in_list_order() -> None:
    snap, app = one_app("""
        - {name: first, decision: allow, include: [{email_domain: example.com}]}
        - {name: second, decision: allow, include: [{everyone: true}]}
    """)
    assert outcome(snap, app, user("alice@example.com")) == ("allow", "first")
    assert outcome(snap, app, user("x@other.test")) == ("allow", "second")


def test_block_before_allow_when_listed_first() -> None:
    snap, app = one_app("""
        - {name: no contractors, decision: block, include: [{idp_group: contractors}]}
        - {name: staff, decision: allow, include: [{email_domain: example.com}]}
    """)
    assert outcome(snap, app, user(idp_groups=["contractors"])) == ("block", "no contractors")
    assert outcome(snap, app, user()) == ("allow", "staff")


def test_allow_before_block_when_listed_first() -> None:
    snap, app = one_app("""
        - {name: staff, decision: allow, include: [{email_domain: example.com}]}
        - {name: no contractors, decision: block, include: [{idp_group: contractors}]}
    """)
    assert outcome(snap, app, user(idp_groups=["contractors"])) == ("allow", "staff")
    assert outcome(snap, app, user("x@other.test", idp_groups=["contractors"])) == (
        "block",
        "no contractors",
    )


def test_bypass_runs_before_allow_and_block_whatever_its_position() -> None:
    snap, app = one_app("""
        - {name: block all, decision: block, include: [{everyone: true}]}
        - {name: staff, decision: allow, include: [{email_domain: example.com}]}
        - {name: health, decision: bypass, include: [{ip: 10.0.0.0/8}]}
    """)
    assert outcome(snap, app, user(), ip="10.1.1.1") == ("bypass", "health")
    assert outcome(snap, app, None, ip="10.1.1.1") == ("bypass", "health")
    assert outcome(snap, app, user(), ip="192.0.2.1") == ("block", "block all")
    assert outcome(snap, app, None, ip="192.0.2.1") == ("authenticate", None)


def test_service_auth_runs_before_allow_and_block_whatever_its_position() -> None:
    snap, app = one_app("""
        - {name: block all, decision: block, include: [{everyone: true}]}
        - {name: bots, decision: service_auth, include: [{service_token: ci-bot}]}
    """)
    assert outcome(snap, app, None, service_token="ci-bot") == ("allow", "bots")
    # a token and a session at once: the token is checked first
    assert outcome(snap, app, user(), service_token="ci-bot") == ("allow", "bots")
    assert outcome(snap, app, user()) == ("block", "block all")


def test_pre_policies_keep_their_listed_order() -> None:
    snap, app = one_app("""
        - {name: bots, decision: service_auth, include: [{any_service_token: true}]}
        - {name: health, decision: bypass, include: [{ip: 10.0.0.0/8}]}
        - {name: staff, decision: allow, include: [{email_domain: example.com}]}
    """)
    assert outcome(snap, app, None, ip="10.0.0.1", service_token="ci-bot") == ("allow", "bots")
    assert outcome(snap, app, None, ip="10.0.0.1") == ("bypass", "health")
    snap2, app2 = one_app("""
        - {name: health, decision: bypass, include: [{ip: 10.0.0.0/8}]}
        - {name: bots, decision: service_auth, include: [{any_service_token: true}]}
    """)
    assert outcome(snap2, app2, None, ip="10.0.0.1", service_token="ci-bot") == (
        "bypass",
        "health",
    )


# ================================================================ bypass


def test_bypass_by_ip_with_and_without_identity() -> None:
    snap, app = one_app("""
        - {name: staff, decision: allow, include: [{email_domain: example.com}]}
        - {name: health check, decision: bypass, include: [{ip: [10.0.0.0/8]}]}
    """)
    for identity in (None, user(), user("mallory@evil.test")):
        verdict = snap.decide(app, identity, Context(ip="10.0.0.9"))
        assert (verdict.decision, verdict.policy) == ("bypass", "health check")
    assert outcome(snap, app, user("mallory@evil.test"), ip="192.0.2.1") == ("block", None)


def test_bypass_with_country_and_group() -> None:
    snap, app = one_app(
        """
        - name: open
          decision: bypass
          include: [{group: [Office]}]
          require: [{country: DE}]
          exclude: [{ip: 10.9.0.0/16}]
    """,
        groups="""
        - {name: Office, include: [{ip: 10.0.0.0/8}]}
    """,
    )
    assert outcome(snap, app, None, ip="10.1.0.1", country="DE") == ("bypass", "open")
    assert outcome(snap, app, None, ip="10.1.0.1", country="FR") == ("block", None)
    assert outcome(snap, app, None, ip="10.9.0.1", country="DE") == ("block", None)


# ================================================================ service tokens


def test_service_auth_needs_a_token() -> None:
    snap, app = one_app("""
        - {name: bots, decision: service_auth, include: [{everyone: true}]}
        - {name: staff, decision: allow, include: [{email_domain: example.com}]}
    """)
    # everyone would match, but a user session never satisfies service_auth
    assert outcome(snap, app, user("mallory@evil.test")) == ("block", None)
    assert outcome(snap, app, user()) == ("allow", "staff")
    assert outcome(snap, app, None) == ("authenticate", None)
    assert outcome(snap, app, None, service_token="deploy") == ("allow", "bots")


def test_service_token_is_checked_by_name() -> None:
    snap, app = one_app("""
        - {name: bots, decision: service_auth, include: [{service_token: [ci-bot]}]}
        - {name: staff, decision: allow, include: [{email_domain: example.com}]}
    """)
    assert outcome(snap, app, None, service_token="ci-bot") == ("allow", "bots")
    assert outcome(snap, app, None, service_token="deploy") == ("block", None)
    assert outcome(snap, app, None) == ("authenticate", None)


def test_any_service_token() -> None:
    snap, app = one_app("""
        - name: bots
          decision: service_auth
          include: [{any_service_token: true}]
          require: [{ip: 10.0.0.0/8}]
    """)
    assert outcome(snap, app, None, service_token="ci-bot", ip="10.0.0.1") == ("allow", "bots")
    assert outcome(snap, app, None, service_token="deploy", ip="10.0.0.1") == ("allow", "bots")
    assert outcome(snap, app, None, service_token="deploy", ip="8.8.8.8") == ("block", None)
    assert outcome(snap, app, None, ip="10.0.0.1") == ("block", None)  # no allow policy


def test_a_token_never_matches_allow_policies() -> None:
    snap, app = one_app(
        """
        - {name: everyone, decision: allow, include: [{everyone: true}]}
        - {name: via group, decision: allow, include: [{group: [Bots]}]}
    """,
        groups="""
        - {name: Bots, include: [{any_service_token: true}]}
    """,
    )
    assert outcome(snap, app, None, service_token="ci-bot") == ("block", None)
    assert outcome(snap, app, None) == ("authenticate", None)
    assert outcome(snap, app, user()) == ("allow", "everyone")


def test_a_token_in_an_allow_policy_through_a_group_never_matches_a_user() -> None:
    snap, app = one_app(
        """
        - {name: via group, decision: allow, include: [{group: [Bots]}]}
    """,
        groups="""
        - {name: Bots, include: [{any_service_token: true}]}
    """,
    )
    assert outcome(snap, app, user(), service_token="ci-bot") == ("block", None)


# ================================================================ no identity


def test_no_identity_needs_login_when_an_allow_policy_exists() -> None:
    snap, app = one_app("""
        - {name: nope, decision: block, include: [{everyone: true}]}
        - {name: staff, decision: allow, include: [{email_domain: example.com}]}
    """)
    assert outcome(snap, app, None) == ("authenticate", None)


def test_no_identity_is_blocked_when_no_allow_policy_exists() -> None:
    snap, app = one_app("""
        - {name: nope, decision: block, include: [{everyone: true}]}
        - {name: health, decision: bypass, include: [{ip: 10.0.0.0/8}]}
        - {name: bots, decision: service_auth, include: [{any_service_token: true}]}
    """)
    assert outcome(snap, app, None, ip="192.0.2.1") == ("block", None)


def test_application_without_policies_blocks_everything() -> None:
    snap = snapshot("""
        applications:
          - {name: app, domain: app.example.com, origin: http://10.0.0.5:8080}
    """)
    app = snap.apps["app"]
    assert outcome(snap, app, None) == ("block", None)
    assert outcome(snap, app, user()) == ("block", None)
    assert outcome(snap, app, None, service_token="ci-bot") == ("block", None)


# ================================================================ groups


def test_nested_groups_with_their_own_include_require_exclude() -> None:
    snap, app = one_app(
        """
        - {name: p, decision: allow, include: [{group: [Engineering]}]}
    """,
        groups="""
        - name: Engineering
          include: [{group: [Staff]}, {email: [contractor@partner.test]}]
          require: [{idp_group: eng}]
          exclude: [{group: [Suspended]}]
        - name: Staff
          include: [{email_domain: example.com}]
          require: [{auth_method: mfa}]
          exclude: [{email: intern@example.com}]
        - name: Suspended
          include: [{email: [bob@example.com]}]
    """,
    )
    eng = ["eng"]
    mfa = ["mfa"]
    assert outcome(snap, app, user("alice@example.com", idp_groups=eng, amr=mfa)) == ("allow", "p")
    # Staff requires mfa
    assert outcome(snap, app, user("alice@example.com", idp_groups=eng)) == ("block", None)
    # Engineering requires eng
    assert outcome(snap, app, user("alice@example.com", amr=mfa)) == ("block", None)
    # Staff excludes the intern
    assert outcome(snap, app, user("intern@example.com", idp_groups=eng, amr=mfa)) == (
        "block",
        None,
    )
    # Engineering excludes Suspended
    assert outcome(snap, app, user("bob@example.com", idp_groups=eng, amr=mfa)) == ("block", None)
    # the contractor is included by Engineering directly (Staff's mfa need does not apply)
    assert outcome(snap, app, user("contractor@partner.test", idp_groups=eng)) == ("allow", "p")


def test_group_used_in_exclude() -> None:
    snap, app = one_app(
        """
        - name: p
          decision: allow
          include: [{email_domain: example.com}]
          exclude: [{group: [Contractors]}]
    """,
        groups="""
        - {name: Contractors, include: [{idp_group: contractors}], exclude: [{auth_method: hwk}]}
    """,
    )
    assert outcome(snap, app, user(idp_groups=["contractors"])) == ("block", None)
    # the group itself does not match a contractor with a hardware key
    assert outcome(snap, app, user(idp_groups=["contractors"], amr=["hwk"])) == ("allow", "p")


def test_group_is_evaluated_against_the_current_identity() -> None:
    # no caching across decisions: each decide() sees the identity it is given
    snap, app = one_app(
        """
        - {name: p, decision: allow, include: [{group: [G]}]}
    """,
        groups="""
        - {name: G, include: [{email: alice@example.com}]}
    """,
    )
    assert outcome(snap, app, user("alice@example.com")) == ("allow", "p")
    assert outcome(snap, app, user("bob@example.com")) == ("block", None)
    assert outcome(snap, app, user("alice@example.com")) == ("allow", "p")


def test_same_group_in_include_and_exclude() -> None:
    snap, app = one_app(
        """
        - name: p
          decision: allow
          include: [{group: [G]}]
          exclude: [{group: [G]}]
    """,
        groups="""
        - {name: G, include: [{everyone: true}]}
    """,
    )
    assert outcome(snap, app, user()) == ("block", None)


# ================================================================ selectors


def test_email_is_case_insensitive_and_exact() -> None:
    snap, app = one_app("""
        - {name: p, decision: allow, include: [{email: [Alice@Example.COM]}]}
    """)
    assert outcome(snap, app, user("alice@example.com")) == ("allow", "p")
    assert outcome(snap, app, user("ALICE@EXAMPLE.COM")) == ("allow", "p")
    assert outcome(snap, app, user(" Alice@example.com ")) == ("allow", "p")
    assert outcome(snap, app, user("alice@example.com.evil.test")) == ("block", None)
    assert outcome(snap, app, user("malice@example.com")) == ("block", None)
    assert outcome(snap, app, user("alice@sub.example.com")) == ("block", None)


def test_email_domain_is_exact_and_case_insensitive() -> None:
    snap, app = one_app("""
        - {name: p, decision: allow, include: [{email_domain: [Example.COM]}]}
    """)
    assert outcome(snap, app, user("a@example.com")) == ("allow", "p")
    assert outcome(snap, app, user("A@EXAMPLE.COM")) == ("allow", "p")
    assert outcome(snap, app, user("a@evil-example.com")) == ("block", None)
    assert outcome(snap, app, user("a@sub.example.com")) == ("block", None)
    assert outcome(snap, app, user("a@example.com.evil.test")) == ("block", None)
    assert outcome(snap, app, user("a@example.co")) == ("block", None)


def test_email_domain_is_the_part_after_the_last_at() -> None:
    snap, app = one_app("""
        - {name: p, decision: allow, include: [{email_domain: [example.com]}]}
    """)
    assert outcome(snap, app, user('"x@example.com"@evil.test')) == ("block", None)
    assert outcome(snap, app, user("x@evil.test@example.com")) == ("allow", "p")


@pytest.mark.parametrize("email", ["example.com", "Example.COM"])
def test_email_domain_needs_an_at_sign(email: str) -> None:
    snap, app = one_app("""
        - {name: p, decision: allow, include: [{email_domain: [example.com]}]}
    """)
    assert outcome(snap, app, user(email)) == ("block", None)


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        ("10.1.2.3", "v4"),
        ("192.0.2.1", None),
        ("2001:db8:1::5", "v6"),
        ("2001:db9::1", None),
        ("::ffff:10.1.2.3", "v4"),  # IPv4-mapped IPv6 is the IPv4 address
        ("::FFFF:10.1.2.3", "v4"),
        ("::ffff:192.0.2.1", None),
        ("[2001:db8:1::5]", "v6"),
        ("not-an-ip", None),
        ("10.1.2.3:443", None),
        ("", None),
    ],
)
def test_ip_selector_with_v4_v6_and_mapped_clients(client: str, expected: str | None) -> None:
    snap, app = one_app("""
        - {name: v4, decision: allow, include: [{ip: [10.0.0.0/8]}]}
        - {name: v6, decision: allow, include: [{ip: ["2001:db8::/32"]}]}
    """)
    decision, policy = outcome(snap, app, user(), ip=client)
    assert policy == expected
    assert decision == ("allow" if expected else "block")


def test_mapped_range_in_config_matches_plain_and_mapped_clients() -> None:
    snap, app = one_app("""
        - {name: p, decision: allow, include: [{ip: ["::ffff:10.0.0.0/104"]}]}
    """)
    assert outcome(snap, app, user(), ip="10.200.0.1") == ("allow", "p")
    assert outcome(snap, app, user(), ip="::ffff:10.200.0.1") == ("allow", "p")
    assert outcome(snap, app, user(), ip="11.0.0.1") == ("block", None)


def test_ip_single_address_and_whole_internet() -> None:
    snap, app = one_app("""
        - {name: one, decision: allow, include: [{ip: 203.0.113.7}]}
        - {name: any v6, decision: allow, include: [{ip: "::/0"}]}
        - {name: any v4, decision: allow, include: [{ip: 0.0.0.0/0}]}
    """)
    assert outcome(snap, app, user(), ip="203.0.113.7") == ("allow", "one")
    assert outcome(snap, app, user(), ip="203.0.113.8") == ("allow", "any v4")
    assert outcome(snap, app, user(), ip="2001:db8::1") == ("allow", "any v6")
    assert outcome(snap, app, user()) == ("block", None)


def test_ip_in_exclude_with_v6_client() -> None:
    snap, app = one_app("""
        - name: p
          decision: allow
          include: [{everyone: true}]
          exclude: [{ip: ["2001:db8:bad::/48", 10.66.0.0/16]}]
    """)
    assert outcome(snap, app, user(), ip="2001:db8:bad::1") == ("block", None)
    assert outcome(snap, app, user(), ip="::ffff:10.66.0.1") == ("block", None)
    assert outcome(snap, app, user(), ip="2001:db8:good::1") == ("allow", "p")


def test_country_selector() -> None:
    snap, app = one_app("""
        - {name: eu, decision: allow, include: [{country: [DE, FR]}]}
    """)
    assert outcome(snap, app, user(), country="DE") == ("allow", "eu")
    assert outcome(snap, app, user(), country="fr") == ("allow", "eu")
    assert outcome(snap, app, user(), country="US") == ("block", None)
    assert outcome(snap, app, user()) == ("block", None)


def test_country_comes_from_the_context_not_from_the_address() -> None:
    # no GeoIP database involved: the engine trusts Context.country and never looks the
    # address up itself
    snap, app = one_app("""
        - {name: de, decision: allow, include: [{country: DE}]}
    """)
    assert outcome(snap, app, user(), ip="8.8.8.8", country="DE") == ("allow", "de")
    assert outcome(snap, app, user(), ip="8.8.8.8", country=None) == ("block", None)
    assert outcome(snap, app, user(), ip="81.2.69.160", country="US") == ("block", None)


def test_login_method_selector() -> None:
    snap, app = one_app("""
        - {name: sso, decision: allow, include: [{login_method: okta}]}
    """)
    assert outcome(snap, app, user(idp="okta")) == ("allow", "sso")
    assert outcome(snap, app, user(idp="otp")) == ("block", None)
    assert outcome(snap, app, user()) == ("block", None)


def test_idp_group_selector() -> None:
    snap, app = one_app("""
        - {name: eng, decision: allow, include: [{idp_group: [engineering]}]}
    """)
    assert outcome(snap, app, user(idp_groups=["sales", "engineering"])) == ("allow", "eng")
    assert outcome(snap, app, user(idp_groups=["sales"])) == ("block", None)
    assert outcome(snap, app, user()) == ("block", None)


def test_auth_method_selector() -> None:
    snap, app = one_app("""
        - name: strong
          decision: allow
          include: [{email_domain: example.com}]
          require: [{auth_method: mfa}]
    """)
    assert outcome(snap, app, user(amr=["pwd", "mfa"])) == ("allow", "strong")
    assert outcome(snap, app, user(amr=["pwd"])) == ("block", None)
    assert outcome(snap, app, user()) == ("block", None)


def test_identity_selectors_ignore_the_token_and_context() -> None:
    snap, app = one_app("""
        - {name: p, decision: allow, include: [{email: alice@example.com}]}
    """)
    assert outcome(snap, app, user(), ip="8.8.8.8", country="US", service_token="ci-bot") == (
        "allow",
        "p",
    )


# ================================================================ routing

ROUTING = """
applications:
  - {name: root, domain: wiki.example.com, origin: http://10.0.0.5:8080,
     policies: [{name: everyone, decision: allow, include: [{everyone: true}]}]}
  - {name: admin, domain: wiki.example.com/admin, origin: http://10.0.0.5:8080,
     policies: [{name: admins, decision: allow, include: [{email: [root@example.com]}]}]}
  - {name: admin api, domain: wiki.example.com/admin/api, origin: http://10.0.0.5:8080,
     policies: [{name: bots, decision: service_auth, include: [{any_service_token: true}]}]}
  - {name: dev, domain: "*.dev.example.com", origin: http://10.0.0.6:8080,
     policies: [{name: staff, decision: allow, include: [{email_domain: example.com}]}]}
  - {name: dev docs, domain: "*.dev.example.com/docs", origin: http://10.0.0.6:8080,
     policies: [{name: open, decision: bypass, include: [{everyone: true}]}]}
  - {name: special, domain: special.dev.example.com/private, origin: http://10.0.0.7:8080,
     policies: [{name: nobody, decision: block, include: [{everyone: true}]}]}
  - {name: literal, domain: 192.0.2.10, origin: http://10.0.0.7:8080,
     policies: [{name: everyone, decision: allow, include: [{everyone: true}]}]}
"""


@pytest.fixture(scope="module")
def routing() -> Snapshot:
    return snapshot(ROUTING)


def routed(snap: Snapshot, host: str, path: str = "/") -> str | None:
    app = snap.route(host, path)
    return app.name if app else None


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", "root"),
        ("/wiki/page", "root"),
        ("/admin", "admin"),
        ("/admin/", "admin"),
        ("/admin/users", "admin"),
        ("/administrator", "root"),
        ("/admin-x", "root"),
        ("/admin/api", "admin api"),
        ("/admin/api/v1", "admin api"),
        ("/admin/apis", "admin"),
    ],
)
def test_longest_path_prefix_wins(routing: Snapshot, path: str, expected: str) -> None:
    assert routed(routing, "wiki.example.com", path) == expected


@pytest.mark.parametrize(
    "path", ["/%61dmin", "/%61%64%6D%69%6E/x", "/ADMIN", "/Admin/", "/admin;x", "/admin."]
)
def test_path_tricks_route_to_the_path_scoped_app(routing: Snapshot, path: str) -> None:
    assert routed(routing, "wiki.example.com", path) == "admin"
    verdict = routing.check("wiki.example.com", path, user("mallory@evil.test"), Context())
    assert verdict.application is not None and verdict.application.name == "admin"
    assert verdict.decision == "block"


@pytest.mark.parametrize("path", ["/x/../admin", "//admin", "/./admin", "/admin/../x"])
def test_paths_origins_read_differently_are_refused(routing: Snapshot, path: str) -> None:
    verdict = routing.check("wiki.example.com", path, user("ann@example.com"), Context())
    assert verdict.application is None and verdict.decision == "block"
    assert "path rejected" in verdict.reason


@pytest.mark.parametrize(
    ("domain", "path"),
    [("wiki.example.com/a b", "/a%20b/x"), ("wiki.example.com/café", "/caf%C3%A9")],
)
def test_path_scoped_app_with_characters_clients_must_encode(domain: str, path: str) -> None:
    text = f"""
        applications:
          - {{name: root, domain: wiki.example.com, origin: http://10.0.0.5:8080}}
          - {{name: scoped, domain: "{domain}", origin: http://10.0.0.5:8080}}
    """
    try:
        snap = snapshot(text)
    except ConfigError:
        return  # rejecting such a domain is a fix as good as routing it right
    assert routed(snap, "wiki.example.com", path) == "scoped"


def test_longer_path_app_inherits_nothing(routing: Snapshot) -> None:
    # "root" lets everyone in; "admin" only root@; "admin api" only service tokens
    anyone = user("mallory@evil.test")
    assert routing.check("wiki.example.com", "/", anyone, Context()).decision == "allow"
    assert routing.check("wiki.example.com", "/admin", anyone, Context()).decision == "block"
    assert (
        routing.check("wiki.example.com", "/admin", user("root@example.com"), Context()).decision
        == "allow"
    )
    api = routing.check("wiki.example.com", "/admin/api/x", user("root@example.com"), Context())
    assert (api.decision, api.policy) == ("block", None)
    bot = routing.check("wiki.example.com", "/admin/api/x", None, Context(service_token="ci-bot"))
    assert (bot.decision, bot.policy) == ("allow", "bots")
    # no allow policy on "admin api": no login is offered
    assert routing.check("wiki.example.com", "/admin/api", None, Context()).decision == "block"


def test_encoded_slash_is_blocked_without_application(routing: Snapshot) -> None:
    for path in ("/admin%2Fx", "/%2Fadmin", "/a%2fb", "/a%5Cb", "/a\\b", "/%zz"):
        verdict = routing.check("wiki.example.com", path, user("root@example.com"), Context())
        assert verdict.decision == "block", path
        assert verdict.application is None, path
        assert verdict.policy is None
        assert "path" in verdict.reason


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("x.dev.example.com", "dev"),
        ("X.Dev.Example.COM", "dev"),
        ("x.dev.example.com:8443", "dev"),
        ("dev.example.com", None),
        ("x.y.dev.example.com", None),
        ("xdev.example.com", None),
        ("x.dev.example.com.", "dev"),
    ],
)
def test_wildcard_hosts(routing: Snapshot, host: str, expected: str | None) -> None:
    assert routed(routing, host) == expected


@pytest.mark.parametrize("host", [".dev.example.com", ".dev.example.com:443"])
def test_wildcard_needs_a_non_empty_label(routing: Snapshot, host: str) -> None:
    assert routed(routing, host) is None


def test_wildcard_with_path(routing: Snapshot) -> None:
    assert routed(routing, "x.dev.example.com", "/docs/intro") == "dev docs"
    assert routed(routing, "x.dev.example.com", "/docsx") == "dev"


def test_exact_host_preferred_over_wildcard_with_fallback(routing: Snapshot) -> None:
    assert routed(routing, "special.dev.example.com", "/private") == "special"
    assert routed(routing, "special.dev.example.com", "/private/x") == "special"
    assert routed(routing, "SPECIAL.dev.example.com:443", "/PRIVATE") == "special"
    # the exact host's only application is scoped to /private: fall back to the wildcard
    assert routed(routing, "special.dev.example.com", "/") == "dev"
    assert routed(routing, "special.dev.example.com", "/docs") == "dev docs"


def test_exact_whole_host_shadows_the_wildcard() -> None:
    snap = snapshot("""
        applications:
          - {name: any, domain: "*.example.com", origin: http://10.0.0.5:8080}
          - {name: www, domain: www.example.com, origin: http://10.0.0.5:8080}
          - {name: any admin, domain: "*.example.com/admin", origin: http://10.0.0.5:8080}
    """)
    assert routed(snap, "www.example.com", "/") == "www"
    # the exact host covers every path, even one a longer wildcard application has
    assert routed(snap, "www.example.com", "/admin") == "www"
    assert routed(snap, "other.example.com", "/admin") == "any admin"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("wiki.example.com", "root"),
        ("Wiki.Example.com:8443", "root"),
        ("WIKI.EXAMPLE.COM", "root"),
        ("wiki.example.com.", "root"),
        ("wiki.example.com.:80", "root"),
        ("  wiki.example.com  ", "root"),
        ("wiki.example.org", None),
        ("example.com", None),
        ("", None),
        ("192.0.2.10", "literal"),
        ("192.0.2.10:8080", "literal"),
        ("[2001:db8::1]", None),
        ("[2001:db8::1]:443", None),
        ("[::1]:8080", None),
        ("::1", None),
    ],
)
def test_host_header_is_case_insensitive_and_its_port_ignored(
    routing: Snapshot, host: str, expected: str | None
) -> None:
    assert routed(routing, host, "/") == expected


def test_ipv6_literal_host_is_normalised() -> None:
    assert Snapshot.normalise_host("[2001:DB8::1]:443") == "2001:db8::1"
    assert Snapshot.normalise_host("[::1]") == "::1"
    assert Snapshot.normalise_host("Wiki.Example.com:8443") == "wiki.example.com"


def test_no_application_for_host(routing: Snapshot) -> None:
    verdict = routing.check("nowhere.example.net", "/", user(), Context())
    assert (verdict.decision, verdict.application, verdict.policy) == ("block", None, None)


def test_check_routes_then_decides(routing: Snapshot) -> None:
    verdict = routing.check("x.dev.example.com", "/", user("a@example.com"), Context())
    assert verdict.application is not None and verdict.application.name == "dev"
    assert (verdict.decision, verdict.policy) == ("allow", "staff")
    docs = routing.check("x.dev.example.com", "/docs", None, Context())
    assert (docs.decision, docs.policy) == ("bypass", "open")
    explained = routing.check("x.dev.example.com", "/", None, Context(), explain=True)
    assert explained.decision == "authenticate"
    assert explained.as_dict()["application"] == "dev"


# ================================================================ explain


def test_explain_agrees_with_decide_and_names_the_failing_rule() -> None:
    snap, app = one_app("""
        - name: office
          decision: allow
          include: [{email_domain: example.com}]
          require: [{ip: 10.0.0.0/8}]
        - name: partners
          decision: allow
          include: [{email: [p@partner.test]}]
    """)
    identity = user("alice@example.com")
    ctx = Context(ip="192.0.2.1")
    decided = snap.decide(app, identity, ctx)
    explained = snap.explain(app, identity, ctx)
    assert (decided.decision, decided.policy) == ("block", None)
    assert (explained.decision, explained.policy) == ("block", None)
    office, partners = explained.steps
    assert office["policy"] == "office" and office["matched"] is False
    include, require = office["checks"]
    assert include["section"] == "include" and include["matched"] is True
    assert "email_domain" in include["check"] and "example.com" in include["check"]
    assert require["section"] == "require" and require["matched"] is False
    assert "ip" in require["check"] and "10.0.0.0/8" in require["check"]
    assert partners["policy"] == "partners" and partners["matched"] is False
    assert partners["checks"][0]["section"] == "include"
    assert partners["checks"][0]["matched"] is False
    # the JSON form carries the same
    data = explained.as_dict()
    assert data["decision"] == "block" and data["policy"] is None
    assert data["application"] == "app"
    assert data["steps"][0]["checks"][1]["matched"] is False


def test_explain_names_the_excluding_rule_inside_a_group() -> None:
    snap, app = one_app(
        """
        - {name: p, decision: allow, include: [{group: [Staff]}]}
    """,
        groups="""
        - name: Staff
          include: [{email_domain: example.com}]
          exclude: [{email: [bob@example.com]}]
    """,
    )
    explained = snap.explain(app, user("bob@example.com"), Context())
    assert (explained.decision, explained.policy) == ("block", None)
    (step,) = explained.steps
    (group_check,) = step["checks"]
    assert group_check["section"] == "include"
    assert "Staff" in group_check["check"]
    assert group_check["matched"] is False
    inner = group_check["inner"]
    assert [c["section"] for c in inner] == ["include", "exclude"]
    assert inner[-1]["matched"] is True and "bob@example.com" in inner[-1]["check"]


def test_explain_on_allow_bypass_and_service_auth() -> None:
    snap, app = one_app("""
        - {name: bots, decision: service_auth, include: [{service_token: ci-bot}]}
        - {name: health, decision: bypass, include: [{ip: 10.0.0.0/8}]}
        - {name: staff, decision: allow, include: [{email_domain: example.com}]}
    """)
    cases: list[tuple[Identity | None, Context, tuple[str, str | None]]] = [
        (None, Context(service_token="ci-bot"), ("allow", "bots")),
        (None, Context(ip="10.0.0.1"), ("bypass", "health")),
        (user(), Context(), ("allow", "staff")),
        (None, Context(), ("authenticate", None)),
        (None, Context(service_token="deploy"), ("block", None)),
        (user("x@other.test"), Context(), ("block", None)),
    ]
    for identity, ctx, expected in cases:
        decided: Verdict = snap.decide(app, identity, ctx)
        explained = snap.explain(app, identity, ctx)
        assert (decided.decision, decided.policy) == expected
        assert (explained.decision, explained.policy) == expected
        assert explained.steps, "explain records the policies it looked at"
    no_token = snap.explain(app, None, Context())
    assert no_token.steps[0]["policy"] == "bots"
    assert no_token.steps[0].get("skipped")


def test_verdict_as_dict() -> None:
    snap, app = one_app("""
        - {name: staff, decision: allow, include: [{email_domain: example.com}]}
    """)
    data = snap.decide(app, user(), Context()).as_dict()
    assert data["application"] == "app"
    assert data["decision"] == "allow"
    assert data["policy"] == "staff"
    assert isinstance(data["reason"], str) and data["reason"]


# ================================================================ subaddresses


def test_an_excluded_person_cannot_come_back_with_a_subaddress() -> None:
    """Second security review: ``mallory+x@example.com`` is delivered to mallory's mailbox
    (Gmail, Microsoft 365, Postfix's ``+`` delimiter), so an ``email`` exclusion, block or
    include names the mailbox, whatever tag is added."""
    snap, app = one_app(
        """
        - {name: no mallory, decision: block, include: [{email: [mallory@example.com]}]}
        - {name: staff, decision: allow, include: [{email_domain: [example.com]}],
           exclude: [{email: [eve@example.com]}]}
        - {name: ann, decision: allow, include: [{email: [ann@partner.test]}]}
        """
    )
    assert outcome(snap, app, user("mallory+x@example.com")) == ("block", "no mallory")
    assert outcome(snap, app, user("mallory+a+b@example.com")) == ("block", "no mallory")
    assert outcome(snap, app, user("eve+1@example.com"))[0] == "block"
    assert outcome(snap, app, user("bob+x@example.com")) == ("allow", "staff")
    assert outcome(snap, app, user("ann+news@partner.test")) == ("allow", "ann")
    # a listed subaddress names only itself
    snap, app = one_app(
        "- {name: tagged, decision: allow, include: [{email: [ann+ops@partner.test]}]}"
    )
    assert outcome(snap, app, user("ann+ops@partner.test")) == ("allow", "tagged")
    assert outcome(snap, app, user("ann@partner.test"))[0] == "block"
