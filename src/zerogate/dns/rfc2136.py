"""RFC 2136 dynamic updates signed with TSIG (RFC 8945), with dnspython: the mechanism only.

``Rfc2136Client`` reads what a name holds (A, AAAA, CNAME, and the TXT *marker* at
``_zerogate.NAME`` that says which records zerogate wrote) straight from the primary server,
and changes a name with **one update message** each, so a name is never left half-written:

- ``create``: prerequisites "the name has no A, AAAA or CNAME and its marker name is unused";
  adds the records and the marker.
- ``replace``: prerequisite "the marker holds exactly this text"; swaps the records.
- ``delete``: prerequisite "the marker holds exactly this text"; removes records and marker.

A prerequisite that no longer holds (somebody changed the name since it was read) fails the
update with nothing changed. Every failure raises ``DnsError`` with one line naming the server
and the reason (refused, not authorised / bad key, timed out, unreachable). It decides nothing
about which names to write: that is ``zerogate.dns.routes``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import socket
from dataclasses import dataclass, field

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

__all__ = ["DnsError", "Records", "Rfc2136Client", "Target", "marker_name"]

_ALGORITHMS = {
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}
#: the label in front of a name that holds zerogate's marker TXT record for it
MARKER_LABEL = "_zerogate"


class DnsError(Exception):
    """A DNS read or update failed; ``str(error)`` is one line saying where and why."""


@dataclass(frozen=True)
class Target:
    """What a routed name should hold: A/AAAA ``addresses``, or a ``cname``."""

    addresses: tuple[str, ...] = ()
    cname: str | None = None
    ttl: int = 300

    def describe(self) -> str:
        if self.cname is not None:
            return f"CNAME {self.cname}"
        return ", ".join(f"{'AAAA' if ':' in a else 'A'} {a}" for a in self.addresses)


@dataclass(frozen=True)
class Records:
    """What a name holds, as far as routes care, and its marker text (None: no marker)."""

    addresses: frozenset[str] = field(default_factory=frozenset)
    cname: str | None = None
    marker: str | None = None

    @property
    def empty(self) -> bool:
        return not self.addresses and self.cname is None

    def matches(self, target: Target) -> bool:
        if target.cname is not None:
            return self.cname == target.cname and not self.addresses
        return self.cname is None and self.addresses == frozenset(target.addresses)

    def describe(self) -> str:
        if self.cname is not None:
            return f"CNAME {self.cname}"
        return ", ".join(f"{'AAAA' if ':' in a else 'A'} {a}" for a in sorted(self.addresses))

    def as_target(self, ttl: int) -> Target:
        return Target(tuple(sorted(self.addresses)), self.cname, ttl)


def marker_name(host: str) -> dns.name.Name:
    """The name of ``host``'s marker TXT record (absolute)."""
    return dns.name.from_text(f"{MARKER_LABEL}.{host}")


def _name(host: str) -> dns.name.Name:
    return dns.name.from_text(host)  # absolute: an update names never hang off the zone


