"""What an administrator can do, independent of how they ask (REST API, web panel, CLI).

Every write loads the stored objects, changes one object, validates the whole document with
the same code as ``zerogate apply`` (so errors name the object and field exactly as for a YAML
file) and applies it with compare-and-set on that object's version: a write based on a stale
version raises ``Conflict`` and writes nothing, so two admins never silently overwrite each
other. The store records every change (who, from where, before → after) in the admin log.

Policies live inside their application (as in YAML); changing one is a versioned write of the
application. The ``admins`` list is one object of kind ``admins``.

Credentials are runtime state, not configuration: a service token's client id and secret
(``create_service_token`` / ``rotate_service_token``, the same code as ``zerogate
service-token``), a tunnel's connector token (``create_tunnel_token``, the same code as
``zerogate tunnel create/token`` and the panel) and the admin API's Bearer tokens
(``create_api_token``, ``verify_api_token``, the same code as ``zerogate api-token``). Secrets
are returned once and stored as SHA-256 hashes; creating, rotating and revoking them is
recorded in the admin log too (``Store.log_admin``).

The lock-out guard lives here, in ``_write``, so every configuration write is checked the same
way whichever surface asks: an ``Actor`` made for a browser session (``Actor.of(principal)``)
carries a ``Guard`` (the session's login and request context), and a write whose result would
make the built-in ``zerogate-admin`` application no longer allow that login from there (the
admins list changed, a group it names edited, …) is refused with ``LockOut`` (422, problem
``admins``), nothing written. ``force=True`` (the API's ``?force=true``, the panel's "save
anyway") and API tokens (not on the list) skip it.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from zerogate.admin.connector_tokens import (
    ConnectorToken,
    listener_fingerprint,
    new_credential,
    token_edges,
)
from zerogate.identity.secret_hash import SecretKind, hash_secret, secret_matches
from zerogate.mail import transport_of
from zerogate.model.loader import ConfigError, Problem, validate_objects
from zerogate.model.objects import (
    DEFAULT_SECRET_ENV_PREFIX,
    EmailSettings,
    Name,
    Objects,
    OidcProvider,
    Settings,
    default_audience,
)
from zerogate.model.references import references_to
from zerogate.model.values import parse_duration
from zerogate.policy import Context, Identity, Verdict, compile_snapshot
from zerogate.policy.tester import PolicyQuery, QueryError, check_query, run_query
from zerogate.store import (
    ACCESS_FIELDS,
    AccessEvent,
    AccessFilter,
    AdminLogEntry,
    ApiToken,
    ServiceCredential,
    Session,
    StaleWrite,
    Store,
    TunnelConnection,
    access_event_dict,
)
from zerogate.store.diff import ADMINS, Origin, Plan
from zerogate.store.idp_secrets import check as check_client_secret
from zerogate.tunnel.token import TokenError, TunnelToken

if TYPE_CHECKING:
    from zerogate.admin.principal import Principal
    from zerogate.dns.routes import RouteDns

log = logging.getLogger("zerogate.admin")

#: API collection name -> (store kind, ``Objects`` field); the collection names are the YAML keys
COLLECTIONS: dict[str, str] = {
    "identity_providers": "identity_provider",
    "groups": "group",
    "applications": "application",
    "tunnels": "tunnel",
    "service_tokens": "service_token",
}


#: a reported connection older than this is stale (its edge reports every few seconds)
FRESH_SECONDS = 15

#: an API token is ``zga_<token id: 16 hex digits>_<secret>``
API_TOKEN_PREFIX = "zga_"  # noqa: S105 - a prefix, not a secret
#: ``last_used_at`` of an API token is written at most this often
TOUCH_SECONDS = 60.0

_NAME: TypeAdapter[str] = TypeAdapter(Name)

#: how often a one-object write is made again when other objects changed meanwhile
_WRITE_ATTEMPTS = 20

#: a one-object change: edits the configuration document, returns the expected versions
Edit = Callable[[dict[str, Any], dict[tuple[str, str], int]], dict[tuple[str, str], int | None]]


class AdminError(Exception):
    """A request the service refuses; ``status`` is the HTTP status an API answers with."""

    status = 400

    def __init__(self, message: str, problems: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems or []


class NotFound(AdminError):
    status = 404


class Conflict(AdminError):
    """The object changed since the version the caller based its write on (or, for a create,
    one of that name exists)."""

    status = 409


class DnsFailed(AdminError):
    """The DNS records of a tunnel route could not be written (``zerogate.dns.routes``):
    nothing was changed."""

    status = 502


class DnsConflictError(AdminError):
    """A routed name holds DNS records zerogate did not make: nothing was changed."""

    status = 409


#: formats of ``AdminService.export_access``; the most rows one export holds; rows per read
EXPORT_FORMATS = ("csv", "jsonl")
EXPORT_MAX = 1_000_000
EXPORT_PAGE = 1000
#: a CSV cell starting with one of these is run as a formula by spreadsheets (CSV injection)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    text = str(value)
    if text.startswith(_FORMULA_START) and not isinstance(value, int | float):
        return "'" + text
    return text


def _csv_line(values: list[Any]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow([_csv_cell(v) for v in values])
    return buffer.getvalue().encode()


class Invalid(AdminError):
    """The result would not be a valid configuration; ``problems`` name object and field."""

    status = 422


@dataclass(frozen=True)
class Item:
    """One stored object: its collection, name, version and spec (the YAML object as JSON);
    ``origin``: where it was last changed (``file``, ``api``, ``panel``, ``cli``);
    ``managed``: the last apply from a file listed it, so the next one overwrites an edit made
    elsewhere (and removes the object once the file no longer lists it)."""

    collection: str
    name: str
    version: int
    spec: dict[str, Any]
    origin: str = "file"
    managed: bool = False


class LockOut(Invalid):
    """The change would make the acting session no administrator any more (the lock-out
    guard); one problem, ``where: "admins"``. The panel offers to save it anyway."""


@dataclass(frozen=True)
class Guard:
    """The acting browser session as the admins list decides it: its login and the context of
    its request (address, country)."""

    identity: Identity
    context: Context


@dataclass(frozen=True)
class Actor:
    """Who makes a change and from where, as the admin log records it; ``guard``: refuse a
    write that would lock that session out (see ``Actor.of``)."""

    who: str
    source: str | None = None
    guard: Guard | None = None
    #: an API token acting: whether it is read-only and when it ends (what it may create)
    read_only: bool = False
    expires_at: datetime | None = None
    #: the surface the change comes through, which the changed objects record
    origin: Origin = "cli"

    @classmethod
    def of(cls, principal: Principal, *, force: bool = False, origin: Origin = "api") -> Actor:
        """The actor of an admin request (through ``origin``: the API or the panel): a
        browser session is guarded unless ``force``; an API token never (tokens are not on
        the admins list)."""
        guard = None
        if principal.via == "session" and not force:
            identity = principal.identity or Identity.of(principal.who)
            guard = Guard(identity, principal.context())
        return cls(
            principal.who,
            principal.source,
            guard,
            read_only=principal.read_only,
            expires_at=principal.expires_at,
            origin=origin,
        )


def check_name(name: str, what: str) -> str:
    """``name`` when it is a valid object name, else ``Invalid`` saying why."""
    try:
        return _NAME.validate_python(name)
    except ValidationError as exc:
        message = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise Invalid(f"{what} {name!r}: {message}", [Problem(what, message)]) from None


def new_api_token(
    name: str, *, read_only: bool, expires: timedelta | None, created_by: str
) -> tuple[ApiToken, str]:
    """A new API token (to store) and its text (``zga_<id>_<secret>``, shown once)."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    now = datetime.now(UTC).replace(microsecond=0)
    token = ApiToken(
        name=name,
        token_id=token_id,
        secret_hash=hash_secret(SecretKind.API_TOKEN, secret),
        read_only=read_only,
        created_by=created_by,
        created_at=now,
        expires_at=now + expires if expires is not None else None,
    )
    return token, f"{API_TOKEN_PREFIX}{token_id}_{secret}"


