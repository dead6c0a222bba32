"""Header rules for forwarding: pure functions on ASGI header lists, no I/O.

Who the client is
    :func:`resolve_client` decides the client's address. The socket peer is the client unless it
    is one of the configured trusted proxies; then ``X-Forwarded-For`` is walked from the right,
    skipping trusted hops, and the first untrusted address is the client. A malformed entry stops
    the walk and the last trusted hop is used instead, so an untrusted party can never choose the
    address policy sees. :func:`client_ip` is the same answer as a plain string.

What the origin receives
    :func:`upstream_request_headers` never trusts a client's forwarding headers: it drops every
    ``X-Forwarded-*``, ``Forwarded`` and ``X-Real-IP`` header, every ``Zerogate-*`` header the
    client sent, and the identity and rewrite headers other gateways and frameworks trust
    (:data:`FOREIGN_IDENTITY_EXACT`, :data:`FOREIGN_IDENTITY_PREFIXES`: the one list), then
    writes its own ``X-Forwarded-For`` / ``-Proto`` / ``-Host`` from values
    the caller resolved (with :func:`resolve_client` when proxies are trusted) and appends the
    caller's injected headers. The trust decision lives only in :func:`resolve_client`, so the
    filter itself needs no flag and cannot be misused into passing a spoofed value through.

What the browser receives
    :func:`downstream_response_headers` drops hop-by-hop headers and every ``Set-Cookie`` an
    upstream (origin or connector) sends for one of zerogate's cookie names
    (:func:`is_zerogate_cookie`), so an origin cannot toss a session or state cookie onto the
    browser.

Hop-by-hop headers (RFC 9110 §7.6.1) are removed in both directions, including every name the
``Connection`` header lists. Header names are compared lower-cased and with ``_`` read as ``-``.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from typing import NamedTuple, TypeAlias

from zerogate.net.asgi import Headers

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
"""Header names (lower case) that describe one connection and are never forwarded."""

RESERVED_PREFIX = b"zerogate-"
"""Client headers whose name starts with this (any case) never reach an origin."""

# Forwarding headers a client could use to claim another address or scheme; the edge writes its
# own. ``expect`` goes too: the edge has already agreed to read the body (the server answered
# ``100 Continue``), and the origin receives it in one go.
_DROPPED: frozenset[bytes] = frozenset({b"forwarded", b"x-real-ip", b"expect"})
_HTTP_PROTOS: frozenset[str] = frozenset({"http", "https"})

#: Identity and rewrite headers other gateways and frameworks trust, dropped from every request
#: to every upstream (bypass applications included): proxy-auth user headers (Grafana, Gitea,
#: Authelia, oauth2-proxy, Apache), Cloudflare's, and the URL-rewrite headers IIS and Symfony
#: route by. Exact names here, prefixes below; lower case, ``_`` compared as ``-``.
FOREIGN_IDENTITY_EXACT: frozenset[bytes] = frozenset(
    {
        b"x-original-url",
        b"x-rewrite-url",
        b"x-original-uri",
        b"x-original-host",
        b"cf-connecting-ip",
        b"cf-connecting-ipv6",
        b"cf-ipcountry",
        b"true-client-ip",
        b"x-client-ip",
        # client addresses other proxies and load balancers write
        b"x-forwarded",
        b"client-ip",
        b"x-cluster-client-ip",
        # generic identity headers some apps take from a trusted proxy
        b"x-user",
        b"x-email",
        b"x-username",
        b"x-host",
        # method overrides: a GET the policy judged as a read becomes a DELETE at the origin
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
    }
)
FOREIGN_IDENTITY_PREFIXES: tuple[bytes, ...] = (
    b"cf-access-",  # Cf-Access-Jwt-Assertion, Cf-Access-Authenticated-User-Email, ...
    b"remote-",  # Remote-User, Remote-Email, Remote-Groups, Remote-Name
    b"x-remote-",  # X-Remote-User, X-Remote-Email, ...
    b"x-webauth-",  # X-Webauth-User (Grafana), X-Webauth-Email, ...
    b"x-auth-request-",  # oauth2-proxy: X-Auth-Request-User, -Email, -Groups, ...
    b"x-forwarded-",  # X-Forwarded-User, -Email, -For, -Host, ... (the edge writes its own)
    b"x-goog-authenticated-user-",  # Google IAP
    b"x-goog-iap-",  # Google IAP's signed assertion
    b"x-ms-client-principal",  # Azure App Service EasyAuth (-name, -id, -idp, ...)
    b"x-ms-token-",  # EasyAuth's tokens
    b"x-amzn-oidc-",  # AWS ALB: X-Amzn-Oidc-Identity, -Data, -Accesstoken
    b"x-pomerium-",  # Pomerium: X-Pomerium-Jwt-Assertion, X-Pomerium-Claim-*
    b"tailscale-user-",  # Tailscale Serve: Tailscale-User-Login, -Name, ...
    b"x-authentik-",  # authentik's proxy outpost
)

#: the names of zerogate's cookies start with this (after an optional ``__Host-`` prefix)
ZEROGATE_COOKIE_PREFIX = "__zg_"
_COOKIE_NAME_PREFIXES = ("__host-", "__secure-")


class ResolvedClient(NamedTuple):
    """Who sent a request, as far as the trusted proxies can vouch.

    ``ip``: the client's address (IPv4-mapped IPv6 unwrapped); what policy checks.
    ``forwarded_for``: the ``X-Forwarded-For`` chain to send to the origin — ``(ip,)`` for an
    untrusted peer; for a trusted one, the vouched-for part of the incoming chain (from the
    client's entry on) followed by the peer. Entries left of the client were written by parties
    nobody vouches for and are dropped, so an origin reading the leftmost entry gets ``ip``.
    ``proto``: the trusted peer's ``X-Forwarded-Proto`` (``http``/``https``), else ``None``.
    ``peer_trusted``: whether the socket peer is a trusted proxy.
    """

    ip: str
    forwarded_for: tuple[str, ...]
    proto: str | None
    peer_trusted: bool


@functools.lru_cache(maxsize=4096)
def parse_ip(text: str) -> IPAddress | None:
    """An address from a forwarding entry or a socket peer, or ``None`` when it is not one.

    Accepts ``1.2.3.4``, ``1.2.3.4:port``, ``2001:db8::1``, ``[2001:db8::1]`` and
    ``[2001:db8::1]:port``; unwraps IPv4-mapped IPv6; rejects zone ids and anything else.
    Results are cached: the same peers and proxies come back request after request.
    """
    text = text.strip()
    if not text:
        return None
    if text[0] == "[":
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and not _is_port(text[end + 1 :])):
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not port.isdigit() or not port.isascii():
            return None
        text = host
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return None
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
    return address


def _is_port(text: str) -> bool:
    return len(text) > 1 and text[0] == ":" and text[1:].isascii() and text[1:].isdigit()


def _trusted(address: IPAddress, trusted_proxies: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in trusted_proxies)


def _values(headers: Headers, name: bytes) -> list[str]:
    """Comma-separated entries of every ``name`` header, in order."""
    entries: list[str] = []
    for key, value in headers:
        if key.lower() == name:
            entries.extend(value.decode("latin-1").split(","))
    return entries


def resolve_client(
    peer_ip: str, headers: Headers, trusted_proxies: Sequence[IPNetwork]
) -> ResolvedClient:
    """Who sent the request: the peer, or (behind trusted proxies) the client they vouch for."""
    peer = parse_ip(peer_ip)
    if peer is None:
        # Not an IP peer (a Unix socket, a test transport): nothing to walk, nothing to trust.
        return ResolvedClient(peer_ip, (peer_ip,), None, False)
    peer_text = str(peer)
    if not trusted_proxies or not _trusted(peer, trusted_proxies):
        return ResolvedClient(peer_text, (peer_text,), None, False)

    entries = _values(headers, b"x-forwarded-for")
    chain: list[str] = [peer_text]  # built right to left, reversed at the end
    client = peer_text  # the last trusted hop so far
    for entry in reversed(entries):
        address = parse_ip(entry)
        if address is None:
            break  # fail closed: keep the last trusted hop
        text = str(address)
        chain.append(text)
        client = text
        if not _trusted(address, trusted_proxies):
            break
    chain.reverse()
    protos = _values(headers, b"x-forwarded-proto")
    proto = protos[-1].strip().lower() if protos else ""
    return ResolvedClient(client, tuple(chain), proto if proto in _HTTP_PROTOS else None, True)


def client_ip(peer_ip: str, headers: Headers, trusted_proxies: Sequence[IPNetwork]) -> str:
    """The client's address: see :func:`resolve_client`."""
    return resolve_client(peer_ip, headers, trusted_proxies).ip


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Lower-cased header names listed in the ``Connection`` header(s)."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            for token in value.split(b","):
                token = token.strip().lower()
                if token:
                    tokens.add(token)
    return frozenset(tokens)


def upstream_request_headers(
    headers: Headers,
    *,
    client_ip: str,
    proto: str,
    host: str,
    inject: Headers,
    upgrade: bool,
    forwarded_for: Sequence[str] | None = None,
) -> Headers:
    """The headers to send to the origin for a client's request.

    Removes hop-by-hop headers and the names ``Connection`` lists (with ``upgrade=True`` the
    ``Upgrade`` header is kept and ``Connection: upgrade`` written), every ``Zerogate-*``
    header, every forwarding header the client sent (``X-Forwarded-*``, ``Forwarded``,
    ``X-Real-IP``) plus ``Expect``, and the foreign identity and rewrite headers
    (:func:`is_dropped_request_header`). The client's ``Host`` is kept (``host`` is added when it
    has none). Then writes ``X-Forwarded-For`` (``forwarded_for`` joined — pass
    :attr:`ResolvedClient.forwarded_for` — or ``client_ip`` alone when ``None``),
    ``X-Forwarded-Proto: proto``, ``X-Forwarded-Host: host``, and appends ``inject`` as given.
    """
    listed = connection_tokens(headers)
    out: Headers = []
    has_host = False
    for name, value in headers:
        key = name.lower()
        if key in HOP_BY_HOP or key in listed:
            if upgrade and key == b"upgrade":
                out.append((b"upgrade", value))
            continue
        # CGI/WSGI/PHP read "Zerogate_Authenticated_User_Email" as the real header: compare
        # names with "_" spelt "-"
        folded = key.replace(b"_", b"-") if b"_" in key else key
        if is_dropped_request_header(folded):
            continue
        if key == b"host":
            has_host = True
        out.append((key, value))
    if upgrade:
        out.append((b"connection", b"upgrade"))
    if not has_host:
        out.append((b"host", host.encode("latin-1")))
    chain = ", ".join(forwarded_for) if forwarded_for else client_ip
    out.append((b"x-forwarded-for", chain.encode("latin-1")))
    out.append((b"x-forwarded-proto", proto.encode("latin-1")))
    out.append((b"x-forwarded-host", host.encode("latin-1")))
    out.extend(inject)
    return out


def is_dropped_request_header(folded: bytes) -> bool:
    """Whether a client's header (name lower-cased, ``_`` as ``-``) never reaches an upstream:
    ``Zerogate-*``, forwarding headers, and the foreign identity and rewrite headers."""
    return (
        folded.startswith(RESERVED_PREFIX)
        or folded in _DROPPED
        or folded in FOREIGN_IDENTITY_EXACT
        or folded.startswith(FOREIGN_IDENTITY_PREFIXES)
    )


def is_zerogate_cookie_name(name: str) -> bool:
    """Whether a cookie name is (or, to a browser, could stand for) one of zerogate's: it
    starts with ``__zg_``, after an optional ``__Host-`` / ``__Secure-`` prefix, in any case."""
    folded = name.strip().lower()
    for prefix in _COOKIE_NAME_PREFIXES:
        if folded.startswith(prefix):
            folded = folded[len(prefix) :]
            break
    return folded.startswith(ZEROGATE_COOKIE_PREFIX)


def is_zerogate_cookie(set_cookie: bytes) -> bool:
    """Whether a ``Set-Cookie`` value sets one of zerogate's cookies. A nameless cookie
    (``=__zg_portal=x`` or ``__zg_portal`` without ``=``) counts by its value, since browsers
    send it as the bare value."""
    pair = set_cookie.decode("latin-1").split(";", 1)[0]
    name, eq, value = pair.partition("=")
    if not eq or not name.strip():
        # RFC 6265bis: no "=" → empty name, the whole pair is the value; "=v" → empty name
        return is_zerogate_cookie_name((value if eq else name).strip().partition("=")[0])
    return is_zerogate_cookie_name(name)


def downstream_response_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """An upstream's response headers minus hop-by-hop ones (and the names ``Connection``
    lists) and minus every ``Set-Cookie`` for one of zerogate's cookie names."""
    headers = list(headers)
    listed = connection_tokens(headers)
    out: Headers = []
    for name, value in headers:
        key = name.lower()
        if key in HOP_BY_HOP or key in listed:
            continue
        if key == b"set-cookie" and is_zerogate_cookie(value):
            continue
        out.append((name, value))
    return out


def wants_json(headers: Headers) -> bool:
    """Whether an error for this request should be JSON rather than an HTML page.

    JSON when the client says ``X-Requested-With`` or its ``Accept`` names JSON without naming
    ``text/html`` (a browser navigation always names ``text/html``).
    """
    accept = b""
    for name, value in headers:
        key = name.lower()
        if key == b"x-requested-with":
            return True
        if key == b"accept":
            accept += value.lower() + b","
    return b"json" in accept and b"text/html" not in accept
