"""One ACME order (RFC 8555) with the certbot project's ``acme`` library.

The library is synchronous (``requests``), so an order runs in a worker thread; publishing and
withdrawing a challenge are coroutines of the event loop (store writes, DNS updates), which the
thread calls through :class:`Publisher`. Key types: ECDSA P-256 for the certificate and the
account.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from josepy.jwa import ES256
from josepy.jwk import JWK, JWKEC

log = logging.getLogger("zerogate.autotls")

#: the TLS-ALPN-01 protocol name (RFC 8737) and the certificate extension it checks
ACME_TLS_ALPN = "acme-tls/1"
ID_PE_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
USER_AGENT = "zerogate"


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """TLS-ALPN-01 (RFC 8737), which the ``acme`` library no longer ships: its response is an
    empty object, as every key-authorization response."""

    typ = "tls-alpn-01"


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: JWK, **unused: object) -> str:
        return self.key_authorization(account_key)


class OrderError(Exception):
    """An order failed; the message says for which hostname and why."""


@dataclass(frozen=True, slots=True)
class Issued:
    host: str
    cert_pem: str
    key_pem: str
    not_before: datetime
    not_after: datetime
    issuer: str


@dataclass(frozen=True, slots=True)
class Pending:
    """A challenge to publish: ``kind`` (``http-01``, ``tls-alpn-01``, ``dns-01``), the
    hostname it proves, the token (http-01) and the value to publish (the key authorization,
    or for ``dns-01`` the TXT value)."""

    kind: str
    host: str
    token: str
    value: str


class Publisher(Protocol):
    """Called from the ordering thread; each call blocks until the loop has done it."""

    def publish(self, pending: Pending) -> None: ...

    def withdraw(self, pending: Pending) -> None: ...


def new_key_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def tls_alpn_certificate(host: str, key_authorization: str) -> tuple[str, str]:
    """The self-signed certificate a TLS-ALPN-01 validation expects (RFC 8737 §3): ``host`` as
    its only name and the critical acmeIdentifier extension holding SHA-256 of the key
    authorization. Returns (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ACME challenge")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        # DER OCTET STRING of the 32-byte digest
        .add_extension(
            x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, b"\x04\x20" + digest),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), key_pem


def describe(cert_pem: str) -> tuple[datetime, datetime, str]:
    """Validity and issuer of the first certificate of a PEM chain."""
    leaf = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
    return (
        leaf.not_valid_before_utc,
        leaf.not_valid_after_utc,
        leaf.issuer.rfc4514_string(),
    )


class AcmeAccount:
    """A registered account at one directory (registered on first use, then reused)."""

    def __init__(
        self,
        directory: str,
        email: str,
        account_key_pem: str,
        *,
        verify: bool | str = True,
        timeout: int = 30,
    ) -> None:
        self.directory_url = directory
        self.email = email
        key = serialization.load_pem_private_key(account_key_pem.encode("ascii"), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise OrderError("the stored ACME account key is not an ECDSA key")
        self.key = JWKEC(key=key)
        self.verify = verify
        self.timeout = timeout
        self._client: client.ClientV2 | None = None

    def _connect(self) -> client.ClientV2:
        if self._client is not None:
            return self._client
        net = client.ClientNetwork(
            self.key,
            alg=ES256,
            verify_ssl=self.verify,  # type: ignore[arg-type]  # requests' verify: bool or path
            user_agent=USER_AGENT,
            timeout=self.timeout,
        )
        directory = client.ClientV2.get_directory(self.directory_url, net)
        acme = client.ClientV2(directory, net)
        registration = messages.NewRegistration.from_data(
            email=self.email, terms_of_service_agreed=True
        )
        try:
            acme.new_account(registration)
        except errors.ConflictError as exc:  # this key has an account already: use it
            net.account = messages.RegistrationResource(
                uri=exc.location, body=messages.Registration()
            )
        self._client = acme
        return acme

    def order(
        self,
        host: str,
        choose: Callable[[str, bool], str],
        publisher: Publisher,
        *,
        deadline: float = 90.0,
    ) -> Issued:
        """A certificate for ``host`` (``*.`` for a wildcard). ``choose(host, wildcard)`` names
        the challenge kind for an authorization; the publisher makes it answerable before the
        CA is told to check, and withdraws it afterwards, whatever happened."""
        try:
            return self._order(host, choose, publisher, deadline)
        except OrderError:
            raise
        except errors.ValidationError as exc:
            problems = "; ".join(
                f"{a.body.identifier.value}: {c.error.detail if c.error else c.status}"
                for a in exc.failed_authzrs
                for c in a.body.challenges
                if c.status == messages.STATUS_INVALID
            )
            raise OrderError(f"{host}: the CA could not validate: {problems}") from None
        except errors.TimeoutError:
            raise OrderError(f"{host}: the CA did not finish within {deadline:g}s") from None
        except errors.Error as exc:
            raise OrderError(f"{host}: {exc}") from None
        except OSError as exc:  # requests' connection errors are OSErrors
            raise OrderError(f"{host}: cannot reach {self.directory_url}: {exc}") from None

    def _order(
        self,
        host: str,
        choose: Callable[[str, bool], str],
        publisher: Publisher,
        deadline: float,
    ) -> Issued:
        acme = self._connect()
        key_pem = new_key_pem()
        csr = crypto_util.make_csr(key_pem.encode("ascii"), [host])
        order = acme.new_order(csr)
        published: list[Pending] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # the CA still trusts an earlier validation
                name = authz.body.identifier.value
                wildcard = bool(authz.body.wildcard)
                kind = choose(name, wildcard)
                body = next(
                    (c for c in authz.body.challenges if c.chall.typ == kind),
                    None,
                )
                if body is None:
                    offered = ", ".join(c.chall.typ for c in authz.body.challenges)
                    raise OrderError(f"{host}: the CA does not offer {kind} (offers {offered})")
                response, validation = self._validation(body, name)
                pending = Pending(
                    kind=kind,
                    host=name,
                    token=body.chall.encode("token"),
                    value=validation,
                )
                publisher.publish(pending)
                published.append(pending)
                acme.answer_challenge(body, response)
            finished = acme.poll_and_finalize(
                order, deadline=datetime.now() + timedelta(seconds=deadline)
            )
        finally:
            for pending in published:
                try:
                    publisher.withdraw(pending)
                except Exception:
                    log.exception("cannot withdraw the %s challenge of %s", pending.kind, host)
        chain = finished.fullchain_pem
        not_before, not_after, issuer = describe(chain)
        return Issued(host, chain, key_pem, not_before, not_after, issuer)

    def _validation(
        self, body: messages.ChallengeBody, name: str
    ) -> tuple[challenges.ChallengeResponse, str]:
        chall = body.chall
        if isinstance(chall, challenges.DNS01):
            return chall.response(self.key), chall.validation(self.key)
        if isinstance(chall, challenges.HTTP01 | TLSALPN01):
            return chall.response(self.key), chall.key_authorization(self.key)
        raise OrderError(f"{name}: unsupported challenge {chall.typ}")
