"""Value types of the configuration: durations, IP ranges, hostnames, countries, emails.

Each ``check_*`` function validates and normalises one kind of value and raises ``ValueError``
with a message a user can act on. No I/O.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_MAX_DURATION = 100 * 365 * 86400
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """Parse ``"24h"``, ``"30m"``, ``"1h30m"``, ``"7d"`` (Go-style units plus ``d`` and ``w``)."""
    value = text.strip().lower() if isinstance(text, str) else text
    if not isinstance(value, str) or not value:
        raise ValueError(f"{text!r} is not a duration (examples: 30m, 24h, 7d, 1h30m)")
    pos = 0
    seconds = 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(value):
        raise ValueError(f"{text!r} is not a duration (examples: 30m, 24h, 7d, 1h30m)")
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be longer than zero")
    if seconds > _MAX_DURATION:
        raise ValueError(f"{text!r}: a duration is at most 100 years")
    return timedelta(seconds=seconds)


def check_duration(text: str) -> str:
    parse_duration(text)
    return text.strip().lower()


def _as_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Parse an address or CIDR range; IPv4-mapped IPv6 ranges become IPv4 ranges."""
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            loose = ipaddress.ip_network(text, strict=False)
            raise ValueError(f"{text!r} has host bits set; did you mean {loose}?") from None
        raise ValueError(f"{text!r} is not an IP address or CIDR range") from None
    if isinstance(net, ipaddress.IPv6Network):
        mapped = net.network_address.ipv4_mapped
        if mapped is not None and net.prefixlen >= 96:
            return ipaddress.IPv4Network(f"{mapped}/{net.prefixlen - 96}")
    return net


def check_ip_range(text: str) -> str:
    """Validate an IPv4/IPv6 address or CIDR range; returns its canonical text."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not an IP address or CIDR range")
    return str(_as_network(text.strip()))


def ip_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The network object for an already validated range."""
    return _as_network(text)


@lru_cache(maxsize=65536)
def normalise_ip(text: str) -> str | None:
    """Canonical text of a client address, IPv4-mapped IPv6 unwrapped; None when invalid."""
    try:
        addr = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        if addr.scope_id:
            return None
    return str(addr)


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def check_hostname(text: str, *, allow_wildcard: bool = False) -> str:
    """A DNS hostname, lower-cased; ``*.`` allowed as a whole first label when asked."""
    host = text.strip().lower().rstrip(".") if isinstance(text, str) else ""
    if not host:
        raise ValueError("a hostname is required")
    if ":" in host:
        raise ValueError(
            f"{text!r}: a port is not part of an application domain "
            "(the port of the Host header is ignored when routing)"
        )
    labels = host.split(".")
    if "*" in host:
        if not allow_wildcard:
            raise ValueError(f"{text!r}: a wildcard is not allowed here")
        if labels[0] != "*" or "*" in ".".join(labels[1:]):
            raise ValueError(
                f"{text!r}: a wildcard must be the whole first label, as in *.example.com"
            )
        if len(labels) < 3:
            raise ValueError(f"{text!r}: a wildcard needs at least two labels after it")
        labels = labels[1:]
    if len(host) > 253:
        raise ValueError(f"{text!r}: a hostname is at most 253 characters")
    for label in labels:
        if not _LABEL.match(label):
            raise ValueError(f"{text!r} is not a valid hostname (bad label {label!r})")
    return host


def check_edge_address(text: str) -> str:
    """``HOST:PORT`` a connector dials: a hostname, an IPv4 address or ``[IPv6]``, and a port."""
    value = text.strip() if isinstance(text, str) else ""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: expected HOST:PORT, for example edge1.example.com:7844")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IPv6 address") from None
        return value
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return f"{check_hostname(host)}:{int(port)}"
    return value


def check_host_port(text: str) -> str:
    """``host`` or ``host:port`` (the portal may carry a port for local use)."""
    value = text.strip().lower() if isinstance(text, str) else ""
    host, sep, port = value.rpartition(":") if ":" in value else (value, "", "")
    if sep:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
        check_hostname(host)
        return f"{host}:{int(port)}"
    return check_hostname(value)


def check_portal(text: str) -> str:
    """The portal's public address: ``host[:port]`` (the scheme then follows how each request
    arrived) or a full URL ``http(s)://host[:port]`` (that scheme is the public one of every
    host zerogate serves). A URL is returned lower-cased without a default port or a trailing
    ``/``; a path, query, fragment or user name is refused."""
    value = text.strip() if isinstance(text, str) else ""
    scheme, sep, rest = value.partition("://")
    if not sep:
        return check_host_port(value)
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"{text!r}: the portal is host[:port] or an http:// or https:// URL")
    rest = rest[:-1] if rest.endswith("/") else rest
    if not rest or any(c in rest for c in "/?#@\\"):
        raise ValueError(
            f"{text!r}: the portal URL is scheme://host[:port], without a path, query or user"
        )
    address = check_host_port(rest)
    default = ":443" if scheme == "https" else ":80"
    address = address.removesuffix(default)
    return f"{scheme}://{address}"


def split_portal(value: str) -> tuple[str | None, str]:
    """``(scheme or None, host[:port])`` of a checked ``portal`` value."""
    scheme, sep, address = value.partition("://")
    return (scheme, address) if sep else (None, value)


def check_listen(text: str) -> str:
    """``address:port`` to listen on; IPv6 in brackets."""
    value = text.strip() if isinstance(text, str) else ""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: expected ADDRESS:PORT, for example 127.0.0.1:8080")
    host = host.strip("[]")
    if host not in ("", "localhost"):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{text!r}: {host!r} is not an IP address") from None
    return value