def split_api_token(text: str) -> tuple[str, str] | None:
    """``(token id, secret)`` of a presented token, or ``None`` when it is not one."""
    if not text.startswith(API_TOKEN_PREFIX) or len(text) > 200:
        return None
    token_id, sep, secret = text[len(API_TOKEN_PREFIX) :].partition("_")
    if not sep or len(token_id) != 16 or not secret:
        return None
    if any(c not in "0123456789abcdef" for c in token_id):
        return None
    return token_id, secret


def new_service_credential(name: str, lifetime: timedelta) -> tuple[ServiceCredential, str]:
    """A new client id and secret for service token ``name``: the credential to store (the
    secret hashed) and the secret, to show once. Used by the CLI and the admin API."""
    secret = secrets.token_urlsafe(32)
    now = datetime.now(UTC).replace(microsecond=0)
    cred = ServiceCredential(
        name=name,
        client_id=f"{secrets.token_hex(8)}.access",
        secret_hash=hash_secret(SecretKind.SERVICE_TOKEN, secret),
        created_at=now,
        expires_at=now + lifetime,
    )
    return cred, secret


def _check_guard(objects: Objects, guard: Guard) -> None:
    """``LockOut`` when ``objects`` would not let ``guard``'s session in any more: the decision
    of their built-in admin application, made as the front door makes it."""
    snapshot = compile_snapshot(objects)
    verdict = snapshot.decide(snapshot.admin, guard.identity, guard.context)
    if verdict.decision == "allow":
        return
    ctx = guard.context
    where = f"from {ctx.ip}" if ctx.ip else "from here"
    if ctx.country:
        where += f" ({ctx.country})"
    message = (
        f"this change would remove your own admin access: the admins list would no longer "
        f"let {guard.identity.email} in {where}: {verdict.reason}. Keep yourself in (add "
        "yourself back, or leave the group's rules admitting you), or save it anyway: "
        '?force=true in the API, "save anyway" in the panel'
    )
    raise LockOut("the change would lock you out", [Problem("admins", message)])


def _document(objects: Objects) -> dict[str, Any]:
    return objects.model_dump(mode="json", by_alias=True, exclude_none=True)


