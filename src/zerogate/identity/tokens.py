"""zerogate's JWTs: issue them, verify them, and remember the ones already verified.

This module owns the token format (the app session cookie and the ``Zerogate-Jwt-Assertion``
header an origin verifies, docs/configuration.md "Decisions"): header ``alg`` (the signing key's,
ES256 or RS256), ``kid``, ``typ: JWT``; claims ``iss`` (``https://<portal>``), ``aud`` (a list
holding the audience tag), ``sub``, ``email``, ``iat``, ``nbf``, ``exp``, ``type``, ``idp``,
``groups`` (when known), ``amr`` (when known) and ``jti``. Two token types share the code:

- ``app``: the session cookie on one application's host and the ``Zerogate-Jwt-Assertion``
  header the origin receives; audience = the application's audience tag;
- ``portal``: the global session on the portal host; audience = whatever the portal picks for
  itself (one fixed tag), so a portal token is never accepted as an app token and vice versa.

Verification trusts nothing in the token before the signature is checked: the key is found by
``kid`` in the ``KeySet`` only, and the algorithm is pinned to that key's algorithm. Every check
takes ``now`` (unix seconds). No I/O.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import sys
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import jwt
from jwt.algorithms import Algorithm, ECAlgorithm, RSAAlgorithm

from zerogate.identity.keys import ALGORITHMS, KeySet

TokenType = Literal["app", "portal"]
TYPE_APP: TokenType = "app"
TYPE_PORTAL: TokenType = "portal"
#: tolerance for clocks running ahead of ours: applies to ``nbf`` and ``iat``, not to ``exp``
DEFAULT_LEEWAY_SECONDS = 30.0
#: longer strings are refused before any parsing
MAX_TOKEN_LENGTH = 16_384
DEFAULT_CACHE_SIZE = 100_000

#: claims this module writes; ``extra`` claims may not use these names
RESERVED_CLAIMS = frozenset(
    {"iss", "aud", "sub", "email", "iat", "nbf", "exp", "type", "idp", "groups", "amr", "jti"}
)


class TokenError(Exception):
    """A token that must not be accepted. ``reason`` is a short, stable code for logs/metrics."""

    reason = "invalid"


class MalformedTokenError(TokenError):
    reason = "malformed"


class UnknownKeyError(TokenError):
    reason = "unknown_kid"


class AlgorithmMismatchError(TokenError):
    reason = "bad_alg"


class BadSignatureError(TokenError):
    reason = "bad_signature"


class TokenExpiredError(TokenError):
    reason = "expired"


class TokenNotYetValidError(TokenError):
    reason = "not_yet_valid"


class WrongIssuerError(TokenError):
    reason = "wrong_issuer"


class WrongAudienceError(TokenError):
    reason = "wrong_audience"


class WrongTokenTypeError(TokenError):
    reason = "wrong_type"


@dataclass(frozen=True, slots=True)
class Claims:
    """The verified claims of a token. Shared between requests through the cache: read-only."""

    iss: str
    aud: tuple[str, ...]
    sub: str
    email: str
    iat: float
    nbf: float
    exp: float
    type: str
    idp: str
    jti: str
    groups: tuple[str, ...] | None
    amr: tuple[str, ...] | None
    #: the ``kid`` of the key that signed it
    kid: str
    #: claims beyond the ones above (read-only view; empty when none)
    extra: Mapping[str, Any] = field(default_factory=lambda: _NO_EXTRA)

    def to_dict(self) -> dict[str, Any]:
        """The claims as JSON-able data, as in the token (e.g. for ``/.zerogate/identity``)."""
        data: dict[str, Any] = {
            "iss": self.iss,
            "aud": list(self.aud),
            "sub": self.sub,
            "email": self.email,
            "iat": self.iat,
            "nbf": self.nbf,
            "exp": self.exp,
            "type": self.type,
            "idp": self.idp,
            "jti": self.jti,
        }
        if self.groups is not None:
            data["groups"] = list(self.groups)
        if self.amr is not None:
            data["amr"] = list(self.amr)
        data.update(self.extra)
        return data


# --------------------------------------------------------------------------- issue


def issue_token(
    keyset: KeySet,
    *,
    token_type: TokenType,
    issuer: str,
    audience: str,
    email: str,
    sub: str,
    idp: str,
    groups: Sequence[str] | None = None,
    amr: Sequence[str] | None = None,
    ttl_seconds: int,
    now: float,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """A JWT signed by the key set's active key, valid from ``now`` for ``ttl_seconds``."""
    if ttl_seconds < 1:
        raise ValueError("ttl_seconds must be at least 1")
    if not audience:
        raise ValueError("an audience tag is required")
    clash = RESERVED_CLAIMS.intersection(extra or {})
    if clash:
        raise ValueError(f"extra claims may not override {', '.join(sorted(clash))}")
    # iat keeps milliseconds (RFC 7519 allows a fractional NumericDate): a logout revokes
    # sessions issued before an exact instant, and a login a moment later must not be caught
    iat = round(now, 3)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": [audience],
        "sub": sub,
        "email": email,
        "iat": iat,
        "nbf": int(now),
        "exp": int(now) + int(ttl_seconds),
        "type": token_type,
        "idp": idp,
        "jti": secrets.token_urlsafe(16),
    }
    if groups is not None:
        claims["groups"] = list(groups)
    if amr is not None:
        claims["amr"] = list(amr)
    if extra:
        claims.update(extra)
    key = keyset.active
    payload = json.dumps(claims, separators=(",", ":")).encode("utf-8")
    return _JWS.encode(
        payload, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid, "typ": "JWT"}
    )


