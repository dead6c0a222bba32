"""Request-path normalisation for routing (SPEC "Paths"): normalise_path, under, fold."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zerogate.model.paths import PathError, fold, normalise_path, under

# ---------------------------------------------------------------- percent-decoding


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/%61dmin", "/admin"),
        ("/%41DMIN", "/ADMIN"),  # decoded, but case is kept (fold() does the case-folding)
        ("/%7Euser", "/~user"),
        ("/%7euser", "/~user"),
        ("/a%2Db%2Ec%5Fd", "/a-b.c_d"),
        ("/%30%39", "/09"),
    ],
)
def test_unreserved_characters_are_decoded(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/a%3ab", "/a%3Ab"),
        ("/a%3Ab", "/a%3Ab"),
        ("/%20x", "/%20x"),
        ("/%25", "/%25"),  # an encoded '%' stays encoded: decoding it would change the meaning
        ("/%c3%a9", "/%C3%A9"),
        ("/%3f", "/%3F"),  # an encoded '?' is part of the path, not a query
    ],
)
def test_reserved_escapes_are_kept_and_upper_cased(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


@pytest.mark.parametrize(("raw", "encoded"), [("/a b", "/a%20b"), ("/café", "/caf%C3%A9")])
def test_characters_outside_the_uri_syntax_normalise_like_their_escapes(
    raw: str, encoded: str
) -> None:
    try:
        normalised = normalise_path(raw)
    except PathError:
        return  # rejecting the raw form is as good a fix as encoding it
    assert normalised == normalise_path(encoded)


# ---------------------------------------------------------------- dot segments, slashes


@pytest.mark.parametrize(
    "raw",
    [
        "/a/./b/../c",
        "/..",
        "/../../etc/passwd",
        "/a/%2E%2E/b",
        "/a/%2e%2e/b",
        "/a/.%2E/b",
        "/a/b/..",
        "/a/b/.",
        "/x/../admin",
        "/admin/../public/x",  # aiohttp, Flask, Starlette serve it from /admin
        "/admin/%2e%2e/public/x",
        "/admin/.;x/../public",
    ],
)
def test_dot_segments_are_refused(raw: str) -> None:
    """Origins resolve dot segments differently (some not at all), so no routing of them is
    safe: the edge refuses them (browsers never send them)."""
    with pytest.raises(PathError, match="dot segment"):
        normalise_path(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/a/..b/c", "/a/..b/c"),  # '..b' is an ordinary segment
        ("/.hidden", "/.hidden"),
        ("/a/b/", "/a/b/"),
        ("/a.b/c", "/a.b/c"),
    ],
)
def test_ordinary_segments_with_dots_route(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["//admin", "/a//b///c", "///", "//x/..//admin", "/admin//../public/payroll", "/admin/.//../x"],
)
def test_empty_segments_are_refused(raw: str) -> None:
    """``/admin//../x`` is ``/admin/x`` to an RFC 3986 resolver (Node's URL, urljoin) but
    ``/x`` once slashes are merged first: refused, like ``//admin``."""
    with pytest.raises(PathError, match=r"empty segment|dot segment"):
        normalise_path(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/a?b=1", "/a"),
        ("/a#frag", "/a"),
        ("/a?x=/../admin#y", "/a"),
        ("/a?%2F", "/a"),  # a rejected escape inside the query is not the path's business
        ("/a#%zz", "/a"),
        ("", "/"),
        ("?x", "/"),
        ("admin", "/admin"),
    ],
)
def test_query_and_fragment_are_dropped(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


# ---------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("/a%2Fb", "slash"),
        ("/a%2fb", "slash"),
        ("/a%5Cb", "backslash"),
        ("/a%5cb", "backslash"),
        ("/a%00b", "NUL"),
        ("/a\\b", "backslash"),
        ("/a\x00b", "control"),
        ("/a\nb", "control"),
        ("/a\tb", "control"),
        ("/a\x7fb", "control"),
        ("/a%4", "malformed"),
        ("/a%4/b", "malformed"),
        ("/a%", "malformed"),
        ("/a%zz", "malformed"),
        ("/a%g0", "malformed"),
        ("/%%41", "malformed"),
    ],
)
def test_unsafe_paths_are_rejected(raw: str, why: str) -> None:
    with pytest.raises(PathError, match=why):
        normalise_path(raw)


def test_path_error_is_a_value_error() -> None:
    # pydantic turns ValueError raised in validators into a validation message
    assert issubclass(PathError, ValueError)


# ---------------------------------------------------------------- prefix matching


def test_fold_lower_cases() -> None:
    assert fold("/ADMIN/Page%3A") == "/admin/page%3a"


@pytest.mark.parametrize(
    ("path", "prefix", "expected"),
    [
        ("/admin", "/admin", True),
        ("/admin/", "/admin", True),
        ("/admin/x", "/admin", True),
        ("/admin/x/y", "/admin", True),
        ("/administrator", "/admin", False),
        ("/admin-x", "/admin", False),
        ("/adm", "/admin", False),
        ("/", "/admin", False),
        ("/x/admin", "/admin", False),
        ("/anything", "", True),
        ("/", "", True),
        ("/a/b/c", "/a/b", True),
        ("/a/bc", "/a/b", False),
    ],
)
def test_under_respects_segment_boundaries(path: str, prefix: str, expected: bool) -> None:
    assert under(path, prefix) is expected


@pytest.mark.parametrize(
    "raw", ["/%61dmin", "/ADMIN", "/Admin/", "/admin;x", "/admin%3Bx", "/admin."]
)
def test_tricks_end_up_under_admin(raw: str) -> None:
    assert under(fold(normalise_path(raw)), "/admin")


# ---------------------------------------------------------------- properties

_PIECES = st.sampled_from(
    ["/", "//", ".", "..", "a", "B", "%2e", "%2E", "%61", "%3a", "%7e", "%25", "~", "-", "?", "#"]
)
_PATHS = st.one_of(
    st.lists(_PIECES, max_size=12).map("".join),
    st.text(max_size=30),
)


def _normalise_or_none(raw: str) -> str | None:
    try:
        return normalise_path(raw)
    except PathError:
        return None


@settings(max_examples=500)
@given(_PATHS)
def test_normalise_is_idempotent(raw: str) -> None:
    once = _normalise_or_none(raw)
    if once is None:
        return
    assert normalise_path(once) == once


@settings(max_examples=500)
@given(_PATHS)
def test_normalised_paths_have_no_dot_segments_or_double_slashes(raw: str) -> None:
    out = _normalise_or_none(raw)
    if out is None:
        return
    assert out.startswith("/")
    assert "//" not in out
    assert "/./" not in out
    assert "/../" not in out
    assert not out.endswith(("/.", "/.."))
    assert "?" not in out and "#" not in out


@settings(max_examples=300)
@given(_PATHS)
def test_folded_prefix_match_is_stable_under_normalisation(raw: str) -> None:
    """Normalising and folding again changes nothing, so the prefix an application is routed
    by is the same whether the edge or the policy tester normalised first."""
    out = _normalise_or_none(raw)
    if out is None:
        return
    folded = fold(out)
    assert fold(normalise_path(folded)) == folded
    for prefix in ("/a", "/b", "/~"):
        assert under(folded, prefix) == under(fold(normalise_path(out)), prefix)
