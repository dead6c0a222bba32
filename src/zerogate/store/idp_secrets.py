"""OIDC client secrets set through the admin panel or API (instead of an environment variable
named by ``client_secret_env``).

Each one is a ``server_secrets`` row named ``oidc_client_secret:<provider>``. Its value is
encrypted with a key derived from the server secret (HKDF-SHA256; AES-256-GCM, a fresh nonce,
the row's name and the provider's issuer as associated data), stored as
``zgidp1:<base64url(nonce ‖ sealed)>``. It is bound to the issuer: a provider whose issuer was
changed afterwards (by anyone, file or panel) does not get the secret any more, so it cannot be
sent to a server the admin who set it did not choose; it reads as "no secret" until set again.
With ``$ZEROGATE_SECRETS_KEY`` the row is sealed once more like every secret row
(``secretbox``). Neither an export, the admin log nor a read of the row alone shows it; nothing
in zerogate ever sends it anywhere but to the provider's token endpoint."""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
from collections.abc import Sequence
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from zerogate.store.runtime import _upsert
from zerogate.store.secretbox import SecretBox
from zerogate.store.tables import server_secrets

log = logging.getLogger(__name__)

PREFIX = "oidc_client_secret:"
SEALED = "zgidp1:"
NONCE_BYTES = 12
#: longer client secrets are refused (providers issue tens of characters)
MAX_SECRET_CHARS = 4096


def row_name(provider: str) -> str:
    return PREFIX + provider


def _cipher(server_secret: bytes) -> AESGCM:
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"zerogate oidc client secret"
    ).derive(server_secret)
    return AESGCM(key)


def _bound(provider: str, issuer: str) -> bytes:
    return f"{row_name(provider)}\n{issuer}".encode()


def encrypt(server_secret: bytes, provider: str, issuer: str, value: str) -> str:
    nonce = secrets.token_bytes(NONCE_BYTES)
    sealed = _cipher(server_secret).encrypt(nonce, value.encode("utf-8"), _bound(provider, issuer))
    return SEALED + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")


def decrypt(server_secret: bytes, provider: str, issuer: str, stored: str) -> str | None:
    """The secret, or None when it was stored for another issuer (or is damaged)."""
    if not stored.startswith(SEALED):
        return None
    try:
        raw = base64.urlsafe_b64decode(stored[len(SEALED) :].encode("ascii"))
        plain = _cipher(server_secret).decrypt(
            raw[:NONCE_BYTES], raw[NONCE_BYTES:], _bound(provider, issuer)
        )
    except (InvalidTag, binascii.Error, ValueError):
        log.warning(
            "the stored client secret of identity provider %r was set for another issuer "
            "(or is damaged): not used; set it again",
            provider,
        )
        return None
    return plain.decode("utf-8")


def check(value: str) -> str:
    """``value`` as it will be stored, or ``ValueError`` saying why not."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("the client secret is empty")
    if len(value) > MAX_SECRET_CHARS:
        raise ValueError(f"the client secret is longer than {MAX_SECRET_CHARS} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("the client secret holds a control character")
    return value.strip()


async def put(
    connection: AsyncConnection,
    provider: str,
    issuer: str,
    value: str,
    *,
    server_secret: bytes,
    box: SecretBox,
    now: datetime,
) -> None:
    name = row_name(provider)
    text = box.seal(name, encrypt(server_secret, provider, issuer, value))
    await _upsert(
        connection, server_secrets, "name", {"name": name, "value": text, "updated_at": now}
    )


async def get(
    connection: AsyncConnection,
    provider: str,
    issuer: str,
    *,
    server_secret: bytes,
    box: SecretBox,
) -> str | None:
    name = row_name(provider)
    result = await connection.execute(
        select(server_secrets.c.value).where(server_secrets.c.name == name)
    )
    stored = result.scalar_one_or_none()
    if stored is None:
        return None
    return decrypt(server_secret, provider, issuer, box.open(name, str(stored)))


async def names(connection: AsyncConnection) -> set[str]:
    """The providers with a stored client secret."""
    result = await connection.execute(
        select(server_secrets.c.name).where(server_secrets.c.name.startswith(PREFIX))
    )
    return {str(name)[len(PREFIX) :] for name in result.scalars().all()}


async def remove(connection: AsyncConnection, providers: Sequence[str]) -> int:
    if not providers:
        return 0
    result = await connection.execute(
        delete(server_secrets).where(server_secrets.c.name.in_([row_name(p) for p in providers]))
    )
    return int(result.rowcount)
