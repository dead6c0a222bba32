"""The objects a team configures, as pydantic models (docs/configuration.md).

Field names are the YAML keys. Every model forbids unknown keys. Validation here covers one
object at a time; rules that span objects (references, cycles, duplicates) live in
``references.py``. No I/O.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from zerogate.model import values


def _listify(value: Any) -> Any:
    """Accept a single scalar where a list is expected (``email: a@b.c``)."""
    if isinstance(value, (str, int, float)):
        return [value]
    return value


Duration = Annotated[str, AfterValidator(values.check_duration)]
IPRange = Annotated[str, AfterValidator(values.check_ip_range)]
Email = Annotated[str, AfterValidator(values.check_email)]
EmailDomain = Annotated[str, AfterValidator(values.check_email_domain)]
Country = Annotated[str, AfterValidator(values.check_country)]
Hostname = Annotated[str, AfterValidator(values.check_hostname)]


def _check_name(value: str) -> str:
    if not value.strip():
        raise ValueError("a name cannot be blank")
    return value


def _number_as_text(value: Any) -> Any:
    """IdP group ids and the like may be numbers in YAML; they are compared as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


Name = Annotated[
    str,
    BeforeValidator(_number_as_text),
    Field(min_length=1, max_length=200),
    AfterValidator(_check_name),
]


