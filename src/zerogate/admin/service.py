"""What an administrator can do, independent of how they ask (REST API, web panel, CLI).

Every write loads the stored objects, changes one object, validates the whole document with
the same code as ``zerogate apply`` (so errors name the object and field exactly as for a YAML
file) and applies it with compare-and-set on that object's version: a write based on a stale
version raises ``Conflict`` and writes nothing, so two admins never silently overwrite each
other. The store records every change (who, from where, before → after) in the admin log.

Policies live inside their application (as in YAML); changing one is a versioned write of the
application. The ``admins`` list is one object of kind ``admins``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from zerogate.model.loader import ConfigError, Problem, validate_objects
from zerogate.model.objects import Objects
from zerogate.policy import Context, Identity, Verdict, compile_snapshot
from zerogate.store import AdminLogEntry, StaleWrite, Store, TunnelConnection
from zerogate.store.diff import ADMINS, Plan

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


class Invalid(AdminError):
    """The result would not be a valid configuration; ``problems`` name object and field."""

    status = 422


@dataclass(frozen=True)
class Item:
    """One stored object: its collection, name, version and spec (the YAML object as JSON)."""

    collection: str
    name: str
    version: int
    spec: dict[str, Any]


@dataclass(frozen=True)
class Actor:
    """Who makes a change and from where, as the admin log records it."""

    who: str
    source: str | None = None


def _document(objects: Objects) -> dict[str, Any]:
    return objects.model_dump(mode="json", by_alias=True, exclude_none=True)


def _collection(name: str) -> str:
    if name not in COLLECTIONS:
        raise NotFound(f"no collection {name!r}; known: {', '.join(sorted(COLLECTIONS))}")
    return COLLECTIONS[name]


class AdminService:
    """Reads and versioned writes of the configured objects, logs and the policy tester."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- reading ---------------------------------------------------------------------------

    async def _state(self) -> tuple[Objects, dict[str, Any], int, dict[tuple[str, str], int]]:
        objects, _ = await self.store.load()
        version, versions = await self.store.versions()
        return objects, _document(objects), version, versions

    async def items(self, collection: str) -> list[Item]:
        kind = _collection(collection)
        _, doc, _, versions = await self._state()
        return [
            Item(collection, spec["name"], versions.get((kind, spec["name"]), 0), spec)
            for spec in doc[collection]
        ]

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
    ) -> Plan:
        try:
            objects = validate_objects(doc, source=None)
        except ConfigError as exc:
            raise Invalid("the change would make the configuration invalid", exc.problems) from None
        try:
            return await self.store.apply(
                objects, actor=actor.who, source=actor.source, expect=expect
            )
        except StaleWrite as exc:
            raise Conflict(str(exc)) from None

    async def create(self, collection: str, spec: dict[str, Any], actor: Actor) -> Item:
        """Add a new object; ``Conflict`` when one of that name exists."""
        kind = _collection(collection)
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str) or not name:
            raise Invalid(
                "the object needs a name", [Problem(f"{collection}[?]", "name: field required")]
            )
        _, doc, _, versions = await self._state()
        if (kind, name) in versions:
            raise Conflict(f"{kind.replace('_', ' ')} {name!r} already exists")
        doc[collection] = [*doc[collection], spec]
        await self._write(doc, {(kind, name): None}, actor)
        return await self.get(collection, name)

    async def update(
        self, collection: str, name: str, spec: dict[str, Any], *, version: int, actor: Actor
    ) -> Item:
        """Replace object ``name`` (based on ``version``) with ``spec``. A different
        ``spec["name"]`` renames it (refused when that name is taken)."""
        kind = _collection(collection)
        _, doc, _, versions = await self._state()
        if (kind, name) not in versions:
            raise NotFound(f"no {kind.replace('_', ' ')} named {name!r}")
        new_name = spec.get("name", name) if isinstance(spec, dict) else name
        spec = {**spec, "name": new_name}
        expect: dict[tuple[str, str], int | None] = {(kind, name): version}
        if new_name != name:
            if (kind, new_name) in versions:
                raise Conflict(f"{kind.replace('_', ' ')} {new_name!r} already exists")
            expect[(kind, new_name)] = None
        doc[collection] = [spec if item["name"] == name else item for item in doc[collection]]
        await self._write(doc, expect, actor)
        return await self.get(collection, new_name)

    async def delete(self, collection: str, name: str, *, version: int, actor: Actor) -> None:
        """Remove object ``name`` (based on ``version``); refused (``Invalid``) while other
        objects refer to it, with the references named."""
        kind = _collection(collection)
        _, doc, _, versions = await self._state()
        if (kind, name) not in versions:
            raise NotFound(f"no {kind.replace('_', ' ')} named {name!r}")
        doc[collection] = [item for item in doc[collection] if item["name"] != name]
        await self._write(doc, {(kind, name): version}, actor)

    async def set_admins(self, admins: list[str], *, version: int, actor: Actor) -> int:
        """Replace the admins list (based on ``version``, 0 when never set); the new version."""
        _, doc, _, versions = await self._state()
        doc["admins"] = admins
        current = versions.get((ADMINS, ADMINS))
        expect: dict[tuple[str, str], int | None] = {(ADMINS, ADMINS): version if version else None}
        if current is None and version:
            raise Conflict("the admins list no longer exists; reload and retry")
        plan = await self._write(doc, expect, actor)
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

    async def connections(self, *, tunnel: str | None = None) -> list[TunnelConnection]:
        """The connector connections the edges reported in the last ``FRESH_SECONDS``."""
        since = datetime.now(UTC) - timedelta(seconds=FRESH_SECONDS)
        return await self.store.tunnel_connections(seen_after=since, tunnel=tunnel)

    # -- logs and the policy tester ----------------------------------------------------------

    async def admin_log(self, limit: int = 100) -> list[AdminLogEntry]:
        return await self.store.admin_log(limit)

    async def access_log(
        self,
        *,
        app: str | None = None,
        email: str | None = None,
        decision: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[Any]:
        return await self.store.access_log(
            app=app, email=email, decision=decision, since=since, limit=limit
        )

    async def policy_test(
        self,
        *,
        app: str | None = None,
        url: str | None = None,
        email: str | None = None,
        idp: str | None = None,
        idp_groups: tuple[str, ...] = (),
        ip: str | None = None,
        country: str | None = None,
        service_token: str | None = None,
    ) -> Verdict:
        """The decision for one imagined request, with every check explained (the same
        engine and routing as the edge). Exactly one of ``app`` and ``url``."""
        from urllib.parse import urlsplit

        objects, version = await self.store.load()
        snapshot = compile_snapshot(objects, version)
        identity = Identity.of(email, idp, idp_groups, ()) if email else None
        ctx = Context(ip=ip, country=country, service_token=service_token)
        if (app is None) == (url is None):
            raise Invalid("give either an application or a URL")
        if url is not None:
            parts = urlsplit(url if "://" in url else f"https://{url}")
            if not parts.hostname:
                raise Invalid(f"{url!r} has no host")
            host = parts.netloc.rpartition("@")[2]
            return snapshot.check(host, parts.path or "/", identity, ctx, explain=True)
        assert app is not None
        if app not in snapshot.apps:
            raise NotFound(f"no application named {app!r}")
        return snapshot.explain(snapshot.apps[app], identity, ctx)
