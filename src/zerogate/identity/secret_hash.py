"""The one way zerogate stores and checks a credential's secret (pure, no I/O).

Service-token secrets, tunnel secrets and API-token secrets are long random strings, so a
plain SHA-256 needs no key-derivation function. Each kind hashes under its own domain tag, so a
hash stored for one kind never verifies a secret presented as another. The tags are what the
stored hashes were written with; changing one would stop every stored secret of that kind from
verifying. Service-token secrets were stored before tags were used and keep the empty tag.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import Enum

__all__ = ["SecretKind", "hash_secret", "secret_matches"]


class SecretKind(Enum):
    """A kind of stored secret; its value is the domain tag hashed before the secret."""

    SERVICE_TOKEN = b""
    TUNNEL = b"zerogate-tunnel\x00"
    API_TOKEN = b"zerogate-api-token\x00"


def hash_secret(kind: SecretKind, secret: str) -> str:
    """The hex SHA-256 of ``secret`` under ``kind``'s tag: what the store keeps. A string
    that is not valid UTF-8 (a lone surrogate from JSON) still hashes, to a value no
    generated secret has, instead of raising."""
    return hashlib.sha256(kind.value + secret.encode("utf-8", "surrogatepass")).hexdigest()


def secret_matches(kind: SecretKind, secret: str, stored_hash: str | None) -> bool:
    """Whether ``secret`` is the one ``stored_hash`` was made from, compared in constant
    time. ``stored_hash`` is ``None`` when the presented id is unknown: the same work is
    done and the answer is False, so timing does not tell known ids from unknown ones."""
    candidate = hash_secret(kind, secret)
    if stored_hash is None:
        hmac.compare_digest(candidate, candidate)
        return False
    return hmac.compare_digest(candidate.encode(), stored_hash.encode("utf-8", "surrogatepass"))