EmailList = Annotated[list[Email], BeforeValidator(_listify), Field(min_length=1)]
DomainList = Annotated[list[EmailDomain], BeforeValidator(_listify), Field(min_length=1)]
NameList = Annotated[list[Name], BeforeValidator(_listify), Field(min_length=1)]
IPList = Annotated[list[IPRange], BeforeValidator(_listify), Field(min_length=1)]
CountryList = Annotated[list[Country], BeforeValidator(_listify), Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


SELECTORS: tuple[str, ...] = (
    "everyone",
    "email",
    "email_domain",
    "group",
    "ip",
    "country",
    "login_method",
    "idp_group",
    "auth_method",
    "service_token",
    "any_service_token",
)
#: selectors that depend on who the user is; not allowed in bypass or service_auth policies
IDENTITY_SELECTORS = frozenset(
    {"email", "email_domain", "login_method", "idp_group", "auth_method"}
)
#: selectors that only a service token can satisfy
SERVICE_SELECTORS = frozenset({"service_token", "any_service_token"})
#: selectors about the request, not the requester
CONTEXT_SELECTORS = frozenset({"ip", "country", "everyone"})


class Rule(_Strict):
    """One selector with its values, e.g. ``{email_domain: [example.com]}``."""

    everyone: Literal[True] | None = None
    email: EmailList | None = None
    email_domain: DomainList | None = None
    group: NameList | None = None
    ip: IPList | None = None
    country: CountryList | None = None
    login_method: NameList | None = None
    idp_group: NameList | None = None
    auth_method: NameList | None = None
    service_token: NameList | None = None
    any_service_token: Literal[True] | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_mapping(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(
                "a rule is a mapping with one selector, e.g. {email_domain: [example.com]}"
            )
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Rule:
        present = [name for name in SELECTORS if getattr(self, name) is not None]
        if len(present) != 1:
            raise ValueError(
                "a rule holds exactly one selector"
                + (f" (found {', '.join(present)}; write one rule per selector)" if present else "")
            )
        return self

    @property
    def selector(self) -> str:
        for name in SELECTORS:
            if getattr(self, name) is not None:
                return name
        raise AssertionError("validated rule without selector")

    @property
    def values(self) -> list[str]:
        """The selector's values (``[]`` for the boolean selectors)."""
        value = getattr(self, self.selector)
        return [] if value is True else list(value)


class RuleSet(_Strict):
    """Include (any of) + Require (all of) + Exclude (none of)."""

    include: list[Rule] = Field(default_factory=list)
    require: list[Rule] = Field(default_factory=list)
    exclude: list[Rule] = Field(default_factory=list)

    def rules(self) -> list[tuple[str, int, Rule]]:
        return [
            (section, index, rule)
            for section in ("include", "require", "exclude")
            for index, rule in enumerate(getattr(self, section))
        ]


class Group(RuleSet):
    """An Access Group: a named, reusable rule set."""

    name: Name

    @model_validator(mode="after")
    def _has_include(self) -> Group:
        if not self.include:
            raise ValueError("a group needs at least one include rule")
        return self


Decision = Literal["allow", "block", "bypass", "service_auth"]


class Policy(RuleSet):
    name: Name
    decision: Decision
    session_duration: Duration | None = None

    @model_validator(mode="after")
    def _check(self) -> Policy:
        if not self.include:
            raise ValueError("a policy needs at least one include rule")
        if self.decision in ("bypass", "service_auth") and self.session_duration is not None:
            raise ValueError(f"session_duration has no meaning on a {self.decision} policy")
        return self


class Cors(_Strict):
    """Per-application CORS: pass preflights to the origin, or answer them at the edge."""

    mode: Literal["origin", "edge"] = "origin"
    allowed_origins: list[str] = Field(default_factory=list)
    allowed_methods: list[str] = Field(default_factory=list)
    allowed_headers: list[str] = Field(default_factory=list)
    allow_credentials: bool = False
    max_age: int = Field(default=600, ge=0, le=86400)


def _check_origin(url: str) -> str:
    parts = urlsplit(url.strip())
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            raise ValueError(f"{url!r}: a unix origin is unix:/absolute/path.sock")
        return url.strip()
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r}: an origin is an http:// or https:// URL (or unix:/path)")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ValueError(f"{url!r}: bad port") from None
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: an origin URL has no query or fragment")
    return url.strip()


def _check_timeout(text: str) -> str:
    text = values.check_duration(text)
    seconds = values.parse_duration(text).total_seconds()
    if seconds < 0.01:
        raise ValueError(f"{text!r}: a timeout is at least 10ms")
    if seconds > 7 * 86400:
        raise ValueError(f"{text!r}: a timeout is at most 7d")
    return text


Timeout = Annotated[str, AfterValidator(_check_timeout)]


class UpstreamTimeouts(_Strict):
    """How long the edge waits on an application's origin or tunnel (docs/configuration.md)."""

    #: to get a connection to the origin (not for tunnels: the connector connects)
    connect: Timeout | None = None
    #: for the response head once the request was sent: else 504
    response: Timeout | None = None
    #: with no byte either way once the response started: else the response is cut off
    idle: Timeout | None = None


def default_audience(name: str) -> str:
    """The audience an application without a stored ``audience`` has: derived from its name
    (what every application had before audiences were stored; so theirs never changed)."""
    return hashlib.sha256(b"zerogate-app\x00" + name.encode()).hexdigest()[:32]


class Application(_Strict):
    name: Name
    domain: str
    #: ``aud`` of this application's tokens (and the name of its cookie): stored when the
    #: application is created or renamed in the panel or API, and kept by ``apply`` when the
    #: file does not set it, so a rename does not change it; unset: ``default_audience(name)``
    audience: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] | None = None
    origin: Annotated[str, AfterValidator(_check_origin)] | None = None
    tunnel: Name | None = None
    identity_providers: list[Name] | None = None
    session_duration: Duration | None = None
    cors: Cors | None = None
    #: overrides ``upstream_timeouts`` of the settings, key by key
    timeouts: UpstreamTimeouts | None = None
    policies: list[Policy] = Field(default_factory=list)

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        host, path = split_domain(value)
        return host + path

    @model_validator(mode="after")
    def _origin_xor_tunnel(self) -> Application:
        if self.origin is not None and self.tunnel is not None:
            raise ValueError("set either origin or tunnel, not both")
        return self

    @property
    def audience_tag(self) -> str:
        """The audience of this application's tokens (``aud``)."""
        return self.audience or default_audience(self.name)

    @property
    def host(self) -> str:
        return split_domain(self.domain)[0]

    @property
    def path(self) -> str:
        """The path prefix, normalised, '' for the whole host."""
        return split_domain(self.domain)[1]


