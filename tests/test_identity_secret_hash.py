"""The one hasher/verifier of stored credential secrets (service tokens, tunnels, API tokens)."""

from __future__ import annotations

import pytest

from zerogate.identity.secret_hash import SecretKind, hash_secret, secret_matches

# Hashes as the three earlier copies wrote them to the store (plain SHA-256 for service
# tokens, tagged SHA-256 for tunnels and API tokens) of the secret "stored-before-secret_hash".
STORED = {
    SecretKind.SERVICE_TOKEN: "c89d9e37a1affba62587ea90f0b2b38bd013b33894880fd183be22dcc0651990",
    SecretKind.TUNNEL: "7b4e3477f58d3ea109844600099ccc27f75aa66c5501dae0d465e49ead42fa0f",
    SecretKind.API_TOKEN: "793fc9d976bc74011c10524372e64713d05c20257fcdce1b39f0d399e297fde6",
}
SECRET = "stored-before-secret_hash"


@pytest.mark.parametrize("kind", list(SecretKind))
def test_hashes_stored_before_still_verify(kind: SecretKind) -> None:
    assert hash_secret(kind, SECRET) == STORED[kind]
    assert secret_matches(kind, SECRET, STORED[kind])
    assert not secret_matches(kind, SECRET + "x", STORED[kind])
    assert not secret_matches(kind, SECRET[:-1], STORED[kind])


@pytest.mark.parametrize("kind", list(SecretKind))
def test_a_hash_of_one_kind_never_verifies_another(kind: SecretKind) -> None:
    for other in SecretKind:
        if other is not kind:
            assert not secret_matches(other, SECRET, STORED[kind])


def test_unknown_id_and_malformed_input_fail_closed() -> None:
    assert not secret_matches(SecretKind.TUNNEL, SECRET, None)
    # a lone surrogate (JSON allows one) and a non-hex stored value neither raise nor match
    assert not secret_matches(SecretKind.TUNNEL, "\ud800", STORED[SecretKind.TUNNEL])
    assert not secret_matches(SecretKind.API_TOKEN, SECRET, "é" * 64)
    assert not secret_matches(SecretKind.API_TOKEN, SECRET, "")
