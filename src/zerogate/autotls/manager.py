"""The certificates of ``listen.tls.acme``: what every worker serves, and the renewer.

Every worker of every node runs one :class:`CertManager`:

- **serving**: :attr:`CertManager.context` is the TLS server context of the public port; its
  SNI callback picks the certificate of the requested hostname (exact name first, then the
  ``*.`` certificate of its parent), or the TLS-ALPN-01 challenge certificate while an order
  waits for one. The certificates come from the store and are reloaded when a row changes
  (polled every ``tick`` seconds), so a certificate another node obtained is served at once;
  the listener never restarts.
- **renewing**: every ``tick`` the manager lists the hostnames it should serve (the portal and
  every application, from the running configuration) and finds those without a certificate or
  past two thirds of its lifetime. Only then it asks for the store lease :data:`LEASE`; the one
  holder (of every process and node on that store) orders them one after the other and
  releases it. A failed order is retried after ``retry_after``, doubled per failure up to an
  hour, each wait jittered (x0.5 to x1.5) so that nodes and hostnames spread out.
- **challenges**: HTTP-01 tokens and TLS-ALPN-01 key authorizations are written to the store
  while an order waits, so the node the CA reaches answers even when another one ordered;
  DNS-01 (wildcards) adds and removes a TXT record through RFC 2136 (``dns.rfc2136``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import random
import secrets
import socket
import ssl
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from zerogate.autotls.order import (
    ACME_TLS_ALPN,
    AcmeAccount,
    Issued,
    OrderError,
    Pending,
    new_key_pem,
    tls_alpn_certificate,
)
from zerogate.dns.rfc2136 import DnsError, Rfc2136Client
from zerogate.model.objects import Acme
from zerogate.model.values import parse_duration
from zerogate.store import AccessEvent, Store, StoreError
from zerogate.store.certificates import Challenge, StoredCertificate

log = logging.getLogger("zerogate.autotls")

#: the store lease the renewer holds while it orders (one holder across all nodes)
LEASE = "acme-renewer"
#: how long a taken lease lasts unless extended (an order extends it per hostname)
LEASE_SECONDS = 600.0
#: the stored account key (``server_secrets``; sealed by the secrets key like every secret)
ACCOUNT_SECRET = "acme-account-key"  # noqa: S105 - the name of a stored secret
#: how long a published challenge stays answerable
CHALLENGE_LIFETIME = timedelta(minutes=10)
#: the longest wait between retries of a failing hostname
MAX_RETRY = 3600.0
#: renew when this fraction of a certificate's lifetime has passed
RENEW_AT = 2 / 3


def renew_at(cert: StoredCertificate) -> datetime:
    """When a certificate is due: two thirds into its lifetime."""
    return cert.not_before + (cert.not_after - cert.not_before) * RENEW_AT


def acme_hostname(name: str) -> str | None:
    """The hostname a certificate can be ordered for (``*.`` kept, port removed), or None for
    what no public CA certifies (IP addresses, empty names)."""
    host = name.strip().lower().rstrip(".")
    if host.startswith("["):
        return None
    if host.count(":") == 1:
        host = host.partition(":")[0]
    if not host:
        return None
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return None
    return host


def wanted_hostnames(hostnames: Iterable[str], portal_host: str | None) -> set[str]:
    """The hostnames automatic HTTPS orders certificates for: the portal's and every
    application's that a public CA can certify (``acme_hostname``)."""
    names = {acme_hostname(h) for h in hostnames}
    if portal_host is not None:
        names.add(acme_hostname(portal_host))
    return {n for n in names if n is not None}


def tls_context(cert_pem: str, key_pem: str, alpn: list[str]) -> ssl.SSLContext:
    """A TLS server context holding one certificate chain (keys go through a private file
    that is removed at once: ``ssl`` loads PEM only from files)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(alpn)
    with tempfile.TemporaryDirectory(prefix="zerogate-tls-") as folder:
        cert_path, key_path = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert_path.write_text(cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key_pem)
        context.load_cert_chain(cert_path, key_path)
    return context


@dataclass
class _Retry:
    failures: int = 0
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    why: str = ""


class _LoopPublisher:
    """The ordering thread's way back into the event loop."""

    def __init__(self, manager: CertManager, loop: asyncio.AbstractEventLoop) -> None:
        self.manager = manager
        self.loop = loop

    def publish(self, pending: Pending) -> None:
        asyncio.run_coroutine_threadsafe(self.manager.publish(pending), self.loop).result(60)

    def withdraw(self, pending: Pending) -> None:
        asyncio.run_coroutine_threadsafe(self.manager.withdraw(pending), self.loop).result(60)


