"""Signing keys and the JWKS: generate, rotate with an overlap window, publish, (de)serialise.

This module owns the key material that signs zerogate's JWTs (``tokens.py``) and the public key
set served at ``/.zerogate/certs`` (where origins fetch it). A ``KeySet`` holds one *active* key
(which signs) and the *previous* keys, each kept for verification until its ``not_after``.
``kid`` is the RFC 7638 JWK thumbprint of the public key, so it is stable, unique and checkable.

No I/O: ``KeySet.to_dict()`` / ``KeySet.from_dict()`` give a JSON-able document (private keys as
PKCS#8 PEM) that someone else stores. Every time-dependent call takes ``now`` (unix seconds).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast, get_args

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

Algorithm = Literal["ES256", "RS256"]
ALGORITHMS: tuple[Algorithm, ...] = get_args(Algorithm)
DEFAULT_ALGORITHM: Algorithm = "ES256"
#: RSA modulus size for newly generated RS256 keys (and the minimum accepted when loading)
RSA_KEY_BITS = 2048
#: format version of ``KeySet.to_dict()``
KEYSET_FORMAT = 1

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class KeyFormatError(ValueError):
    """Stored key material that cannot be used (bad PEM, wrong key type, kid mismatch...)."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint_b64(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return _b64url(value.to_bytes(size, "big"))


