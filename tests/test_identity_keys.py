"""Signing keys, rotation with an overlap window, JWKS and storage of the key set."""

from __future__ import annotations

import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from zerogate.identity import KeyFormatError, KeySet, SigningKey, jwk_thumbprint

T0 = 1_700_000_000.0
HOUR = 3600.0

RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
    "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY"
    "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f"
    "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey.generate("RS256", T0)


def test_thumbprint_matches_rfc7638_example() -> None:
    jwk = {"kty": "RSA", "e": "AQAB", "n": RFC7638_N, "alg": "RS256", "kid": "2011-04-29"}
    # optional members (alg, kid) do not take part
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_es256_key_publishes_only_the_public_part() -> None:
    key = SigningKey.generate("ES256", T0)
    jwk = key.to_jwk()
    assert jwk["kty"] == "EC" and jwk["crv"] == "P-256"
    assert (jwk["alg"], jwk["use"], jwk["kid"]) == ("ES256", "sig", key.kid)
    assert len(jwk["x"]) == len(jwk["y"]) == 43  # 32 bytes, unpadded base64url
    assert set(jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}  # no "d"
    assert key.kid == jwk_thumbprint(jwk)
    assert key.created_at == T0 and key.not_after is None
    assert "PRIVATE" not in repr(key)
    # the published JWK is the key's public key
    public = jwt.PyJWK(jwk).key
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.public_numbers() == key.private_key.public_key().public_numbers()


def test_rs256_key(rsa_key: SigningKey) -> None:
    jwk = rsa_key.to_jwk()
    assert set(jwk) == {"kty", "n", "e", "kid", "alg", "use"}
    assert (jwk["kty"], jwk["alg"], jwk["e"]) == ("RSA", "RS256", "AQAB")
    assert rsa_key.kid == jwk_thumbprint(jwk)
    assert isinstance(rsa_key.private_key, rsa.RSAPrivateKey)
    assert rsa_key.private_key.key_size == 2048


def test_distinct_keys_have_distinct_kids() -> None:
    kids = {SigningKey.generate("ES256", T0).kid for _ in range(20)}
    assert len(kids) == 20


def test_rotation_keeps_the_old_key_for_the_overlap_only() -> None:
    keys = KeySet.generate(now=T0)
    old = keys.active
    assert [k["kid"] for k in keys.jwks(T0)["keys"]] == [old.kid]

    new = keys.rotate(T0 + HOUR, overlap_seconds=24 * HOUR)
    assert keys.active is new and new.kid != old.kid
    assert new.created_at == T0 + HOUR
    end = T0 + 25 * HOUR
    assert keys.previous[0].kid == old.kid and keys.previous[0].not_after == end

    during = keys.jwks(end - 1)["keys"]
    assert [k["kid"] for k in during] == [new.kid, old.kid]
    assert keys.verification_key(old.kid, end - 1) is not None

    after = keys.jwks(end)["keys"]
    assert [k["kid"] for k in after] == [new.kid]
    assert keys.verification_key(old.kid, end) is None
    assert keys.verification_key(new.kid, end + 10 * 365 * 24 * HOUR) is new


def test_rotation_drops_keys_whose_window_ended_and_prune() -> None:
    keys = KeySet.generate(now=T0)
    first = keys.active
    second = keys.rotate(T0 + 10, overlap_seconds=100)
    third = keys.rotate(T0 + 50, overlap_seconds=1000)
    assert [k.kid for k in keys] == [third.kid, second.kid, first.kid]
    # first ends at T0+110 and is still listed until then; second at T0+1050
    assert len(keys.jwks(T0 + 109)["keys"]) == 3
    assert len(keys.jwks(T0 + 110)["keys"]) == 2
    dropped = keys.prune(T0 + 110)
    assert [k.kid for k in dropped] == [first.kid]
    assert [k.kid for k in keys] == [third.kid, second.kid]
    fourth = keys.rotate(T0 + 2000, overlap_seconds=0)
    # second's window is over, third's closed at once (zero overlap)
    assert [k.kid for k in keys] == [fourth.kid]


def test_rotation_never_extends_an_earlier_end() -> None:
    keys = KeySet.generate(now=T0)
    keys.rotate(T0, overlap_seconds=100)
    # an earlier retirement is kept if a later rotation would lengthen it
    retired = keys.previous[0]
    assert retired.not_after == T0 + 100


def test_rotation_can_switch_algorithm() -> None:
    keys = KeySet.generate("ES256", now=T0)
    new = keys.rotate(T0 + 1, overlap_seconds=60, algorithm="RS256")
    assert new.algorithm == "RS256"
    assert {k["alg"] for k in keys.jwks(T0 + 2)["keys"]} == {"ES256", "RS256"}
    # default: keep the current algorithm
    assert keys.rotate(T0 + 3, overlap_seconds=60).algorithm == "RS256"


def test_negative_overlap_is_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        KeySet.generate(now=T0).rotate(T0, overlap_seconds=-1)


def test_storage_round_trip_through_json(rsa_key: SigningKey) -> None:
    keys = KeySet(rsa_key)
    keys.rotate(T0 + 5, overlap_seconds=60, algorithm="ES256")
    document = json.loads(json.dumps(keys.to_dict()))
    again = KeySet.from_dict(document)
    assert again.to_dict() == keys.to_dict()
    assert [k.kid for k in again] == [k.kid for k in keys]
    assert again.previous[0].not_after == T0 + 65
    assert again.jwks(T0 + 6) == keys.jwks(T0 + 6)
    assert "BEGIN PRIVATE KEY" in document["active"]["private_key_pem"]


def test_loading_refuses_a_kid_that_is_not_the_thumbprint() -> None:
    document = KeySet.generate(now=T0).to_dict()
    document["active"]["kid"] = "chosen-by-attacker"
    with pytest.raises(KeyFormatError, match="thumbprint"):
        KeySet.from_dict(document)


def test_loading_refuses_a_key_of_the_wrong_type(rsa_key: SigningKey) -> None:
    document = {"format": 1, "active": {**rsa_key.to_dict(), "algorithm": "ES256"}}
    with pytest.raises(KeyFormatError, match="ES256"):
        KeySet.from_dict(document)
    p384 = ec.generate_private_key(ec.SECP384R1())
    pem = p384.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    bad = {**KeySet.generate(now=T0).active.to_dict(), "private_key_pem": pem}
    with pytest.raises(KeyFormatError, match="P-256"):
        SigningKey.from_dict(bad)


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"format": 2},
        {"format": 1},
        {"format": 1, "active": {}, "previous": {}},
        {"format": 1, "active": {"kid": "x"}},
        {"format": 1, "active": {"kid": "x", "algorithm": "HS256", "private_key_pem": "",
                                 "created_at": 0}},
        {"format": 1, "active": {"kid": "x", "algorithm": "ES256", "private_key_pem": "junk",
                                 "created_at": 0}},
    ],
)  # fmt: skip
def test_loading_refuses_broken_documents(document: dict[str, object]) -> None:
    with pytest.raises(KeyFormatError):
        KeySet.from_dict(document)


def test_a_key_cannot_appear_twice() -> None:
    key = SigningKey.generate("ES256", T0)
    with pytest.raises(KeyFormatError, match="twice"):
        KeySet(key, [key.retired(T0 + 1)])
