"""The connector token: one string that carries everything a connector needs to reach its edge.

``zgt1_`` followed by base64url (no padding) of a compact JSON object::

    {"t": "<tunnel id>", "s": "<secret>", "e": ["edge.example.com:7844", ...], "f": "<sha256>"}

- ``t``: the tunnel's id (random, stable across token rotations; never its name, so the token
  does not leak naming);
- ``s``: the secret (the edge stores only its hash; ``zerogate tunnel token --rotate`` makes a
  new one and the old token's connections are closed);
- ``e``: the edge addresses to dial (``--edge`` overrides them);
- ``f``: the SHA-256 fingerprint (hex) of the edge's tunnel certificate, which the connector pins
  when present (``--ca`` verifies a chain instead).

No I/O here: encoding, decoding and the constant-time check of a presented secret.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from dataclasses import dataclass, field

PREFIX = "zgt1_"
SECRET_BYTES = 32
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{7,63}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{32,128}")
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_EDGE = re.compile(r"[A-Za-z0-9.\-\[\]:]{1,260}:[0-9]{1,5}")
_MAX_EDGES = 16


class TokenError(ValueError):
    """The text is not a zerogate connector token; the message says which part is wrong."""


@dataclass(frozen=True, slots=True)
class TunnelToken:
    """A decoded connector token. ``secret`` never appears in ``repr``."""

    tunnel_id: str
    secret: str = field(repr=False)
    edges: tuple[str, ...] = ()
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        if not _ID.fullmatch(self.tunnel_id):
            raise TokenError("the token's tunnel id is malformed")
        if not _SECRET.fullmatch(self.secret):
            raise TokenError("the token's secret is malformed")
        if len(self.edges) > _MAX_EDGES or not all(_EDGE.fullmatch(e) for e in self.edges):
            raise TokenError("the token's edge addresses are malformed (want HOST:PORT)")
        if self.fingerprint is not None and not _FINGERPRINT.fullmatch(self.fingerprint):
            raise TokenError("the token's certificate fingerprint is not 64 hex digits")

    def encode(self) -> str:
        body: dict[str, object] = {"t": self.tunnel_id, "s": self.secret, "e": list(self.edges)}
        if self.fingerprint is not None:
            body["f"] = self.fingerprint
        raw = json.dumps(body, separators=(",", ":")).encode()
        return PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def new_tunnel_id() -> str:
    return secrets.token_hex(16)


def new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def decode(text: str) -> TunnelToken:
    """The token in ``text`` (surrounding whitespace ignored), or ``TokenError``."""
    text = text.strip()
    if not text.startswith(PREFIX):
        raise TokenError(f"a connector token starts with {PREFIX!r}")
    payload = text[len(PREFIX) :]
    if len(payload) > 8192:
        raise TokenError("the token is too long")
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        body = json.loads(raw)
    except (binascii.Error, ValueError):
        raise TokenError(
            "the token is not valid base64url JSON (was it cut when copied?)"
        ) from None
    if not isinstance(body, dict):
        raise TokenError("the token's body is not a JSON object")
    tunnel_id, secret, edges = body.get("t"), body.get("s"), body.get("e", [])
    fingerprint = body.get("f")
    if not isinstance(tunnel_id, str) or not isinstance(secret, str):
        raise TokenError("the token lacks its tunnel id or secret")
    if not isinstance(edges, list) or not all(isinstance(e, str) for e in edges):
        raise TokenError("the token's edge addresses are not a list of strings")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise TokenError("the token's certificate fingerprint is not a string")
    return TunnelToken(tunnel_id, secret, tuple(edges), fingerprint)
