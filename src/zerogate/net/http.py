"""Small raw-ASGI helpers shared by every surface: headers, cookie parsing, bodies, replies.

Kept framework-free because the edge's hot path must stay lean (DESIGN: no framework on the
edge path). Parsing is strict where it matters for security and lenient elsewhere: malformed
cookies are ignored (never an error that could be turned into a bypass), bodies are bounded.

Only *reading* the ``Cookie`` header lives here; zerogate's own cookie rules (names, the
``__Host-`` prefix under TLS, ``HttpOnly`` / ``SameSite`` / ``Secure``) are policy and live in
:mod:`zerogate.runtime.cookies`, which every surface shares.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

from zerogate.net import headers as header_rules
from zerogate.net.asgi import Headers, Receive, Scope, Send

MAX_FORM_BYTES = 64 * 1024
_UNSAFE_TARGET = re.compile(r"[\x00-\x20\x7f#]")


class BadRequest(Exception):
    """The request is malformed; answered with 400."""


def header(scope: Scope, name: bytes) -> bytes | None:
    """The value of a header that must appear at most once (a repeat is a ``BadRequest``)."""
    found: bytes | None = None
    for key, value in scope["headers"]:
        if key == name:
            if found is not None:
                raise BadRequest(f"more than one {name.decode()} header")
            found = value
    return found


def header_text(scope: Scope, name: bytes) -> str:
    value = header(scope, name)
    return value.decode("latin-1") if value is not None else ""


def cookies(scope: Scope) -> dict[str, str]:
    """Cookies the client sent; a malformed header yields what could be parsed (maybe none).

    A name sent more than once (in one ``Cookie`` header or several) is left out: a browser
    sends two cookies of one name when a second one was tossed onto it (another path, a
    sibling host's ``Domain=``), and neither can be told apart from the other, so for
    zerogate's cookies two of a name are none (no session, no state)."""
    jar: dict[str, str] = {}
    repeated: set[str] = set()
    for key, value in scope["headers"]:
        if key != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            name, eq, val = part.strip().partition("=")
            if not eq or not name:
                continue
            if name in jar:
                repeated.add(name)
            else:
                jar[name] = val.strip().strip('"')
    for name in repeated:
        del jar[name]
    return jar


def wants_json(scope: Scope) -> bool:
    """An API or XHR client (JSON accepted or ``X-Requested-With`` present): it gets 401 JSON
    where a browser is redirected to the login page."""
    return header_rules.wants_json(scope["headers"])


def is_navigation(scope: Scope) -> bool:
    return scope.get("method") in ("GET", "HEAD") and not wants_json(scope)


async def read_body(receive: Receive, limit: int = MAX_FORM_BYTES) -> bytes:
    """The whole request body, refusing more than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BadRequest("request body too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def read_form(scope: Scope, receive: Receive) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body; a repeated field is a ``BadRequest``."""
    ctype = header_text(scope, b"content-type").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise BadRequest("expected a form")
    body = await read_body(receive)
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise BadRequest("the form is not UTF-8") from None
    form: dict[str, str] = {}
    for key, values in parsed.items():
        if len(values) != 1:
            raise BadRequest(f"field {key!r} given more than once")
        form[key] = values[0]
    return form


def query(scope: Scope) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items() if len(v) == 1}


async def respond(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: bytes,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    all_headers: Headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


async def respond_html(
    send: Send, status: int, html: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    security = [
        (b"x-frame-options", b"DENY"),
        (
            b"content-security-policy",
            b"default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
            b"frame-ancestors 'none'; base-uri 'none'",
        ),
    ]
    await respond(
        send,
        status,
        html.encode("utf-8"),
        content_type=b"text/html; charset=utf-8",
        headers=[*security, *headers],
    )


async def respond_json(
    send: Send, status: int, data: Any, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps(data, separators=(",", ":")).encode()
    await respond(send, status, body, content_type=b"application/json", headers=headers)


async def redirect(
    send: Send, location: str, headers: Iterable[tuple[bytes, bytes]] = (), status: int = 302
) -> None:
    await respond(
        send,
        status,
        b"",
        content_type=b"text/plain",
        headers=[(b"location", location.encode("utf-8")), *headers],
    )


def _percent_encode_non_ascii(raw: bytes) -> str:
    return "".join(chr(b) if b < 0x80 else f"%{b:02X}" for b in raw)


def request_target(path_qs: str | bytes) -> str | None:
    """The origin-form target to send, or ``None`` when it cannot be forwarded safely.

    Bytes (``scope["raw_path"]`` plus ``b"?" + query_string``) are sent exactly; bytes outside
    ASCII (which HTTP does not allow there) are percent-encoded. A ``str`` is taken as text and
    UTF-8 percent-encoded where it is not ASCII. A target that does not start with ``/`` or
    holds spaces, control characters or ``#`` is refused (the caller answers 400).
    """
    if isinstance(path_qs, bytes):
        try:
            text = path_qs.decode("ascii")
        except UnicodeDecodeError:
            text = _percent_encode_non_ascii(path_qs)
    elif path_qs.isascii():
        text = path_qs
    else:
        text = _percent_encode_non_ascii(path_qs.encode("utf-8"))
    if not text.startswith("/") or _UNSAFE_TARGET.search(text):
        return None
    return text
