"""Ingress rules: parsing, validation messages (with lines), matching, and properties."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zerogate.connector import ingress
from zerogate.connector.ingress import ConfigError, Rule, match, parse_service
from zerogate.model.paths import PathError

GOOD = """
origin:
  connect_timeout: 5s
ingress:
  - hostname: wiki.example.com
    path: /api
    service: http://127.0.0.1:8080
    origin: {host_header: wiki.internal, keep_alive_timeout: 30s}
  - hostname: wiki.example.com
    service: https://wiki.internal:8443
    origin: {no_tls_verify: true}
  - hostname: "*.example.com"
    service: unix:/run/app.sock
  - service: http_status:404
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        ingress.load_text(text, source="in.yaml")
    return [str(p) for p in info.value.problems]


def test_load_good_file() -> None:
    rules = ingress.load_text(GOOD)
    assert [r.target.kind for r in rules] == ["http", "https", "unix", "status"]
    first = rules[0]
    assert first.path == "/api"
    assert first.origin.connect_timeout == 5.0  # from the file's defaults
    assert first.origin.keep_alive_timeout == 30.0
    assert first.origin.host_header == "wiki.internal"
    assert rules[1].origin.no_tls_verify and rules[1].origin.connect_timeout == 5.0
    assert rules[1].target.origin == "https://wiki.internal:8443"
    assert rules[2].target.path == "/run/app.sock"
    assert rules[3].target.status == 404 and rules[3].catch_all


@pytest.mark.parametrize(
    ("service", "kind", "origin"),
    [
        ("http://127.0.0.1:8080", "http", "http://127.0.0.1:8080"),
        ("http://localhost", "http", "http://localhost:80"),
        ("https://app.internal/", "https", "https://app.internal:443"),
        ("http://[::1]:9000", "http", "http://[::1]:9000"),
        ("unix:/tmp/a.sock", "unix", "unix:/tmp/a.sock"),
    ],
)
def test_parse_service(service: str, kind: str, origin: str) -> None:
    parsed = parse_service(service)
    assert (parsed.kind, parsed.origin) == (kind, origin)


