"""OpenID Connect relying party: what zerogate needs to log a user in with an OIDC provider.

This module owns the protocol (docs/configuration.md, "OpenID Connect"): discovery (the provider's
metadata, whose ``issuer`` must equal the configured one), the authorization request (code flow with
PKCE S256, ``state`` and ``nonce``), the token exchange (``client_secret_basic`` or
``client_secret_post``), id_token validation, userinfo, and turning the claims into an identity
(email, groups, ``amr``).

Everything that can be pure is: ``parse_discovery``, ``authorization_request``,
``token_request``, ``parse_token_response``, ``validate_id_token``, ``identity_from_claims``
take values and return values. ``OidcClient`` adds the network through an injected
``Fetch`` (the portal passes one built on aiohttp; tests pass fakes), caches the discovery
document and the JWKS, and refetches the JWKS when an unknown ``kid`` appears, at most once per
``jwks_min_refetch`` seconds.

id_token signatures are checked with PyJWT against the provider's JWKS only: the ``kid`` picks a
key from that set, the ``alg`` must be an asymmetric algorithm the provider announces and that
fits the key's type, so ``alg: none``, HS256 keyed with a public key, and keys carried in the
token's header (``jwk``, ``jku``, ``x5u``) are all refused. authlib provides the OAuth parts
(PKCE challenge, authorization URL, discovery field checks); its ``jose`` package is deprecated
in authlib 1.9, hence PyJWT, which zerogate already uses for its own tokens.

Every failure is an ``OidcError`` with a stable ``reason`` (for logs and metrics) and a message
for the log; the portal turns them into pages.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlencode

import jwt
from authlib.common.security import is_secure_transport
from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.discovery import OpenIDProviderMetadata

AuthMethod = Literal["client_secret_basic", "client_secret_post"]
AUTH_METHODS: tuple[AuthMethod, ...] = ("client_secret_basic", "client_secret_post")

#: id_token signature algorithms zerogate accepts (never ``none``, never a shared-secret HS*)
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_KEY_TYPE = {alg: "RSA" for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")} | {
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
    "EdDSA": "OKP",
}
_EC_CURVE = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_HASH = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}
#: header parameters that would let the token choose its own key or change the signature rules
_FORBIDDEN_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c", "crit", "b64"})
MIN_RSA_BITS = 2048

#: tolerance for clocks that disagree (``exp``, ``nbf``, ``iat``)
LEEWAY_SECONDS = 60.0
#: an id_token fresh from the token endpoint: one issued longer ago than this is refused
MAX_ID_TOKEN_AGE_SECONDS = 600.0
DISCOVERY_TTL_SECONDS = 3600.0
#: a stale discovery document is still used for this long when the provider cannot be reached
DISCOVERY_STALE_SECONDS = 86400.0
#: keys are refetched after this long even when every ``kid`` is known (removed keys go away)
JWKS_MAX_AGE_SECONDS = 3600.0
#: an unknown ``kid`` triggers a refetch at most this often
JWKS_MIN_REFETCH_SECONDS = 60.0
#: more groups than this (or more text) is refused rather than cut: a cut list could drop the
#: very group an exclude rule looks for
MAX_GROUPS = 100
MAX_GROUPS_CHARS = 2000
#: authentication methods (``amr``) a login may carry, and characters in all of them (the
#: list goes into the session cookie and every application's JWT)
MAX_AMR = 16
MAX_AMR_CHARS = 256
MAX_TOKEN_LENGTH = 16_384


# --------------------------------------------------------------------------- errors


class OidcError(Exception):
    """A login that must not go on. ``reason``: a short stable code for logs and metrics."""

    reason: ClassVar[str] = "oidc_error"


class ProviderUnavailable(OidcError):
    reason = "provider_unreachable"


class DiscoveryError(OidcError):
    reason = "discovery_invalid"


class ClientConfigError(OidcError):
    reason = "client_misconfigured"


class CodeRejected(OidcError):
    """The token endpoint refused the code (used, expired, PKCE or redirect mismatch)."""

    reason = "code_rejected"


class ClientRejected(OidcError):
    """The token endpoint refused zerogate's client credentials."""

    reason = "client_rejected"