class Rfc2136Client:
    """Reads and updates names of one zone on its primary server (``server`` HOST:PORT)."""

    def __init__(
        self,
        *,
        server: str,
        zone: str,
        key_name: str,
        secret: str,
        algorithm: str = "hmac-sha256",
        timeout: float = 10.0,
    ) -> None:
        host, _, port = server.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.where = server
        self.zone = dns.name.from_text(zone)
        self.timeout = timeout
        try:
            key = base64.b64decode(secret, validate=True)
        except (binascii.Error, ValueError):
            raise DnsError("the TSIG secret is not base64 (as tsig-keygen prints it)") from None
        if not key:
            raise DnsError("the TSIG secret is empty")
        self.key = dns.tsig.Key(dns.name.from_text(key_name), key, _ALGORITHMS[algorithm])

    def in_zone(self, host: str) -> bool:
        return dns.name.from_text(host).is_subdomain(self.zone)

    # -- transport ---------------------------------------------------------------------------

    async def _address(self) -> str:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise DnsError(f"DNS server {self.where}: cannot resolve: {exc}") from None
        return str(infos[0][4][0])

    async def _exchange(self, message: dns.message.Message) -> dns.message.Message:
        message.use_tsig(self.key)
        where = await self._address()
        try:
            async with asyncio.timeout(self.timeout):
                return await dns.asyncquery.tcp(
                    message, where, port=self.port, timeout=self.timeout
                )
        except TimeoutError:
            raise DnsError(f"DNS server {self.where}: timed out after {self.timeout:g}s") from None
        except (dns.tsig.PeerBadKey, dns.tsig.PeerBadSignature) as exc:
            raise DnsError(
                f"DNS server {self.where}: refused the TSIG key {self.key.name} "
                f"({type(exc).__name__}: check key_name, the secret and algorithm)"
            ) from None
        except dns.exception.DNSException as exc:
            raise DnsError(f"DNS server {self.where}: {type(exc).__name__}: {exc}") from None
        except ConnectionRefusedError:
            raise DnsError(f"DNS server {self.where}: connection refused") from None
        except OSError as exc:
            raise DnsError(f"DNS server {self.where}: {exc.strerror or exc}") from None

    def _check(self, reply: dns.message.Message, what: str) -> None:
        rcode = reply.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        text = dns.rcode.to_text(rcode)
        hint = {
            "NOTAUTH": " (the key is not allowed to update this zone, or the server is not "
            "authoritative for it)",
            "REFUSED": " (the zone's update policy does not allow this key)",
            "YXDOMAIN": " (the name changed since it was read)",
            "YXRRSET": " (the name changed since it was read)",
            "NXRRSET": " (the name changed since it was read)",
            "NOTZONE": " (the name is not in the zone)",
        }.get(text, "")
        raise DnsError(f"DNS server {self.where}: {what}: {text}{hint}")

    # -- reading -----------------------------------------------------------------------------

    async def _rrset(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> list[str]:
        query = dns.message.make_query(name, rdtype)
        query.flags &= ~dns.flags.RD
        reply = await self._exchange(query)
        if reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            self._check(reply, f"query {name} {dns.rdatatype.to_text(rdtype)}")
        owner = name
        values: list[str] = []
        for rrset in reply.answer:
            if rrset.name == owner and rrset.rdtype == rdtype:
                values += [rdata.to_text() for rdata in rrset]
        return values

    async def read(self, host: str) -> Records:
        """What ``host`` holds now on the primary (and its marker)."""
        a = await self._rrset(_name(host), dns.rdatatype.A)
        aaaa = await self._rrset(_name(host), dns.rdatatype.AAAA)
        cname = await self._rrset(_name(host), dns.rdatatype.CNAME)
        txt = await self._rrset(marker_name(host), dns.rdatatype.TXT)
        marker = None
        if txt:
            marker = "".join(part.strip('"') for part in txt[0].split('" "'))
        return Records(
            addresses=frozenset([*a, *aaaa]),
            cname=cname[0].rstrip(".") if cname else None,
            marker=marker,
        )

    # -- writing -----------------------------------------------------------------------------

    def _update(self) -> dns.update.UpdateMessage:
        return dns.update.UpdateMessage(self.zone)

    @staticmethod
    def _add(update: dns.update.UpdateMessage, host: str, target: Target, marker: str) -> None:
        name = _name(host)
        if target.cname is not None:
            update.add(name, target.ttl, dns.rdatatype.CNAME, target.cname.rstrip(".") + ".")
        for address in target.addresses:
            kind = dns.rdatatype.AAAA if ":" in address else dns.rdatatype.A
            update.add(name, target.ttl, kind, address)
        update.add(marker_name(host), target.ttl, dns.rdatatype.TXT, _quote(marker))

    async def create(self, host: str, target: Target, marker: str) -> None:
        """Write ``target`` and the marker at a name that holds neither (else nothing)."""
        update = self._update()
        for kind in (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.CNAME):
            update.absent(_name(host), kind)
        update.absent(marker_name(host))
        self._add(update, host, target, marker)
        self._check(await self._exchange(update), f"create {host}")

    async def replace(self, host: str, target: Target, marker: str) -> None:
        """Swap the records of a name whose marker is ``marker`` (else nothing)."""
        update = self._update()
        update.present(marker_name(host), dns.rdatatype.TXT, _quote(marker))
        for kind in (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.CNAME):
            update.delete(_name(host), kind)
        update.delete(marker_name(host), dns.rdatatype.TXT)
        self._add(update, host, target, marker)
        self._check(await self._exchange(update), f"update {host}")

    async def delete(self, host: str, marker: str) -> None:
        """Remove the records and the marker of a name whose marker is ``marker``."""
        update = self._update()
        update.present(marker_name(host), dns.rdatatype.TXT, _quote(marker))
        for kind in (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.CNAME):
            update.delete(_name(host), kind)
        update.delete(marker_name(host), dns.rdatatype.TXT)
        self._check(await self._exchange(update), f"delete {host}")

    async def add_txt(self, name: str, value: str, ttl: int = 60) -> None:
        """Add one TXT record at ``name`` (other TXT records there stay: several ACME
        challenges may wait at one name)."""
        update = self._update()
        update.add(_name(name), ttl, dns.rdatatype.TXT, _quote(value))
        self._check(await self._exchange(update), f"add TXT {name}")

    async def delete_txt(self, name: str, value: str) -> None:
        """Remove the TXT record ``value`` at ``name`` (nothing when it is not there)."""
        update = self._update()
        update.delete(_name(name), dns.rdatatype.TXT, _quote(value))
        self._check(await self._exchange(update), f"delete TXT {name}")


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
