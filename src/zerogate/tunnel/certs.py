"""The tunnel listener's generated certificate (used when ``listen.tls`` gives none).

A self-signed ECDSA P-256 certificate, made once and kept in the store (so every edge of a
cluster presents the same one); connector tokens carry its SHA-256 fingerprint, which the
connector pins. No I/O here: make a certificate, read its fingerprint.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

#: the store's secret row holding the generated certificate and key
SECRET_NAME = "tunnel_tls"  # noqa: S105 - a row name, not a secret
VALID_DAYS = 3650


@dataclass(frozen=True, slots=True)
class GeneratedCert:
    cert_pem: str
    key_pem: str

    @property
    def fingerprint(self) -> str:
        return fingerprint_pem(self.cert_pem)

    def to_json(self) -> str:
        return json.dumps({"cert": self.cert_pem, "key": self.key_pem})

    @classmethod
    def from_json(cls, text: str) -> GeneratedCert:
        data = json.loads(text)
        return cls(cert_pem=data["cert"], key_pem=data["key"])


def generate(hosts: list[str], *, now: datetime | None = None) -> GeneratedCert:
    """A new self-signed certificate for ``hosts`` (names or IP addresses)."""
    now = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts or ["localhost"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zerogate tunnel edge")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return GeneratedCert(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )


def fingerprint_der(der: bytes) -> str:
    """The SHA-256 fingerprint (lower-case hex) of a DER certificate, as tokens carry it."""
    return hashlib.sha256(der).hexdigest()


def fingerprint_pem(pem: str) -> str:
    """The fingerprint of the first certificate in ``pem``."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    return fingerprint_der(cert.public_bytes(serialization.Encoding.DER))