class TokenResponseError(OidcError):
    reason = "token_response_invalid"


class IdTokenError(OidcError):
    reason = "id_token_invalid"


class IdTokenMalformed(IdTokenError):
    reason = "id_token_malformed"


class AlgorithmNotAllowed(IdTokenError):
    reason = "alg_not_allowed"


class UnknownSigningKey(IdTokenError):
    reason = "unknown_kid"


class BadIdTokenSignature(IdTokenError):
    reason = "bad_signature"


class WrongIssuer(IdTokenError):
    reason = "wrong_issuer"


class WrongAudience(IdTokenError):
    reason = "wrong_audience"


class WrongAuthorizedParty(IdTokenError):
    reason = "wrong_azp"


class IdTokenExpired(IdTokenError):
    reason = "expired"


class IdTokenTime(IdTokenError):
    """``iat`` or ``nbf`` out of range (issued in the future, or long ago)."""

    reason = "bad_time"


class NonceMismatch(IdTokenError):
    reason = "nonce_mismatch"


class AccessTokenHashMismatch(IdTokenError):
    reason = "at_hash_mismatch"


class ClaimsError(OidcError):
    reason = "claims_invalid"


class EmailMissing(ClaimsError):
    reason = "email_missing"


class EmailUnverified(ClaimsError):
    reason = "email_unverified"

    def __init__(self, email: str) -> None:
        # repr: the address is as the provider sent it (it may hold control characters)
        super().__init__(f"{email[:100]!r}: email_verified is not true")
        self.email = email


class GroupsUnusable(ClaimsError):
    """Too many groups, an overage marker instead of groups, or a malformed groups claim."""

    reason = "groups_unusable"


class UserinfoError(ClaimsError):
    reason = "userinfo_invalid"


# --------------------------------------------------------------------------- HTTP seam


@dataclass(frozen=True)
class HttpRequest:
    method: Literal["GET", "POST"]
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    content_type: str = "application/json"

    def json(self) -> Any:
        return json.loads(self.body)


class FetchError(Exception):
    """The request could not be made (connection refused, timeout, TLS, too large...)."""


#: performs one HTTP request; raises ``FetchError`` when no response could be had
Fetch = Callable[[HttpRequest], Awaitable[HttpResponse]]


async def _fetch(fetch: Fetch, request: HttpRequest, what: str) -> HttpResponse:
    try:
        response = await fetch(request)
    except FetchError as exc:
        raise ProviderUnavailable(f"{what}: {exc}") from None
    if response.status >= 500:
        raise ProviderUnavailable(f"{what}: HTTP {response.status}")
    return response