def split_domain(domain: str) -> tuple[str, str]:
    """``"Wiki.Example.com/Admin/"`` → ``("wiki.example.com", "/admin")``; validates both parts."""
    if not isinstance(domain, str) or not domain.strip():
        raise ValueError("a domain is required, e.g. wiki.example.com or wiki.example.com/admin")
    text = domain.strip()
    if "://" in text:
        raise ValueError(f"{domain!r}: write the domain without a scheme, e.g. wiki.example.com")
    host, slash, path = text.partition("/")
    host = values.check_hostname(host, allow_wildcard=True)
    if not slash:
        return host, ""
    from zerogate.model.paths import fold, normalise_path

    if "?" in path or "#" in path:
        raise ValueError(f"{domain!r}: an application path has no query or fragment")
    if "*" in path:
        raise ValueError(f"{domain!r}: wildcards are only allowed in the host's first label")
    norm = fold(normalise_path("/" + path, strict=False)).rstrip("/")
    return host, norm


class OneTimePinProvider(_Strict):
    name: Name
    type: Literal["onetimepin"]


OidcPreset = Literal["okta", "google", "entra", "keycloak", "gitlab", "auth0"]
TokenEndpointAuthMethod = Literal["client_secret_basic", "client_secret_post"]
#: an OIDC provider's name is part of its callback URL: /.zerogate/oidc/NAME/callback
_IDP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


@dataclass(frozen=True)
class OidcPresetDefaults:
    """What a preset fills in when the provider's entry leaves it out (nothing else)."""

    label: str
    scopes: tuple[str, ...]
    groups_claim: str | None
    issuer: re.Pattern[str]
    issuer_example: str


_STD_SCOPES = ("openid", "email", "profile")
OIDC_PRESETS: dict[str, OidcPresetDefaults] = {
    # org authorization server (https://x.okta.com) or a custom one (…/oauth2/default)
    "okta": OidcPresetDefaults(
        "Okta",
        (*_STD_SCOPES, "groups"),
        "groups",
        re.compile(r"https://[^/]+(/oauth2/[^/]+)?"),
        "https://example.okta.com or https://example.okta.com/oauth2/default",
    ),
    "google": OidcPresetDefaults(
        "Google",
        _STD_SCOPES,
        None,
        re.compile(r"https://accounts\.google\.com"),
        "https://accounts.google.com",
    ),
    # one tenant: "common", "organizations" and "consumers" would let any tenant's users in,
    # and their tokens name the user's own tenant as issuer anyway
    "entra": OidcPresetDefaults(
        "Microsoft",
        _STD_SCOPES,
        "groups",
        re.compile(
            r"https://login\.microsoftonline\.com/(?!(?:common|organizations|consumers)/)"
            r"[^/]+/v2\.0"
        ),
        "https://login.microsoftonline.com/<tenant id>/v2.0",
    ),
    "keycloak": OidcPresetDefaults(
        "Keycloak",
        _STD_SCOPES,
        "groups",
        re.compile(r"https://[^/]+(/[^/]+)*/realms/[^/]+"),
        "https://sso.example.com/realms/<realm>",
    ),
    "gitlab": OidcPresetDefaults(
        "GitLab",
        _STD_SCOPES,
        "groups",
        re.compile(r"https://[^/]+(/[^/]+)*"),
        "https://gitlab.com",
    ),
    # Auth0's issuer ends with a slash, and the id_token's iss must equal it exactly
    "auth0": OidcPresetDefaults(
        "Auth0",
        _STD_SCOPES,
        None,
        re.compile(r"https://[^/]+/"),
        "https://<tenant>.<region>.auth0.com/ (with the trailing slash)",
    ),
}