def check_syslog_address(text: str) -> str:
    """Where access-log lines go for syslog: ``host:port`` (UDP; IPv6 in brackets) or the
    absolute path of a Unix datagram socket such as ``/dev/log``."""
    value = text.strip() if isinstance(text, str) else ""
    if value.startswith("/"):
        if "\x00" in value or len(value) > 107:
            raise ValueError(f"{text!r}: not a usable socket path")
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"{text!r}: expected HOST:PORT (UDP, e.g. 127.0.0.1:514) or a socket path "
            "(e.g. /dev/log)"
        )
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        check_hostname(bare)
    return value


#: the one address grammar (SPEC "One-time PIN"): ASCII only; a dot-atom local part of letters,
#: digits and ``. _ % + - '`` (no leading, trailing or double dot); ``@``; a domain of at least
#: two DNS labels (letters, digits, inner hyphens; an IDN in punycode, ``xn--``). Nothing else:
#: no quoted strings, comments, encoded words, ``, ; < > ( ) " \\``, spaces or control characters,
#: so the text can never be read as another mailbox, or as two, by any mail parser.
EMAIL_MAX = 254
EMAIL_LOCAL_MAX = 64
# no "%": relays that still do the "percent hack" (Postfix's allow_percent_hack, on by
# default) deliver "attacker%evil.test@example.com" to attacker@evil.test
_EMAIL_ATOM = re.compile(r"[A-Za-z0-9_+'-]+")
_EMAIL_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class EmailRefused(ValueError):
    """An address outside the grammar; ``reason`` says why in words a user can act on (it
    depends only on the text, never on who may log in)."""

    def __init__(self, text: object, reason: str) -> None:
        shown = text[:100] if isinstance(text, str) else text
        super().__init__(f"{shown!r} is not an email address: {reason}")
        self.reason = reason


def _email_problem(value: str) -> str | None:
    """Why ``value`` is outside the grammar, or None."""
    if not value:
        return "it is empty"
    if len(value) > EMAIL_MAX:
        return f"it is longer than {EMAIL_MAX} characters"
    if not value.isascii():
        return "only ASCII letters, digits and . _ % + - ' are allowed (write a domain in punycode)"
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return "it contains a space or a control character"
    if "=?" in value:
        return "encoded words (=?...?=) are not allowed"
    for ch in ',;<>()"\\[]:':
        if ch in value:
            return f"the character {ch!r} is not allowed"
    if value.count("@") != 1:
        return "it needs exactly one @"
    local, _, domain = value.partition("@")
    if not local:
        return "the part before @ is empty"
    if len(local) > EMAIL_LOCAL_MAX:
        return f"the part before @ is longer than {EMAIL_LOCAL_MAX} characters"
    atoms = local.split(".")
    if any(not atom for atom in atoms):
        return "the part before @ may not start or end with a dot or hold two dots in a row"
    for atom in atoms:
        if not _EMAIL_ATOM.fullmatch(atom):
            bad = next(ch for ch in atom if not _EMAIL_ATOM.fullmatch(ch))
            return f"the character {bad!r} is not allowed before @"
    labels = domain.split(".")
    if len(labels) < 2:
        return "the domain needs at least two parts, as in example.com"
    for label in labels:
        if not _EMAIL_LABEL.fullmatch(label):
            return f"{label!r} is not a valid part of a domain name"
        if label[:4].lower() == "xn--":
            try:
                label[4:].lower().encode("ascii").decode("punycode")
            except UnicodeError:
                return f"{label!r} is not valid punycode"
    if labels[-1].isdigit():
        return "the domain must be a name, not an IP address"
    return None


def check_email(text: str) -> str:
    """The canonical form of an email address: the text checked against the grammar above,
    then lower-cased (ASCII, so nothing outside ASCII can lower-case into it). Refuses
    (``EmailRefused``, a ``ValueError``) and never repairs: no stripping, no decoding.

    This one string is what policies judge, the only SMTP envelope recipient, and the identity
    in sessions, tokens, revocations and logs."""
    if not isinstance(text, str):
        raise EmailRefused(text, "it is not text")
    problem = _email_problem(text)
    if problem is not None:
        raise EmailRefused(text, problem)
    return text.lower()


def mailbox_of(email: str) -> str:
    """The mailbox a canonical address delivers to where ``+`` starts a subaddress (Gmail,
    Microsoft 365, Fastmail, Postfix's usual ``recipient_delimiter``): ``ann+x@example.com``
    is ``ann@example.com``. Policies' ``email`` selectors and revocations match it too, so
    an excluded or logged-out person cannot come back as ``name+anything``."""
    local, at, domain = email.partition("@")
    base = local.split("+", 1)[0]
    return f"{base}@{domain}" if at and base and base != local else email


def check_email_domain(text: str) -> str:
    value = text.strip().lower() if isinstance(text, str) else ""
    if value.startswith("@"):
        raise ValueError(f"{text!r}: write the domain without '@', as in example.com")
    return check_hostname(value)


@lru_cache(maxsize=1)
def _countries() -> frozenset[str]:
    import pycountry

    return frozenset(c.alpha_2 for c in pycountry.countries)


def check_country(text: str) -> str:
    value = text.strip().upper() if isinstance(text, str) else ""
    if value not in _countries():
        raise ValueError(f"{text!r} is not an ISO 3166-1 alpha-2 country code (e.g. DE, US)")
    return value


def parse_since(text: str, now: datetime) -> datetime:
    """A log filter's start: a duration (``30m``, ``1h``, ``7d``) back from ``now``, or an ISO
    8601 date or time (UTC unless it says otherwise). Used by ``zerogate logs`` and the admin
    panel's access log."""
    value = text.strip()
    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 1h, 7d) nor a time "
            "(2025-01-31, 2025-01-31T12:00:00Z)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