def _json_object(response: HttpResponse, what: str, error: type[OidcError]) -> dict[str, Any]:
    try:
        data = response.json()
    except (ValueError, UnicodeDecodeError):
        raise error(f"{what}: not JSON (HTTP {response.status})") from None
    if not isinstance(data, dict):
        raise error(f"{what}: not a JSON object")
    return data


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class ProviderMetadata:
    """The parts of the provider's discovery document zerogate uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    id_token_algorithms: frozenset[str]
    token_auth_methods: tuple[str, ...] | None
    #: RFC 9207: the provider sends ``iss`` with the authorization response
    iss_parameter: bool = False


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def parse_discovery(doc: Mapping[str, Any], expected_issuer: str) -> ProviderMetadata:
    """Check a discovery document: required fields (https, or http on a loopback host), the code
    flow, RS-/ES-/PS-/EdDSA signatures, and ``issuer`` exactly equal to the configured one."""
    meta = OpenIDProviderMetadata(dict(doc))
    try:
        meta.validate_issuer()
        meta.validate_authorization_endpoint()
        meta.validate_token_endpoint()
        meta.validate_jwks_uri()
        meta.validate_id_token_signing_alg_values_supported()
    except ValueError as exc:
        raise DiscoveryError(f"discovery document: {exc}") from None
    issuer = doc["issuer"]
    if issuer != expected_issuer:
        raise DiscoveryError(
            f"the provider says its issuer is {issuer!r}, the configuration says "
            f"{expected_issuer!r}: copy the issuer exactly (a trailing slash counts)"
        )
    for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise DiscoveryError(f"discovery document: {key!r} is missing")
    response_types = doc.get("response_types_supported")
    if isinstance(response_types, list) and "code" not in response_types:
        raise DiscoveryError("the provider does not support the authorization code flow")
    algorithms = frozenset(doc["id_token_signing_alg_values_supported"]) & ASYMMETRIC_ALGORITHMS
    if not algorithms:
        raise DiscoveryError(
            "the provider signs id_tokens only with algorithms zerogate refuses "
            f"({', '.join(map(str, doc['id_token_signing_alg_values_supported']))})"
        )
    methods = doc.get("token_endpoint_auth_methods_supported")
    userinfo = doc.get("userinfo_endpoint")
    if userinfo is not None and (
        not isinstance(userinfo, str) or not is_secure_transport(userinfo)
    ):
        raise DiscoveryError('discovery document: "userinfo_endpoint" MUST use "https" scheme')
    return ProviderMetadata(
        issuer=issuer,
        authorization_endpoint=doc["authorization_endpoint"],
        token_endpoint=doc["token_endpoint"],
        jwks_uri=doc["jwks_uri"],
        userinfo_endpoint=userinfo if isinstance(userinfo, str) and userinfo else None,
        id_token_algorithms=algorithms,
        token_auth_methods=tuple(map(str, methods)) if isinstance(methods, list) else None,
        iss_parameter=doc.get("authorization_response_iss_parameter_supported") is True,
    )


# --------------------------------------------------------------------------- client settings


@dataclass(frozen=True)
class ClientSettings:
    """One configured provider as the protocol needs it (secret already read from the env)."""

    name: str
    issuer: str
    client_id: str
    client_secret: str | None
    redirect_uri: str
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    groups_claim: str | None = None
    #: ``None``: ``client_secret_basic`` unless the provider lists only ``client_secret_post``
    auth_method: AuthMethod | None = None


def choose_auth_method(settings: ClientSettings, meta: ProviderMetadata) -> AuthMethod:
    """The configured method, checked against what the provider announces; else basic, or post
    when the provider supports only that (OAuth's default is basic)."""
    supported = meta.token_auth_methods
    if settings.auth_method is not None:
        if supported is not None and settings.auth_method not in supported:
            raise ClientConfigError(
                f"token_endpoint_auth_method {settings.auth_method} is not supported by the "
                f"provider ({', '.join(supported)})"
            )
        return settings.auth_method
    if supported is None or "client_secret_basic" in supported:
        return "client_secret_basic"
    if "client_secret_post" in supported:
        return "client_secret_post"
    raise ClientConfigError(
        f"the provider supports neither client_secret_basic nor client_secret_post "
        f"({', '.join(supported)})"
    )


# --------------------------------------------------------------------------- authorization


@dataclass(frozen=True)
class AuthRequest:
    """Where to send the browser, and what to keep (server-side) until the callback."""

    url: str
    state: str
    nonce: str
    code_verifier: str


def authorization_request(
    meta: ProviderMetadata,
    settings: ClientSettings,
    *,
    state: str | None = None,
    nonce: str | None = None,
    code_verifier: str | None = None,
) -> AuthRequest:
    """The authorization URL: code flow, PKCE S256, fresh ``state`` and ``nonce``."""
    state = state or secrets.token_urlsafe(32)
    nonce = nonce or secrets.token_urlsafe(32)
    code_verifier = code_verifier or secrets.token_urlsafe(48)  # 64 chars of [A-Za-z0-9_-]
    params = [
        ("response_type", "code"),
        ("client_id", settings.client_id),
        ("redirect_uri", settings.redirect_uri),
        ("scope", " ".join(settings.scopes)),
        ("state", state),
        ("nonce", nonce),
        ("code_challenge", create_s256_code_challenge(code_verifier)),
        ("code_challenge_method", "S256"),
    ]
    url = add_params_to_uri(meta.authorization_endpoint, params)
    return AuthRequest(url=url, state=state, nonce=nonce, code_verifier=code_verifier)


# --------------------------------------------------------------------------- token exchange


def token_request(
    meta: ProviderMetadata, settings: ClientSettings, code: str, code_verifier: str
) -> HttpRequest:
    """The POST to the token endpoint that trades the code (with the PKCE verifier) for tokens."""
    if not settings.client_secret:
        raise ClientConfigError(
            f"identity provider {settings.name!r} has no client secret: set client_secret_env "
            "and that environment variable on every zerogate server"
        )
    method = choose_auth_method(settings, meta)
    fields = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", settings.redirect_uri),
        ("code_verifier", code_verifier),
    ]
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Accept": "application/json",
    }
    if method == "client_secret_basic":
        # RFC 6749 §2.3.1: each part form-urlencoded before Basic (same bytes for plain secrets)
        user = quote(settings.client_id, safe="")
        password = quote(settings.client_secret, safe="")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    else:
        fields += [("client_id", settings.client_id), ("client_secret", settings.client_secret)]
    return HttpRequest("POST", meta.token_endpoint, headers, urlencode(fields).encode("ascii"))