@pytest.mark.parametrize(
    ("service", "message"),
    [
        ("ftp://x", "expected http://"),
        ("http://x/path", "no path"),
        ("http://user:pw@x", "no user"),
        ("http://x:99999", "Port out of range"),
        ("unix:relative.sock", "absolute"),
        ("http_status:99", "200 to 599"),
        ("http_status:abc", "200 to 599"),
        ("", "required"),
    ],
)
def test_parse_service_errors(service: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_service(service)


def test_errors_name_rule_field_and_line() -> None:
    found = problems(
        """ingress:
  - hostname: a.example.com
    service: ftp://nope
  - hostname: b.example.com
    servce: http://x
  - service: http://x
    origin:
      connect_timeout: soon
      bogus: 1
"""
    )
    assert "in.yaml:3: ingress rule #1 › service: 'ftp://nope': expected http://" in found[0]
    assert "in.yaml:4: ingress rule #2 › service: this key is required" in found
    assert "in.yaml:5: ingress rule #2 › servce: unknown key 'servce'; did you mean 'service'?" in (
        found
    )
    assert any(
        p.startswith("in.yaml:8: ingress rule #3 › origin.connect_timeout: 'soon' is not")
        for p in found
    )
    assert any(
        p.startswith("in.yaml:9: ingress rule #3 › origin.bogus: unknown key") for p in found
    )


def test_catch_all_rules() -> None:
    early = problems(
        "ingress:\n  - service: http://a\n  - hostname: b.example.com\n    service: http://b\n"
    )
    assert early[0].startswith("in.yaml:2: ingress rule #1: this rule has no hostname")
    assert early[1].startswith("in.yaml:3: ingress rule #2: the last rule must match everything")
    assert problems("ingress: []\n")[0].startswith("in.yaml:1: ingress:")
    assert "mapping" in problems("- a\n")[0]
    assert "invalid YAML" in problems("ingress: [\n")[0]
    # path "/" covers everything too
    assert ingress.load_text("ingress:\n  - path: /\n    service: http_status:404\n")[0].catch_all


def test_bad_hostname_and_path() -> None:
    found = problems(
        "ingress:\n  - hostname: a.*.com\n    service: http://x\n"
        "  - path: api\n    service: http://x\n  - service: http_status:404\n"
    )
    assert "ingress rule #1 › hostname" in found[0] and "wildcard" in found[0]
    assert "ingress rule #2 › path" in found[1] and "starts with '/'" in found[1]


def test_from_url() -> None:
    rules = ingress.from_url("http://127.0.0.1:3000")
    assert len(rules) == 1 and rules[0].catch_all
    with pytest.raises(ConfigError, match="--url"):
        ingress.from_url("127.0.0.1:3000")


def test_load_file(tmp_path: Path) -> None:
    path = tmp_path / "ingress.yaml"
    path.write_text(GOOD)
    assert len(ingress.load_file(path)) == 4
    with pytest.raises(ConfigError, match="cannot read"):
        ingress.load_file(tmp_path / "missing.yaml")


def test_match() -> None:
    rules = ingress.load_text(GOOD)
    assert match(rules, "wiki.example.com", "/api").target.kind == "http"
    assert match(rules, "WIKI.example.com:443", "/api/v1?x=1").target.kind == "http"
    assert match(rules, "wiki.example.com", "/API/").target.kind == "http"  # case-folded
    assert match(rules, "wiki.example.com", "/api;x/z").target.kind == "http"
    with pytest.raises(PathError, match="dot segment"):  # as the edge: refused, not resolved
        match(rules, "wiki.example.com", "/x/../api/z")
    assert match(rules, "wiki.example.com", "/apix").target.kind == "https"
    assert match(rules, "wiki.example.com.", "/").target.kind == "https"
    assert match(rules, "a.example.com", "/").target.kind == "unix"
    assert match(rules, "a.b.example.com", "/").target.kind == "status"  # one label only
    assert match(rules, "example.com", "/").target.kind == "status"
    assert match(rules, "[::1]:8080", "/").target.kind == "status"
    with pytest.raises(PathError):
        match(rules, "wiki.example.com", "/a%2Fb")


# ------------------------------------------------------------------------------- properties

labels = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
hosts = st.lists(labels, min_size=2, max_size=4).map(".".join)
segments = st.lists(st.from_regex(r"[a-z0-9_-]{1,6}", fullmatch=True), max_size=4)


@st.composite
def rule_sets(draw: st.DrawFn) -> list[Rule]:
    rules = []
    for _ in range(draw(st.integers(0, 6))):
        host = draw(st.none() | hosts | hosts.map(lambda h: "*." + h if h.count(".") >= 1 else h))
        path = draw(st.none() | segments.filter(bool).map(lambda s: "/" + "/".join(s)))
        if host is None and path is None:
            host = draw(hosts)
        rules.append(Rule(hostname=host, path=path, service="http://127.0.0.1:1"))
    rules.append(Rule(service="http_status:404"))
    return rules


@given(rule_sets(), hosts, segments)
def test_match_is_the_first_matching_rule(rules: list[Rule], host: str, segs: list[str]) -> None:
    path = "/" + "/".join(segs)
    chosen = match(rules, host, path)
    index = rules.index(chosen)
    # every earlier rule does not match, and the chosen one does
    for rule in rules[:index]:
        assert not rule.matches(host, path)
    assert chosen.matches(host, path)


@given(hosts, segments, segments)
def test_path_prefix_is_segment_bounded(host: str, prefix: list[str], rest: list[str]) -> None:
    prefix_path = "/" + "/".join(prefix) if prefix else "/"
    rules = [
        Rule(hostname=host, path=prefix_path, service="http://127.0.0.1:1"),
        Rule(service="http_status:404"),
    ]
    under = (prefix_path.rstrip("/") + "/" + "/".join(rest)) if rest else prefix_path
    assert match(rules, host, under) is rules[0]
    if prefix:  # the same text without the boundary is not under the prefix
        assert match(rules, host, prefix_path + "x") is rules[1]
    assert match(rules, host.upper() + ":8443", under + "?q=1") is rules[0]