def public_jwk_members(public_key: PublicKey) -> dict[str, str]:
    """The required JWK members of a public key (RFC 7518 §6), nothing optional."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, ec.SECP256R1):
            raise KeyFormatError(f"EC keys must use P-256, not {public_key.curve.name}")
        numbers = public_key.public_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": _uint_b64(numbers.x, 32),
            "y": _uint_b64(numbers.y, 32),
        }
    numbers_rsa = public_key.public_numbers()
    return {"kty": "RSA", "n": _uint_b64(numbers_rsa.n), "e": _uint_b64(numbers_rsa.e)}


_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 thumbprint: base64url(SHA-256(required members, sorted, no whitespace))."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None:
        raise KeyFormatError(f"no thumbprint for key type {jwk.get('kty')!r} (EC or RSA)")
    canonical = json.dumps(
        {name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True
    )
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def _check_key_type(algorithm: str, private_key: object) -> PrivateKey:
    if algorithm == "ES256":
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
            private_key.curve, ec.SECP256R1
        ):
            raise KeyFormatError("an ES256 key must be an EC P-256 private key")
        return private_key
    if algorithm == "RS256":
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise KeyFormatError("an RS256 key must be an RSA private key")
        if private_key.key_size < RSA_KEY_BITS:
            raise KeyFormatError(f"RSA keys need at least {RSA_KEY_BITS} bits")
        return private_key
    raise KeyFormatError(
        f"unsupported algorithm {algorithm!r} (use one of {', '.join(ALGORITHMS)})"
    )


@dataclass(frozen=True, eq=False)
class SigningKey:
    """One key pair. ``not_after`` (unix seconds) ends its use for verification; ``None`` = open.

    The private key never appears in ``repr``; ``to_jwk()`` only ever holds the public part.
    """

    kid: str
    algorithm: Algorithm
    private_key_pem: str = field(repr=False)
    created_at: float
    not_after: float | None = None
    _private: PrivateKey = field(init=False, repr=False)
    _public: PublicKey = field(init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            loaded = serialization.load_pem_private_key(
                self.private_key_pem.encode("ascii"), password=None
            )
        except (ValueError, TypeError, UnicodeEncodeError) as exc:
            raise KeyFormatError(f"key {self.kid!r}: unreadable private key PEM ({exc})") from None
        private = _check_key_type(self.algorithm, loaded)
        public = private.public_key()
        expected = jwk_thumbprint(public_jwk_members(public))
        if self.kid != expected:
            raise KeyFormatError(
                f"key {self.kid!r}: kid does not match the key's thumbprint {expected!r}"
            )
        object.__setattr__(self, "_private", private)
        object.__setattr__(self, "_public", public)

    @classmethod
    def generate(cls, algorithm: Algorithm, now: float) -> SigningKey:
        """A fresh key pair: EC P-256 for ES256, RSA-2048 (e=65537) for RS256."""
        private: PrivateKey
        if algorithm == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        elif algorithm == "RS256":
            private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
        else:
            raise KeyFormatError(
                f"unsupported algorithm {algorithm!r} (use one of {', '.join(ALGORITHMS)})"
            )
        return cls.from_private_key(private, algorithm, created_at=now)

    @classmethod
    def from_private_key(
        cls,
        private: PrivateKey,
        algorithm: Algorithm,
        *,
        created_at: float,
        not_after: float | None = None,
    ) -> SigningKey:
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")
        kid = jwk_thumbprint(public_jwk_members(private.public_key()))
        return cls(kid, algorithm, pem, created_at, not_after)

    @property
    def private_key(self) -> PrivateKey:
        return self._private

    @property
    def public_key(self) -> PublicKey:
        return self._public

    def valid_at(self, now: float) -> bool:
        """Usable for verification at ``now`` (before ``not_after``, if any)."""
        return self.not_after is None or now < self.not_after

    def retired(self, not_after: float) -> SigningKey:
        """A copy that stops verifying at ``not_after``."""
        return replace(self, not_after=not_after)

    def to_jwk(self) -> dict[str, str]:
        """The public JWK with ``kid``, ``alg``, ``use: sig`` (what ``/.zerogate/certs`` lists)."""
        return {
            **public_jwk_members(self._public),
            "kid": self.kid,
            "alg": self.algorithm,
            "use": "sig",
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "algorithm": self.algorithm,
            "private_key_pem": self.private_key_pem,
            "created_at": self.created_at,
            "not_after": self.not_after,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SigningKey:
        try:
            kid, algorithm, pem = data["kid"], data["algorithm"], data["private_key_pem"]
            created_at, not_after = data["created_at"], data.get("not_after")
        except (KeyError, TypeError) as exc:
            raise KeyFormatError(f"stored key lacks {exc}") from None
        if not isinstance(kid, str) or not isinstance(pem, str):
            raise KeyFormatError("stored key: kid and private_key_pem must be strings")
        if algorithm not in ALGORITHMS:
            raise KeyFormatError(f"stored key {kid!r}: unsupported algorithm {algorithm!r}")
        if not _is_number(created_at) or not (not_after is None or _is_number(not_after)):
            raise KeyFormatError(f"stored key {kid!r}: created_at/not_after must be numbers")
        return cls(
            kid,
            cast(Algorithm, algorithm),
            pem,
            float(created_at),
            None if not_after is None else float(not_after),
        )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class KeySet:
    """The active signing key plus the previous keys still inside their overlap window.

    Mutable on purpose (``rotate``/``prune`` change it in place); readers such as
    ``TokenVerifier`` look keys up on every call, so they see a rotation at once. To pick up a
    rotation done by another process, load a fresh ``KeySet.from_dict`` and hand it over.
    """

    def __init__(self, active: SigningKey, previous: Iterable[SigningKey] = ()) -> None:
        self._active = active
        self._previous: list[SigningKey] = []
        for key in previous:
            if key.kid == active.kid or any(key.kid == p.kid for p in self._previous):
                raise KeyFormatError(f"key {key.kid!r} appears twice in the key set")
            self._previous.append(key)
        self._index()

    def _index(self) -> None:
        self._by_kid: dict[str, SigningKey] = {k.kid: k for k in self._previous}
        self._by_kid[self._active.kid] = self._active

    @classmethod
    def generate(cls, algorithm: Algorithm = DEFAULT_ALGORITHM, *, now: float) -> KeySet:
        """A key set holding one fresh key."""
        return cls(SigningKey.generate(algorithm, now))

    @property
    def active(self) -> SigningKey:
        """The key that signs new tokens."""
        return self._active

    @property
    def previous(self) -> tuple[SigningKey, ...]:
        return tuple(self._previous)

    def __iter__(self) -> Iterator[SigningKey]:
        yield self._active
        yield from self._previous

    def __len__(self) -> int:
        return 1 + len(self._previous)

    def rotate(
        self, now: float, overlap_seconds: float, algorithm: Algorithm | None = None
    ) -> SigningKey:
        """Make a fresh key active; the old one keeps verifying until ``now + overlap_seconds``.

        Choose the overlap at least as long as the longest token lifetime (session duration),
        or sessions issued just before the rotation end early. ``algorithm`` defaults to the
        current key's. Keys whose window is already over are dropped. Returns the new key.
        """
        if overlap_seconds < 0:
            raise ValueError("overlap_seconds must be >= 0")
        new = SigningKey.generate(algorithm or self._active.algorithm, now)
        old = self._active
        end = now + overlap_seconds
        if old.not_after is not None:
            end = min(end, old.not_after)
        self._previous.insert(0, old.retired(end))
        self._active = new
        self._previous = [k for k in self._previous if k.valid_at(now)]
        self._index()
        return new

    def prune(self, now: float) -> list[SigningKey]:
        """Drop previous keys whose window has ended; returns the dropped keys."""
        dropped = [k for k in self._previous if not k.valid_at(now)]
        if dropped:
            self._previous = [k for k in self._previous if k.valid_at(now)]
            self._index()
        return dropped

    def verification_key(self, kid: str, now: float) -> SigningKey | None:
        """The key with this ``kid`` if it may verify at ``now`` — the only way tokens find keys."""
        key = self._by_kid.get(kid)
        if key is None or not key.valid_at(now):
            return None
        return key

    def valid_keys(self, now: float) -> list[SigningKey]:
        return [key for key in self if key.valid_at(now)]

    def jwks(self, now: float) -> dict[str, list[dict[str, str]]]:
        """``{"keys": [...]}``: the public JWK of every key that still verifies at ``now``."""
        return {"keys": [key.to_jwk() for key in self.valid_keys(now)]}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able document (holding the private keys: store it as a secret)."""
        return {
            "format": KEYSET_FORMAT,
            "active": self._active.to_dict(),
            "previous": [k.to_dict() for k in self._previous],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeySet:
        if not isinstance(data, Mapping) or data.get("format") != KEYSET_FORMAT:
            raise KeyFormatError(f"not a zerogate key set (expected format {KEYSET_FORMAT})")
        previous = data.get("previous", [])
        if not isinstance(previous, list):
            raise KeyFormatError("key set: 'previous' must be a list")
        active = data.get("active")
        if not isinstance(active, Mapping):
            raise KeyFormatError("key set: 'active' key is missing")
        return cls(SigningKey.from_dict(active), [SigningKey.from_dict(k) for k in previous])
