"""The cluster's own certificate authority and the per-node certificates of the edge-to-edge
relay (mutual TLS between edges). No I/O here: make a CA, issue a node certificate, name it.

The CA (ECDSA P-256, 10 years) is made once by whichever process asks first and kept in the
store as a named secret (``SECRET_NAME``: sealed with the secrets key when one is set, like the
server secret and the signing keys). Each node issues itself a short-lived certificate
(:data:`NODE_VALID`, renewed well before it ends) whose only name is
``<node id>.node.zerogate.invalid``: a relay client checks that the peer it dialled is the node
it meant (an address reused by another process fails), and a relay listener accepts only
clients with a certificate of this CA. Whoever can read the store (and its secrets key) can
issue certificates: the same trust as for every other secret kept there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: the store's secret row holding the cluster CA (certificate and key, JSON)
SECRET_NAME = "cluster_ca"  # noqa: S105 - a row name, not a secret
CA_VALID = timedelta(days=3650)
#: how long a node certificate is valid; a running node renews it after half of that
NODE_VALID = timedelta(days=2)
NAME_SUFFIX = ".node.zerogate.invalid"


@dataclass(frozen=True, slots=True)
class CertPair:
    cert_pem: str
    key_pem: str

    def to_json(self) -> str:
        return json.dumps({"cert": self.cert_pem, "key": self.key_pem})

    @classmethod
    def from_json(cls, text: str) -> CertPair:
        data = json.loads(text)
        return cls(cert_pem=data["cert"], key_pem=data["key"])


def node_name(node_id: str) -> str:
    """The one DNS name in node ``node_id``'s certificate (what a relay client verifies)."""
    return f"{node_id}{NAME_SUFFIX}"


def _pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def make_ca(*, now: datetime | None = None) -> CertPair:
    """A new cluster CA."""
    now = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zerogate cluster CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + CA_VALID)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return CertPair(cert.public_bytes(serialization.Encoding.PEM).decode(), _pem(key))


def issue_node(ca: CertPair, node_id: str, *, now: datetime | None = None) -> CertPair:
    """A certificate for node ``node_id`` signed by ``ca``, for both ends of a relay
    (``serverAuth`` and ``clientAuth``)."""
    now = now or datetime.now(UTC)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the cluster CA's key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + NODE_VALID)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(node_name(node_id))]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return CertPair(cert.public_bytes(serialization.Encoding.PEM).decode(), _pem(key))