def _collection(name: str) -> str:
    if name not in COLLECTIONS:
        raise NotFound(f"no collection {name!r}; known: {', '.join(sorted(COLLECTIONS))}")
    return COLLECTIONS[name]


@dataclass(frozen=True)
class MailHealth:
    """How PIN mail is doing, from the ``mail`` rows of the access log (every process and
    node writes them: ``portal.handlers``): the latest outcome and the latest failure.

    ``mode``: ``smtp``, ``outbox`` or ``none`` (``zerogate.mail.transport_of``; ``unknown``
    where the service has no settings, as in the CLI); ``outcome``: ``sent``, ``failed``,
    ``reachable`` (the server answered again after a failure) or None (nothing sent yet)."""

    mode: str
    transport: str
    outcome: str | None
    at: datetime | None
    detail: str | None
    last_sent_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None

    @property
    def healthy(self) -> bool | None:
        """True after a success, False after a failure or without a way to send, None when
        nothing was tried yet."""
        if self.mode == "none" or self.outcome == "failed":
            return False
        return None if self.outcome is None else True


@dataclass(frozen=True)
class CertificateStatus:
    """A hostname of automatic HTTPS: its stored certificate (none yet: ``issuer`` None) and
    the latest failed order since that certificate was stored (from the access log's ``tls``
    rows, which the node holding the renewal lease writes).

    ``state``: ``valid``, ``renewing`` (past two thirds of its lifetime, when renewal
    begins), ``expired``, ``missing`` (an order failed and no certificate is stored),
    ``pending`` (a hostname to certify, not ordered yet) or ``unused`` (stored for a
    hostname no longer served: deleted once expired). The last two only where the hostnames
    to certify are known (``AdminService(tls_hosts=...)``)."""

    host: str
    issuer: str | None
    not_before: datetime | None
    not_after: datetime | None
    renew_at: datetime | None
    updated_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    state: str


#: how many ``tls`` failure rows the certificate status reads (the newest per hostname count)
CERT_FAILURES_READ = 500