def credentials_probe(meta: ProviderMetadata, settings: ClientSettings) -> HttpRequest:
    """A token request with a code no provider issued: the provider authenticates the client
    first (RFC 6749 §5.2), so its error says whether the client id and secret are right
    (``invalid_grant``: they are; ``invalid_client`` / 401: they are not) without a login."""
    unusable = "zerogate-connection-test-" + secrets.token_urlsafe(16)
    return token_request(meta, settings, unusable, secrets.token_urlsafe(48))


def judge_probe(response: HttpResponse) -> tuple[bool | None, str]:
    """What ``credentials_probe``'s answer says: (True, why) the credentials were accepted,
    (False, why) refused, (None, why) the answer does not tell."""
    error = ""
    try:
        doc = response.json()
        if isinstance(doc, dict):
            error = str(doc.get("error", ""))[:100]
    except (ValueError, UnicodeDecodeError):
        pass
    if response.status == 401 or error == "invalid_client":
        return False, "the provider refused the client id or secret (invalid_client)"
    if response.status == 400 and error == "invalid_grant":
        return (
            True,
            "the provider accepted the client id and secret (invalid_grant for a test code)",
        )
    if response.status == 200:
        return None, "the provider accepted a code it never issued: check the provider"
    detail = f" ({error})" if error else ""
    return None, f"the token endpoint answered HTTP {response.status}{detail}; could not tell"


@dataclass(frozen=True)
class TokenResponse:
    id_token: str
    access_token: str | None


def parse_token_response(response: HttpResponse) -> TokenResponse:
    if response.status != 200:
        error = ""
        description = ""
        try:
            data = response.json()
            if isinstance(data, dict):
                error = str(data.get("error", ""))[:100]
                description = str(data.get("error_description", ""))[:300]
        except (ValueError, UnicodeDecodeError):
            pass
        detail = f"token endpoint: HTTP {response.status} {error} {description}".strip()
        if error in ("invalid_client", "unauthorized_client") or response.status == 401:
            raise ClientRejected(detail)
        if error == "invalid_grant":
            raise CodeRejected(detail)
        raise TokenResponseError(detail)
    data = _json_object(response, "token endpoint", TokenResponseError)
    id_token = data.get("id_token")
    if not isinstance(id_token, str) or not id_token:
        raise TokenResponseError("token endpoint: no id_token (is 'openid' among the scopes?)")
    access_token = data.get("access_token")
    if access_token is not None:
        if not isinstance(access_token, str):
            raise TokenResponseError("token endpoint: access_token is not a string")
        token_type = data.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise TokenResponseError(f"token endpoint: token_type {token_type!r}, not Bearer")
    return TokenResponse(id_token=id_token, access_token=access_token)


# --------------------------------------------------------------------------- id_token


