"""What a request says about itself before anything is decided: host, path, client, scheme.

Shared by every surface on the HTTP side (edge, portal, admin front door), so none has to
import another. The client's address is resolved by :func:`zerogate.net.headers.resolve_client`
against the configured trusted proxies (the only place trust in client headers is decided).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

from zerogate.net import http
from zerogate.net.asgi import Scope
from zerogate.net.headers import IPNetwork, ResolvedClient, resolve_client
from zerogate.policy.engine import Snapshot

#: a Host header: a DNS name, an IPv4 address or a bracketed IPv6 address, then maybe :port
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}"
    r"[A-Za-z0-9])?)*\.?|\[[0-9A-Fa-f:.]+\])(?::(?:6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}"
    r"|[1-5]\d{4}|[1-9]\d{0,3}))?"
)


class RequestTrust(Protocol):
    @property
    def trusted(self) -> Sequence[IPNetwork]: ...

    @property
    def scheme(self) -> str: ...

    @property
    def public_scheme(self) -> str | None: ...


class _HasRuntime(Protocol):
    @property
    def runtime(self) -> RequestTrust: ...


@dataclass(frozen=True, slots=True)
class Request:
    """What the pipeline learnt about a request before deciding."""

    host_header: str
    host: str
    raw_path: str
    query: str
    client: ResolvedClient
    scheme: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.raw_path}" + (
            f"?{self.query}" if self.query else ""
        )


def raw_path_of(scope: Scope) -> str:
    raw = scope.get("raw_path")
    if isinstance(raw, bytes) and raw:
        return raw.decode("latin-1").split("?", 1)[0]
    return quote(scope.get("path", "/"), safe="/%:@!$&'()*+,;=~-._")


def client_scheme(rt: RequestTrust, client: ResolvedClient) -> str:
    """The public scheme of a request from ``client`` (see :func:`request_scheme`)."""
    if rt.public_scheme is not None:
        return rt.public_scheme
    if client.peer_trusted and client.proto:
        return client.proto
    return rt.scheme


def request_scheme(scope: Scope, rt: RequestTrust) -> str:
    """The public scheme of a request: the one a URL ``portal`` pins; else ``X-Forwarded-Proto``
    from a peer in ``trusted_proxies``; else this server's own transport. Nothing an untrusted
    peer sends changes it."""
    if rt.public_scheme is not None:
        return rt.public_scheme
    if not rt.trusted:  # the hot path without proxies: no header walk
        return rt.scheme
    client_addr = scope.get("client") or ("", 0)
    return client_scheme(rt, resolve_client(str(client_addr[0]), scope["headers"], rt.trusted))


def _forwarded_host(scope: Scope) -> str | None:
    """The last ``X-Forwarded-Host`` entry (the one the nearest proxy wrote), if any."""
    entries: list[str] = []
    for key, value in scope["headers"]:
        if key.lower() == b"x-forwarded-host":
            entries.extend(value.decode("latin-1").split(","))
    return entries[-1].strip() if entries else None


def check_host(value: bytes) -> tuple[str, str]:
    """A client's own ``Host`` header as :func:`describe_request` reads it: the header text and
    the host it names (normalised); ``http.BadRequest`` when it is not a host name. A pure
    function of the bytes, so a caller may keep its answers."""
    host_header = value.decode("latin-1").strip()
    if not _HOST.fullmatch(host_header):
        raise http.BadRequest("the Host header is not a host name")
    return host_header, Snapshot.normalise_host(host_header)


def describe_request(scope: Scope, svc: _HasRuntime) -> Request:
    """Host, path and client of a request; raises ``http.BadRequest`` when they are unusable.

    Behind a peer in ``trusted_proxies``, its ``X-Forwarded-Host`` names the host (routing,
    dispatch, the URLs built for it) and its ``X-Forwarded-Proto`` the scheme; an untrusted
    peer's are ignored."""
    rt = svc.runtime
    host_value = http.header(scope, b"host")
    if host_value is None:
        raise http.BadRequest("the request has no Host header")
    host_header, host = check_host(host_value)
    client_addr = scope.get("client") or ("", 0)
    client = resolve_client(str(client_addr[0]), scope["headers"], rt.trusted)
    if client.peer_trusted:
        forwarded = _forwarded_host(scope)
        if forwarded is not None:
            if not _HOST.fullmatch(forwarded):
                raise http.BadRequest("the X-Forwarded-Host header is not a host name")
            host_header = forwarded
            host = Snapshot.normalise_host(host_header)
    return Request(
        host_header=host_header,
        host=host,
        raw_path=raw_path_of(scope),
        query=scope.get("query_string", b"").decode("latin-1"),
        client=client,
        scheme=client_scheme(rt, client),
    )


def public_origin_of(scheme: str, host: str, portal_address: str) -> str:
    """``scheme://host[:port]`` as the public sees ``host``: the port is the configured public
    one (the port of ``portal``, which every application host shares), never one a Host
    header carried (a client's to choose)."""
    shown = f"[{host}]" if ":" in host else host
    _, colon, port = portal_address.rpartition(":")
    return f"{scheme}://{shown}{':' + port if colon and port.isdigit() else ''}"