class AdminService:
    """Reads and versioned writes of the configured objects, logs and the policy tester."""

    def __init__(
        self,
        store: Store,
        *,
        secret_env_prefix: str = DEFAULT_SECRET_ENV_PREFIX,
        dns: RouteDns | None = None,
        on_change: Callable[[], Awaitable[object]] | None = None,
        mail: EmailSettings | None = None,
        tls_hosts: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.store = store
        #: the server's ``email`` settings: how PIN mail leaves (``mail_health``)
        self.mail = mail
        #: with ``listen.tls.acme``: the hostnames to certify (``certificates``)
        self.tls_hosts = tls_hosts
        #: run after every configuration write, before the write returns: the server passes
        #: its runtime's refresh, so the process that made a change serves it before it
        #: answers (the others follow through the store's announcement or their poll)
        self.on_change = on_change
        #: the DNS records of tunnel routes, written before each change (``dns`` settings)
        self.dns = dns
        #: secret references written through here must start with this (``Settings``)
        self.secret_env_prefix = secret_env_prefix
        #: token id -> when this process last wrote its ``last_used_at`` (monotonic-ish epoch)
        self._touched: dict[str, float] = {}

    # -- reading ---------------------------------------------------------------------------

    async def _state(self) -> tuple[Objects, dict[str, Any], int, dict[tuple[str, str], int]]:
        """The objects, as a document too, the configuration version and each object's
        version, all read in one transaction."""
        objects, version, versions = await self.store.load_versioned()
        return objects, _document(objects), version, versions

    async def items(self, collection: str) -> list[Item]:
        kind = _collection(collection)
        _, doc, _, versions = await self._state()
        owners = await self.store.ownership()
        return [
            Item(
                collection,
                spec["name"],
                versions.get((kind, spec["name"]), 0),
                spec,
                *owners.get((kind, spec["name"]), ("file", False)),
            )
            for spec in doc[collection]
        ]

    async def admins_ownership(self) -> tuple[str, bool] | None:
        """Where the admins list was last changed and whether the file manages it."""
        return (await self.store.ownership()).get((ADMINS, ADMINS))

    async def get(self, collection: str, name: str) -> Item:
        for item in await self.items(collection):
            if item.name == name:
                return item
        raise NotFound(f"no {COLLECTIONS[collection].replace('_', ' ')} named {name!r}")

    async def admins(self) -> tuple[list[str], int]:
        """The admins list and its version (0 when never set)."""
        objects, _, _, versions = await self._state()
        return list(objects.admins), versions.get((ADMINS, ADMINS), 0)

    async def objects(self) -> Objects:
        objects, _ = await self.store.load()
        return objects

    # -- writing ---------------------------------------------------------------------------

    async def _write(
        self,
        doc: dict[str, Any],
        expect: dict[tuple[str, str], int | None],
        actor: Actor,
        based_on: int,
    ) -> Plan:
        """Validate ``doc``, refuse it when it would lock ``actor.guard`` out (``LockOut``),
        apply it. Every configuration write goes through here (via ``_change``).

        ``doc`` is the whole configuration as loaded at version ``based_on`` with one change,
        and ``apply`` makes the store equal to it: so the store refuses it (``StaleWrite`` on
        the configuration) when any other object changed since, else it would silently undo
        that change; ``expect`` names the edited objects' versions (the precise refusal)."""
        try:
            objects = validate_objects(doc, source=None)
        except ConfigError as exc:
            raise Invalid("the change would make the configuration invalid", exc.problems) from None
        await self._check_secret_refs(objects)
        if actor.guard is not None:
            _check_guard(objects, actor.guard)

        async def write() -> Plan:
            return await self.store.apply(
                objects,
                actor=actor.who,
                source=actor.source,
                expect=expect,
                expect_version=based_on,
                origin=actor.origin,
            )

        if self.dns is None:
            return await write()
        from zerogate.dns.routes import DnsConflict, DnsError

        before, _ = await self.store.load()
        try:
            plan, _ = await self.dns.sync(before, objects, write)
        except DnsConflict as exc:
            raise DnsConflictError(str(exc)) from None
        except DnsError as exc:
            raise DnsFailed(f"{exc}; the configuration was not changed") from None
        return plan

    async def _change(self, edit: Edit, actor: Actor) -> Plan:
        """Apply one object's change on top of the newest configuration.

        ``edit`` gets a fresh copy of the configuration document and each object's version,
        changes the document in place and returns the versions it expects of the objects it
        touched (checks that raise ``NotFound`` / ``Conflict`` belong in it too). When another
        admin changed some *other* object in between, the change is made again on top of
        theirs (a few times at most): only a conflict on the edited object itself refuses
        (409). Validation and the lock-out guard run again on every attempt."""
        for attempt in range(_WRITE_ATTEMPTS):
            _, doc, based_on, versions = await self._state()
            expect = edit(doc, versions)
            try:
                plan = await self._write(doc, expect, actor, based_on)
            except StaleWrite as exc:
                if exc.name or attempt == _WRITE_ATTEMPTS - 1:
                    raise Conflict(str(exc)) from None
                # many writers at once: step aside a growing random moment, so they do not
                # keep invalidating each other's next attempt
                await asyncio.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 7)))
                continue
            if self.on_change is not None and plan.changes:
                try:
                    await self.on_change()
                except Exception:  # the write stands; the watcher will load it anyway
                    log.exception("could not load the change just written")
            return plan
        raise AssertionError("unreachable")  # pragma: no cover

    def secret_env_allowed(self, name: str) -> bool:
        """Whether the admin API and panel may name (and test) environment variable ``name``."""
        return name.startswith(self.secret_env_prefix) and len(name) > len(self.secret_env_prefix)

    async def _check_secret_refs(self, objects: Objects) -> None:
        """A secret reference set or changed through the admin API / panel must name a variable
        the server's settings allow, and no other provider's: else an admin could send any of
        the server's variables (``PATH``, another provider's secret) to an issuer they choose.
        A reference kept unchanged from the file's configuration stays as it was — only while
        the secret still goes where it went: the same provider, the same issuer (pointing a
        provider at another issuer while keeping its secret would send that secret there)."""
        stored, _ = await self.store.load()
        before = {
            idp.name: (idp.client_secret_env, idp.issuer)
            for idp in stored.identity_providers
            if isinstance(idp, OidcProvider)
        }
        # Each variable is bound to one issuer (a store row): the issuer the stored
        # configuration pairs it with (the file's, or one this check let through), else the
        # first one an admin named it with. Without that, a variable could be taken off its
        # provider and named again with another issuer, and its value go there.
        for ref, issuer in before.values():
            if ref:
                await self.store.secret_env_issuer(ref, issuer, replace=True)
        users: dict[str, list[str]] = {}
        for idp in objects.identity_providers:
            if isinstance(idp, OidcProvider) and idp.client_secret_env:
                users.setdefault(idp.client_secret_env, []).append(idp.name)
        problems: list[Problem] = []
        for idp in objects.identity_providers:
            if not isinstance(idp, OidcProvider) or not idp.client_secret_env:
                continue
            ref = idp.client_secret_env
            if before.get(idp.name) == (ref, idp.issuer):
                continue
            where = f"identity provider {idp.name!r} › client_secret_env"
            if not self.secret_env_allowed(ref):
                problems.append(
                    Problem(
                        where,
                        f"the admin API and panel may only name variables starting with "
                        f"{self.secret_env_prefix} (the server's secret_env_prefix setting)",
                    )
                )
            elif len(users[ref]) > 1:
                others = ", ".join(repr(n) for n in users[ref] if n != idp.name)
                problems.append(Problem(where, f"{ref} is the secret of {others} already"))
            elif (
                bound := await self.store.secret_env_issuer(ref, idp.issuer, replace=False)
            ) != idp.issuer:
                problems.append(
                    Problem(
                        where,
                        f"{ref} is the client secret for the issuer {bound}; only the "
                        "configuration file can give it to another issuer",
                    )
                )
        if problems:
            raise Invalid("the change names a secret it may not", problems)

    async def create(self, collection: str, spec: dict[str, Any], actor: Actor) -> Item:
        """Add a new object; ``Conflict`` when one of that name exists."""
        kind = _collection(collection)
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str) or not name:
            raise Invalid(
                "the object needs a name", [Problem(f"{collection}[?]", "name: field required")]
            )

        def edit(
            doc: dict[str, Any], versions: dict[tuple[str, str], int]
        ) -> dict[tuple[str, str], int | None]:
            if (kind, name) in versions:
                raise Conflict(f"{kind.replace('_', ' ')} {name!r} already exists")
            item = spec
            if collection == "applications" and "audience" not in spec:
                # stored from the start, so a later rename keeps it
                item = {**spec, "audience": default_audience(name)}
            doc[collection] = [*doc[collection], item]
            return {(kind, name): None}

        await self._change(edit, actor)
        return await self.get(collection, name)

    async def update(
        self, collection: str, name: str, spec: dict[str, Any], *, version: int, actor: Actor
    ) -> Item:
        """Replace object ``name`` (based on ``version``) with ``spec``. A different
        ``spec["name"]`` renames it (refused when that name is taken)."""
        kind = _collection(collection)
        new_name = spec.get("name", name) if isinstance(spec, dict) else name
        spec = {**spec, "name": new_name}

        def edit(
            doc: dict[str, Any], versions: dict[tuple[str, str], int]
        ) -> dict[tuple[str, str], int | None]:
            if (kind, name) not in versions:
                raise NotFound(f"no {kind.replace('_', ' ')} named {name!r}")
            expect: dict[tuple[str, str], int | None] = {(kind, name): version}
            if new_name != name:
                if (kind, new_name) in versions:
                    raise Conflict(f"{kind.replace('_', ' ')} {new_name!r} already exists")
                expect[(kind, new_name)] = None
            old = next(item for item in doc[collection] if item["name"] == name)
            new = spec
            if collection == "applications" and "audience" not in spec:
                # the audience stays what it was (origins verify it), renamed or not
                kept = old.get("audience") or (default_audience(name) if new_name != name else None)
                if kept:
                    new = {**spec, "audience": kept}
            doc[collection] = [new if item["name"] == name else item for item in doc[collection]]
            return expect

        moved = None
        if collection == "identity_providers" and new_name != name:
            # a stored secret follows a rename, only to the same issuer (never re-bound)
            old = await self.get(collection, name)
            issuer = old.spec.get("issuer")
            if old.spec.get("type") == "oidc" and spec.get("issuer") == issuer:
                moved = await self.store.oidc_secret(name, str(issuer))
        await self._change(edit, actor)
        if moved is not None:
            await self.store.set_oidc_secret(new_name, str(spec["issuer"]), moved)
        return await self.get(collection, new_name)

    async def delete(self, collection: str, name: str, *, version: int, actor: Actor) -> None:
        """Remove object ``name`` (based on ``version``); refused (``Invalid``) while other
        objects refer to it, with the references named."""
        kind = _collection(collection)

        def edit(
            doc: dict[str, Any], versions: dict[tuple[str, str], int]
        ) -> dict[tuple[str, str], int | None]:
            if (kind, name) not in versions:
                raise NotFound(f"no {kind.replace('_', ' ')} named {name!r}")
            # in use: say where (rather than "unknown group" at each place that names it)
            users = references_to(Objects.model_validate(doc), kind, name)
            if users:
                what = f"{kind.replace('_', ' ')} {name!r}"
                raise Invalid(
                    f"{what} is in use: remove it from {', '.join(users)} first",
                    [
                        Problem("admins" if user == "the admins list" else user, f"uses {what}")
                        for user in users
                    ],
                )
            doc[collection] = [item for item in doc[collection] if item["name"] != name]
            return {(kind, name): version}

        await self._change(edit, actor)

    async def usages(self, kind: str, names: Sequence[str]) -> dict[str, list[str]]:
        """For each ``kind`` object of ``names``, where the configuration refers to it."""
        objects, _ = await self.store.load()
        return {name: references_to(objects, kind, name) for name in names}

    async def set_admins(
        self,
        admins: list[str],
        *,
        version: int,
        actor: Actor,
        keep: tuple[Identity, Context] | None = None,
    ) -> int:
        """Replace the admins list (based on ``version``, 0 when never set); the new version.

        Like every write, refused (``LockOut``) when it would lock ``actor.guard`` out;
        ``keep`` (a login and its request context) guards that session instead."""
        if keep is not None:
            actor = replace(actor, guard=Guard(*keep))

        def edit(
            doc: dict[str, Any], versions: dict[tuple[str, str], int]
        ) -> dict[tuple[str, str], int | None]:
            if versions.get((ADMINS, ADMINS)) is None and version:
                raise Conflict("the admins list no longer exists; reload and retry")
            doc["admins"] = admins
            return {(ADMINS, ADMINS): version if version else None}

        plan = await self._change(edit, actor)
        return plan.version_after if plan.changes else version

    # -- policies (inside their application) -------------------------------------------------

    async def put_policy(
        self,
        app: str,
        policy: dict[str, Any],
        *,
        app_version: int,
        actor: Actor,
        replace: str | None = None,
        position: int | None = None,
    ) -> Item:
        """Add ``policy`` to application ``app`` (at ``position``, default last), or replace
        the policy named ``replace``; a versioned write of the application."""
        item = await self.get("applications", app)
        policies = list(item.spec.get("policies", []))
        if replace is not None:
            names = [p.get("name") for p in policies]
            if replace not in names:
                raise NotFound(f"application {app!r} has no policy named {replace!r}")
            index = names.index(replace)
            policies[index] = policy
            if position is not None and position != index:
                policies.insert(position, policies.pop(index))
        else:
            policies.insert(len(policies) if position is None else position, policy)
        spec = {**item.spec, "policies": policies}
        return await self.update("applications", app, spec, version=app_version, actor=actor)

    async def delete_policy(self, app: str, name: str, *, app_version: int, actor: Actor) -> Item:
        item = await self.get("applications", app)
        policies = [p for p in item.spec.get("policies", []) if p.get("name") != name]
        if len(policies) == len(item.spec.get("policies", [])):
            raise NotFound(f"application {app!r} has no policy named {name!r}")
        spec = {**item.spec, "policies": policies}
        return await self.update("applications", app, spec, version=app_version, actor=actor)

    # -- credentials: service tokens and API tokens --------------------------------------------

    async def _record(
        self,
        actor: Actor,
        action: str,
        kind: str,
        name: str,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> None:
        """An admin-log row for a change outside the configured objects (a credential)."""
        await self.store.log_admin(
            actor=actor.who,
            source=actor.source,
            action=action,
            kind=kind,
            name=name,
            before=before,
            after=after,
        )

    async def set_oidc_secret(self, name: str, value: str | None, actor: Actor) -> None:
        """Store (encrypted with the server secret, bound to the provider's issuer) or remove
        (``None``) the client secret of OIDC provider ``name``; recorded in the admin log
        without the value. ``NotFound`` / ``Invalid`` for no such OIDC provider or an unusable
        value."""
        item = await self.get("identity_providers", name)
        if item.spec.get("type") != "oidc":
            raise Invalid(
                f"identity provider {name!r} is not an OpenID Connect provider",
                [Problem(f"identity provider {name!r}", "only oidc providers have a secret")],
            )
        issuer = str(item.spec["issuer"])
        if value is not None:
            try:
                value = check_client_secret(value)
            except ValueError as exc:
                raise Invalid(str(exc), [Problem("client_secret", str(exc))]) from None
        had = name in await self.store.oidc_secret_names()
        await self.store.set_oidc_secret(name, issuer, value)
        if value is None and not had:
            return
        await self._record(
            actor,
            "remove" if value is None else ("change" if had else "add"),
            "client_secret",
            name,
            {"client_secret": "stored"} if had else None,
            None if value is None else {"client_secret": "stored", "issuer": issuer},
        )

    async def oidc_secrets_stored(self) -> set[str]:
        """The providers with a client secret stored through the panel or API."""
        return await self.store.oidc_secret_names()

    async def service_credentials(self) -> dict[str, ServiceCredential]:
        """The stored service-token credentials by name (hashes only)."""
        return {c.name: c for c in await self.store.service_credentials()}

    async def create_service_token(
        self, spec: dict[str, Any], actor: Actor
    ) -> tuple[Item, ServiceCredential, str]:
        """Add a service token and make its credential: the item, the credential and the
        secret (shown once)."""
        item = await self.create("service_tokens", spec, actor)
        cred, secret = await self.rotate_service_token(item.name, actor)
        return item, cred, secret

    async def rotate_service_token(self, name: str, actor: Actor) -> tuple[ServiceCredential, str]:
        """A new client id and secret for service token ``name`` (its first, or replacing the
        old pair, which stops working at once); valid for the token's ``duration``."""
        item = await self.get("service_tokens", name)
        lifetime = parse_duration(str(item.spec.get("duration", "8760h")))
        old = (await self.service_credentials()).get(name)
        cred, secret = new_service_credential(name, lifetime)
        await self.store.put_service_credential(cred)
        await self._record(
            actor,
            "credential",
            "service_token",
            name,
            {"client_id": old.client_id} if old is not None else None,
            {"client_id": cred.client_id, "expires_at": cred.expires_at.isoformat()},
        )
        return cred, secret

    async def create_tunnel_token(
        self,
        name: str,
        *,
        actor: Actor,
        settings: Settings | None,
        edges: Sequence[str] | None = None,
    ) -> ConnectorToken:
        """A new connector token for tunnel ``name`` (shown once): its first, or replacing
        the previous one, whose connectors every server disconnects within about a second (a
        rotation keeps the tunnel id). It names ``edges`` (default: the server's tunnel
        address from ``settings``) and pins the generated listener certificate unless
        ``listen.tls`` is set. ``NotFound`` without such a tunnel; recorded in the admin log."""
        item = await self.get("tunnels", name)
        chosen = tuple(dict.fromkeys(edges)) if edges is not None else token_edges(settings)
        old = next((c for c in await self.store.tunnel_credentials() if c.name == item.name), None)
        cred, secret = new_credential(item.name, old)
        try:  # checks the edge addresses before anything is stored
            TunnelToken(cred.tunnel_id, secret, chosen)
        except TokenError as exc:
            raise Invalid(f"edges: {exc}", [Problem("edges", str(exc))]) from None
        await self.store.put_tunnel_credential(cred)
        fingerprint = await listener_fingerprint(self.store, settings)
        text = TunnelToken(cred.tunnel_id, secret, chosen, fingerprint).encode()
        await self._record(
            actor,
            "credential",
            "tunnel",
            item.name,
            {"tunnel_id": old.tunnel_id} if old is not None else None,
            {"tunnel_id": cred.tunnel_id, "edges": list(chosen), "fingerprint": fingerprint},
        )
        return ConnectorToken(
            name=item.name,
            tunnel_id=cred.tunnel_id,
            token=text,
            edges=chosen,
            fingerprint=fingerprint,
            rotated=old is not None,
        )

    async def api_tokens(self) -> list[ApiToken]:
        return await self.store.api_tokens()

    async def create_api_token(
        self, name: str, *, read_only: bool, expires: str | None, actor: Actor
    ) -> tuple[ApiToken, str]:
        """A new Bearer token for the admin API: the stored record and the token text (shown
        once). ``expires`` is a duration such as ``30d`` (``None``: never)."""
        name = check_name(name, "name")
        lifetime = None
        if expires is not None:
            try:
                lifetime = parse_duration(expires)
            except ValueError as exc:
                raise Invalid(f"expires: {exc}", [Problem("expires", str(exc))]) from None
        if actor.read_only and not read_only:
            message = "a read-only token cannot create a read-write one"
            raise Invalid(message, [Problem("read_only", message)])
        if actor.expires_at is not None:
            ends = actor.expires_at
            if lifetime is None or datetime.now(UTC) + lifetime > ends:
                message = (
                    f"a token may not outlive the token that creates it: give an expiry "
                    f"that ends by {ends.strftime('%Y-%m-%d %H:%M')} UTC"
                )
                raise Invalid(f"expires: {message}", [Problem("expires", message)])
        token, text = new_api_token(
            name, read_only=read_only, expires=lifetime, created_by=actor.who
        )
        if not await self.store.add_api_token(token):
            raise Conflict(f"an API token named {name!r} already exists; revoke it first")
        await self._record(
            actor, "add", "api_token", name, None, {"read_only": read_only, "expires": expires}
        )
        return token, text

    async def revoke_api_token(self, name: str, actor: Actor) -> None:
        """Delete API token ``name``: it stops working on the next request."""
        if not await self.store.revoke_api_token(name):
            raise NotFound(f"no API token named {name!r}")
        self._touched.clear()
        await self._record(actor, "remove", "api_token", name, {"name": name}, None)

    async def verify_api_token(self, text: str, *, now: datetime | None = None) -> ApiToken | None:
        """The valid, unexpired token ``text`` names, or ``None`` (unknown, wrong secret,
        expired or revoked). Records its use at most once a minute."""
        parts = split_api_token(text)
        if parts is None:
            return None
        token_id, secret = parts
        token = await self.store.api_token(token_id)
        stored = token.secret_hash if token is not None else None
        if not secret_matches(SecretKind.API_TOKEN, secret, stored) or token is None:
            return None
        now = now or datetime.now(UTC)
        if token.expires_at is not None and token.expires_at <= now:
            return None
        stamp = now.timestamp()
        last = self._touched.get(token_id)
        if last is None and token.last_used_at is not None:
            last = token.last_used_at.timestamp()
        if last is None or stamp - last >= TOUCH_SECONDS:
            self._touched[token_id] = stamp
            await self.store.touch_api_token(token.name)
        return token

    async def connections(self, *, tunnel: str | None = None) -> list[TunnelConnection]:
        """The connector connections the edges reported in the last ``FRESH_SECONDS``."""
        since = datetime.now(UTC) - timedelta(seconds=FRESH_SECONDS)
        return await self.store.tunnel_connections(seen_after=since, tunnel=tunnel)

    # -- portal sessions ---------------------------------------------------------------------

    async def sessions(self, *, email: str | None = None, limit: int = 1000) -> list[Session]:
        """The active portal sessions (of ``email`` and its subaddresses), most recently
        seen first."""
        return await self.store.sessions(email=email, limit=limit)

    async def end_session(self, session_id: str, actor: Actor) -> Session:
        """End one portal session: its tokens stop working on every server within a second
        (this one at once). ``NotFound`` when no such session is active. Recorded in the
        admin log (the session's owner, device and address; never a token)."""
        ended = await self.store.end_session(session_id[:100])
        if ended is None:
            raise NotFound(f"no active session {session_id[:100]!r}")
        await self._record(
            actor,
            "remove",
            "session",
            ended.id,
            {"email": ended.email, "user_agent": ended.user_agent, "ip": ended.ip},
            None,
        )
        if self.on_change is not None:
            try:
                await self.on_change()  # this process refuses the session at once
            except Exception:
                log.exception("could not load the session just ended")
        return ended

    # -- logs and the policy tester ----------------------------------------------------------

    async def admin_log(
        self, limit: int = 100, *, since: datetime | None = None
    ) -> list[AdminLogEntry]:
        """The newest ``limit`` admin-log entries (at or after ``since``), newest first."""
        return await self.store.admin_log(limit, since=since)

    async def access_log(
        self,
        where: AccessFilter | None = None,
        *,
        app: str | None = None,
        email: str | None = None,
        decision: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[AccessEvent]:
        if where is None:
            where = AccessFilter(app=app, email=email, decision=decision, since=since)
        return await self.store.access_log(where, limit=limit)

    async def export_access(
        self, where: AccessFilter, fmt: str, *, limit: int = EXPORT_MAX
    ) -> AsyncIterator[bytes]:
        """Every matching row (at most ``limit``), newest first, as CSV (a header row, then
        one row per event; a cell a spreadsheet would run as a formula is quoted with a
        leading ``'``) or JSON lines; read from the store a page at a time."""
        if fmt not in EXPORT_FORMATS:
            raise Invalid(f"format: {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
        if fmt == "csv":
            yield _csv_line(list(ACCESS_FIELDS))
        left = limit
        page = where
        while left > 0:
            events = await self.store.access_log(page, limit=min(EXPORT_PAGE, left))
            for event in events:
                row = access_event_dict(event)
                if fmt == "csv":
                    yield _csv_line([row[name] for name in ACCESS_FIELDS])
                else:
                    yield json.dumps(row, separators=(",", ":")).encode() + b"\n"
            left -= len(events)
            if len(events) < EXPORT_PAGE:
                break
            last = events[-1]
            assert last.id is not None
            page = replace(page, before=(last.at, last.id))

    async def mail_health(self) -> MailHealth:
        """The latest PIN mail outcome and the latest failure (see ``MailHealth``)."""
        mode, transport = (
            transport_of(self.mail) if self.mail is not None else ("unknown", "not known here")
        )
        latest = await self.store.access_log(kind="mail", limit=1)
        failed = await self.store.access_log(kind="mail", decision="failed", limit=1)
        sent = await self.store.access_log(kind="mail", decision="sent", limit=1)
        last = latest[0] if latest else None
        return MailHealth(
            mode=mode,
            transport=transport,
            outcome=last.decision if last else None,
            at=last.at if last else None,
            detail=last.detail if last else None,
            last_sent_at=sent[0].at if sent else None,
            last_error=failed[0].detail if failed else None,
            last_error_at=failed[0].at if failed else None,
        )

    async def certificates(self, now: datetime | None = None) -> list[CertificateStatus]:
        """The certificates of automatic HTTPS (``CertificateStatus``), by hostname: every
        stored one, and every hostname whose order failed without one stored."""
        from zerogate.autotls.manager import RENEW_AT  # the ACME library only when asked

        now = now or datetime.now(UTC)
        stored = {c.host: c for c in await self.store.certificate_infos()}
        failures: dict[str, AccessEvent] = {}
        for row in await self.store.access_log(
            kind="tls", decision="failed", limit=CERT_FAILURES_READ
        ):
            if row.host and row.host not in failures:
                failures[row.host] = row
        wanted = set(self.tls_hosts()) if self.tls_hosts is not None else None
        if wanted is not None:  # a removed hostname's old failure is no news
            failures = {h: f for h, f in failures.items() if h in wanted}
        result = []
        for host in sorted(stored.keys() | failures.keys() | (wanted or set())):
            cert = stored.get(host)
            failed = failures.get(host)
            if failed is not None and cert is not None and failed.at <= cert.updated_at:
                failed = None  # an older failure, fixed by the certificate stored since
            if cert is None:
                state = "missing" if failed is not None else "pending"
                result.append(
                    CertificateStatus(
                        host,
                        None,
                        None,
                        None,
                        None,
                        None,
                        failed.detail if failed else None,
                        failed.at if failed else None,
                        state,
                    )
                )
                continue
            renew = cert.not_before + (cert.not_after - cert.not_before) * RENEW_AT
            state = "expired" if now >= cert.not_after else "renewing" if now >= renew else "valid"
            if wanted is not None and host not in wanted:
                state = "unused"
            result.append(
                CertificateStatus(
                    host,
                    cert.issuer,
                    cert.not_before,
                    cert.not_after,
                    renew,
                    cert.updated_at,
                    failed.detail if failed else None,
                    failed.at if failed else None,
                    state,
                )
            )
        return result

    async def policy_test(
        self,
        *,
        app: str | None = None,
        url: str | None = None,
        email: str | None = None,
        idp: str | None = None,
        idp_groups: tuple[str, ...] = (),
        amr: tuple[str, ...] = (),
        ip: str | None = None,
        country: str | None = None,
        service_token: str | None = None,
    ) -> Verdict:
        """The decision for one imagined request, with every check explained
        (``policy.tester``, which ``zerogate policy test`` calls too). Exactly one of ``app``
        and ``url``; ``NotFound`` for an unknown ``app``, ``Invalid`` names every unusable
        input."""
        objects, version = await self.store.load()
        snapshot = compile_snapshot(objects, version)
        # ``zerogate-admin``, the built-in admin application, can be tested by name too
        if app is not None and url is None and snapshot.application(app) is None:
            raise NotFound(f"no application named {app!r}")
        query = PolicyQuery(
            app=app,
            url=url,
            email=email,
            idp=idp,
            idp_groups=idp_groups,
            amr=amr,
            ip=ip,
            country=country,
            service_token=service_token,
        )
        try:
            return run_query(snapshot, check_query(snapshot, query))
        except QueryError as exc:
            raise Invalid("the test request is not valid", exc.problems) from None
