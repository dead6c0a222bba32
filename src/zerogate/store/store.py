"""The store: where the configured objects live between processes, with their version and the
admin log of every change.

``Store.open`` connects and migrates; ``load`` returns the objects; ``plan`` diffs the stored
objects against new ones; ``apply`` writes a plan in one transaction that also bumps the
configuration version and records one admin-log row per change. Concurrent applies serialise
on the single ``config_state`` row (``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN
IMMEDIATE`` on SQLite).

The runtime state (``state``, the server secret, signing keys, PINs, authorization codes,
revocations, service-token credentials, the access log; see ``runtime``) is read and written
through the methods in the second half of ``Store``, each one transaction. None of them is
meant for a request's hot path: servers poll ``state()`` and reload what moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from zerogate.model.loader import ConfigError, validate_objects
from zerogate.model.objects import Objects
from zerogate.store import certificates as certstore
from zerogate.store import cluster, idp_secrets, limits, logs, migrate, runtime, tunnels
from zerogate.store import sessions as session_rows
from zerogate.store.audiences import keep_audiences
from zerogate.store.cluster import ClusterNode, ClusterView, Presence
from zerogate.store.diff import (
    KINDS,
    Change,
    Kept,
    Origin,
    Plan,
    Row,
    canonical,
    diff,
    merge_file,
    objects_of,
    rows_of,
)
from zerogate.store.engine import create_engine, is_memory, sqlite_file, write_lock
from zerogate.store.errors import KeptInvalid, StaleWrite, StoreError
from zerogate.store.runtime import (
    AccessEvent,
    AccessFilter,
    ServiceCredential,
    StateVersion,
    key_text,
    utc,
)
from zerogate.store.secretbox import SecretBox, prepare_sqlite_file
from zerogate.store.sessions import Session
from zerogate.store.tables import access_log, admin_log, config_state
from zerogate.store.tables import objects as objects_table
from zerogate.store.tunnels import ApiToken, TunnelConnection, TunnelCredential


@dataclass(frozen=True)
class AdminLogEntry:
    """One recorded admin change; ``before``/``after`` are the object's spec (``None`` for an
    add / a removal); ``version`` is the configuration version the change produced."""

    id: int
    at: datetime
    actor: str
    source: str | None
    action: str
    kind: str | None
    name: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    version: int | None = None


def _reason(exc: BaseException) -> str:
    """The first line of the driver's message, without SQLAlchemy's decorations."""
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip() or type(original).__name__
    return text.splitlines()[0]


#: the PostgreSQL channel every change of ``state()`` is announced on (migration 0005)
CHANGES_CHANNEL = "zerogate_changes"
#: announces a new node and every change of a node's tunnel presence (migration 0006)
CLUSTER_CHANNEL = "zerogate_cluster"


T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(UTC)


def _json(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    value = json.loads(text)
    return value if isinstance(value, dict) else {"value": value}


class Store:
    """A connected, migrated store. Create with ``await Store.open(url)``; ``close()`` it."""

    def __init__(self, engine: AsyncEngine, url: str, box: SecretBox | None = None) -> None:
        self._engine = engine
        self._url = url
        self._box = box if box is not None else SecretBox(None)
        self._server_secret: bytes | None = None
        # an in-memory SQLite database is one shared connection: take turns using it
        parsed = make_url(url)
        shared = parsed.get_backend_name() == "sqlite" and is_memory(parsed)
        self._turns: asyncio.Lock | None = asyncio.Lock() if shared else None

    @property
    def engine(self) -> AsyncEngine:
        """The engine, for parts that keep their own tables in the same database."""
        return self._engine

    @property
    def safe_url(self) -> str:
        """The store's URL as a user would write it, with any password hidden."""
        url = make_url(self._url)
        return url.set(drivername=url.get_backend_name()).render_as_string(hide_password=True)

    async def listen_for_changes(
        self, wake: Callable[[], None], *, channel: str = CHANGES_CHANNEL
    ) -> Callable[[], Awaitable[None]]:
        """PostgreSQL: call ``wake`` whenever a transaction changed the watched state (the
        ``zerogate_changes`` notification of migration 0005; ``channel=CLUSTER_CHANNEL``: a
        node joined or its tunnel presence changed, migration 0006), over a connection of its own;
        returns what closes it. SQLite has no such thing: nothing happens, and the servers'
        poll is the only way (``wake`` is never called). Raises ``StoreError`` when the
        listening connection cannot be made."""
        url = make_url(self._url)
        if url.get_backend_name() != "postgresql":

            async def nothing() -> None:
                return None

            return nothing
        import asyncpg  # type: ignore[import-untyped]

        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            connection = await asyncio.wait_for(asyncpg.connect(dsn), 10)
            await connection.add_listener(channel, lambda *_: wake())
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot listen for changes on {self.safe_url}: {exc}") from None

        async def close() -> None:
            with contextlib.suppress(Exception):
                await connection.close(timeout=5)

        return close

    # -- opening ------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, *, box: SecretBox | None = None) -> Store:
        """Connect to the store at ``url`` (as returned by ``storage_url``) and migrate it to
        the newest schema; raises ``StoreError`` when it cannot.

        ``box`` seals the secret rows (default: the key ``$ZEROGATE_SECRETS_KEY`` or
        ``$ZEROGATE_SECRETS_KEY_FILE`` names, if any); opening checks it opens every sealed row
        and seals the plain ones. A SQLite store's folder is created 0700 and its files 0600;
        an existing store file that others may read is refused."""
        if box is None:
            box = SecretBox.from_environment()
        try:
            file = sqlite_file(url)
        except SQLAlchemyError as exc:
            raise StoreError(f"storage URL {url!r} is not valid: {_reason(exc)}") from None
        if file is not None:
            prepare_sqlite_file(file)
        engine = create_engine(url)
        store = cls(engine, url, box)
        try:
            async with engine.connect() as connection:
                await write_lock(connection)
                async with connection.begin():
                    await connection.run_sync(migrate.upgrade)
                    await runtime.seal_secrets(connection, box, _now())
        except StoreError:
            await engine.dispose()
            raise
        except (SQLAlchemyError, OSError) as exc:
            await engine.dispose()
            raise StoreError(f"cannot open the store at {store.safe_url}: {_reason(exc)}") from None
        except Exception as exc:  # asyncpg raises its own errors while connecting
            await engine.dispose()
            if type(exc).__module__.startswith("asyncpg"):
                raise StoreError(
                    f"cannot open the store at {store.safe_url}: {_reason(exc)}"
                ) from None
            raise
        return store

    async def close(self) -> None:
        await self._engine.dispose()

    # -- reading ------------------------------------------------------------------------

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"cannot {doing} ({self.safe_url}): {_reason(exc)}") from None

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection from the pool (for an in-memory store, once no one else uses it)."""
        if self._turns is None:
            async with self._engine.connect() as connection:
                yield connection
            return
        async with self._turns, self._engine.connect() as connection:
            yield connection

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that sees one consistent state of the store."""
        async with self._connect() as connection:
            if connection.dialect.name == "postgresql":
                await connection.execution_options(isolation_level="REPEATABLE READ")
            async with connection.begin():
                yield connection

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction: ``BEGIN IMMEDIATE`` on SQLite (writers queue instead of failing
        to upgrade a read lock), READ COMMITTED on PostgreSQL (a conditional ``UPDATE`` that
        waited for another writer re-checks its condition against the committed row)."""
        async with self._connect() as connection:
            await write_lock(connection)
            async with connection.begin():
                yield connection

    @asynccontextmanager
    async def _single(self) -> AsyncIterator[AsyncConnection]:
        """A connection for one read statement (no isolation settings to pay for)."""
        async with self._connect() as connection:
            yield connection

    async def version(self) -> int:
        """The configuration version: 0 for a new store, +1 for every non-empty apply."""
        with self._errors("read the store's version"):
            async with self._reading() as connection:
                return await _version(connection)

    async def load(self) -> tuple[Objects, int]:
        """The stored objects (in the order they were applied) and the version they are at."""
        with self._errors("load the configuration"):
            async with self._reading() as connection:
                version = await _version(connection)
                rows = await _rows(connection)
        # validating thousands of objects takes long enough to stall the event loop: a thread
        return await asyncio.to_thread(_objects, rows), version

    async def versions(self) -> tuple[int, dict[tuple[str, str], int]]:
        """The configuration version and, per ``(kind, name)``, the version that last added
        or changed that object (what a write names to be refused when it is stale)."""
        t = objects_table
        with self._errors("read the object versions"):
            async with self._reading() as connection:
                version = await _version(connection)
                result = await connection.execute(select(t.c.kind, t.c.name, t.c.version))
                return version, {(k, n): int(v) for k, n, v in result.all()}

    async def load_versioned(self) -> tuple[Objects, int, dict[tuple[str, str], int]]:
        """``load()`` and ``versions()`` in one read transaction, so the objects, the
        configuration version and each object's version describe the same moment (what a
        versioned write must be based on)."""
        t = objects_table
        with self._errors("load the configuration"):
            async with self._reading() as connection:
                version = await _version(connection)
                rows = await _rows(connection)
                result = await connection.execute(select(t.c.kind, t.c.name, t.c.version))
                versions = {(k, n): int(v) for k, n, v in result.all()}
        return _objects(rows), version, versions

    @staticmethod
    def plan_if_missing(url: str, objects: Objects) -> Plan | None:
        """The plan against a SQLite store whose file does not exist yet (everything is an
        add), without creating the file; None when the store exists or is not such a file
        (then open it and use ``plan``). For ``apply --dry-run``, which must create nothing."""
        path = sqlite_file(url)
        if path is None or path.exists():
            return None
        return Plan(diff([], keep_audiences([], _wanted(objects))), 0, 0)

    async def plan(self, objects: Objects, *, origin: Origin = "file", prune: bool = False) -> Plan:
        """What ``apply(objects, origin=origin, prune=prune)`` would do now; writes nothing
        (raises ``KeptInvalid`` as that apply would)."""
        listed = _wanted(objects)
        with self._errors("read the store"):
            async with self._reading() as connection:
                version = await _version(connection)
                stored = await _rows(connection)
        wanted, kept = _merged(stored, listed, origin, prune)
        wanted = keep_audiences(list(stored), wanted)
        return Plan(diff(stored, wanted), version, version, kept)

    async def kept_document(self, objects: Objects, *, prune: bool = False) -> dict[str, Any]:
        """The objects an apply of ``objects`` from a file would keep (see ``apply``), as a
        configuration document (empty lists when none): what the file's objects may name."""
        listed = _wanted(objects)
        with self._errors("read the store"):
            async with self._reading() as connection:
                stored = await _rows(connection)
        wanted, kept = merge_file(stored, listed, prune=prune)
        names = {(k.kind, k.name) for k in kept}
        return _document([r for r in wanted if (r.kind, r.name) in names])

    async def ownership(self) -> dict[tuple[str, str], tuple[str, bool]]:
        """Per ``(kind, name)``: where the object was last changed and whether the last apply
        from a file listed it (the file manages it)."""
        t = objects_table
        with self._errors("read the objects' origins"):
            async with self._single() as connection:
                result = await connection.execute(
                    select(t.c.kind, t.c.name, t.c.origin, t.c.in_file)
                )
                return {(k, n): (o, bool(f)) for k, n, o, f in result.all()}

    async def admin_log(
        self, limit: int = 100, *, since: datetime | None = None
    ) -> list[AdminLogEntry]:
        """The newest ``limit`` admin-log entries (at or after ``since``), newest first."""
        query = select(admin_log).order_by(admin_log.c.id.desc()).limit(max(0, limit))
        if since is not None:
            query = query.where(admin_log.c.at >= utc(since, "since"))
        with self._errors("read the admin log"):
            async with self._reading() as connection:
                result = await connection.execute(query)
                records = result.mappings().all()
        return [
            AdminLogEntry(
                id=record["id"],
                at=record["at"],
                actor=record["actor"],
                source=record["source"],
                action=record["action"],
                kind=record["kind"],
                name=record["name"],
                before=_json(record["before_json"]),
                after=_json(record["after_json"]),
                version=record["config_version"],
            )
            for record in records
        ]

    # -- writing ------------------------------------------------------------------------

    async def apply(
        self,
        objects: Objects,
        *,
        actor: str,
        source: str | None = None,
        expect: Mapping[tuple[str, str], int | None] | None = None,
        expect_version: int | None = None,
        origin: Origin = "file",
        prune: bool = False,
    ) -> Plan:
        """Make the stored objects equal to ``objects`` in one transaction (all or nothing):
        write the changes, bump the version by one and log each change. An empty plan writes
        nothing. Concurrent applies (from any process) run one after the other.

        ``origin`` says where the change comes from; the objects it adds or changes record it.
        ``"file"`` (``zerogate apply``) is the one partial write: stored objects the file
        does not list and never managed are kept (``Plan.kept``) unless ``prune``; the file's
        objects become file-managed, the kept ones not. When the kept objects no longer fit
        the file's (an application of the panel's naming a group the file dropped):
        ``KeptInvalid``, nothing written. Any other origin writes ``objects`` as the whole set.

        Compare-and-set: ``expect`` maps ``(kind, name)`` to the object version the caller
        based its change on (``None``: the object must not exist); ``expect_version`` is the
        whole configuration's version the caller loaded. Either one not matching raises
        ``StaleWrite`` and writes nothing."""
        listed = _wanted(objects)
        with self._errors("apply the configuration"):
            async with self._connect() as connection:
                await write_lock(connection)
                async with connection.begin() as transaction:
                    version = await _lock_state(connection)
                    if expect:  # first: its message names the object
                        await _check_expected(connection, expect)
                    if expect_version is not None and expect_version != version:
                        raise StaleWrite("configuration", "", expect_version, version)
                    stored = await _rows(connection)
                    wanted, kept = _merged(stored, listed, origin, prune)
                    wanted = keep_audiences(list(stored), wanted)
                    changes = diff(stored, wanted)
                    flags = _ownership_flips(stored, wanted, origin)
                    if not changes and not flags:
                        await transaction.rollback()
                        return Plan((), version, version, kept)
                    await _write_ownership(connection, flags)
                    if not changes:
                        return Plan((), version, version, kept)
                    new_version = version + 1
                    now = _now()
                    await _write_objects(
                        connection, stored, wanted, changes, new_version, now, origin
                    )
                    await _write_log(
                        connection, stored, wanted, changes, new_version, now, actor, source
                    )
                    await _bump_version(connection, new_version, now)
                    await _drop_removed_credentials(connection, changes)
        return Plan(changes, version, new_version, kept)

    async def log_admin(
        self,
        *,
        actor: str,
        source: str | None,
        action: str,
        kind: str | None,
        name: str | None,
        before: Mapping[str, Any] | None = None,
        after: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a change made outside the configured objects (a credential created, rotated
        or revoked) in the admin log, with no configuration version; ``before`` / ``after``
        describe it (never a secret)."""
        row = {
            "at": _now(),
            "actor": actor,
            "source": source,
            "action": action,
            "kind": kind,
            "name": name,
            "before_json": canonical(dict(before)) if before is not None else None,
            "after_json": canonical(dict(after)) if after is not None else None,
            "config_version": None,
        }
        with self._errors("write the admin log"):
            async with self._writing() as connection:
                await connection.execute(insert(admin_log).values(**row))

    async def named_secret(self, name: str, candidate: str) -> str:
        """The stored value of secret ``name``; the first caller's ``candidate`` becomes it
        (so every process of a cluster ends up with the same generated value)."""
        with self._errors(f"read the secret {name!r}"):
            async with self._writing() as connection:
                return await runtime.named_secret(connection, name, candidate, _now(), self._box)

    async def secret_env_issuer(self, variable: str, issuer: str, *, replace: bool) -> str:
        """The issuer a ``client_secret_env`` variable is bound to (see
        ``AdminService._check_secret_refs``): ``issuer`` when unbound or with ``replace``."""
        with self._errors("read the issuer of a secret variable"):
            async with self._writing() as connection:
                return await runtime.secret_env_issuer(
                    connection, variable, issuer, _now(), self._box, replace=replace
                )

    # -- OIDC client secrets set in the panel or API -----------------------------------------

    async def set_oidc_secret(self, provider: str, issuer: str, value: str | None) -> None:
        """Store (encrypted and bound to ``issuer``, see ``idp_secrets``) or, with ``None``,
        remove the client secret of identity provider ``provider``."""
        secret = await self.server_secret()
        with self._errors("store the client secret"):
            async with self._writing() as connection:
                if value is None:
                    await idp_secrets.remove(connection, [provider])
                else:
                    await idp_secrets.put(
                        connection,
                        provider,
                        issuer,
                        idp_secrets.check(value),
                        server_secret=secret,
                        box=self._box,
                        now=_now(),
                    )

    async def oidc_secret(self, provider: str, issuer: str) -> str | None:
        """The client secret stored for ``provider`` at ``issuer``, or None."""
        secret = await self.server_secret()
        with self._errors("read the client secret"):
            async with self._single() as connection:
                return await idp_secrets.get(
                    connection, provider, issuer, server_secret=secret, box=self._box
                )

    async def oidc_secret_names(self) -> set[str]:
        """The providers that have a stored client secret."""
        with self._errors("read the client secrets"):
            async with self._single() as connection:
                return await idp_secrets.names(connection)

    # -- tunnels -------------------------------------------------------------------------

    async def put_tunnel_credential(self, cred: TunnelCredential) -> None:
        """Store (or replace) the credential of tunnel ``cred.name``; bumps
        ``tunnels_generation`` so edges drop connections of the replaced secret."""
        cred = TunnelCredential(
            name=cred.name,
            tunnel_id=cred.tunnel_id,
            secret_hash=cred.secret_hash,
            created_at=utc(cred.created_at, "created_at"),
            rotated_at=utc(cred.rotated_at, "rotated_at"),
        )
        with self._errors(f"store the credential of tunnel {cred.name!r}"):
            async with self._writing() as connection:
                await tunnels.put_tunnel_credential(connection, cred)

    async def delete_tunnel_credential(self, name: str) -> bool:
        with self._errors(f"delete the credential of tunnel {name!r}"):
            async with self._writing() as connection:
                return await tunnels.delete_tunnel_credentials(connection, [name]) > 0

    async def tunnel_credentials(self) -> list[TunnelCredential]:
        with self._errors("read the tunnel credentials"):
            async with self._single() as connection:
                return await tunnels.all_tunnel_credentials(connection)

    async def report_tunnel_connections(
        self, edge_id: str, rows: Sequence[TunnelConnection]
    ) -> None:
        """Replace what edge process ``edge_id`` reported before with ``rows``."""
        with self._errors("record the tunnel connections"):
            async with self._writing() as connection:
                await tunnels.report_connections(connection, edge_id, rows)

    async def tunnel_connections(
        self, *, seen_after: datetime, tunnel: str | None = None
    ) -> list[TunnelConnection]:
        """The connections reported at or after ``seen_after`` (older rows are stale)."""
        with self._errors("read the tunnel connections"):
            async with self._single() as connection:
                return await tunnels.read_connections(
                    connection, seen_after=seen_after, tunnel=tunnel
                )

    async def forget_tunnel_connections(self, *, seen_before: datetime) -> int:
        with self._errors("prune the tunnel connections"):
            async with self._writing() as connection:
                return await tunnels.forget_connections(connection, seen_before=seen_before)

    # -- cluster (nodes and tunnel presence) ---------------------------------------------

    async def cluster_heartbeat(
        self, node: ClusterNode, rows: Sequence[Presence] | None = None
    ) -> None:
        """Refresh ``node``'s heartbeat; replace its presence rows with ``rows`` (``None``:
        refresh the ones it has)."""
        with self._errors("record this node's heartbeat"):
            async with self._writing() as connection:
                await cluster.heartbeat(connection, node, rows)

    async def cluster_leave(self, node_id: str) -> None:
        with self._errors("remove this node from the cluster"):
            async with self._writing() as connection:
                await cluster.leave(connection, node_id)

    async def cluster_expire(self, *, older_than: timedelta) -> int:
        """Delete the nodes (and their rows) whose heartbeat is older than ``older_than``."""
        with self._errors("expire the cluster's dead nodes"):
            async with self._writing() as connection:
                return await cluster.expire(connection, older_than=older_than)

    async def cluster_view(self, *, live_for: timedelta) -> ClusterView:
        """The nodes whose heartbeat is within ``live_for`` (the database's clock) and the
        presence rows that count (``zerogate.store.cluster.view``)."""
        with self._errors("read the cluster's nodes"):
            async with self._single() as connection:
                return await cluster.view(connection, live_for=live_for)

    # -- admin API tokens ----------------------------------------------------------------

    async def add_api_token(self, token: ApiToken) -> bool:
        """Store a new API token; ``False`` when one of that name exists."""
        with self._errors(f"store the API token {token.name!r}"):
            async with self._writing() as connection:
                return await tunnels.insert_api_token(connection, token)

    async def api_tokens(self) -> list[ApiToken]:
        with self._errors("read the API tokens"):
            async with self._single() as connection:
                return await tunnels.all_api_tokens(connection)

    async def api_token(self, token_id: str) -> ApiToken | None:
        with self._errors("read an API token"):
            async with self._single() as connection:
                return await tunnels.api_token_by_id(connection, token_id)

    async def revoke_api_token(self, name: str) -> bool:
        with self._errors(f"revoke the API token {name!r}"):
            async with self._writing() as connection:
                return await tunnels.delete_api_token(connection, name)

    async def touch_api_token(self, name: str) -> None:
        with self._errors("record an API token's use"):
            async with self._writing() as connection:
                await tunnels.touch_api_token(connection, name, _now())

    # -- runtime state: polled counters and secrets -------------------------------------

    async def state(self) -> StateVersion:
        """The configuration version and the runtime counters, in one cheap query; servers
        poll this (every second) and reload whatever moved."""
        with self._errors("read the store's state"):
            async with self._single() as connection:
                return await runtime.state(connection)

    async def server_secret(self) -> bytes:
        """The random 32-byte secret all server processes share (HMAC for PINs, signed
        login-flow data, CSRF); created by the first caller, the same for every later one."""
        if self._server_secret is None:
            with self._errors("read the server secret"):
                async with self._writing() as connection:
                    self._server_secret = await runtime.server_secret(connection, _now(), self._box)
        return self._server_secret

    # -- automatic HTTPS: certificates, ACME challenges, leases (store/certificates.py) ------

    async def _key_box(self) -> SecretBox:
        return certstore.key_box(await self.server_secret())

    async def put_certificate(self, cert: certstore.StoredCertificate) -> None:
        box = await self._key_box()
        with self._errors("store a certificate"):
            async with self._writing() as connection:
                await certstore.put_certificate(connection, cert, box)

    async def certificate_versions(self) -> dict[str, datetime]:
        with self._errors("read the certificates"):
            async with self._single() as connection:
                return await certstore.certificate_versions(connection)

    async def certificates(self) -> list[certstore.StoredCertificate]:
        box = await self._key_box()
        with self._errors("read the certificates"):
            async with self._reading() as connection:
                return await certstore.all_certificates(connection, box)

    async def certificate_infos(self) -> list[certstore.CertificateInfo]:
        """The stored certificates without their keys (nothing to unseal), by hostname."""
        with self._errors("read the certificates"):
            async with self._single() as connection:
                return await certstore.certificate_infos(connection)

    async def delete_expired_certificates(self, keep: set[str]) -> list[str]:
        """Delete the expired certificates of hostnames not in ``keep``; their hostnames."""
        with self._errors("remove expired certificates"):
            async with self._writing() as connection:
                return await certstore.delete_expired(connection, keep, _now())

    async def put_challenge(self, challenge: certstore.Challenge) -> None:
        with self._errors("store an ACME challenge"):
            async with self._writing() as connection:
                await certstore.put_challenge(connection, challenge)

    async def delete_challenge(self, challenge_id: str) -> None:
        with self._errors("remove an ACME challenge"):
            async with self._writing() as connection:
                await certstore.delete_challenge(connection, challenge_id)

    async def challenges(self) -> list[certstore.Challenge]:
        """The ACME challenges an order waits for now."""
        with self._errors("read the ACME challenges"):
            async with self._single() as connection:
                return await certstore.live_challenges(connection, _now())

    async def challenge(self, challenge_id: str) -> certstore.Challenge | None:
        with self._errors("read an ACME challenge"):
            async with self._single() as connection:
                return await certstore.live_challenge(connection, challenge_id, _now())

    async def forget_challenges(self) -> None:
        with self._errors("remove expired ACME challenges"):
            async with self._writing() as connection:
                await certstore.forget_challenges(connection, _now())

    async def try_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Take lease ``name`` for ``holder`` for ``ttl`` seconds (or extend it when ``holder``
        has it); False while another holder's lease is unexpired. One statement decides, so
        of several processes or nodes racing for it at most one gets it."""
        now = _now()
        with self._errors("take a lease"):
            async with self._writing() as connection:
                return await certstore.try_lease(
                    connection, name, holder, now, now + timedelta(seconds=ttl)
                )

    async def release_lease(self, name: str, holder: str) -> bool:
        """End ``holder``'s lease ``name`` early (False when it does not hold it)."""
        with self._errors("release a lease"):
            async with self._writing() as connection:
                return await certstore.release_lease(connection, name, holder)

    async def lease_holder(self, name: str) -> str | None:
        """Who holds lease ``name`` now (None when nobody does)."""
        with self._errors("read a lease"):
            async with self._single() as connection:
                return await certstore.lease_holder(connection, name, _now())

    async def keyset(self) -> tuple[dict[str, Any] | None, int]:
        """The signing key set document and its generation; ``(None, 0)`` before the first
        ``put_keyset``. The document holds private keys."""
        with self._errors("read the signing keys"):
            async with self._single() as connection:
                return await runtime.keyset(connection, self._box)

    async def put_keyset(self, doc: dict[str, Any], *, expected_generation: int) -> bool:
        """Store ``doc`` if the generation is still ``expected_generation`` (then it becomes
        one more and this returns ``True``); ``False`` when another writer got there first:
        read ``keyset()`` again and redo the change on what it returns."""
        with self._errors("store the signing keys"):
            async with self._writing() as connection:
                done = await runtime.put_keyset(
                    connection, doc, expected_generation, _now(), self._box
                )
                if not done:
                    await connection.rollback()
                return done

    # -- runtime state: one-time PINs and authorization codes ---------------------------

    async def put_pin(self, key: str, record: dict[str, Any]) -> None:
        """Store the PIN record for ``key``, replacing (and so voiding) any earlier one; an
        ``update_pin`` against the earlier record's revision then fails."""
        key = key_text(key, "a PIN key")
        with self._errors("store a PIN"):
            async with self._writing() as connection:
                await runtime.put_pin(connection, key, record, _now())

    async def get_pin(self, key: str) -> tuple[dict[str, Any], int] | None:
        """The PIN record for ``key`` and its revision (an opaque number for ``update_pin``),
        or ``None``."""
        key = key_text(key, "a PIN key")
        with self._errors("read a PIN"):
            async with self._single() as connection:
                return await runtime.get_pin(connection, key)

    async def update_pin(self, key: str, record: dict[str, Any], *, revision: int) -> bool:
        """Replace the record if it is still at ``revision``; ``False`` when it changed, was
        replaced or deleted since it was read (of two updates from one read, one wins)."""
        key = key_text(key, "a PIN key")
        with self._errors("update a PIN"):
            async with self._writing() as connection:
                return await runtime.update_pin(connection, key, record, revision, _now())

    async def delete_pin(self, key: str) -> None:
        key = key_text(key, "a PIN key")
        with self._errors("delete a PIN"):
            async with self._writing() as connection:
                await runtime.delete_pin(connection, key)

    async def put_code(self, code_hash: str, data: dict[str, Any], *, expires_at: datetime) -> None:
        """Store a one-time authorization code by its hash until ``take_code`` or expiry."""
        expires_at = utc(expires_at, "expires_at")
        code_hash = key_text(code_hash, "a code hash")
        with self._errors("store an authorization code"):
            async with self._writing() as connection:
                await runtime.put_code(connection, code_hash, data, expires_at)

    async def take_code(self, code_hash: str, *, now: datetime) -> dict[str, Any] | None:
        """Consume the code: its data the first time, ``None`` when unknown, already taken or
        expired at ``now``. Also deletes some expired codes."""
        now = utc(now, "now")
        code_hash = key_text(code_hash, "a code hash")
        with self._errors("take an authorization code"):
            async with self._writing() as connection:
                return await runtime.take_code(connection, code_hash, now)

    # -- runtime state: shared rate limits -----------------------------------------------

    async def hit_rate_windows(
        self, keys: Sequence[tuple[str, float]], decide: limits.Decide[T], *, now: float
    ) -> T:
        """One atomic step for every process on this store: lock the windows of ``keys``
        (``(key, window seconds)``; a key is at most 64 characters), ``decide`` on their hit
        times (epoch seconds), store the windows it returns; its result is returned."""
        for key, _ in keys:
            if len(key_text(key, "a rate-limit key")) > 64:
                raise ValueError("a rate-limit key is at most 64 characters")
        with self._errors("count a rate-limited request"):
            async with self._writing() as connection:
                return await limits.hit_windows(connection, keys, decide, now)

    # -- runtime state: revocations -----------------------------------------------------

    async def revoke(self, email: str, *, not_before: datetime) -> int:
        """Void the sessions of ``email`` (compared lower-cased) issued before ``not_before``;
        returns the new revocation id (``state().revocation_seq`` becomes at least that).
        Earlier revocations of the address with a ``not_before`` not after this one are
        dropped, as this one covers them."""
        not_before = utc(not_before, "not_before")
        email = key_text(email, "email")
        with self._errors("record a revocation"):
            async with self._writing() as connection:
                await session_rows.end_of_address(connection, email, not_before)
                return await runtime.revoke(connection, email, not_before, _now())

    # -- runtime state: portal sessions ---------------------------------------------------

    async def add_session(self, session: Session) -> None:
        """Record a new portal login (``Session``)."""
        with self._errors("record a session"):
            async with self._writing() as connection:
                await session_rows.add(connection, session)

    async def sessions(self, *, email: str | None = None, limit: int = 1000) -> list[Session]:
        """The active sessions (of ``email`` and its subaddresses), most recently seen first."""
        with self._errors("read the sessions"):
            async with self._single() as connection:
                return await session_rows.active(connection, _now(), email, limit)

    async def session(self, session_id: str) -> Session | None:
        with self._errors("read a session"):
            async with self._single() as connection:
                return await session_rows.get(connection, key_text(session_id, "a session id"))

    async def end_session(self, session_id: str) -> Session | None:
        """End an active session everywhere (its tokens are refused by every server within a
        second); the ended session, or ``None`` when there was no such active session."""
        session_id = key_text(session_id, "a session id")
        with self._errors("end a session"):
            async with self._writing() as connection:
                return await session_rows.end(connection, session_id, _now())

    async def ended_sessions(self, *, since: int = 0) -> list[tuple[int, str]]:
        """``(revocation id, session id)`` of the sessions ended with revocation ids above
        ``since`` (the same counter as ``revocations``)."""
        with self._errors("read the ended sessions"):
            async with self._single() as connection:
                return await session_rows.ended_since(connection, since)

    async def trim_sessions(self, before: datetime) -> int:
        """Delete the sessions that expired before ``before`` and the revocations that ended
        them, in batches of short transactions; the number of sessions deleted. The caller
        picks ``before`` so that every token handed out from such a session has expired too
        (an application token may outlive its portal session by its own lifetime)."""
        before = utc(before, "a retention cut-off")
        deleted = 0
        while True:
            with self._errors("trim the sessions"):
                async with self._writing() as connection:
                    n = await session_rows.trim_batch(connection, before, logs.TRIM_BATCH)
            deleted += n
            if n < logs.TRIM_BATCH:
                return deleted
            await asyncio.sleep(0)

    async def touch_sessions(self, seen: Sequence[tuple[str, datetime, str | None]]) -> None:
        """Move the sessions' last seen (and address) forward, in one transaction."""
        if not seen:
            return
        with self._errors("record when sessions were seen"):
            async with self._writing() as connection:
                await session_rows.touch(connection, seen)

    async def revocations(self, *, since: int = 0) -> list[tuple[int, str, datetime]]:
        """``(id, email, not_before)`` of the revocations with ``id > since``, ascending. Ids
        become visible in order, so ``since`` = the last id seen misses nothing. An address
        can appear more than once: the session bound is the latest ``not_before`` seen."""
        with self._errors("read the revocations"):
            async with self._single() as connection:
                return await runtime.revocations_since(connection, since)

    # -- runtime state: service-token credentials ---------------------------------------

    async def put_service_credential(self, cred: ServiceCredential) -> None:
        """Store the credential of service token ``cred.name`` (replacing its earlier one) and
        bump ``service_tokens_generation``. A ``client_id`` another token uses: ``StoreError``."""
        cred = ServiceCredential(
            name=cred.name,
            client_id=cred.client_id,
            secret_hash=cred.secret_hash,
            created_at=utc(cred.created_at, "created_at"),
            expires_at=utc(cred.expires_at, "expires_at"),
        )
        with self._errors(f"store the credential of service token {cred.name!r}"):
            async with self._writing() as connection:
                await runtime.put_service_credential(connection, cred)

    async def delete_service_credential(self, name: str) -> bool:
        """Delete the credential of service token ``name``; ``True`` (and the generation
        bumped) when there was one."""
        with self._errors(f"delete the credential of service token {name!r}"):
            async with self._writing() as connection:
                return await runtime.delete_service_credentials(connection, [name]) > 0

    async def service_credentials(self) -> list[ServiceCredential]:
        """Every stored credential, by name."""
        with self._errors("read the service-token credentials"):
            async with self._single() as connection:
                return await runtime.all_service_credentials(connection)

    # -- runtime state: access log ------------------------------------------------------

    async def write_access(
        self, events: Sequence[AccessEvent], *, writer: str | None = None, dropped: int = 0
    ) -> None:
        """Append ``events`` in one transaction (their ``id`` is ignored). Emails are stored
        lower-cased; overlong text is cut rather than failing the batch. ``writer`` (a
        registered log writer) has its row moved in the same transaction: rows written, its
        drop count, last seen (with no events: a heartbeat)."""
        if not events and writer is None:
            return
        with self._errors("write the access log"):
            async with self._writing() as connection:
                if events:
                    await runtime.write_access(connection, events)
                if writer is not None:
                    await logs.touch_writer(
                        connection, writer, written=len(events), dropped=dropped, now=_now()
                    )

    async def start_log_writer(self, writer: str, host: str, pid: int) -> None:
        """Register an access-log writer (``running``)."""
        with self._errors("register the access-log writer"):
            async with self._writing() as connection:
                await logs.register_writer(connection, writer, host, pid, _now())

    async def end_log_writer(self, writer: str, *, dropped: int) -> None:
        """A clean stop: everything the writer acknowledged was written (or counted)."""
        with self._errors("close the access-log writer"):
            async with self._writing() as connection:
                await logs.touch_writer(
                    connection, writer, written=0, dropped=dropped, now=_now(), ended=True
                )

    async def find_lost_log_writers(self) -> list[logs.LostWriter]:
        """Writers that went silent without a clean stop: marked lost, each recorded as a gap
        in the access log (once, whichever process finds it)."""
        with self._errors("check the access-log writers"):
            async with self._writing() as connection:
                return await logs.find_lost(connection, _now())

    async def log_writer_totals(self) -> logs.WriterTotals:
        with self._errors("read the access-log writers"):
            async with self._single() as connection:
                return await logs.totals(connection)

    async def trim_logs(
        self, *, access_before: datetime | None, admin_before: datetime | None
    ) -> tuple[int, int]:
        """Delete access-log rows older than ``access_before`` and admin-log rows older than
        ``admin_before`` (``None``: keep all), in batches of short transactions so writers
        and readers are never held up for long. The numbers deleted."""
        deleted = [0, 0]
        for i, (table, before) in enumerate(
            ((access_log, access_before), (admin_log, admin_before))
        ):
            if before is None:
                continue
            before = utc(before, "a retention cut-off")
            while True:
                with self._errors("trim the logs"):
                    async with self._writing() as connection:
                        n = await logs.trim_batch(connection, table, before)
                deleted[i] += n
                if n < logs.TRIM_BATCH:
                    break
                await asyncio.sleep(0)  # let requests and other writers in between batches
        if access_before is not None:
            with self._errors("trim the logs"):
                async with self._writing() as connection:
                    await logs.trim_writers(connection, utc(access_before, "a retention cut-off"))
        return deleted[0], deleted[1]

    async def access_log(
        self,
        where: AccessFilter | None = None,
        *,
        app: str | None = None,
        email: str | None = None,
        since: datetime | None = None,
        decision: str | None = None,
        kind: str | None = None,
        limit: int = 100,
    ) -> list[AccessEvent]:
        """The newest ``limit`` access events matching every filter given, newest first
        (``since`` inclusive, ``email`` compared lower-cased); ``where`` (an ``AccessFilter``)
        instead of the keywords for every filter, paging and following."""
        if where is None:
            where = AccessFilter(app=app, email=email, since=since, decision=decision, kind=kind)
        with self._errors("read the access log"):
            async with self._single() as connection:
                return await runtime.read_access(connection, where, limit=limit)


# -- queries (module functions so tests can interfere with one step) ---------------------------


def _wanted(objects: Objects) -> list[Row]:
    try:
        return rows_of(objects)
    except ValueError as exc:
        raise StoreError(f"cannot store the configuration: {exc}") from None


def _merged(
    stored: Sequence[Row], listed: Sequence[Row], origin: str, prune: bool
) -> tuple[list[Row], tuple[Kept, ...]]:
    """The rows an apply makes the store hold (see ``Store.apply``), checked as a whole when
    objects were kept next to the file's."""
    if origin != "file":
        return list(listed), ()
    wanted, kept = merge_file(stored, listed, prune=prune)
    if kept:
        try:
            validate_objects(_document(wanted), source=None)
        except ConfigError as exc:
            raise KeptInvalid(kept, exc.problems) from None
    return wanted, kept


def _document(rows: Sequence[Row]) -> dict[str, Any]:
    """The objects document of ``rows`` (what the loader validates)."""
    data: dict[str, Any] = {field: [] for _, field in KINDS}
    for row in sorted(rows, key=lambda r: r.position):
        if row.kind == "admins":
            data["admins"] = list(row.spec.get("admins", []))
        else:
            data[dict(KINDS)[row.kind]].append(row.spec)
    return data


def _ownership_flips(
    stored: Sequence[Row], wanted: Sequence[Row], origin: str
) -> list[tuple[str, str, bool]]:
    """An apply from a file: the objects whose ``in_file`` it turns (listed now and not
    before, or kept and managed before): ``(kind, name, in_file)``."""
    if origin != "file":
        return []
    before = {(r.kind, r.name): r.in_file for r in stored}
    return [
        (r.kind, r.name, r.in_file)
        for r in wanted
        if (r.kind, r.name) in before and before[(r.kind, r.name)] != r.in_file
    ]


async def _write_ownership(
    connection: AsyncConnection, flips: Sequence[tuple[str, str, bool]]
) -> None:
    t = objects_table
    for kind, name, in_file in flips:
        await connection.execute(
            update(t).where(t.c.kind == kind, t.c.name == name).values(in_file=in_file)
        )


def _objects(rows: Sequence[Row]) -> Objects:
    try:
        return objects_of(rows)
    except (ValidationError, ValueError) as exc:
        first = str(exc).splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise StoreError(
            f"the stored configuration is not valid for this version of zerogate: {detail}"
        ) from None


async def _version(connection: AsyncConnection) -> int:
    result = await connection.execute(select(config_state.c.version).where(config_state.c.id == 1))
    version = result.scalar_one_or_none()
    if version is None:
        raise StoreError("the store has no config_state row; it was not created by zerogate")
    return int(version)


async def _lock_state(connection: AsyncConnection) -> int:
    """The version, with the state row locked until the transaction ends (PostgreSQL; SQLite
    is already locked by ``BEGIN IMMEDIATE``)."""
    query = select(config_state.c.version).where(config_state.c.id == 1)
    if connection.dialect.name != "sqlite":
        query = query.with_for_update()
    result = await connection.execute(query)
    version = result.scalar_one_or_none()
    if version is None:
        raise StoreError("the store has no config_state row; it was not created by zerogate")
    return int(version)


async def _rows(connection: AsyncConnection) -> list[Row]:
    t = objects_table
    result = await connection.execute(
        select(t.c.kind, t.c.name, t.c.position, t.c.spec, t.c.origin, t.c.in_file).order_by(
            t.c.kind, t.c.position, t.c.id
        )
    )
    return [
        Row(kind, name, position, json.loads(spec), origin, bool(in_file))
        for kind, name, position, spec, origin, in_file in result.all()
    ]


async def _write_objects(
    connection: AsyncConnection,
    stored: Sequence[Row],
    wanted: Sequence[Row],
    changes: Sequence[Change],
    version: int,
    now: datetime,
    origin: str,
) -> None:
    """Delete, insert and update the object rows as ``changes`` say; objects that only shifted
    because others came or went get their new position without counting as changed. An added
    or changed object records ``origin``; an added one is file-managed when the file lists it,
    a changed one keeps its flag unless an apply from a file sets it."""
    before = {(row.kind, row.name): row for row in stored}
    after = {(row.kind, row.name): row for row in wanted}
    changed = {(change.kind, change.name) for change in changes}
    table = objects_table
    for change in changes:
        if change.action == "remove":
            await connection.execute(
                delete(table).where(table.c.kind == change.kind, table.c.name == change.name)
            )
    added = [
        {
            "kind": row.kind,
            "name": row.name,
            "position": row.position,
            "spec": row.text,
            "version": version,
            "created_at": now,
            "updated_at": now,
            "origin": origin,
            "in_file": origin == "file" and row.in_file,
        }
        for change in changes
        if change.action == "add"
        for row in (after[(change.kind, change.name)],)
    ]
    if added:
        await connection.execute(insert(table), added)
    for key, row in after.items():
        old = before.get(key)
        if old is None:
            continue
        where = (table.c.kind == row.kind, table.c.name == row.name)
        if key in changed:
            values: dict[str, Any] = {
                "position": row.position,
                "spec": row.text,
                "version": version,
                "updated_at": now,
                "origin": origin,
            }
            if origin == "file":
                values["in_file"] = row.in_file
            await connection.execute(update(table).where(*where).values(**values))
        elif old.position != row.position:
            await connection.execute(update(table).where(*where).values(position=row.position))


async def _write_log(
    connection: AsyncConnection,
    stored: Sequence[Row],
    wanted: Sequence[Row],
    changes: Sequence[Change],
    version: int,
    now: datetime,
    actor: str,
    source: str | None,
) -> None:
    before = {(row.kind, row.name): row for row in stored}
    after = {(row.kind, row.name): row for row in wanted}
    entries = []
    for change in changes:
        old = before.get((change.kind, change.name))
        new = after.get((change.kind, change.name))
        entries.append(
            {
                "at": now,
                "actor": actor,
                "source": source,
                "action": change.action,
                "kind": change.kind,
                "name": change.name,
                "before_json": canonical(old.spec) if old is not None else None,
                "after_json": canonical(new.spec) if new is not None else None,
                "config_version": version,
            }
        )
    await connection.execute(insert(admin_log), entries)


async def _bump_version(connection: AsyncConnection, version: int, now: datetime) -> None:
    await connection.execute(
        update(config_state).where(config_state.c.id == 1).values(version=version, updated_at=now)
    )


async def _drop_removed_credentials(connection: AsyncConnection, changes: Sequence[Change]) -> None:
    """A removed service token's or tunnel's credential goes in the same transaction as the
    object (so a deleted tunnel's connectors are disconnected, and a new tunnel of the same
    name needs a new token)."""
    removed = [c.name for c in changes if c.kind == "service_token" and c.action == "remove"]
    await runtime.delete_service_credentials(connection, removed)
    gone = [c.name for c in changes if c.kind == "tunnel" and c.action == "remove"]
    await tunnels.delete_tunnel_credentials(connection, gone)
    idps = [c.name for c in changes if c.kind == "identity_provider" and c.action == "remove"]
    await idp_secrets.remove(connection, idps)


async def _check_expected(
    connection: AsyncConnection, expect: Mapping[tuple[str, str], int | None]
) -> None:
    t = objects_table
    result = await connection.execute(select(t.c.kind, t.c.name, t.c.version))
    current = {(k, n): int(v) for k, n, v in result.all()}
    for (kind, name), expected in expect.items():
        actual = current.get((kind, name))
        if actual != expected:
            raise StaleWrite(kind, name, expected, actual)
