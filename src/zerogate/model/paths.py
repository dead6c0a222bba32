"""Request-path normalisation used for routing. No I/O.

The edge and ``zerogate policy test --url`` route with the same function, so an application
scoped to ``/admin`` cannot be dodged with ``/%61dmin``, ``/ADMIN`` or ``/admin;x``, and a path
whose routing origins disagree on (``/x/../admin``, ``//admin``) is refused.

Steps, in order:

1. drop the query and fragment;
2. reject what different origins read differently (fail closed): an encoded ``/`` (``%2F``) or
   ``\\`` (``%5C``), a raw backslash, NUL, a control character raw or encoded (``%09``,
   ``%0A``, …: ``/admin%09`` is ``/admin`` to an origin that trims), a malformed ``%`` escape,
   a double-encoded escape (``%252e``: an origin that decodes twice reads ``.``), and bytes
   that are not UTF-8 once decoded (``%C0%AE``: a lax decoder reads ``.``);
3. percent-decode the unreserved characters (``A-Z a-z 0-9 - . _ ~``) and ``%3B`` (``;``:
   servlet containers decode it before dropping parameters), upper-case the rest;
4. reject a segment that some origin reads as ``..`` while it is not literally one: dots with
   spaces (``..%20``, ``.%20.``), more than two dots (``...``), or a dot segment carrying
   ``;parameters`` (``..;x``, ``.;x``); and reject dot segments themselves (``.``, ``..``,
   ``%2e%2e``) and empty segments (``//``): the edge forwards the path as the client sent
   it, and origins resolve those differently (some not at all), so any routing of them could
   hand an origin a path it serves from a stricter application;
5. drop trailing dots and spaces of a segment (Windows serves ``admin.`` as ``admin``),
   drop ``;parameters`` from each segment (servlet containers serve ``/admin;x`` and
   ``/admin%3Bx`` as ``/admin``), and merge repeated slashes (origins such as nginx do);
6. remove dot segments (RFC 3986 section 5.2.4).

Prefix comparison is case-insensitive (see ``fold``): an origin on a case-insensitive file system
serves ``/ADMIN`` as ``/admin``, so the ``/admin`` application must cover both.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%(.{0,2})", re.DOTALL)
_HEX = frozenset("0123456789abcdefABCDEF")
_REJECTED_ESCAPES = {
    "2F": "an encoded slash (%2F)",
    "5C": "an encoded backslash (%5C)",
    "00": "an encoded NUL (%00)",
}


#: characters a client must percent-encode (RFC 3986 allows only these and %XX in a path)
_OUTSIDE_URI = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,;=:@/%]")


def _encode(match: re.Match[str]) -> str:
    return "".join(f"%{byte:02X}" for byte in match.group(0).encode("utf-8"))


class PathError(ValueError):
    """The path cannot be routed safely; the edge answers 400."""


def _decode_unreserved(match: re.Match[str]) -> str:
    digits = match.group(1)
    if len(digits) != 2 or digits[0] not in _HEX or digits[1] not in _HEX:
        raise PathError("the path holds a malformed percent escape")
    upper = digits.upper()
    if upper in _REJECTED_ESCAPES:
        raise PathError(f"the path holds {_REJECTED_ESCAPES[upper]}")
    char = chr(int(upper, 16))
    if char < " " or char == "\x7f":
        raise PathError(f"the path holds an encoded control character (%{upper})")
    if char == ";":
        return ";"
    return char if char in _UNRESERVED else "%" + upper


_DOUBLE_ENCODED = re.compile(r"%25[0-9A-Fa-f]{2}")


def _dot_like(segment: str) -> bool:
    """Only dots and (encoded) spaces, at least one dot: what Windows may read as ``.``/``..``."""
    bare = segment.replace("%20", "")
    return bool(bare) and bare.strip(".") == ""


def _check_segments(path: str) -> None:
    for segment in path.split("/"):
        base, semicolon, _ = segment.partition(";")
        if semicolon and _dot_like(base):
            raise PathError("the path holds a dot segment with parameters (such as ..;x)")
        if not semicolon and _dot_like(segment) and segment not in (".", ".."):
            raise PathError(f"the path holds a segment some origins read as '..' ({segment})")


def _refuse_dot_and_empty_segments(path: str) -> None:
    """A ``.`` or ``..`` segment (raw or ``%2e``) or an empty one (``//``) is refused: origins
    disagree on them (aiohttp, Flask, Starlette and prefix routers serve ``/admin/../x`` from
    ``/admin``; RFC 3986 resolvers read ``/admin//../x`` as ``/admin/x``), so no single routing
    of them is safe, and browsers never send them (they resolve dot segments themselves)."""
    segments = path.split("/")[1:]
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if segment.split(";", 1)[0] in (".", ".."):
            raise PathError("the path holds a dot segment ('.' or '..')")
        if not segment and i != last:
            raise PathError("the path holds an empty segment ('//')")


def _windows_segment(segment: str) -> str:
    """Windows (IIS) ignores trailing dots and spaces: ``admin.`` and ``admin%20`` are ``admin``."""
    if segment in (".", ".."):
        return segment
    trimmed = segment
    while trimmed.endswith((".", "%20")):
        trimmed = trimmed[:-1] if trimmed.endswith(".") else trimmed[:-3]
    return trimmed or segment


def remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 for an absolute path."""
    output: list[str] = []
    segments = path.split("/")[1:]
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                output.append("")
        elif segment == "..":
            if output:
                output.pop()
            if last:
                output.append("")
        else:
            output.append(segment)
    return "/" + "/".join(output)


def normalise_path(raw: str, *, strict: bool = True) -> str:
    """Normalise a request path (see the module docstring); raises ``PathError``.

    ``strict=False`` is for paths written in the configuration (an application's domain, an
    ingress rule): there dot segments and repeated slashes are resolved rather than refused,
    since no origin reads those."""
    path = raw.split("#", 1)[0].split("?", 1)[0]
    if not path.startswith("/"):
        path = "/" + path
    if "\\" in path:
        raise PathError("the path holds a backslash")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise PathError("the path holds a control character")
    if "%" in path:
        path = _ESCAPE.sub(_decode_unreserved, path)
        # after decoding: "%25%61b" decodes to "%25ab", which an origin decoding twice reads
        if _DOUBLE_ENCODED.search(path):
            raise PathError("the path holds a double-encoded escape (%25 before two hex digits)")
    if not path.isascii() or " " in path or _OUTSIDE_URI.search(path):
        path = _OUTSIDE_URI.sub(_encode, path)
    if "%" in path:
        try:
            unquote_to_bytes(path).decode("utf-8")
        except UnicodeDecodeError:
            raise PathError("the path is not UTF-8 once decoded") from None
    if "." in path:
        _check_segments(path)
    if strict:
        _refuse_dot_and_empty_segments(path)
    if ";" in path:  # servlet containers drop ";params" per segment, "..;" included
        path = "/".join(segment.split(";", 1)[0] for segment in path.split("/"))
    if "." in path or "%20" in path:
        path = "/".join(_windows_segment(segment) for segment in path.split("/"))
    while "//" in path:
        path = path.replace("//", "/")
    if "." in path:
        path = remove_dot_segments(path)
    return path


def fold(path: str) -> str:
    """The form used for prefix comparison."""
    return path.lower()


def under(path: str, prefix: str) -> bool:
    """``path`` lies under ``prefix`` on a segment boundary (both normalised and folded)."""
    if not prefix:
        return True
    return (
        path == prefix
        or path.startswith(prefix + "/")
        or (path.startswith(prefix) and prefix.endswith("/"))
    )
