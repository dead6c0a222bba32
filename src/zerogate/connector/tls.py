"""How the connector trusts an edge: edge addresses, the client TLS context, certificate pinning.

Three modes, strongest configured first:

- ``--ca FILE``: the edge's chain must verify against that bundle and name the edge host
  (ordinary TLS verification with a private CA);
- a fingerprint in the token: the SHA-256 of the edge's leaf certificate (DER) must equal it;
  the chain is not checked (a self-signed edge certificate is the normal case);
- neither: the system trust store and hostname checking.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from dataclasses import dataclass
from pathlib import Path


class EdgeTrustError(Exception):
    """The edge's certificate does not match the pinned fingerprint."""


@dataclass(frozen=True, slots=True)
class EdgeAddress:
    """One edge to dial: ``host`` (no brackets) and ``port``; ``name``: the name ``host`` was
    resolved from (one of several addresses of one edge name), which TLS checks instead."""

    host: str
    port: int
    name: str | None = None

    @property
    def tls_name(self) -> str:
        """The name the edge's certificate must carry (``--ca``) and the SNI sent."""
        return self.name or self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" + (f" ({self.name})" if self.name else "")


def parse_edge(text: str) -> EdgeAddress:
    """``host:port`` or ``[v6]:port``; ``ValueError`` naming the problem."""
    value = text.strip()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        if not sep:
            raise ValueError(f"{text!r}: an IPv6 edge is written [address]:port")
    else:
        host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: an edge address is HOST:PORT, e.g. edge.example.com:7844")
    return EdgeAddress(host, int(port))


def parse_edges(text: str) -> list[EdgeAddress]:
    """A comma-separated list of ``host:port``."""
    edges = [parse_edge(part) for part in text.split(",") if part.strip()]
    if not edges:
        raise ValueError("no edge address given")
    return edges


@dataclass(frozen=True, slots=True)
class EdgeTrust:
    """What to verify the edge's certificate against (see the module docstring)."""

    ca_file: Path | None = None
    fingerprint: str | None = None

    @property
    def pinned(self) -> bool:
        return self.ca_file is None and self.fingerprint is not None

    def context(self) -> ssl.SSLContext:
        """A client context for this mode (TLS 1.2 at least, ALPN not used)."""
        if self.ca_file is not None:
            ctx = ssl.create_default_context(cafile=str(self.ca_file))
        elif self.fingerprint is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # the pin below replaces the chain check
        else:
            ctx = ssl.create_default_context()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def check(self, peer_der: bytes | None) -> None:
        """After the handshake: raise :class:`EdgeTrustError` unless a pinned leaf matches."""
        if not self.pinned:
            return
        assert self.fingerprint is not None
        if peer_der is None:
            raise EdgeTrustError("the edge presented no certificate")
        seen = hashlib.sha256(peer_der).hexdigest()
        if not hmac.compare_digest(seen, self.fingerprint.lower()):
            raise EdgeTrustError(
                f"the edge's certificate (sha256 {seen[:16]}…) is not the one the token pins"
                f" ({self.fingerprint[:16]}…)"
            )