def issue_app_token(
    keyset: KeySet,
    *,
    issuer: str,
    audience: str,
    email: str,
    sub: str,
    idp: str,
    groups: Sequence[str] | None = None,
    amr: Sequence[str] | None = None,
    ttl_seconds: int,
    now: float,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """An ``app`` token for the application whose audience tag is ``audience``."""
    return issue_token(
        keyset,
        token_type=TYPE_APP,
        issuer=issuer,
        audience=audience,
        email=email,
        sub=sub,
        idp=idp,
        groups=groups,
        amr=amr,
        ttl_seconds=ttl_seconds,
        now=now,
        extra=extra,
    )


def issue_portal_token(
    keyset: KeySet,
    *,
    issuer: str,
    audience: str,
    email: str,
    sub: str,
    idp: str,
    groups: Sequence[str] | None = None,
    amr: Sequence[str] | None = None,
    ttl_seconds: int,
    now: float,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """A ``portal`` token: the global session on the portal host."""
    return issue_token(
        keyset,
        token_type=TYPE_PORTAL,
        issuer=issuer,
        audience=audience,
        email=email,
        sub=sub,
        idp=idp,
        groups=groups,
        amr=amr,
        ttl_seconds=ttl_seconds,
        now=now,
        extra=extra,
    )


# --------------------------------------------------------------------------- cache


class VerifiedTokenCache:
    """Bounded LRU of tokens whose signature was verified, keyed by SHA-256 of the token.

    An entry remembers the signing ``kid`` and the parsed claims; it is dropped once ``exp`` is
    reached and never returned after it. The verifier re-checks on every hit that the ``kid``
    still verifies in its key set (so a key leaving the set invalidates its tokens at once) and
    re-runs every claim check (issuer, type, audience, times), so one cache may be shared by
    verifiers of different token types. Not thread-safe (one per event loop).
    """

    def __init__(self, maxsize: int = DEFAULT_CACHE_SIZE) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._entries: OrderedDict[bytes, Claims] = OrderedDict()

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def get(self, token: str, now: float) -> Claims | None:
        key = self._key(token)
        claims = self._entries.get(key)
        if claims is None:
            return None
        if now >= claims.exp:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return claims

    def put(self, token: str, claims: Claims, now: float) -> None:
        if now >= claims.exp:
            return
        key = self._key(token)
        self._entries[key] = claims
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


# --------------------------------------------------------------------------- verify


_JWS = jwt.PyJWS(algorithms=list(ALGORITHMS))
#: the one signature routine per algorithm; the token's header never chooses among them freely
_VERIFIERS: dict[str, Algorithm] = {
    "ES256": ECAlgorithm(ECAlgorithm.SHA256),
    "RS256": RSAAlgorithm(RSAAlgorithm.SHA256),
}
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class TokenVerifier:
    """Checks tokens of one type (``app`` by default) from one issuer against a key set.

    ``keyset`` may be replaced (``verifier.keyset = new``) when another process rotated keys;
    cached tokens of keys no longer in the set then fail at once.
    """

    def __init__(
        self,
        keyset: KeySet,
        issuer: str,
        *,
        token_type: TokenType = TYPE_APP,
        leeway_seconds: float = DEFAULT_LEEWAY_SECONDS,
        cache: VerifiedTokenCache | None = None,
    ) -> None:
        self.keyset = keyset
        self.issuer = issuer
        self.token_type = token_type
        self.leeway = leeway_seconds
        self.cache = cache if cache is not None else VerifiedTokenCache()

    def verify(self, token: str, audience: str, now: float) -> Claims:
        """The claims of ``token`` if valid for ``audience`` at ``now``, else a ``TokenError``."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
            raise MalformedTokenError("not a token")
        claims = self.cache.get(token, now)
        if claims is None or self.keyset.verification_key(claims.kid, now) is None:
            claims = self._verify_signature(token, now)
            self.cache.put(token, claims, now)
        self._check_claims(claims, audience, now)
        return claims

    def recheck(self, claims: Claims, audience: str, now: float) -> None:
        """Every check of :meth:`verify` that can change for a token already verified by this
        verifier (its key still verifies at ``now``, issuer, type, audience, times): what a
        hit in the verified-token cache is checked against, for a caller that keeps the
        claims :meth:`verify` returned (it must keep them per token and per verifier).
        Raises the same ``TokenError``s."""
        if self.keyset.verification_key(claims.kid, now) is None:
            raise UnknownKeyError(f"no valid key with kid {claims.kid!r}")
        self._check_claims(claims, audience, now)

    def _verify_signature(self, token: str, now: float) -> Claims:
        try:
            header_b64, payload_b64, signature_b64 = token.split(".")
        except ValueError:
            raise MalformedTokenError("a token has three dot-separated parts") from None
        header = _json_object(_segment(header_b64), "header")
        kid, alg = header.get("kid"), header.get("alg")
        if not isinstance(kid, str) or not isinstance(alg, str):
            raise MalformedTokenError("header needs string 'kid' and 'alg'")
        if "crit" in header or "b64" in header:
            raise MalformedTokenError("unsupported header parameters")
        key = self.keyset.verification_key(kid, now)
        if key is None:
            raise UnknownKeyError(f"no valid key with kid {kid!r}")
        if alg != key.algorithm:
            raise AlgorithmMismatchError(f"alg {alg!r} is not the key's {key.algorithm}")
        signature = _segment(signature_b64)
        payload = _segment(payload_b64)  # all three parts are ASCII from here on
        signing_input = token[: len(header_b64) + 1 + len(payload_b64)].encode("ascii")
        if not _VERIFIERS[key.algorithm].verify(signing_input, key.public_key, signature):
            raise BadSignatureError("signature does not verify")
        return _parse_claims(_json_object(payload, "payload"), key.kid)

    def _check_claims(self, claims: Claims, audience: str, now: float) -> None:
        if claims.iss != self.issuer:
            raise WrongIssuerError(f"issuer {claims.iss!r}")
        if claims.type != self.token_type:
            raise WrongTokenTypeError(f"a {claims.type!r} token, expected {self.token_type!r}")
        if audience not in claims.aud:
            raise WrongAudienceError("not issued for this audience")
        if now >= claims.exp:
            raise TokenExpiredError("expired")
        if claims.nbf > now + self.leeway:
            raise TokenNotYetValidError("not valid yet")
        if claims.iat > now + self.leeway:
            raise TokenNotYetValidError("issued in the future")


def _segment(text: str) -> bytes:
    """Strict, canonical base64url (no padding, no stray characters, no spare bits)."""
    if len(text) % 4 == 1 or not _BASE64URL.fullmatch(text):
        raise MalformedTokenError("a part is not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") != text:
        raise MalformedTokenError("a part is not canonical base64url")
    return data


def _json_object(data: bytes, name: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise MalformedTokenError(f"the {name} is not JSON") from None
    if not isinstance(value, dict):
        raise MalformedTokenError(f"the {name} is not a JSON object")
    return value


def _number(payload: Mapping[str, Any], name: str) -> float:
    value = payload.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool) or value != value:
        raise MalformedTokenError(f"claim {name!r} must be a number")
    return value  # int or float, as sent


def _string(payload: Mapping[str, Any], name: str, *, shared: bool = False) -> str:
    value = payload.get(name)
    if not isinstance(value, str):
        raise MalformedTokenError(f"claim {name!r} must be a string")
    # values repeated across many cached tokens (issuer, type, IdP) are stored once
    return sys.intern(value) if shared else value


def _strings(payload: Mapping[str, Any], name: str) -> tuple[str, ...] | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedTokenError(f"claim {name!r} must be a list of strings")
    return tuple(sys.intern(v) for v in value)


def _parse_claims(payload: dict[str, Any], kid: str) -> Claims:
    aud = payload.get("aud")
    audiences = (sys.intern(aud),) if isinstance(aud, str) else _strings(payload, "aud")
    if not audiences:
        raise MalformedTokenError("claim 'aud' is missing")
    return Claims(
        iss=_string(payload, "iss", shared=True),
        aud=audiences,
        sub=_string(payload, "sub"),
        email=_string(payload, "email"),
        iat=_number(payload, "iat"),
        nbf=_number(payload, "nbf"),
        exp=_number(payload, "exp"),
        type=_string(payload, "type", shared=True),
        idp=_string(payload, "idp", shared=True),
        jti=_string(payload, "jti"),
        groups=_strings(payload, "groups"),
        amr=_strings(payload, "amr"),
        kid=kid,
        extra=_extra(payload),
    )


_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


def _extra(payload: dict[str, Any]) -> Mapping[str, Any]:
    if len(payload) <= len(RESERVED_CLAIMS) and RESERVED_CLAIMS.issuperset(payload):
        return _NO_EXTRA
    return MappingProxyType({k: v for k, v in payload.items() if k not in RESERVED_CLAIMS})