def _b64decode(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (ValueError, TypeError):
        raise IdTokenMalformed("a segment is not base64url") from None


def unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, parsed but not trusted (to pick a key)."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
        raise IdTokenMalformed("not a compact JWS")
    try:
        header = json.loads(_b64decode(token.split(".", 1)[0]))
    except (ValueError, UnicodeDecodeError):
        raise IdTokenMalformed("the header is not JSON") from None
    if not isinstance(header, dict):
        raise IdTokenMalformed("the header is not a JSON object")
    return header


def _pick_key(header: Mapping[str, Any], keys: Iterable[Mapping[str, Any]]) -> Mapping[str, Any]:
    alg = header.get("alg")
    kid = header.get("kid")
    wanted_type = _KEY_TYPE[str(alg)]
    candidates = [
        k
        for k in keys
        if k.get("kty") == wanted_type
        and k.get("use", "sig") == "sig"
        and k.get("alg", alg) == alg
        and (alg not in _EC_CURVE or k.get("crv") == _EC_CURVE[str(alg)])
        and (alg != "EdDSA" or k.get("crv") in ("Ed25519", "Ed448"))
    ]
    if kid is not None:
        candidates = [k for k in candidates if k.get("kid") == kid]
    elif len(candidates) != 1:
        raise UnknownSigningKey("the id_token names no kid and the JWKS has several keys")
    if not candidates:
        raise UnknownSigningKey(f"no key {kid!r} for {alg} in the provider's JWKS")
    return candidates[0]


def check_header(header: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Refuse ``none``, symmetric and unannounced algorithms, and self-describing keys."""
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise IdTokenMalformed("the header has no alg")
    if alg not in ASYMMETRIC_ALGORITHMS or alg not in frozenset(allowed):
        raise AlgorithmNotAllowed(f"alg {alg!r} is not allowed for this provider's id_tokens")
    bad = _FORBIDDEN_HEADERS.intersection(header)
    if bad:
        raise IdTokenMalformed(f"header parameters {', '.join(sorted(bad))} are not accepted")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise IdTokenMalformed("kid is not a string")


def verify_signature(
    token: str, jwks: Iterable[Mapping[str, Any]], allowed: Iterable[str]
) -> dict[str, Any]:
    """The payload of ``token`` when a key of ``jwks`` signed it with an allowed algorithm."""
    header = unverified_header(token)
    check_header(header, allowed)
    jwk = _pick_key(header, jwks)
    alg = str(header["alg"])
    try:
        key = jwt.PyJWK(dict(jwk), algorithm=alg)
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
        raise UnknownSigningKey(
            f"the provider's key {jwk.get('kid')!r} is unusable: {exc}"
        ) from None
    size = getattr(key.key, "key_size", None)
    if _KEY_TYPE[alg] == "RSA" and isinstance(size, int) and size < MIN_RSA_BITS:
        raise UnknownSigningKey(f"the provider's RSA key has {size} bits (<{MIN_RSA_BITS})")
    try:
        decoded = jwt.PyJWS().decode_complete(token, key=key, algorithms=[alg])
    except jwt.InvalidSignatureError:
        raise BadIdTokenSignature("the id_token signature does not verify") from None
    except jwt.PyJWTError as exc:
        raise IdTokenMalformed(f"id_token: {exc}") from None
    try:
        payload = json.loads(decoded["payload"])
    except (ValueError, UnicodeDecodeError):
        raise IdTokenMalformed("the payload is not JSON") from None
    if not isinstance(payload, dict):
        raise IdTokenMalformed("the payload is not a JSON object")
    return payload


def _number(claims: Mapping[str, Any], name: str, required: bool = True) -> float | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise IdTokenMalformed(f"claim {name!r} must be a number")
    return float(value)


def check_id_token_claims(
    claims: Mapping[str, Any],
    *,
    issuer: str,
    client_id: str,
    nonce: str,
    now: float,
    access_token: str | None = None,
    alg: str | None = None,
    leeway: float = LEEWAY_SECONDS,
    max_age: float = MAX_ID_TOKEN_AGE_SECONDS,
) -> None:
    """OpenID Connect Core §3.1.3.7: ``iss``, ``aud``, ``azp``, ``exp``, ``iat``, ``nonce``
    (and ``nbf``, ``at_hash`` when present)."""
    if claims.get("iss") != issuer:
        raise WrongIssuer(f"iss {claims.get('iss')!r}, expected {issuer!r}")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise IdTokenMalformed("claim 'aud' must be a string or a list of strings")
    if client_id not in audiences:
        raise WrongAudience(f"aud {audiences!r} does not hold the client_id")
    azp = claims.get("azp")
    if (len(audiences) > 1 or azp is not None) and azp != client_id:
        raise WrongAuthorizedParty(f"azp {azp!r} is not the client_id")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise IdTokenMalformed("claim 'sub' is missing")
    exp = _number(claims, "exp")
    iat = _number(claims, "iat")
    assert exp is not None and iat is not None
    if now >= exp + leeway:
        raise IdTokenExpired(f"expired {int(now - exp)} s ago")
    if iat > now + leeway:
        raise IdTokenTime(f"iat {int(iat - now)} s in the future")
    if iat < now - max_age - leeway:
        raise IdTokenTime(f"issued {int(now - iat)} s ago (at most {int(max_age)} s)")
    nbf = _number(claims, "nbf", required=False)
    if nbf is not None and nbf > now + leeway:
        raise IdTokenTime("not valid yet (nbf)")
    sent = claims.get("nonce")
    if not isinstance(sent, str) or not hmac.compare_digest(sent.encode(), nonce.encode()):
        raise NonceMismatch("the nonce is missing or not the one sent")
    at_hash = claims.get("at_hash")
    if at_hash is not None and access_token is not None and alg is not None:
        digest = _HASH.get(alg[-3:], hashlib.sha512)(access_token.encode()).digest()
        expected = base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode()
        if not isinstance(at_hash, str) or not hmac.compare_digest(at_hash, expected):
            raise AccessTokenHashMismatch("at_hash does not match the access token")


def validate_id_token(
    token: str,
    *,
    jwks: Iterable[Mapping[str, Any]],
    allowed_algorithms: Iterable[str],
    issuer: str,
    client_id: str,
    nonce: str,
    now: float,
    access_token: str | None = None,
) -> dict[str, Any]:
    """The verified claims of an id_token (signature first, then every claim check)."""
    claims = verify_signature(token, jwks, allowed_algorithms)
    check_id_token_claims(
        claims,
        issuer=issuer,
        client_id=client_id,
        nonce=nonce,
        now=now,
        access_token=access_token,
        alg=str(unverified_header(token)["alg"]),
    )
    return claims


# --------------------------------------------------------------------------- claims → identity


@dataclass(frozen=True)
class OidcIdentity:
    """Who logged in, as the provider vouches for it."""

    email: str
    sub: str
    groups: tuple[str, ...]
    amr: tuple[str, ...]
    #: the ``groups_claim`` was present (``groups`` may still be empty)
    groups_known: bool = False


def claim(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by name; when absent, ``a.b.c`` walks nested objects (Keycloak ``realm_access``).
    Names that contain dots themselves (Auth0's ``https://example.com/groups``) match first."""
    if name in claims:
        return claims[name]
    node: Any = claims
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _overage(claims: Mapping[str, Any], name: str) -> bool:
    """Entra ID sends ``_claim_names: {groups: ...}`` instead of the groups when there are
    too many for a token."""
    names = claims.get("_claim_names")
    return isinstance(names, Mapping) and name in names


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, int) and not isinstance(value, bool):
        return (str(value),)
    if not isinstance(value, list):
        raise GroupsUnusable(f"claim {what!r} is not a list of strings")
    out: list[str] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise GroupsUnusable(f"claim {what!r} holds a {type(item).__name__}")
        out.append(str(item))
    return tuple(dict.fromkeys(out))


def needs_userinfo(claims: Mapping[str, Any], groups_claim: str | None) -> bool:
    """Fetch userinfo when the id_token lacks the email, or the groups claim zerogate reads."""
    if not isinstance(claims.get("email"), str):
        return True
    return (
        groups_claim is not None
        and claim(claims, groups_claim) is None
        and not _overage(claims, groups_claim)
    )


def identity_from_claims(
    claims: Mapping[str, Any],
    groups_claim: str | None,
    userinfo: Mapping[str, Any] | None = None,
) -> OidcIdentity:
    """Email (refused when ``email_verified`` is false), groups from ``groups_claim``, ``amr``.

    id_token claims win; userinfo fills what the id_token lacks (same ``sub`` only)."""
    merged: dict[str, Any] = dict(claims)
    if userinfo is not None:
        if userinfo.get("sub") != claims.get("sub"):
            raise UserinfoError("userinfo is about another subject than the id_token")
        for key, value in userinfo.items():
            merged.setdefault(key, value)
        if "email" not in claims and "email" in userinfo:
            # the verification flag belongs to the address it came with
            merged["email_verified"] = userinfo.get("email_verified", claims.get("email_verified"))
    email = merged.get("email")
    if not isinstance(email, str) or "@" not in email or len(email) > 254:
        raise EmailMissing("the provider sent no email address (is 'email' among the scopes?)")
    verified = merged.get("email_verified")
    # only a plain yes counts: True or "true" (some providers send strings); absent means the
    # provider does not say (Entra ID), as before; anything else (False, " false", 0, "0",
    # "no") is not
    if verified is not None and verified is not True and verified != "true":
        raise EmailUnverified(email)
    groups: tuple[str, ...] = ()
    known = False
    if groups_claim is not None:
        if _overage(merged, groups_claim) and claim(merged, groups_claim) is None:
            raise GroupsUnusable(
                f"the provider left out {groups_claim!r} (too many groups for a token)"
            )
        value = claim(merged, groups_claim)
        if value is not None:
            groups = _strings(value, groups_claim)
            known = True
    if len(groups) > MAX_GROUPS or sum(len(g) for g in groups) > MAX_GROUPS_CHARS:
        raise GroupsUnusable(
            f"{len(groups)} groups: more than zerogate carries in a session "
            f"({MAX_GROUPS} groups, {MAX_GROUPS_CHARS} characters)"
        )
    amr_value = merged.get("amr")
    amr: tuple[str, ...] = ()
    if amr_value is not None:
        try:
            amr = _strings(amr_value, "amr")
        except GroupsUnusable as exc:
            raise ClaimsError(str(exc)) from None
        if len(amr) > MAX_AMR or sum(len(a) for a in amr) > MAX_AMR_CHARS:
            raise ClaimsError(
                f"claim 'amr' lists {len(amr)} methods: more than zerogate carries in a session "
                f"({MAX_AMR} methods, {MAX_AMR_CHARS} characters)"
            )
    return OidcIdentity(
        # never repaired here: no strip, and only ASCII is lower-cased (the Kelvin sign must not
        # become a k); the portal refuses what is not a canonical address (``check_email``)
        email=email.lower() if email.isascii() else email,
        sub=str(merged["sub"]),
        groups=groups,
        amr=amr,
        groups_known=known,
    )


# --------------------------------------------------------------------------- the client


class OidcClient:
    """One provider, one process: discovery and JWKS caches, and the two steps of a login.

    ``begin()`` → send the browser to ``AuthRequest.url``, keep state/nonce/verifier;
    ``finish(code, ...)`` → token exchange, id_token validation, userinfo when needed, identity.
    """

    def __init__(
        self,
        settings: ClientSettings,
        fetch: Fetch,
        *,
        clock: Callable[[], float] = time.time,
        discovery_ttl: float = DISCOVERY_TTL_SECONDS,
        jwks_max_age: float = JWKS_MAX_AGE_SECONDS,
        jwks_min_refetch: float = JWKS_MIN_REFETCH_SECONDS,
    ) -> None:
        self.settings = settings
        self.fetch = fetch
        self.clock = clock
        self.discovery_ttl = discovery_ttl
        self.jwks_max_age = jwks_max_age
        self.jwks_min_refetch = jwks_min_refetch
        self._meta: ProviderMetadata | None = None
        self._meta_at = 0.0
        self._keys: list[dict[str, Any]] = []
        self._keys_at: float | None = None
        self._lock = asyncio.Lock()
        #: how many times the JWKS was fetched (for tests and metrics)
        self.jwks_fetches = 0

    async def metadata(self) -> ProviderMetadata:
        now = self.clock()
        if self._meta is not None and now - self._meta_at < self.discovery_ttl:
            return self._meta
        async with self._lock:
            if self._meta is not None and self.clock() - self._meta_at < self.discovery_ttl:
                return self._meta
            try:
                meta = await self._discover()
            except (ProviderUnavailable, DiscoveryError):
                if self._meta is not None and now - self._meta_at < DISCOVERY_STALE_SECONDS:
                    return self._meta  # keep logging people in while the provider hiccups
                raise
            self._meta, self._meta_at = meta, self.clock()
            return meta

    async def _discover(self) -> ProviderMetadata:
        url = discovery_url(self.settings.issuer)
        response = await _fetch(self.fetch, HttpRequest("GET", url), "discovery")
        if response.status != 200:
            raise DiscoveryError(f"discovery: HTTP {response.status} from {url}")
        return parse_discovery(
            _json_object(response, "discovery", DiscoveryError), self.settings.issuer
        )

    async def begin(self) -> AuthRequest:
        return authorization_request(await self.metadata(), self.settings)

    async def jwks(self, *, unknown_kid: bool = False) -> list[dict[str, Any]]:
        """The provider's keys: fetched when none are held or they are old, and again when a
        token names an unknown ``kid`` (at most once per ``jwks_min_refetch`` seconds)."""
        meta = await self.metadata()
        now = self.clock()
        at = self._keys_at
        stale = at is None or now - at >= self.jwks_max_age
        may_refetch = unknown_kid and (at is None or now - at >= self.jwks_min_refetch)
        if not stale and not may_refetch:
            return self._keys
        async with self._lock:
            if self._keys_at != at:  # someone else fetched meanwhile
                return self._keys
            response = await _fetch(self.fetch, HttpRequest("GET", meta.jwks_uri), "jwks")
            if response.status != 200:
                raise ProviderUnavailable(f"jwks: HTTP {response.status}")
            data = _json_object(response, "jwks", DiscoveryError)
            keys = data.get("keys")
            if not isinstance(keys, list):
                raise DiscoveryError("jwks: no 'keys' list")
            self._keys = [k for k in keys if isinstance(k, dict)]
            self._keys_at = self.clock()
            self.jwks_fetches += 1
            return self._keys

    async def validate(
        self, id_token: str, *, nonce: str, access_token: str | None = None
    ) -> dict[str, Any]:
        meta = await self.metadata()
        keys = await self.jwks()

        def check(jwks: list[dict[str, Any]]) -> dict[str, Any]:
            return validate_id_token(
                id_token,
                jwks=jwks,
                allowed_algorithms=meta.id_token_algorithms,
                issuer=meta.issuer,
                client_id=self.settings.client_id,
                nonce=nonce,
                now=self.clock(),
                access_token=access_token,
            )

        try:
            return check(keys)
        except UnknownSigningKey:
            # the provider may have rotated its keys since we fetched them
            fresh = await self.jwks(unknown_kid=True)
            if fresh is keys:
                raise
            return check(fresh)

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        meta = await self.metadata()
        if meta.userinfo_endpoint is None:
            raise UserinfoError("claims are missing and the provider has no userinfo endpoint")
        request = HttpRequest(
            "GET",
            meta.userinfo_endpoint,
            {"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
        )
        response = await _fetch(self.fetch, request, "userinfo")
        if response.status != 200:
            raise UserinfoError(f"userinfo: HTTP {response.status}")
        if "json" not in response.content_type.lower():
            raise UserinfoError(f"userinfo: {response.content_type} (only JSON is supported)")
        return _json_object(response, "userinfo", UserinfoError)

    async def finish(
        self, *, code: str, code_verifier: str, nonce: str, iss: str | None = None
    ) -> OidcIdentity:
        meta = await self.metadata()
        if iss is not None and iss != meta.issuer:
            raise WrongIssuer(f"the authorization response names issuer {iss!r}")
        if iss is None and meta.iss_parameter:
            raise WrongIssuer("the authorization response lacks the iss parameter it announced")
        request = token_request(meta, self.settings, code, code_verifier)
        tokens = parse_token_response(await _fetch(self.fetch, request, "token endpoint"))
        claims = await self.validate(tokens.id_token, nonce=nonce, access_token=tokens.access_token)
        info = None
        if needs_userinfo(claims, self.settings.groups_claim):
            if tokens.access_token is None:
                raise UserinfoError("claims are missing and there is no access token")
            info = await self.userinfo(tokens.access_token)
        return identity_from_claims(claims, self.settings.groups_claim, info)
