"""OIDC without a network: the protocol core (``zerogate.identity.oidc``) with keys and HTTP
answers made here, the ``OidcClient`` caches with a fake fetch and a fake clock, and the model's
``OidcProvider`` (presets, field checks, error messages that name the field).

The end-to-end tests are ``test_oidc_e2e.py`` (a real OpenID provider) and
``test_oidc_fake_provider.py`` (token shapes no real provider sends).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from zerogate.identity import oidc
from zerogate.identity.oidc import (
    ClientSettings,
    FetchError,
    HttpRequest,
    HttpResponse,
    OidcClient,
)
from zerogate.model import ConfigError, OidcProvider, load_text
from zerogate.model.dump import dump_yaml
from zerogate.model.objects import OIDC_PRESETS

ISSUER = "https://idp.example.com"
CLIENT = "zerogate-client"
NOW = 1_800_000_000.0


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def discovery(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "issuer": ISSUER,
        "authorization_endpoint": f"{ISSUER}/authorize",
        "token_endpoint": f"{ISSUER}/token",
        "jwks_uri": f"{ISSUER}/jwks",
        "userinfo_endpoint": f"{ISSUER}/userinfo",
        "response_types_supported": ["code", "id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA", "HS256", "none"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


META = oidc.parse_discovery(discovery(), ISSUER)
SETTINGS = ClientSettings(
    name="corp",
    issuer=ISSUER,
    client_id=CLIENT,
    client_secret="s3cret",
    redirect_uri="https://auth.example.com/.zerogate/oidc/corp/callback",
    groups_claim="groups",
)


class Keys:
    """A provider's signing keys (RSA, EC, Ed25519) and an outsider's."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.ed = ed25519.Ed25519PrivateKey.generate()
        self.foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @staticmethod
    def jwk(key: Any, kid: str, alg: str | None = None) -> dict[str, Any]:
        public = key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = json.loads(RSAAlgorithm.to_jwk(public))
        elif isinstance(public, ec.EllipticCurvePublicKey):
            data = json.loads(ECAlgorithm.to_jwk(public))
        else:
            data = json.loads(OKPAlgorithm.to_jwk(public))
        data["kid"] = kid
        if alg:
            data["alg"] = alg
        return dict(data)

    @property
    def jwks(self) -> list[dict[str, Any]]:
        return [
            self.jwk(self.rsa, "r1", "RS256"),
            self.jwk(self.ec, "e1"),
            self.jwk(self.ed, "o1"),
        ]


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def claims(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "u-1",
        "aud": CLIENT,
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        "nonce": "n-1",
        "email": "Ann@Example.com",
        "email_verified": True,
        "groups": ["staff"],
        "amr": ["pwd", "mfa"],
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def sign(keys: Keys, body: Mapping[str, Any], *, kid: str = "r1", alg: str = "RS256") -> str:
    key: Any = {"r1": keys.rsa, "e1": keys.ec, "o1": keys.ed}.get(kid, keys.foreign)
    return jwt.encode(dict(body), key, algorithm=alg, headers={"kid": kid})


def validate(keys: Keys, token: str, **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "jwks": keys.jwks,
        "allowed_algorithms": META.id_token_algorithms,
        "issuer": ISSUER,
        "client_id": CLIENT,
        "nonce": "n-1",
        "now": NOW,
    }
    args.update(overrides)
    return oidc.validate_id_token(token, **args)


def unsigned(header: Mapping[str, Any], body: Mapping[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        (
            b64url(json.dumps(header).encode()),
            b64url(json.dumps(body).encode()),
            b64url(signature),
        )
    )


# ---------------------------------------------------------------------------- discovery


def test_discovery_keeps_only_the_asymmetric_algorithms() -> None:
    assert frozenset({"RS256", "ES256", "EdDSA"}) == META.id_token_algorithms
    assert META.userinfo_endpoint == f"{ISSUER}/userinfo"


@pytest.mark.parametrize(
    ("doc", "expected", "words"),
    [
        (discovery(issuer=ISSUER + "/"), ISSUER, ["trailing slash", ISSUER + "/"]),
        (discovery(issuer="https://other.example.com"), ISSUER, ["issuer"]),
        (discovery(jwks_uri=None), ISSUER, ["jwks_uri"]),
        (discovery(token_endpoint="http://idp.example.com/token"), ISSUER, ["https"]),
        (discovery(userinfo_endpoint="http://idp.example.com/me"), ISSUER, ["https"]),
        (discovery(response_types_supported=["id_token"]), ISSUER, ["code flow"]),
        (
            discovery(id_token_signing_alg_values_supported=["HS256", "none"]),
            ISSUER,
            ["RS256"],
        ),
    ],
)
def test_a_bad_discovery_document_is_refused(
    doc: dict[str, Any], expected: str, words: list[str]
) -> None:
    with pytest.raises(oidc.DiscoveryError) as info:
        oidc.parse_discovery(doc, expected)
    for word in words:
        assert word in str(info.value)


def test_http_is_accepted_only_on_loopback() -> None:
    local = "http://127.0.0.1:9000"
    doc = {
        k: (v.replace(ISSUER, local) if isinstance(v, str) else v) for k, v in discovery().items()
    }
    assert oidc.parse_discovery(doc, local).issuer == local
    remote = "http://idp.example.com"
    doc = {
        k: (v.replace(ISSUER, remote) if isinstance(v, str) else v) for k, v in discovery().items()
    }
    with pytest.raises(oidc.DiscoveryError, match="https"):
        oidc.parse_discovery(doc, remote)


# ---------------------------------------------------------------------------- authorization


def test_authorization_url_has_pkce_s256_state_and_nonce() -> None:
    meta = oidc.parse_discovery(
        discovery(authorization_endpoint=f"{ISSUER}/auth?tenant=t1"), ISSUER
    )
    request = oidc.authorization_request(meta, SETTINGS)
    parts = urlsplit(request.url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{ISSUER}/auth"
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert q["tenant"] == "t1"  # the endpoint's own query is kept
    assert q["response_type"] == "code"
    assert q["client_id"] == CLIENT
    assert q["redirect_uri"] == SETTINGS.redirect_uri
    assert q["scope"] == "openid email profile"
    assert q["state"] == request.state and len(request.state) >= 32
    assert q["nonce"] == request.nonce and request.nonce != request.state
    assert q["code_challenge_method"] == "S256"
    digest = hashlib.sha256(request.code_verifier.encode()).digest()
    assert q["code_challenge"] == b64url(digest)
    assert 43 <= len(request.code_verifier) <= 128
    assert "code_verifier" not in q
    again = oidc.authorization_request(meta, SETTINGS)
    assert {again.state, again.nonce, again.code_verifier}.isdisjoint(
        {request.state, request.nonce, request.code_verifier}
    )


# ---------------------------------------------------------------------------- token exchange


def form(request: HttpRequest) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.body.decode()).items()}


def test_token_request_with_client_secret_basic_form_encodes_the_credentials() -> None:
    settings = ClientSettings(**{**SETTINGS.__dict__, "client_secret": "a:b+c/d%"})
    request = oidc.token_request(META, settings, "the-code", "the-verifier")
    assert request.method == "POST" and request.url == f"{ISSUER}/token"
    scheme, _, value = request.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    user, _, password = base64.b64decode(value).decode().partition(":")
    assert unquote(user) == CLIENT and unquote(password) == "a:b+c/d%"
    body = form(request)
    assert body == {
        "grant_type": "authorization_code",
        "code": "the-code",
        "redirect_uri": SETTINGS.redirect_uri,
        "code_verifier": "the-verifier",
    }


def test_token_request_with_client_secret_post_puts_the_credentials_in_the_body() -> None:
    settings = ClientSettings(**{**SETTINGS.__dict__, "auth_method": "client_secret_post"})
    request = oidc.token_request(META, settings, "c", "v")
    assert "Authorization" not in request.headers
    assert form(request)["client_id"] == CLIENT
    assert form(request)["client_secret"] == "s3cret"


def test_the_auth_method_follows_the_config_then_the_provider() -> None:
    post_only = oidc.parse_discovery(
        discovery(token_endpoint_auth_methods_supported=["client_secret_post"]), ISSUER
    )
    assert oidc.choose_auth_method(SETTINGS, post_only) == "client_secret_post"
    assert oidc.choose_auth_method(SETTINGS, META) == "client_secret_basic"
    basic = ClientSettings(**{**SETTINGS.__dict__, "auth_method": "client_secret_basic"})
    with pytest.raises(oidc.ClientConfigError, match="not supported"):
        oidc.choose_auth_method(basic, post_only)
    jwt_only = oidc.parse_discovery(
        discovery(token_endpoint_auth_methods_supported=["private_key_jwt"]), ISSUER
    )
    with pytest.raises(oidc.ClientConfigError):
        oidc.choose_auth_method(SETTINGS, jwt_only)


def test_no_secret_is_a_configuration_error() -> None:
    settings = ClientSettings(**{**SETTINGS.__dict__, "client_secret": None})
    with pytest.raises(oidc.ClientConfigError, match="client_secret_env"):
        oidc.token_request(META, settings, "c", "v")


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, {"error": "invalid_grant"}, oidc.CodeRejected),
        (401, {"error": "invalid_client"}, oidc.ClientRejected),
        (400, {"error": "invalid_request"}, oidc.TokenResponseError),
        (200, {"access_token": "a", "token_type": "Bearer"}, oidc.TokenResponseError),
        (200, {"access_token": "a", "token_type": "mac", "id_token": "x"}, oidc.TokenResponseError),
    ],
)
def test_token_endpoint_refusals(status: int, body: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        oidc.parse_token_response(HttpResponse(status, json.dumps(body).encode()))


# ---------------------------------------------------------------------------- id_token


@pytest.mark.parametrize(("kid", "alg"), [("r1", "RS256"), ("e1", "ES256"), ("o1", "EdDSA")])
def test_a_good_id_token_from_each_key_type(keys: Keys, kid: str, alg: str) -> None:
    assert validate(keys, sign(keys, claims(), kid=kid, alg=alg))["sub"] == "u-1"


def test_alg_none_is_refused(keys: Keys) -> None:
    token = unsigned({"alg": "none", "kid": "r1"}, claims())
    with pytest.raises(oidc.AlgorithmNotAllowed):
        validate(keys, token)


def test_hs256_keyed_with_the_public_key_is_refused(keys: Keys) -> None:
    public = keys.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = b64url(json.dumps({"alg": "HS256", "kid": "r1"}).encode())
    body = b64url(json.dumps(claims()).encode())
    mac = hmac.new(public, f"{head}.{body}".encode(), hashlib.sha256).digest()
    with pytest.raises(oidc.AlgorithmNotAllowed):
        validate(keys, f"{head}.{body}.{b64url(mac)}")


def test_an_algorithm_the_provider_does_not_announce_is_refused(keys: Keys) -> None:
    token = sign(keys, claims(), kid="r1", alg="PS256")
    with pytest.raises(oidc.AlgorithmNotAllowed):
        validate(keys, token)


def test_a_key_not_in_the_jwks_is_refused(keys: Keys) -> None:
    with pytest.raises(oidc.UnknownSigningKey):
        validate(keys, sign(keys, claims(), kid="elsewhere"))
    forged = jwt.encode(claims(), keys.foreign, algorithm="RS256", headers={"kid": "r1"})
    with pytest.raises(oidc.BadIdTokenSignature):
        validate(keys, forged)


def test_the_alg_must_fit_the_key(keys: Keys) -> None:
    # an ES256 header naming the RSA key: no EC key with that kid
    token = jwt.encode(claims(), keys.ec, algorithm="ES256", headers={"kid": "r1"})
    with pytest.raises(oidc.UnknownSigningKey):
        validate(keys, token)


@pytest.mark.parametrize("name", ["jwk", "jku", "x5u", "x5c", "crit"])
def test_keys_named_by_the_token_itself_are_refused(keys: Keys, name: str) -> None:
    token = jwt.encode(claims(), keys.foreign, algorithm="RS256", headers={"kid": "r1", name: "x"})
    with pytest.raises(oidc.IdTokenMalformed):
        validate(keys, token)


def test_a_token_without_kid_needs_a_single_candidate_key(keys: Keys) -> None:
    token = jwt.encode(claims(), keys.rsa, algorithm="RS256")
    assert validate(keys, token, jwks=[Keys.jwk(keys.rsa, "r1")])["sub"] == "u-1"
    two = [Keys.jwk(keys.rsa, "r1"), Keys.jwk(keys.foreign, "r2")]
    with pytest.raises(oidc.UnknownSigningKey):
        validate(keys, token, jwks=two)


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_a_short_rsa_key_is_refused(keys: Keys) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    token = jwt.encode(claims(), weak, algorithm="RS256", headers={"kid": "w"})
    with pytest.raises(oidc.UnknownSigningKey, match="bits"):
        validate(keys, token, jwks=[Keys.jwk(weak, "w")])


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"iss": "https://evil.example.com"}, oidc.WrongIssuer),
        ({"aud": "someone-else"}, oidc.WrongAudience),
        ({"aud": ["someone-else", "another"]}, oidc.WrongAudience),
        ({"aud": [CLIENT, "another"]}, oidc.WrongAuthorizedParty),
        ({"aud": [CLIENT, "another"], "azp": "another"}, oidc.WrongAuthorizedParty),
        ({"azp": "another"}, oidc.WrongAuthorizedParty),
        ({"exp": int(NOW) - 61}, oidc.IdTokenExpired),
        ({"iat": int(NOW) + 120}, oidc.IdTokenTime),
        ({"iat": int(NOW) - 3600}, oidc.IdTokenTime),
        ({"nbf": int(NOW) + 120}, oidc.IdTokenTime),
        ({"nonce": "other"}, oidc.NonceMismatch),
        ({"nonce": None}, oidc.NonceMismatch),
        ({"sub": None}, oidc.IdTokenMalformed),
        ({"exp": "soon"}, oidc.IdTokenMalformed),
    ],
)
def test_claim_checks(keys: Keys, changes: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        validate(keys, sign(keys, claims(**changes)))


def test_several_audiences_with_our_azp_and_clock_leeway_pass(keys: Keys) -> None:
    token = sign(keys, claims(aud=[CLIENT, "api"], azp=CLIENT, exp=int(NOW) - 30))
    assert validate(keys, token)["azp"] == CLIENT


def test_at_hash_is_checked_when_present(keys: Keys) -> None:
    access = "the-access-token"
    half = hashlib.sha256(access.encode()).digest()[:16]
    token = sign(keys, claims(at_hash=b64url(half)))
    assert validate(keys, token, access_token=access)
    with pytest.raises(oidc.AccessTokenHashMismatch):
        validate(keys, token, access_token="another-access-token")


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c.d", "!!.e30.", "x" * 20_000])
def test_garbage_is_malformed_not_a_crash(keys: Keys, token: str) -> None:
    with pytest.raises(oidc.IdTokenError):
        validate(keys, token)


# ---------------------------------------------------------------------------- claims


def test_identity_from_the_id_token() -> None:
    identity = oidc.identity_from_claims(claims(), "groups")
    assert identity.email == "ann@example.com"
    assert identity.groups == ("staff",)
    assert identity.amr == ("pwd", "mfa")
    assert identity.groups_known


@pytest.mark.parametrize("flag", [False, "false", "FALSE"])
def test_an_unverified_email_is_refused(flag: object) -> None:
    with pytest.raises(oidc.EmailUnverified):
        oidc.identity_from_claims(claims(email_verified=flag), None)


def test_email_verified_absent_is_accepted() -> None:
    """Entra ID sends no email_verified at all: only an explicit false refuses."""
    assert oidc.identity_from_claims(claims(email_verified=None), None).email


def test_no_email_is_refused() -> None:
    with pytest.raises(oidc.EmailMissing):
        oidc.identity_from_claims(claims(email=None), None)


def test_userinfo_fills_what_the_id_token_lacks() -> None:
    thin = claims(email=None, email_verified=None, groups=None)
    assert oidc.needs_userinfo(thin, "groups")
    info = {"sub": "u-1", "email": "b@example.com", "email_verified": False, "groups": ["g"]}
    with pytest.raises(oidc.EmailUnverified):
        oidc.identity_from_claims(thin, "groups", info)
    info["email_verified"] = True
    identity = oidc.identity_from_claims(thin, "groups", info)
    assert (identity.email, identity.groups) == ("b@example.com", ("g",))
    with pytest.raises(oidc.UserinfoError):
        oidc.identity_from_claims(thin, "groups", {**info, "sub": "someone-else"})


def test_needs_userinfo_only_when_something_is_missing() -> None:
    assert not oidc.needs_userinfo(claims(), "groups")
    assert not oidc.needs_userinfo(claims(groups=None), None)
    assert oidc.needs_userinfo(claims(groups=None), "groups")
    overage = claims(groups=None, _claim_names={"groups": "src1"})
    assert not oidc.needs_userinfo(overage, "groups")
    with pytest.raises(oidc.GroupsUnusable, match="too many"):
        oidc.identity_from_claims(overage, "groups")


def test_groups_claim_names() -> None:
    keycloak = claims(groups=None, realm_access={"roles": ["admin", 7]})
    assert oidc.identity_from_claims(keycloak, "realm_access.roles").groups == ("admin", "7")
    auth0 = claims(groups=None, **{"https://example.com/groups": "solo"})
    assert oidc.identity_from_claims(auth0, "https://example.com/groups").groups == ("solo",)
    absent = oidc.identity_from_claims(claims(groups=None), "groups")
    assert absent.groups == () and not absent.groups_known


@pytest.mark.parametrize(
    "groups",
    [[f"g{i}" for i in range(oidc.MAX_GROUPS + 1)], ["x" * 1500, "y" * 600], [{"a": 1}], True],
)
def test_unusable_groups_are_refused_not_cut(groups: object) -> None:
    with pytest.raises(oidc.GroupsUnusable):
        oidc.identity_from_claims(claims(groups=groups), "groups")


def test_amr_as_a_single_string() -> None:
    assert oidc.identity_from_claims(claims(amr="otp"), None).amr == ("otp",)
    with pytest.raises(oidc.ClaimsError):
        oidc.identity_from_claims(claims(amr=[{"x": 1}]), None)


# ---------------------------------------------------------------------------- the client


class FakeNet:
    """Answers ``OidcClient``'s requests from a dict; counts them; a fake clock."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys
        self.now = NOW
        self.jwks: list[dict[str, Any]] = keys.jwks
        self.down = False
        self.calls: list[str] = []
        self.nonce = "n-1"
        self.id_claims = claims()
        self.userinfo = {"sub": "u-1", "email": "ann@example.com", "groups": ["from-userinfo"]}
        self.token_kid = "r1"

    def clock(self) -> float:
        return self.now

    async def fetch(self, request: HttpRequest) -> HttpResponse:
        path = urlsplit(request.url).path
        self.calls.append(path)
        if self.down:
            raise FetchError("connection refused")
        if path == "/.well-known/openid-configuration":
            return HttpResponse(200, json.dumps(discovery()).encode())
        if path == "/jwks":
            return HttpResponse(200, json.dumps({"keys": self.jwks}).encode())
        if path == "/token":
            token = sign(self.keys, self.id_claims, kid=self.token_kid)
            body = {"access_token": "at", "token_type": "Bearer", "id_token": token}
            return HttpResponse(200, json.dumps(body).encode())
        if path == "/userinfo":
            assert request.headers["Authorization"] == "Bearer at"
            return HttpResponse(200, json.dumps(self.userinfo).encode())
        return HttpResponse(404, b"{}")

    def client(self) -> OidcClient:
        return OidcClient(SETTINGS, self.fetch, clock=self.clock)


async def test_finish_logs_in_and_caches_discovery_and_keys(keys: Keys) -> None:
    net = FakeNet(keys)
    client = net.client()
    await client.begin()
    identity = await client.finish(code="c", code_verifier="v", nonce="n-1")
    assert identity.email == "ann@example.com" and identity.groups == ("staff",)
    await client.finish(code="c", code_verifier="v", nonce="n-1")
    assert net.calls.count("/.well-known/openid-configuration") == 1
    assert net.calls.count("/jwks") == 1
    assert "/userinfo" not in net.calls


async def test_userinfo_is_fetched_when_the_id_token_is_thin(keys: Keys) -> None:
    net = FakeNet(keys)
    net.id_claims = claims(email=None, email_verified=None, groups=None)
    identity = await net.client().finish(code="c", code_verifier="v", nonce="n-1")
    assert identity.groups == ("from-userinfo",)
    assert "/userinfo" in net.calls


async def test_an_unknown_kid_refetches_the_jwks_at_a_bounded_rate(keys: Keys) -> None:
    net = FakeNet(keys)
    client = net.client()
    await client.finish(code="c", code_verifier="v", nonce="n-1")
    assert client.jwks_fetches == 1
    # the provider rotates to a new key: within the minute, no refetch and no login
    new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    net.jwks = [Keys.jwk(new, "r2")]
    net.token_kid = "r2"
    net.keys = Keys.__new__(Keys)
    net.keys.rsa, net.keys.ec, net.keys.ed, net.keys.foreign = keys.rsa, keys.ec, keys.ed, new
    net.now += 10
    for _ in range(3):
        with pytest.raises(oidc.UnknownSigningKey):
            await client.finish(code="c", code_verifier="v", nonce="n-1")
    assert client.jwks_fetches == 1
    # after the minute, one refetch finds the new key
    net.now += oidc.JWKS_MIN_REFETCH_SECONDS
    identity = await client.finish(code="c", code_verifier="v", nonce="n-1")
    assert identity.email == "ann@example.com"
    assert client.jwks_fetches == 2


async def test_an_unreachable_provider_and_a_stale_discovery(keys: Keys) -> None:
    net = FakeNet(keys)
    net.down = True
    with pytest.raises(oidc.ProviderUnavailable):
        await net.client().begin()
    net.down = False
    client = net.client()
    await client.begin()
    net.down = True
    net.now += oidc.DISCOVERY_TTL_SECONDS + 1
    assert (await client.begin()).url.startswith(f"{ISSUER}/authorize")  # stale but usable
    net.now += oidc.DISCOVERY_STALE_SECONDS
    with pytest.raises(oidc.ProviderUnavailable):
        await client.begin()


async def test_the_iss_parameter_of_the_callback_is_checked(keys: Keys) -> None:
    net = FakeNet(keys)
    with pytest.raises(oidc.WrongIssuer):
        await net.client().finish(code="c", code_verifier="v", nonce="n-1", iss="https://x")
    identity = await net.client().finish(code="c", code_verifier="v", nonce="n-1", iss=ISSUER)
    assert identity.sub == "u-1"


async def test_a_5xx_is_unreachable_and_a_404_discovery_is_broken(keys: Keys) -> None:
    async def fetch(request: HttpRequest) -> HttpResponse:
        return HttpResponse(503 if "down" in request.url else 404, b"")

    down = ClientSettings(**{**SETTINGS.__dict__, "issuer": "https://down.example.com"})
    with pytest.raises(oidc.ProviderUnavailable):
        await OidcClient(down, fetch).begin()
    with pytest.raises(oidc.DiscoveryError, match="404"):
        await OidcClient(SETTINGS, fetch).begin()


# ---------------------------------------------------------------------------- the model


def load(entry: str) -> OidcProvider:
    text = "identity_providers:\n" + textwrap.indent(textwrap.dedent(entry).strip(), "  ")
    idp = load_text(text).config.identity_providers[0]
    assert isinstance(idp, OidcProvider)
    return idp


def problem(entry: str) -> str:
    text = "identity_providers:\n" + textwrap.indent(textwrap.dedent(entry).strip(), "  ")
    with pytest.raises(ConfigError) as info:
        load_text(text, source="zg.yaml")
    assert len(info.value.problems) == 1, info.value.problems
    return str(info.value.problems[0])


def test_presets_fill_defaults_only() -> None:
    okta = load(
        "- {name: okta, type: oidc, preset: okta, issuer: https://x.okta.com, client_id: a}"
    )
    assert okta.effective_scopes == ("openid", "email", "profile", "groups")
    assert okta.effective_groups_claim == "groups"
    assert okta.label == "Okta"
    custom = load(
        "- {name: okta, type: oidc, preset: okta, issuer: https://x.okta.com/oauth2/default, "
        "client_id: a, scopes: [openid, email], groups_claim: roles, display_name: Staff}"
    )
    assert custom.effective_scopes == ("openid", "email")
    assert custom.effective_groups_claim == "roles"
    assert custom.label == "Staff"
    google = load(
        "- {name: g, type: oidc, preset: google, issuer: https://accounts.google.com, client_id: a}"
    )
    assert google.effective_groups_claim is None and google.label == "Google"
    plain = load("- {name: sso, type: oidc, issuer: https://sso.example.com, client_id: a}")
    assert plain.effective_scopes == ("openid", "email", "profile") and plain.label == "sso"
    assert plain.token_endpoint_auth_method is None


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        (
            "{name: g, type: oidc, preset: google, issuer: https://google.com, client_id: a}",
            ["› issuer", "not a google issuer", "https://accounts.google.com"],
        ),
        (
            "{name: e, type: oidc, preset: entra, client_id: a,"
            " issuer: https://login.microsoftonline.com/common/v2.0}",
            ["› issuer", "<tenant id>"],
        ),
        (
            "{name: a, type: oidc, preset: auth0, issuer: https://x.eu.auth0.com, client_id: a}",
            ["› issuer", "trailing slash"],
        ),
        (
            "{name: k, type: oidc, preset: keycloak, issuer: https://sso.x.com, client_id: a}",
            ["› issuer", "/realms/"],
        ),
        (
            "{name: x, type: oidc, preset: ping, issuer: https://sso.x.com, client_id: a}",
            ["› preset", "okta"],
        ),
        (
            "{name: x, type: oidc, issuer: http://sso.example.com, client_id: a}",
            ["› issuer", "https"],
        ),
        (
            "{name: x, type: oidc, issuer: https://sso.example.com?x=1, client_id: a}",
            ["› issuer", "query"],
        ),
        (
            "{name: my sso, type: oidc, issuer: https://sso.example.com, client_id: a}",
            ["› name", "callback URL"],
        ),
        (
            "{name: x, type: oidc, issuer: https://sso.example.com, client_id: a, scopes: [email]}",
            ["› scopes", "openid"],
        ),
        (
            "{name: x, type: oidc, issuer: https://sso.example.com, client_id: a,"
            " token_endpoint_auth_method: private_key_jwt}",
            ["› token_endpoint_auth_method"],
        ),
        (
            "{name: x, type: oidc, issuer: https://sso.example.com, client_id: a,"
            " client_secret_env: not-a-name}",
            ["› client_secret_env"],
        ),
    ],
)
def test_errors_name_the_field(entry: str, words: list[str]) -> None:
    text = problem("- " + entry)
    assert text.startswith("zg.yaml:2: identity provider"), text
    for word in words:
        assert word in text, text


def test_loopback_http_issuer_for_local_use_and_export_round_trip() -> None:
    idp = load(
        "- {name: dev, type: oidc, issuer: 'http://127.0.0.1:9000', client_id: a,"
        " token_endpoint_auth_method: client_secret_post, groups_claim: groups}"
    )
    assert idp.issuer == "http://127.0.0.1:9000"
    text = "identity_providers:\n  - {name: o, type: oidc, preset: okta, issuer: https://x.okta.com, client_id: a}\n"  # noqa: E501
    objects = load_text(text).config.objects()
    exported = dump_yaml(objects)
    assert "preset: okta" in exported and "scopes" not in exported  # defaults stay defaults
    assert load_text(exported).config.objects() == objects


def test_every_preset_is_documented() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    for name in OIDC_PRESETS:
        assert f"`{name}`" in doc, name
