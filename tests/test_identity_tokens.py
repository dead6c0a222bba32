"""App and portal JWTs: issuing, verifying (including attacker-made tokens), rotation, cache."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from zerogate.identity import (
    AlgorithmMismatchError,
    BadSignatureError,
    Claims,
    KeySet,
    MalformedTokenError,
    SigningKey,
    TokenError,
    TokenExpiredError,
    TokenNotYetValidError,
    TokenVerifier,
    UnknownKeyError,
    VerifiedTokenCache,
    WrongAudienceError,
    WrongIssuerError,
    WrongTokenTypeError,
    issue_app_token,
    issue_portal_token,
)
from zerogate.identity import tokens as tokens_module

T0 = 1_700_000_000
ISSUER = "https://auth.example.com"
APP_A = "aud-app-a"
APP_B = "aud-app-b"
PORTAL = "portal"
TTL = 3600


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    header, payload, signature = token.split(".")
    return json.loads(unb64(header)), json.loads(unb64(payload)), unb64(signature)


def assemble(header: dict[str, Any], payload: dict[str, Any], signature: bytes) -> str:
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)]
    )


@pytest.fixture(scope="module")
def keys() -> KeySet:
    return KeySet.generate("ES256", now=T0)


@pytest.fixture(scope="module")
def rsa_keys() -> KeySet:
    return KeySet.generate("RS256", now=T0)


@pytest.fixture
def verifier(keys: KeySet) -> TokenVerifier:
    return TokenVerifier(keys, ISSUER)


def app_token(keys: KeySet, *, now: float = T0, audience: str = APP_A, **kw: Any) -> str:
    args: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": audience,
        "email": "alice@example.com",
        "sub": "user-1",
        "idp": "pin",
        "groups": None,
        "ttl_seconds": TTL,
        "now": now,
    }
    args.update(kw)
    return issue_app_token(keys, **args)


# --------------------------------------------------------------------------- the format


def test_issued_token_has_the_spec_header_and_claims(keys: KeySet, verifier: TokenVerifier) -> None:
    token = app_token(keys, groups=["eng", "ops"], amr=["otp"], extra={"country": "NL"})
    header, payload, _ = parts(token)
    assert header == {"alg": "ES256", "kid": keys.active.kid, "typ": "JWT"}
    assert payload["iss"] == ISSUER
    assert payload["aud"] == [APP_A]
    assert payload["sub"] == "user-1" and payload["idp"] == "pin"
    assert payload["email"] == "alice@example.com"
    assert (payload["iat"], payload["nbf"], payload["exp"]) == (T0, T0, T0 + TTL)
    assert payload["type"] == "app"
    assert payload["groups"] == ["eng", "ops"]
    assert payload["amr"] == ["otp"]
    assert payload["country"] == "NL"
    assert isinstance(payload["jti"], str) and len(payload["jti"]) >= 16

    claims = verifier.verify(token, APP_A, T0 + 1)
    assert isinstance(claims, Claims)
    assert claims.email == "alice@example.com" and claims.sub == "user-1"
    assert claims.aud == (APP_A,) and claims.groups == ("eng", "ops") and claims.amr == ("otp",)
    assert claims.exp == T0 + TTL and claims.type == "app" and claims.kid == keys.active.kid
    assert dict(claims.extra) == {"country": "NL"}
    assert json.dumps(claims.to_dict(), sort_keys=True) == json.dumps(payload, sort_keys=True)


def test_groups_are_left_out_when_unknown(keys: KeySet, verifier: TokenVerifier) -> None:
    token = app_token(keys)
    assert "groups" not in parts(token)[1]
    assert verifier.verify(token, APP_A, T0).groups is None


def test_each_token_gets_its_own_jti(keys: KeySet) -> None:
    assert parts(app_token(keys))[1]["jti"] != parts(app_token(keys))[1]["jti"]


def test_extra_claims_cannot_override_ours(keys: KeySet) -> None:
    with pytest.raises(ValueError, match="exp"):
        app_token(keys, extra={"exp": T0 + 10**9})
    with pytest.raises(ValueError, match="ttl"):
        app_token(keys, ttl_seconds=0)


@pytest.mark.parametrize("keyset_name", ["keys", "rsa_keys"])
def test_an_origin_verifies_with_pyjwt_and_the_jwks(
    keyset_name: str, request: pytest.FixtureRequest
) -> None:
    """What an origin does: fetch /.zerogate/certs, pick the kid, verify with stock PyJWT."""
    keyset: KeySet = request.getfixturevalue(keyset_name)
    now = time.time()  # stock PyJWT checks exp/nbf/iat against the real clock
    token = app_token(keyset, now=now, groups=["eng"])
    jwks = json.loads(json.dumps(keyset.jwks(now)))
    header = jwt.get_unverified_header(token)
    jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    key = jwt.PyJWK(jwk).key
    payload = jwt.decode(token, key, algorithms=[jwk["alg"]], audience=APP_A, issuer=ISSUER)
    assert payload["email"] == "alice@example.com" and payload["groups"] == ["eng"]
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, key, algorithms=[jwk["alg"]], audience=APP_B, issuer=ISSUER)


# --------------------------------------------------------------------------- attacks


def test_tampered_payload_is_rejected(keys: KeySet, verifier: TokenVerifier) -> None:
    header, payload, signature = parts(app_token(keys))
    payload["email"] = "admin@example.com"
    with pytest.raises(BadSignatureError):
        verifier.verify(assemble(header, payload, signature), APP_A, T0)


def test_tampered_audience_is_rejected(keys: KeySet, verifier: TokenVerifier) -> None:
    header, payload, signature = parts(app_token(keys))
    payload["aud"] = [APP_B]
    with pytest.raises(BadSignatureError):
        verifier.verify(assemble(header, payload, signature), APP_B, T0)


def test_tampered_signature_is_rejected(keys: KeySet, verifier: TokenVerifier) -> None:
    header, payload, signature = parts(app_token(keys))
    flipped = bytes([signature[0] ^ 0x01]) + signature[1:]
    with pytest.raises(BadSignatureError):
        verifier.verify(assemble(header, payload, flipped), APP_A, T0)
    with pytest.raises(TokenError):
        verifier.verify(assemble(header, payload, b""), APP_A, T0)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none_is_rejected(alg: str, keys: KeySet, verifier: TokenVerifier) -> None:
    header, payload, _ = parts(app_token(keys))
    header["alg"] = alg
    token = assemble(header, payload, b"")
    with pytest.raises(AlgorithmMismatchError):
        verifier.verify(token, APP_A, T0)
    # also without a kid (and with a trailing dot only)
    del header["kid"]
    with pytest.raises(MalformedTokenError):
        verifier.verify(assemble(header, payload, b""), APP_A, T0)


def test_hs256_signed_with_the_public_key_pem_is_rejected(
    keys: KeySet, verifier: TokenVerifier
) -> None:
    """The classic key-confusion attack: HMAC keyed with the published public key."""
    public_pem = keys.active.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "kid": keys.active.kid, "typ": "JWT"}
    _, payload, _ = parts(app_token(keys))
    payload["email"] = "admin@example.com"
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    for secret in (public_pem, public_pem.strip()):
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        with pytest.raises(AlgorithmMismatchError):
            verifier.verify(f"{signing_input}.{b64(mac)}", APP_A, T0)


def test_rs256_token_from_an_attackers_key_with_our_kid(
    keys: KeySet, rsa_keys: KeySet, verifier: TokenVerifier
) -> None:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _, payload, _ = parts(app_token(keys))
    # our key is ES256: the RS256 claim in the header is refused before any signature check
    forged = jwt.encode(payload, attacker, algorithm="RS256", headers={"kid": keys.active.kid})
    with pytest.raises(AlgorithmMismatchError):
        verifier.verify(forged, APP_A, T0)
    # our key is RS256 too: same algorithm, but the signature is not ours
    rsa_verifier = TokenVerifier(rsa_keys, ISSUER)
    forged = jwt.encode(payload, attacker, algorithm="RS256", headers={"kid": rsa_keys.active.kid})
    with pytest.raises(BadSignatureError):
        rsa_verifier.verify(forged, APP_A, T0)
    # and an ES256 token naming an RS256 kid
    forged = jwt.encode(
        payload,
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": rsa_keys.active.kid},
    )
    with pytest.raises(AlgorithmMismatchError):
        rsa_verifier.verify(forged, APP_A, T0)


def test_es256_token_from_an_attackers_key_with_our_kid(
    keys: KeySet, verifier: TokenVerifier
) -> None:
    _, payload, _ = parts(app_token(keys))
    attacker = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(payload, attacker, algorithm="ES256", headers={"kid": keys.active.kid})
    with pytest.raises(BadSignatureError):
        verifier.verify(forged, APP_A, T0)


def test_unknown_kid_is_rejected(verifier: TokenVerifier) -> None:
    other = KeySet.generate(now=T0)
    with pytest.raises(UnknownKeyError):
        verifier.verify(app_token(other), APP_A, T0)


def test_token_from_another_keyset_claiming_our_kid(keys: KeySet, verifier: TokenVerifier) -> None:
    other = KeySet.generate(now=T0)
    header, payload, signature = parts(app_token(other))
    header["kid"] = keys.active.kid
    with pytest.raises(BadSignatureError):
        verifier.verify(assemble(header, payload, signature), APP_A, T0)


def test_expired(keys: KeySet, verifier: TokenVerifier) -> None:
    token = app_token(keys)
    assert verifier.verify(token, APP_A, T0 + TTL - 1).email == "alice@example.com"
    with pytest.raises(TokenExpiredError):
        verifier.verify(token, APP_A, T0 + TTL)
    with pytest.raises(TokenExpiredError):
        TokenVerifier(keys, ISSUER).verify(token, APP_A, T0 + 10 * TTL)


def test_not_yet_valid(keys: KeySet, verifier: TokenVerifier) -> None:
    token = app_token(keys, now=T0 + 1000)
    with pytest.raises(TokenNotYetValidError):
        verifier.verify(token, APP_A, T0 + 1000 - 31)
    # a clock 30 s behind the issuer's is tolerated
    assert verifier.verify(token, APP_A, T0 + 1000 - 30).iat == T0 + 1000


def test_issued_in_the_future_with_an_old_nbf(keys: KeySet, verifier: TokenVerifier) -> None:
    payload = parts(app_token(keys))[1]
    payload["iat"] = T0 + 500
    token = tokens_module._JWS.encode(
        json.dumps(payload).encode(),
        keys.active.private_key,
        algorithm="ES256",
        headers={"kid": keys.active.kid},
    )
    with pytest.raises(TokenNotYetValidError, match="future"):
        verifier.verify(token, APP_A, T0)


def test_nbf_later_than_iat_is_honoured(keys: KeySet, verifier: TokenVerifier) -> None:
    payload = parts(app_token(keys))[1]
    payload["nbf"] = T0 + 500
    token = _sign_raw(keys, json.dumps(payload).encode())
    with pytest.raises(TokenNotYetValidError, match="not valid yet"):
        verifier.verify(token, APP_A, T0 + 469)
    assert verifier.verify(token, APP_A, T0 + 470).nbf == T0 + 500


def test_app_a_token_is_refused_by_app_b(keys: KeySet, verifier: TokenVerifier) -> None:
    token = app_token(keys, audience=APP_A)
    assert verifier.verify(token, APP_A, T0)
    with pytest.raises(WrongAudienceError):
        verifier.verify(token, APP_B, T0)


def test_wrong_issuer(keys: KeySet) -> None:
    token = app_token(keys, issuer="https://evil.example.net")
    with pytest.raises(WrongIssuerError):
        TokenVerifier(keys, ISSUER).verify(token, APP_A, T0)
    with pytest.raises(WrongIssuerError):
        TokenVerifier(keys, "https://other-portal.example.com").verify(app_token(keys), APP_A, T0)


def test_portal_and_app_tokens_are_not_interchangeable(keys: KeySet) -> None:
    cache = VerifiedTokenCache()  # shared on purpose: the type is checked on every hit
    app = TokenVerifier(keys, ISSUER, cache=cache)
    portal = TokenVerifier(keys, ISSUER, token_type="portal", cache=cache)
    portal_token = issue_portal_token(
        keys, issuer=ISSUER, audience=PORTAL, email="a@x.io", sub="1", idp="pin",
        ttl_seconds=TTL, now=T0,
    )  # fmt: skip
    assert parts(portal_token)[1]["type"] == "portal"
    assert portal.verify(portal_token, PORTAL, T0).type == "portal"
    with pytest.raises(WrongTokenTypeError):
        app.verify(portal_token, PORTAL, T0)
    app_tok = app_token(keys, audience=PORTAL)
    assert app.verify(app_tok, PORTAL, T0).type == "app"
    with pytest.raises(WrongTokenTypeError):
        portal.verify(app_tok, PORTAL, T0)


def _sign_raw(keys: KeySet, payload: bytes, **header: Any) -> str:
    return tokens_module._JWS.encode(
        payload,
        keys.active.private_key,
        algorithm="ES256",
        headers={"kid": keys.active.kid, **header},
    )


def test_correctly_signed_but_malformed_payloads(keys: KeySet, verifier: TokenVerifier) -> None:
    good = parts(app_token(keys))[1]
    bad_payloads: list[bytes] = [
        b"not json",
        b"[1, 2]",
        json.dumps({k: v for k, v in good.items() if k != "email"}).encode(),
        json.dumps({**good, "exp": "tomorrow"}).encode(),
        json.dumps({**good, "exp": True}).encode(),
        json.dumps({**good, "aud": [1]}).encode(),
        json.dumps({**good, "aud": []}).encode(),
        json.dumps({**good, "groups": "eng"}).encode(),
    ]
    for payload in bad_payloads:
        with pytest.raises(MalformedTokenError):
            verifier.verify(_sign_raw(keys, payload), APP_A, T0)


def test_critical_header_extensions_are_refused(keys: KeySet, verifier: TokenVerifier) -> None:
    payload = json.dumps(parts(app_token(keys))[1]).encode()
    with pytest.raises(MalformedTokenError):
        verifier.verify(_sign_raw(keys, payload, crit=["exp"], exp=1), APP_A, T0)


@pytest.mark.parametrize("garbage", ["", "abc", "a.b", "a.b.c", "....", "x" * 20_000, "é.é.é"])
def test_garbage_is_malformed(garbage: str, verifier: TokenVerifier) -> None:
    with pytest.raises(MalformedTokenError):
        verifier.verify(garbage, APP_A, T0)


def test_non_canonical_encodings_are_malformed(keys: KeySet, verifier: TokenVerifier) -> None:
    header, payload, signature = app_token(keys).split(".")
    for bad in (
        f"{header}.é{payload}.{signature}",  # non-ASCII in the part checked last
        f"{header}.{payload}==.{signature}",  # padding
        f"{header}.{payload}.{signature}=",
        f"{header} .{payload}.{signature}",
        f"{header}.{payload}.{signature}\n",
        f"{header}.{payload}.{signature}.",
    ):
        with pytest.raises(MalformedTokenError):
            verifier.verify(bad, APP_A, T0)
    # an ES256 signature is 64 bytes = 86 characters, the last carrying 4 spare (zero) bits;
    # setting one gives another string for the same bytes, which is refused
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    assert len(signature) == 86 and alphabet.index(signature[-1]) & 0b1111 == 0
    twin = alphabet[alphabet.index(signature[-1]) | 1]
    assert unb64(signature[:-1] + twin) == unb64(signature)
    with pytest.raises(MalformedTokenError):
        verifier.verify(f"{header}.{payload}.{signature[:-1]}{twin}", APP_A, T0)


@settings(max_examples=300, deadline=None)
@given(position=st.integers(min_value=0), char=st.sampled_from("AQgw_-9zB."))
def test_any_single_character_change_is_refused(position: int, char: str) -> None:
    keyset = _HYPOTHESIS_KEYS
    token = _HYPOTHESIS_TOKEN
    position %= len(token)
    if token[position] == char:
        return
    mutated = token[:position] + char + token[position + 1 :]
    with pytest.raises(TokenError):
        TokenVerifier(keyset, ISSUER).verify(mutated, APP_A, T0)


_HYPOTHESIS_KEYS = KeySet.generate(now=T0)
_HYPOTHESIS_TOKEN = app_token(_HYPOTHESIS_KEYS, groups=["g"])


# --------------------------------------------------------------------------- rotation


def test_previous_key_verifies_during_the_overlap_only() -> None:
    keyset = KeySet.generate(now=T0)
    verifier = TokenVerifier(keyset, ISSUER)
    old_token = app_token(keyset, now=T0, ttl_seconds=10 * TTL)
    overlap = 2 * TTL
    rotated_at = T0 + 100
    keyset.rotate(rotated_at, overlap_seconds=overlap)

    new_token = app_token(keyset, now=rotated_at, ttl_seconds=10 * TTL)
    assert parts(new_token)[0]["kid"] == keyset.active.kid != parts(old_token)[0]["kid"]
    assert len(keyset.jwks(rotated_at + 1)["keys"]) == 2

    # verified (and cached) during the overlap
    assert verifier.verify(old_token, APP_A, rotated_at + overlap - 1)
    assert verifier.verify(new_token, APP_A, rotated_at + overlap - 1)
    # after it, the old key is gone: the cached claims must not be served
    assert len(keyset.jwks(rotated_at + overlap)["keys"]) == 1
    with pytest.raises(UnknownKeyError):
        verifier.verify(old_token, APP_A, rotated_at + overlap)
    assert verifier.verify(new_token, APP_A, rotated_at + overlap)


def test_replacing_the_keyset_drops_cached_tokens_of_removed_keys() -> None:
    keyset = KeySet.generate(now=T0)
    verifier = TokenVerifier(keyset, ISSUER)
    token = app_token(keyset)
    assert verifier.verify(token, APP_A, T0)
    assert len(verifier.cache) == 1
    # another process rotated with zero overlap (e.g. after a key leak); we load its result
    reloaded = KeySet.from_dict(keyset.to_dict())
    reloaded.rotate(T0 + 1, overlap_seconds=0)
    verifier.keyset = reloaded
    with pytest.raises(UnknownKeyError):
        verifier.verify(token, APP_A, T0 + 2)


def test_recheck_is_every_check_a_cache_hit_gets(keys: KeySet) -> None:
    """``recheck`` (what the front runs on a session it kept): the key must still verify and
    every claim check runs again, so expiry, another audience and a key gone all refuse."""
    keyset = KeySet.generate(now=T0)
    verifier = TokenVerifier(keyset, ISSUER)
    claims = verifier.verify(app_token(keyset), APP_A, T0)
    verifier.recheck(claims, APP_A, T0 + 10)  # no error
    with pytest.raises(TokenExpiredError):
        verifier.recheck(claims, APP_A, T0 + TTL)
    with pytest.raises(WrongAudienceError):
        verifier.recheck(claims, APP_B, T0 + 10)
    with pytest.raises(WrongIssuerError):
        TokenVerifier(keyset, "https://other.example").recheck(claims, APP_A, T0 + 10)
    with pytest.raises(WrongTokenTypeError):
        TokenVerifier(keyset, ISSUER, token_type="portal").recheck(claims, APP_A, T0 + 10)
    reloaded = KeySet.from_dict(keyset.to_dict())
    reloaded.rotate(T0 + 1, overlap_seconds=0)  # the signing key leaves the set
    with pytest.raises(UnknownKeyError):
        TokenVerifier(reloaded, ISSUER).recheck(claims, APP_A, T0 + 2)


# --------------------------------------------------------------------------- cache


@pytest.fixture
def counting(verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    calls: list[str] = []
    real = verifier._verify_signature

    def spy(token: str, now: float) -> Claims:
        calls.append(token)
        return real(token, now)

    monkeypatch.setattr(verifier, "_verify_signature", spy)
    yield calls


def test_cache_skips_the_signature_check_on_repeat(
    keys: KeySet, verifier: TokenVerifier, counting: list[str]
) -> None:
    token = app_token(keys)
    first = verifier.verify(token, APP_A, T0)
    second = verifier.verify(token, APP_A, T0 + 10)
    assert first is second
    assert counting == [token]
    # claims are still checked on a hit
    with pytest.raises(WrongAudienceError):
        verifier.verify(token, APP_B, T0 + 20)
    with pytest.raises(TokenExpiredError):
        verifier.verify(token, APP_A, T0 + TTL)
    assert len(verifier.cache) == 0  # the expired entry was dropped


def test_failed_tokens_are_not_cached(keys: KeySet, verifier: TokenVerifier) -> None:
    header, payload, signature = parts(app_token(keys))
    payload["email"] = "admin@example.com"
    forged = assemble(header, payload, signature)
    for _ in range(2):
        with pytest.raises(BadSignatureError):
            verifier.verify(forged, APP_A, T0)
    assert len(verifier.cache) == 0


def test_cache_never_returns_claims_at_or_past_exp(keys: KeySet) -> None:
    verifier = TokenVerifier(keys, ISSUER)
    token = app_token(keys)
    claims = verifier.verify(token, APP_A, T0)
    cache = verifier.cache
    assert cache.get(token, T0 + TTL - 0.001) is claims
    assert cache.get(token, T0 + TTL) is None
    assert cache.get(token, T0) is None  # gone for good
    cache.put(token, claims, T0 + TTL)  # already expired: not stored
    assert len(cache) == 0


def test_cache_is_a_bounded_lru(keys: KeySet) -> None:
    cache = VerifiedTokenCache(maxsize=3)
    verifier = TokenVerifier(keys, ISSUER, cache=cache)
    tokens = [app_token(keys, sub=str(i)) for i in range(5)]
    for token in tokens[:3]:
        verifier.verify(token, APP_A, T0)
    verifier.verify(tokens[0], APP_A, T0)  # touch: tokens[1] is now the oldest
    verifier.verify(tokens[3], APP_A, T0)
    assert len(cache) == 3
    assert cache.get(tokens[1], T0) is None
    assert cache.get(tokens[0], T0) is not None
    verifier.verify(tokens[4], APP_A, T0)
    assert len(cache) == 3
    with pytest.raises(ValueError):
        VerifiedTokenCache(maxsize=0)


def test_signing_with_a_stored_and_reloaded_key(keys: KeySet) -> None:
    reloaded = KeySet.from_dict(json.loads(json.dumps(keys.to_dict())))
    token = app_token(reloaded)
    assert TokenVerifier(keys, ISSUER).verify(token, APP_A, T0).kid == keys.active.kid


def test_rs256_keyset_round_trip(rsa_keys: KeySet) -> None:
    verifier = TokenVerifier(rsa_keys, ISSUER)
    token = app_token(rsa_keys)
    assert parts(token)[0]["alg"] == "RS256"
    assert verifier.verify(token, APP_A, T0).email == "alice@example.com"
    signing_key: SigningKey = rsa_keys.active
    assert signing_key.algorithm == "RS256"
