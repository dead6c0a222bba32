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

    @property
    def public_port_pinned(self) -> bool: ...

    def portal_origin(self, scheme: str, port: str | None = None) -> str: ...


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
    #: the public port a trusted proxy's ``X-Forwarded-Port`` named (only when ``portal`` is a
    #: bare host that names no port); None: the configured one
    port: str | None = None

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


def _last_entry(scope: Scope, name: bytes) -> str | None:
    """The last entry of a comma-separated forwarding header (the one the nearest proxy
    wrote), if any."""
    entries: list[str] = []
    for key, value in scope["headers"]:
        if key.lower() == name:
            entries.extend(value.decode("latin-1").split(","))
    return entries[-1].strip() if entries else None


def _forwarded_host(scope: Scope) -> str | None:
    """The last ``X-Forwarded-Host`` entry (the one the nearest proxy wrote), if any."""
    return _last_entry(scope, b"x-forwarded-host")


def _forwarded_port(scope: Scope) -> str | None:
    """The last ``X-Forwarded-Port`` entry as a port number, if any; a value that is not one
    is a ``BadRequest`` (a trusted proxy that says something odd fails closed)."""
    text = _last_entry(scope, b"x-forwarded-port")
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 5 and 0 < int(text) < 65536):
        raise http.BadRequest("the X-Forwarded-Port header is not a port")
    return str(int(text))


def forwarded_port(scope: Scope, rt: RequestTrust) -> str | None:
    """The public port a trusted proxy's ``X-Forwarded-Port`` names, when ``portal`` leaves
    the port open (a bare host: no port, no scheme); None otherwise, and always for a peer
    that is not in ``trusted_proxies``."""
    if rt.public_port_pinned or not rt.trusted:
        return None
    client_addr = scope.get("client") or ("", 0)
    if not resolve_client(str(client_addr[0]), scope["headers"], rt.trusted).peer_trusted:
        return None
    return _forwarded_port(scope)


def portal_origin(scope: Scope, rt: RequestTrust) -> str:
    """The portal's public ``scheme://host[:port]`` for this request: the pinned scheme and
    port of ``portal``, else a trusted proxy's ``X-Forwarded-Proto`` / ``-Port``, else this
    server's own transport."""
    return rt.portal_origin(request_scheme(scope, rt), forwarded_port(scope, rt))


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
    dispatch, the URLs built for it), its ``X-Forwarded-Proto`` the scheme and, when ``portal``
    names no port, its ``X-Forwarded-Port`` the public port; an untrusted peer's are ignored."""
    rt = svc.runtime
    host_value = http.header(scope, b"host")
    if host_value is None:
        raise http.BadRequest("the request has no Host header")
    host_header, host = check_host(host_value)
    client_addr = scope.get("client") or ("", 0)
    client = resolve_client(str(client_addr[0]), scope["headers"], rt.trusted)
    port: str | None = None
    if client.peer_trusted:
        forwarded = _forwarded_host(scope)
        if forwarded is not None:
            if not _HOST.fullmatch(forwarded):
                raise http.BadRequest("the X-Forwarded-Host header is not a host name")
            host_header = forwarded
            host = Snapshot.normalise_host(host_header)
        if not rt.public_port_pinned:
            port = _forwarded_port(scope)
    return Request(
        host_header=host_header,
        host=host,
        raw_path=raw_path_of(scope),
        query=scope.get("query_string", b"").decode("latin-1"),
        client=client,
        scheme=client_scheme(rt, client),
        port=port,
    )


def with_port(scheme: str, host: str, port: str | None) -> str:
    """``host`` (an IPv6 address bracketed) with ``:port`` unless ``port`` is None or the
    default of ``scheme``."""
    shown = f"[{host}]" if ":" in host else host
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return shown
    return f"{shown}:{port}"


_DEFAULT_PORTS = {"http": "80", "https": "443"}


def public_origin_of(
    scheme: str, host: str, portal_address: str, forwarded_port: str | None = None
) -> str:
    """``scheme://host[:port]`` as the public sees ``host``: the port is the configured public
    one (the port of ``portal``, which every application host shares), or, when ``portal``
    names none, the one a trusted proxy's ``X-Forwarded-Port`` gave (``Request.port``); never
    one a Host header carried (a client's to choose)."""
    if forwarded_port is not None:
        return f"{scheme}://{with_port(scheme, host, forwarded_port)}"
    shown = f"[{host}]" if ":" in host else host
    _, colon, port = portal_address.rpartition(":")
    return f"{scheme}://{shown}{':' + port if colon and port.isdigit() else ''}"