class CertManager:
    """Certificates for one worker: served by SNI, renewed under the store lease."""

    def __init__(
        self,
        store: Store,
        settings: Acme,
        *,
        hostnames: Callable[[], Iterable[str]],
        portal_host: str,
        dns: Rfc2136Client | None = None,
        base_dir: Path | None = None,
        tick: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        holder: str | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.hostnames = hostnames
        self.portal_host = acme_hostname(portal_host)
        self.dns = dns
        self.tick = tick
        self.clock = clock
        self.holder = holder or f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
        self.retry_after = parse_duration(settings.retry_after).total_seconds()
        bundle = settings.ca_bundle
        if bundle is not None and base_dir is not None and not Path(bundle).is_absolute():
            bundle = str(base_dir / bundle)
        self.verify: bool | str = bundle if bundle is not None else True
        #: hostname (``*.`` included) → certificate, and its TLS context
        self.certs: dict[str, StoredCertificate] = {}
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._versions: dict[str, datetime] = {}
        #: pending challenges: http-01 token → challenge; tls-alpn-01 host → context
        self._http: dict[str, Challenge] = {}
        self._alpn: dict[str, tuple[str, ssl.SSLContext]] = {}
        self._retry: dict[str, _Retry] = {}
        self._account: AcmeAccount | None = None
        self._task: asyncio.Task[None] | None = None
        #: orders this manager completed (the tests and the log read it)
        self.ordered: list[str] = []
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.set_alpn_protocols(["http/1.1"])
        self.context.sni_callback = self._sni

    # -- serving -----------------------------------------------------------------------------

    def _sni(self, sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
        host = (name or self.portal_host or "").lower().rstrip(".")
        chosen = self.context_for(host)
        if chosen is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = chosen
        return None

    def context_for(self, host: str) -> ssl.SSLContext | None:
        """The context a handshake for ``host`` gets: a waiting TLS-ALPN-01 challenge, the
        exact certificate, or the wildcard one of its parent; None (the handshake fails)."""
        pending = self._alpn.get(host)
        if pending is not None:
            return pending[1]
        context = self._contexts.get(host)
        if context is None and "." in host:
            context = self._contexts.get("*." + host.split(".", 1)[1])
        return context

    def serves(self, host: str) -> bool:
        """Whether ``host`` is one of this server's hostnames (the HTTP listener redirects
        only those)."""
        wanted = self.wanted()
        if host in wanted:
            return True
        return "." in host and "*." + host.split(".", 1)[1] in wanted

    def wanted(self) -> set[str]:
        return wanted_hostnames(self.hostnames(), self.portal_host)

    async def http_answer(self, host: str, token: str) -> str | None:
        """The key authorization for an HTTP-01 request of ``host`` for ``token``, only while
        an order waits for exactly that (else None: the listener answers 404)."""
        challenge = self._http.get(token)
        if challenge is None:
            challenge = await self.store.challenge("http-01:" + token)
        if challenge is None or challenge.kind != "http-01" or challenge.host != host:
            return None
        if challenge.expires_at <= self.clock():
            return None
        return challenge.value

    async def refresh(self) -> None:
        """Load what changed in the store: certificates and pending TLS-ALPN-01 challenges."""
        versions = await self.store.certificate_versions()
        if versions != self._versions:
            stored = await self.store.certificates()
            contexts: dict[str, ssl.SSLContext] = {}
            for cert in stored:
                old = self.certs.get(cert.host)
                if old is not None and old.updated_at == cert.updated_at:
                    contexts[cert.host] = self._contexts[cert.host]
                    continue
                try:
                    contexts[cert.host] = tls_context(cert.cert_pem, cert.key_pem, ["http/1.1"])
                except (ssl.SSLError, ValueError) as exc:
                    log.error("the stored certificate of %s does not load: %s", cert.host, exc)
            self.certs = {c.host: c for c in stored if c.host in contexts}
            self._contexts = contexts
            self._versions = versions
        if self.settings.challenge == "tls-alpn-01":
            alpn: dict[str, tuple[str, ssl.SSLContext]] = {}
            for challenge in await self.store.challenges():
                if challenge.kind != "tls-alpn-01":
                    continue
                known = self._alpn.get(challenge.host)
                if known is not None and known[0] == challenge.value:
                    alpn[challenge.host] = known
                else:
                    alpn[challenge.host] = self._alpn_context(challenge.host, challenge.value)
            self._alpn = alpn

    @staticmethod
    def _alpn_context(host: str, key_authorization: str) -> tuple[str, ssl.SSLContext]:
        cert_pem, key_pem = tls_alpn_certificate(host, key_authorization)
        return key_authorization, tls_context(cert_pem, key_pem, [ACME_TLS_ALPN])

    # -- renewing ----------------------------------------------------------------------------

    def due(self, now: datetime) -> list[str]:
        """The hostnames to order now: no certificate or past two thirds of its lifetime, and
        not waiting for a retry."""
        result = []
        for host in sorted(self.wanted()):
            retry = self._retry.get(host)
            if retry is not None and now < retry.at:
                continue
            cert = self.certs.get(host)
            if cert is None or now >= renew_at(cert):
                result.append(host)
        return result

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.store.release_lease(LEASE, self.holder)

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
                await self.renew()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("automatic HTTPS: the certificate check failed; trying again")
            await asyncio.sleep(self.tick)

    async def renew(self) -> list[str]:
        """Order what is due, if this manager gets the lease. Returns the hostnames it
        obtained certificates for."""
        if not self.due(self.clock()):
            return []
        if not await self.store.try_lease(LEASE, self.holder, LEASE_SECONDS):
            return []
        done: list[str] = []
        try:
            await self.refresh()  # another holder may have just renewed
            for host in self.due(self.clock()):
                await self.store.try_lease(LEASE, self.holder, LEASE_SECONDS)
                try:
                    issued = await self._order(host)
                except (OrderError, DnsError) as exc:
                    self._failed(host, str(exc))
                    await self._record(host, "failed", str(exc))
                    continue
                await self.store.put_certificate(
                    StoredCertificate(
                        host=issued.host,
                        cert_pem=issued.cert_pem,
                        key_pem=issued.key_pem,
                        not_before=issued.not_before,
                        not_after=issued.not_after,
                        issuer=issued.issuer,
                        updated_at=datetime.now(UTC),
                    )
                )
                self._retry.pop(host, None)
                self.ordered.append(host)
                done.append(host)
                await self._record(
                    host,
                    "issued",
                    f"{issued.issuer}, until {issued.not_after.isoformat(timespec='seconds')}",
                )
                log.info(
                    "automatic HTTPS: certificate for %s until %s (%s)",
                    host,
                    issued.not_after.isoformat(timespec="seconds"),
                    issued.issuer,
                )
                await self.refresh()
            await self.store.forget_challenges()
            gone = await self.store.delete_expired_certificates(self.wanted())
            if gone:
                log.info("automatic HTTPS: removed expired certificates of %s", ", ".join(gone))
        finally:
            await self.store.release_lease(LEASE, self.holder)
        return done

    def _failed(self, host: str, why: str) -> None:
        retry = self._retry.get(host) or _Retry()
        retry.failures += 1
        wait = min(MAX_RETRY, self.retry_after * 2 ** (retry.failures - 1))
        wait *= random.uniform(0.5, 1.5)
        retry.at = self.clock() + timedelta(seconds=wait)
        retry.why = why
        self._retry[host] = retry
        log.error("automatic HTTPS: %s (next try in %.0fs)", why, wait)

    async def _record(self, host: str, outcome: str, detail: str) -> None:
        """One ``tls`` row in the access log (``host``, ``issued`` / ``failed``, the issuer or
        the error): what ``zerogate certs list``, the admin API and the dashboard show of
        orders across every node. A store that cannot take it loses only the row."""
        event = AccessEvent(
            at=datetime.now(UTC),
            kind="tls",
            app=None,
            email=None,
            idp=None,
            ip=None,
            country=None,
            decision=outcome,
            policy=None,
            host=host,
            detail=detail,
        )
        try:
            await self.store.write_access([event])
        except StoreError as exc:
            log.warning("automatic HTTPS: could not record the order of %s: %s", host, exc)

    def problems(self) -> dict[str, str]:
        """Hostnames whose last order failed, and why."""
        return {host: r.why for host, r in self._retry.items()}

    async def _order(self, host: str) -> Issued:
        if host.startswith("*.") and self.dns is None:
            raise OrderError(
                f"{host}: a wildcard certificate needs the DNS-01 challenge: configure "
                "dns.rfc2136 for its zone"
            )
        if self._account is None:
            key = await self.store.named_secret(ACCOUNT_SECRET, new_key_pem())
            self._account = AcmeAccount(
                self.settings.directory, self.settings.email, key, verify=self.verify
            )
        account = self._account
        publisher = _LoopPublisher(self, asyncio.get_running_loop())
        return await asyncio.to_thread(account.order, host, self._choose, publisher)

    def _choose(self, _name: str, wildcard: bool) -> str:
        if wildcard:
            return "dns-01"
        return self.settings.challenge

    async def publish(self, pending: Pending) -> None:
        expires = self.clock() + CHALLENGE_LIFETIME
        if pending.kind == "dns-01":
            if self.dns is None:
                raise OrderError(f"{pending.host}: DNS-01 needs dns.rfc2136")
            await self.dns.add_txt(f"_acme-challenge.{pending.host}", pending.value)
            return
        if pending.kind == "http-01":
            challenge = Challenge(
                "http-01:" + pending.token, "http-01", pending.host, pending.value, expires
            )
            self._http[pending.token] = challenge
            await self.store.put_challenge(challenge)
            return
        challenge = Challenge(
            "tls-alpn-01:" + pending.host, "tls-alpn-01", pending.host, pending.value, expires
        )
        self._alpn[pending.host] = self._alpn_context(pending.host, pending.value)
        await self.store.put_challenge(challenge)
        # every other worker and node loads it within a tick before the CA is told to look
        await asyncio.sleep(self.tick * 2)

    async def withdraw(self, pending: Pending) -> None:
        if pending.kind == "dns-01":
            if self.dns is not None:
                await self.dns.delete_txt(f"_acme-challenge.{pending.host}", pending.value)
            return
        if pending.kind == "http-01":
            self._http.pop(pending.token, None)
            await self.store.delete_challenge("http-01:" + pending.token)
            return
        self._alpn.pop(pending.host, None)
        await self.store.delete_challenge("tls-alpn-01:" + pending.host)
