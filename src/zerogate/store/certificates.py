"""Rows of automatic HTTPS (migration 0008): certificates, pending ACME challenges, and named
leases.

A certificate's private key is never stored in clear: it is sealed (AES-256-GCM, the hostname as
associated data, ``SecretBox``) with a key derived from the server secret, which is itself sealed
by ``$ZEROGATE_SECRETS_KEY`` when one is given (``store/secretbox.py``).

A lease (``try_lease``) is held by one holder until it expires or is released; taking it is
one conditional statement, so two nodes racing for it cannot both win, on SQLite or PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from zerogate.store.runtime import _insert, _upsert
from zerogate.store.secretbox import SecretBox
from zerogate.store.tables import acme_challenges, certificates, leases

_KEY_INFO = b"zerogate certificate private keys v1"


def key_box(server_secret: bytes) -> SecretBox:
    """The box that seals certificate private keys: a key derived from the server secret."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO).derive(
        server_secret
    )
    return SecretBox(derived)


def _aad(host: str) -> str:
    return f"certificate:{host}"


@dataclass(frozen=True, slots=True)
class StoredCertificate:
    host: str
    cert_pem: str  # the leaf first, then the chain
    key_pem: str
    not_before: datetime
    not_after: datetime
    issuer: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """What may be shown of a stored certificate (no key): ``zerogate certs list``, the admin
    API and the dashboard."""

    host: str
    not_before: datetime
    not_after: datetime
    issuer: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Challenge:
    id: str  # ``http-01:TOKEN`` or ``tls-alpn-01:HOST``
    kind: str
    host: str
    value: str  # the key authorization
    expires_at: datetime


async def put_certificate(
    connection: AsyncConnection, cert: StoredCertificate, box: SecretBox
) -> None:
    await _upsert(
        connection,
        certificates,
        "host",
        {
            "host": cert.host,
            "cert_pem": cert.cert_pem,
            "key_sealed": box.seal(_aad(cert.host), cert.key_pem),
            "not_before": cert.not_before,
            "not_after": cert.not_after,
            "issuer": cert.issuer,
            "updated_at": cert.updated_at,
        },
    )


async def certificate_versions(connection: AsyncConnection) -> dict[str, datetime]:
    """Each stored certificate's hostname and last change (cheap: what a poll compares)."""
    rows = await connection.execute(select(certificates.c.host, certificates.c.updated_at))
    return {r.host: r.updated_at for r in rows}


async def all_certificates(connection: AsyncConnection, box: SecretBox) -> list[StoredCertificate]:
    rows = await connection.execute(select(certificates))
    return [
        StoredCertificate(
            host=r.host,
            cert_pem=r.cert_pem,
            key_pem=box.open(_aad(r.host), r.key_sealed),
            not_before=r.not_before,
            not_after=r.not_after,
            issuer=r.issuer,
            updated_at=r.updated_at,
        )
        for r in rows
    ]


async def certificate_infos(connection: AsyncConnection) -> list[CertificateInfo]:
    """Every stored certificate without its key, by hostname."""
    t = certificates
    rows = await connection.execute(
        select(t.c.host, t.c.not_before, t.c.not_after, t.c.issuer, t.c.updated_at).order_by(
            t.c.host
        )
    )
    return [
        CertificateInfo(r.host, r.not_before, r.not_after, r.issuer, r.updated_at) for r in rows
    ]


async def delete_expired(connection: AsyncConnection, keep: set[str], now: datetime) -> list[str]:
    """Delete the certificates that expired before ``now`` of hostnames not in ``keep`` (no
    longer served): the hostnames deleted."""
    t = certificates
    rows = await connection.execute(select(t.c.host).where(t.c.not_after < now))
    gone = sorted(r.host for r in rows if r.host not in keep)
    if gone:
        await connection.execute(delete(t).where(t.c.host.in_(gone)))
    return gone


async def put_challenge(connection: AsyncConnection, challenge: Challenge) -> None:
    await _upsert(
        connection,
        acme_challenges,
        "id",
        {
            "id": challenge.id,
            "kind": challenge.kind,
            "host": challenge.host,
            "value": challenge.value,
            "expires_at": challenge.expires_at,
        },
    )


async def delete_challenge(connection: AsyncConnection, challenge_id: str) -> None:
    await connection.execute(delete(acme_challenges).where(acme_challenges.c.id == challenge_id))


async def live_challenges(connection: AsyncConnection, now: datetime) -> list[Challenge]:
    """The challenges still waited for."""
    rows = await connection.execute(
        select(acme_challenges).where(acme_challenges.c.expires_at > now)
    )
    return [Challenge(r.id, r.kind, r.host, r.value, r.expires_at) for r in rows]


async def live_challenge(
    connection: AsyncConnection, challenge_id: str, now: datetime
) -> Challenge | None:
    row = (
        await connection.execute(
            select(acme_challenges).where(
                and_(acme_challenges.c.id == challenge_id, acme_challenges.c.expires_at > now)
            )
        )
    ).first()
    return None if row is None else Challenge(row.id, row.kind, row.host, row.value, row.expires_at)


async def forget_challenges(connection: AsyncConnection, now: datetime) -> None:
    """Remove the challenges that expired."""
    await connection.execute(delete(acme_challenges).where(acme_challenges.c.expires_at <= now))


async def try_lease(
    connection: AsyncConnection, name: str, holder: str, now: datetime, until: datetime
) -> bool:
    """Take (or extend) lease ``name`` for ``holder`` until ``until``; False while someone else
    holds it unexpired."""
    taken = await connection.execute(
        update(leases)
        .where(
            and_(
                leases.c.name == name,
                or_(leases.c.holder == holder, leases.c.expires_at <= now),
            )
        )
        .values(holder=holder, expires_at=until)
    )
    if taken.rowcount == 1:
        return True
    inserted = await connection.execute(
        _insert(connection, leases)
        .values(name=name, holder=holder, expires_at=until)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    return inserted.rowcount == 1


async def release_lease(connection: AsyncConnection, name: str, holder: str) -> bool:
    """End ``holder``'s lease ``name`` (False when it does not hold it)."""
    done = await connection.execute(
        delete(leases).where(and_(leases.c.name == name, leases.c.holder == holder))
    )
    return done.rowcount == 1


async def lease_holder(connection: AsyncConnection, name: str, now: datetime) -> str | None:
    row = (
        await connection.execute(
            select(leases.c.holder).where(and_(leases.c.name == name, leases.c.expires_at > now))
        )
    ).first()
    return None if row is None else str(row.holder)