def _is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (as authlib's discovery checks allow)."""
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def _check_issuer(url: str) -> str:
    text = url.strip() if isinstance(url, str) else ""
    parts = urlsplit(text)
    if not parts.hostname or parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: an issuer is an https:// URL, e.g. https://example.okta.com")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(f"{url!r}: an issuer uses https (plain http only on localhost)")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: an issuer has no query or fragment")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ValueError(f"{url!r}: bad port") from None
    return text


class OidcProvider(_Strict):
    """An OpenID Connect provider. ``preset`` only fills defaults (scopes, groups claim, the
    button label) and checks that the issuer has that provider's shape."""

    name: Name
    type: Literal["oidc"]
    preset: OidcPreset | None = None
    issuer: Annotated[str, AfterValidator(_check_issuer)]
    client_id: Annotated[str, Field(min_length=1)]
    client_secret_env: str | None = None
    token_endpoint_auth_method: TokenEndpointAuthMethod | None = None
    scopes: list[Annotated[str, Field(min_length=1)]] | None = None
    groups_claim: Annotated[str, Field(min_length=1)] | None = None
    display_name: Annotated[str, Field(min_length=1, max_length=60)] | None = None

    @field_validator("name")
    @classmethod
    def _url_safe(cls, value: str) -> str:
        if not _IDP_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r}: an OIDC provider's name is part of its callback URL "
                "(/.zerogate/oidc/NAME/callback): use letters, digits, '.', '_' and '-'"
            )
        return value

    @field_validator("issuer")
    @classmethod
    def _preset_issuer(cls, value: str, info: ValidationInfo) -> str:
        preset = info.data.get("preset")
        if preset is not None and not OIDC_PRESETS[preset].issuer.fullmatch(value):
            example = OIDC_PRESETS[preset].issuer_example
            raise ValueError(f"{value!r} is not a {preset} issuer; expected {example}")
        return value

    @field_validator("scopes")
    @classmethod
    def _openid_scope(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and "openid" not in value:
            raise ValueError("the scopes must include openid (OpenID Connect needs it)")
        return value

    @field_validator("client_secret_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not value.replace("_", "a").isalnum():
            raise ValueError(f"{value!r} is not an environment variable name")
        return value

    @property
    def defaults(self) -> OidcPresetDefaults | None:
        return OIDC_PRESETS[self.preset] if self.preset is not None else None

    @property
    def effective_scopes(self) -> tuple[str, ...]:
        if self.scopes is not None:
            return tuple(dict.fromkeys(self.scopes))
        if self.preset == "okta" and "/oauth2/" in self.issuer:
            # a custom authorization server has no "groups" scope unless one was added
            return _STD_SCOPES
        return self.defaults.scopes if self.defaults is not None else _STD_SCOPES

    @property
    def effective_groups_claim(self) -> str | None:
        if self.groups_claim is not None:
            return self.groups_claim
        return self.defaults.groups_claim if self.defaults is not None else None

    @property
    def label(self) -> str:
        """What the login page's button says: "Sign in with LABEL"."""
        if self.display_name:
            return self.display_name
        return self.defaults.label if self.defaults is not None else self.name


IdentityProvider = Annotated[OneTimePinProvider | OidcProvider, Field(discriminator="type")]


def _check_route(host: str) -> str:
    """A tunnel route: a hostname, or ``*.example.com`` for a wildcard application's domain."""
    return values.check_hostname(host, allow_wildcard=True)


class Tunnel(_Strict):
    name: Name
    #: the hostnames whose applications this tunnel may serve (exactly an application's host,
    #: ``*.example.com`` included); its connectors never get a request for any other
    routes: list[Annotated[str, AfterValidator(_check_route)]] = Field(default_factory=list)


class ServiceToken(_Strict):
    name: Name
    duration: Duration = "8760h"


Admin = Annotated[str, Field(min_length=1)]

#: the name of the built-in application that protects the admin panel and API: its one allow
#: policy is the ``admins`` list (``zerogate.policy.engine.admin_application``); reserved, so
#: no configured application may take it
ADMIN_APPLICATION = "zerogate-admin"


def _check_admin(value: str) -> str:
    if value.startswith("group:"):
        if not value[len("group:") :].strip():
            raise ValueError(f"{value!r}: write group:NAME")
        return "group:" + value[len("group:") :].strip()
    return values.check_email(value)


class Objects(_Strict):
    """Everything ``apply`` puts into the store (and ``export`` writes back)."""

    admins: list[Annotated[str, AfterValidator(_check_admin)]] = Field(default_factory=list)
    identity_providers: list[IdentityProvider] = Field(default_factory=list)
    groups: list[Group] = Field(default_factory=list)
    applications: list[Application] = Field(default_factory=list)
    tunnels: list[Tunnel] = Field(default_factory=list)
    service_tokens: list[ServiceToken] = Field(default_factory=list)


#: Let's Encrypt's production directory: the default of ``listen.tls.acme.directory``
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"


class Acme(_Strict):
    """``listen.tls.acme``: certificates obtained and renewed automatically (RFC 8555) for the
    portal and every application hostname (see docs/deploy.md, "Automatic HTTPS")."""

    #: the account's contact address (the CA's expiry warnings go there)
    email: Annotated[str, AfterValidator(values.check_email)]
    directory: str = LETS_ENCRYPT
    #: how the CA checks a hostname: ``http-01`` (a request to port 80, see ``http``) or
    #: ``tls-alpn-01`` (a TLS handshake on ``listen.http``, which must then be port 443);
    #: wildcard hostnames always use ``dns-01`` through ``dns.rfc2136``
    challenge: Literal["http-01", "tls-alpn-01"] = "http-01"
    #: the plain-HTTP listener: answers HTTP-01 challenges and redirects every other request
    #: for a served hostname to https; null for none (then only ``tls-alpn-01`` can work)
    http: Annotated[str, AfterValidator(values.check_listen)] | None = "0.0.0.0:80"
    #: a PEM file of CA certificates trusted for the directory (a private ACME server)
    ca_bundle: str | None = None
    #: the retry after a failed order starts here and doubles (with jitter) up to 1 hour
    retry_after: Duration = "1m"

    @field_validator("directory")
    @classmethod
    def _https_directory(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("the ACME directory is an https:// URL")
        return value


class Tls(_Strict):
    """Certificate files (``cert`` + ``key``), or ``acme`` (not both)."""

    cert: str | None = None
    key: str | None = None
    acme: Acme | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Tls:
        files = self.cert is not None or self.key is not None
        if self.acme is not None and files:
            raise ValueError("give either cert + key (certificate files) or acme, not both")
        if self.acme is None and (self.cert is None or self.key is None):
            raise ValueError("give cert and key (certificate files), or acme")
        return self


class Listen(_Strict):
    http: Annotated[str, AfterValidator(values.check_listen)] = "127.0.0.1:8080"
    tls: Tls | None = None
    tunnel: Annotated[str, AfterValidator(values.check_listen)] = "127.0.0.1:7844"
    #: the edge addresses new connector tokens name (``HOST:PORT``): in a cluster every edge's
    #: tunnel address, or one name that resolves to all of them; empty: ``listen.tunnel`` (the
    #: portal's host with its port when that binds every address)
    tunnel_edges: Annotated[
        list[Annotated[str, AfterValidator(values.check_edge_address)]], Field(max_length=16)
    ] = Field(default_factory=list)
    #: a request head not complete within this is refused and the connection closed (also a
    #: keep-alive connection that starts no next request within it: see docs/security)
    header_timeout: Duration = "10s"
    #: a connection with no request running that receives nothing for this long is closed
    idle_timeout: Duration = "60s"
    #: open connections per server process; more wait in the kernel's queue, and near the cap
    #: idle ones are closed first so that the edge keeps answering
    max_connections: int = Field(default=1024, ge=2, le=1_000_000)
    #: each worker answers application requests it is sure of on its own HTTP/1.1 front
    #: (edge/front.py) and relays everything else to the ASGI application (issue #12)
    fast_path: bool = False
    #: the edge-to-edge relay (issue #14, docs/cluster.md): where each server process listens
    #: for the requests other edges (and workers) relay to the tunnels it holds; mutual TLS
    #: with certificates from the store's cluster CA. Unset: 127.0.0.1 on any free port (the
    #: workers of one host reach each other); set ADDRESS:PORT for edges on several hosts,
    #: worker k of a server then takes the first free port from PORT on
    relay: Annotated[str, AfterValidator(values.check_listen)] | None = None
    #: the address other edges dial for this one's relay (default: ``relay``'s address; needed
    #: when ``relay`` listens on every interface)
    relay_advertise: Annotated[str, AfterValidator(values.check_hostname)] | None = None

    @model_validator(mode="after")
    def _relay_reachable(self) -> Listen:
        if self.relay is not None and self.relay_advertise is None:
            host = self.relay.rpartition(":")[0].strip("[]")
            if host in ("", "0.0.0.0", "::"):  # noqa: S104 - compared, not bound
                raise ValueError(
                    "relay listens on every interface: set relay_advertise to the address "
                    "the other edges reach this one on"
                )
        return self


class Smtp(_Strict):
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = False
    tls: bool = False
    username: str | None = None
    password_env: str | None = None
    timeout: Duration = "10s"
    #: send ``username`` and the password over a connection without TLS (a local relay only)
    allow_insecure_auth: bool = False

    @model_validator(mode="after")
    def _tls_modes(self) -> Smtp:
        if self.starttls and self.tls:
            raise ValueError("choose starttls (upgrade on port 587) or tls (port 465), not both")
        encrypted = self.tls or self.starttls
        if self.username is not None and not encrypted and not self.allow_insecure_auth:
            raise ValueError(
                "username is set but the connection is not encrypted: the password would "
                "cross the network in clear; set starttls: true (port 587) or tls: true "
                "(port 465), or allow_insecure_auth: true for a relay you trust"
            )
        return self


class EmailSettings(_Strict):
    smtp: Smtp | None = None
    #: no SMTP server: PIN emails stay in an outbox inside the server process, which the login
    #: page announces and serves at /.zerogate/outbox (for local trials only)
    outbox: bool = False
    from_: str = Field(default="zerogate <noreply@zerogate.localhost>", alias="from")

    @model_validator(mode="after")
    def _one_way(self) -> EmailSettings:
        if self.outbox and self.smtp is not None:
            raise ValueError("outbox: true and smtp are both set: choose one way to send mail")
        return self


TsigAlgorithm = Literal["hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512"]


def _check_dns_server(text: str) -> str:
    """``ADDRESS`` or ``ADDRESS:PORT`` / ``[V6]:PORT`` of the primary name server."""
    value = text.strip() if isinstance(text, str) else ""
    host, port = value, "53"
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":") or "53"
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    try:
        ip_address(host)
    except ValueError:
        values.check_hostname(host)
    return f"[{host}]:{int(port)}" if ":" in host else f"{host}:{int(port)}"


def _check_address(text: str) -> str:
    """One IPv4 or IPv6 address (no range), in its compressed form."""
    try:
        return str(ip_address(text.strip() if isinstance(text, str) else text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


class Rfc2136(_Strict):
    """Where and how to send RFC 2136 dynamic updates (signed with TSIG)."""

    #: the primary name server: ADDRESS or HOST, optionally :PORT (default 53)
    server: Annotated[str, AfterValidator(_check_dns_server)]
    zone: Annotated[str, AfterValidator(values.check_hostname)]
    key_name: Annotated[str, AfterValidator(values.check_hostname)]
    #: the environment variable holding the TSIG secret (base64, as tsig-keygen prints it)
    key_secret_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
    algorithm: TsigAlgorithm = "hmac-sha256"
    timeout: Duration = "10s"


class DnsSettings(_Strict):
    """DNS records for tunnel routes (``zerogate tunnel route``, ``apply``, the admin API)."""

    rfc2136: Rfc2136
    #: A/AAAA records to these public addresses of the edges ...
    edge_addresses: list[Annotated[str, AfterValidator(_check_address)]] = Field(
        default_factory=list
    )
    #: ... or a CNAME to this name (one of the two)
    edge_cname: Annotated[str, AfterValidator(values.check_hostname)] | None = None
    ttl: int = Field(default=300, ge=30, le=86400)
    #: written into the TXT record that marks a record as zerogate's (``_zerogate.HOST``):
    #: two installations sharing a zone use different owners and never touch each other's
    owner: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,63}$")] = "zerogate"

    @model_validator(mode="after")
    def _one_target(self) -> DnsSettings:
        if bool(self.edge_addresses) == (self.edge_cname is not None):
            raise ValueError(
                "set exactly one of edge_addresses (A/AAAA records to the edges' public "
                "addresses) or edge_cname (a CNAME to a name that points at the edges)"
            )
        return self


class GeoIp(_Strict):
    database: str


class SyslogTarget(_Strict):
    """Access-log lines as syslog messages (RFC 5424, one JSON object as the message)."""

    #: ``host:port`` (UDP) or the path of a Unix datagram socket (``/dev/log``)
    address: Annotated[str, AfterValidator(values.check_syslog_address)]
    facility: Literal[
        "user", "daemon", "auth", "authpriv", "local0", "local1", "local2", "local3",
        "local4", "local5", "local6", "local7",
    ] = "local0"  # fmt: skip


class LogStream(_Strict):
    """A copy of every access-log row as it is written, for a SIEM or a log shipper."""

    #: ``json``: one JSON object per line on standard output
    stdout: Literal["json"] | None = None
    syslog: SyslogTarget | None = None


class LogSettings(_Strict):
    """How long the logs are kept (``null``: forever); older rows are trimmed in the
    background by every server process. ``stream``: a copy of the access log as JSON lines."""

    access_retention: Duration | None = "90d"
    admin_retention: Duration | None = "365d"
    stream: LogStream = Field(default_factory=LogStream)


#: the default of ``Settings.secret_env_prefix``
DEFAULT_SECRET_ENV_PREFIX = "ZEROGATE_SECRET_"  # noqa: S105 - a prefix, not a secret


class Settings(_Strict):
    """Process settings read from the file on every start; never stored."""

    #: ``host[:port]`` or ``https://host[:port]`` (the public URL, e.g. behind a TLS terminator)
    portal: Annotated[str, AfterValidator(values.check_portal)] = "auth.localhost:8080"
    listen: Listen = Field(default_factory=Listen)
    storage: str | None = None
    email: EmailSettings = Field(default_factory=EmailSettings)
    geoip: GeoIp | None = None
    dns: DnsSettings | None = None
    logs: LogSettings = Field(default_factory=LogSettings)
    session_duration: Duration = "24h"
    #: the default timeouts of every application's upstream (an application's ``timeouts``
    #: overrides them key by key; unset keys: 10s connect, 60s response, 60s idle)
    upstream_timeouts: UpstreamTimeouts = Field(default_factory=UpstreamTimeouts)
    trusted_proxies: list[IPRange] = Field(default_factory=list)
    #: who may read /.zerogate/metrics on the portal host (default: this machine only)
    metrics_allow: list[IPRange] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    #: the algorithm of new signing keys (existing keys keep theirs until rotated out)
    jwt_algorithm: Literal["ES256", "RS256"] = "ES256"
    #: the environment variables the admin API and panel may name as a secret reference
    #: (``client_secret_env``): only those starting with this prefix
    secret_env_prefix: Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9_]{2,63}$")] = (
        DEFAULT_SECRET_ENV_PREFIX
    )

    @property
    def portal_address(self) -> str:
        """The portal's ``host[:port]`` (without the scheme a URL ``portal`` names)."""
        return _split_portal(self.portal)[1]

    @property
    def portal_scheme(self) -> str | None:
        """The public scheme ``portal`` names as a URL; None for a bare ``host[:port]``."""
        return _split_portal(self.portal)[0]

    @property
    def issuer(self) -> str:
        """``iss`` of every token: ``https://<portal>``, or the scheme a URL ``portal`` names."""
        return f"{self.portal_scheme or 'https'}://{self.portal_address}"


#: every request asks for the portal's scheme (``secure_cookies``): the split is kept
_split_portal = functools.lru_cache(maxsize=64)(values.split_portal)


class ConfigFile(Settings, Objects):
    """The whole YAML file: settings and objects side by side at the top level."""

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        """``groups:`` with every entry commented out is an empty section, not an error."""
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    def objects(self) -> Objects:
        return Objects.model_validate({name: getattr(self, name) for name in Objects.model_fields})

    def settings(self) -> Settings:
        return Settings.model_validate(
            {name: getattr(self, name) for name in Settings.model_fields}
        )


def all_field_names() -> frozenset[str]:
    """Every key any model accepts: used for did-you-mean hints on unknown keys."""
    names: set[str] = set()
    for model in (
        Rule,
        Group,
        Policy,
        Cors,
        UpstreamTimeouts,
        Application,
        OneTimePinProvider,
        OidcProvider,
        Tunnel,
        ServiceToken,
        Objects,
        Tls,
        Listen,
        Smtp,
        EmailSettings,
        Rfc2136,
        DnsSettings,
        GeoIp,
        LogSettings,
        LogStream,
        SyslogTarget,
        Settings,
    ):
        for name, field in model.model_fields.items():
            names.add(field.alias or name)
    return frozenset(names)
