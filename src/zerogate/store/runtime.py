"""Runtime state the edge and the portal share through the store: the counters servers poll,
the server secret, the signing key set, one-time PINs, authorization codes, revocations,
service-token credentials and the access log.

These are module functions over a connection that is already in a transaction; ``Store`` opens
the transactions (``BEGIN IMMEDIATE`` for writers on SQLite, READ COMMITTED on PostgreSQL) and
turns driver errors into ``StoreError``. Every multi-step change is made safe for several
processes by a single conditional ``UPDATE``/``DELETE`` (compare-and-set) or by the row lock an
``UPDATE`` of the ``runtime_state`` row takes until the transaction ends. Nothing here knows the
identity package's types: records and documents are plain JSON-able dicts.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, delete, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from zerogate.store.errors import StoreError
from zerogate.store.secretbox import SecretBox
from zerogate.store.tables import (
    access_log,
    auth_codes,
    config_state,
    pins,
    revocations,
    runtime_state,
    server_secrets,
    service_credentials,
)

#: names of the rows in ``server_secrets``
SERVER_SECRET = "server_secret"  # noqa: S105 - a row name, not a secret
SERVER_SECRET_BYTES = 32
KEYSET = "keyset"

#: expired authorization codes removed by one ``take_code`` (the rest go on later calls)
EXPIRED_CODES_PER_TAKE = 100

#: access-log text longer than this is cut (an indexed value must stay far below PostgreSQL's
#: index row limit, and one odd request must not make a whole batch fail)
ACCESS_INDEXED_CHARS = 320
ACCESS_TEXT_CHARS = 2048


@dataclass(frozen=True)
class StateVersion:
    """What running servers poll every second; any change means "reload that part"."""

    config_version: int
    keys_generation: int
    #: the newest revocation id, 0 when there is none
    revocation_seq: int
    service_tokens_generation: int
    tunnels_generation: int = 0


@dataclass(frozen=True)
class ServiceCredential:
    """The secret half of a service token (the configured object holds name and duration)."""

    name: str
    client_id: str
    secret_hash: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True, init=False)
class AccessEvent:
    """One access-log row: a login step (``kind="login"``) or an allowed or blocked request
    (``kind="request"``). ``id`` is set on events read back from the store."""

    at: datetime
    kind: str
    app: str | None
    email: str | None
    idp: str | None
    ip: str | None
    country: str | None
    decision: str
    policy: str | None
    method: str | None = None
    host: str | None = None
    path: str | None = None
    detail: str | None = None
    id: int | None = None
    #: the status the client got for a forwarded request (the origin's, or zerogate's 502 /
    #: 504 when the origin failed); None when no response went out or for other rows
    status: int | None = None
    #: from the decision to the end of the response, in milliseconds
    duration_ms: float | None = None
    #: how many requests this row stands for (aggregated "sent to login" rows: more than 1)
    count: int = 1

    def __init__(
        self,
        at: datetime,
        kind: str,
        app: str | None,
        email: str | None,
        idp: str | None,
        ip: str | None,
        country: str | None,
        decision: str,
        policy: str | None,
        method: str | None = None,
        host: str | None = None,
        path: str | None = None,
        detail: str | None = None,
        id: int | None = None,
        status: int | None = None,
        duration_ms: float | None = None,
        count: int = 1,
    ) -> None:
        # one is made per allowed request: the fields go in at once (the generated frozen
        # __init__ sets each through object.__setattr__, four times slower); still frozen
        object.__getattribute__(self, "__dict__").update(
            at=at,
            kind=kind,
            app=app,
            email=email,
            idp=idp,
            ip=ip,
            country=country,
            decision=decision,
            policy=policy,
            method=method,
            host=host,
            path=path,
            detail=detail,
            id=id,
            status=status,
            duration_ms=duration_ms,
            count=count,
        )


#: every decision an access-log row can carry (``authenticate``: sent to the login; ``sent`` /
#: ``failed``: a PIN mail's outcome, on ``mail`` rows; ``issued`` / ``failed``: an ACME
#: order's outcome, on ``tls`` rows)
ACCESS_DECISIONS = (
    "allow",
    "block",
    "authenticate",
    "pin sent",
    "logout",
    "gap",
    "sent",
    "failed",
    "issued",
)
#: every kind of access-log row (``tls``: automatic HTTPS ordered a certificate, ``host``
#: names it)
ACCESS_KINDS = ("request", "login", "gap", "mail", "tls")


@dataclass(frozen=True)
class AccessFilter:
    """Which access-log rows to read; every field given must match.

    ``status`` is an inclusive range (``parse_status`` turns ``502`` or ``5xx`` into one);
    ``before`` is a page cursor (``cursor_of`` of the last row of the previous page: the rows
    after it in newest-first order); ``after_id`` reads rows with a larger id, oldest first
    (``zerogate logs --follow``)."""

    app: str | None = None
    email: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    decision: str | None = None
    kind: str | None = None
    ip: str | None = None
    status: tuple[int, int] | None = None
    before: tuple[datetime, int] | None = None
    after_id: int | None = None


#: the fields of an access-log row as JSON (``access_event_dict``), in this order
ACCESS_FIELDS = (
    "id",
    "at",
    "kind",
    "decision",
    "status",
    "duration_ms",
    "count",
    "app",
    "email",
    "idp",
    "ip",
    "country",
    "policy",
    "method",
    "host",
    "path",
    "detail",
)


def access_event_dict(event: AccessEvent) -> dict[str, Any]:
    """One row as JSON-able values (``at`` as ISO 8601 UTC with milliseconds): the shape of
    ``zerogate logs --json``, the API's export and the log stream."""
    at = event.at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    row = {name: getattr(event, name) for name in ACCESS_FIELDS}
    row["at"] = at
    if event.duration_ms is not None:
        row["duration_ms"] = round(event.duration_ms, 3)
    return row


def access_filter(
    *,
    now: datetime,
    app: str | None = None,
    email: str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    decision: str | None = None,
    kind: str | None = None,
    ip: str | None = None,
    status: str | None = None,
    cursor: str | None = None,
) -> AccessFilter:
    """An ``AccessFilter`` from what a person typed (empty text: no filter), or
    ``ValueError("FIELD: why")`` naming the allowed values: shared by ``zerogate logs``, the
    admin API and the panel, so each says the same about the same mistake."""
    from zerogate.model.values import parse_since

    def text(value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    for name, given in (("app", app), ("email", email), ("ip", ip)):
        if given is not None and ("\x00" in given or len(given) > ACCESS_TEXT_CHARS):
            raise ValueError(f"{name}: not a value any row can hold")

    def moment(name: str, value: str | datetime | None) -> datetime | None:
        if isinstance(value, datetime):
            return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        given = text(value)
        if given is None:
            return None
        try:
            return parse_since(given, now)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None

    decision, kind, status_text, cursor = text(decision), text(kind), text(status), text(cursor)
    if decision is not None and decision not in ACCESS_DECISIONS:
        raise ValueError(f"decision: {decision!r} is not one of {', '.join(ACCESS_DECISIONS)}")
    if kind is not None and kind not in ACCESS_KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(ACCESS_KINDS)}")
    try:
        status_range = parse_status(status_text) if status_text is not None else None
    except ValueError as exc:
        raise ValueError(f"status: {exc}") from None
    try:
        before = parse_cursor(cursor) if cursor is not None else None
    except ValueError as exc:
        raise ValueError(f"cursor: {exc}") from None
    return AccessFilter(
        app=text(app),
        email=text(email),
        since=moment("since", since),
        until=moment("until", until),
        decision=decision,
        kind=kind,
        ip=text(ip),
        status=status_range,
        before=before,
    )


def parse_status(text: str) -> tuple[int, int]:
    """``502`` → (502, 502); ``5xx`` → (500, 599); else ``ValueError`` saying what is allowed."""
    value = text.strip().lower()
    if len(value) == 3 and value[0] in "12345" and value[1:] == "xx":
        low = int(value[0]) * 100
        return low, low + 99
    if len(value) == 3 and value.isdigit() and 100 <= int(value) <= 599:
        return int(value), int(value)
    raise ValueError(f"{text!r} is not a status: give a code (502) or a class (1xx to 5xx)")


def cursor_of(event: AccessEvent) -> str:
    """The page cursor after ``event`` (an event read back from the store)."""
    if event.id is None:
        raise ValueError("only a stored event has a cursor")
    at = event.at.astimezone(UTC)
    micros = int(at.timestamp()) * 1_000_000 + at.microsecond
    return f"{micros}.{event.id}"


def parse_cursor(text: str) -> tuple[datetime, int]:
    """The (time, id) a ``cursor_of`` value names, or ``ValueError``."""
    micros, dot, ident = text.partition(".")
    if not dot or not micros.isdigit() or not ident.isdigit() or len(text) > 40:
        raise ValueError("not a cursor this server gave out")
    seconds, rest = divmod(int(micros), 1_000_000)
    at = datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest)
    return at, int(ident)


def utc(value: datetime, what: str) -> datetime:
    """``value`` in UTC; a naive datetime is a programming error (``ValueError``)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime")
    return value.astimezone(UTC)


def normalise_email(email: str) -> str:
    return email.strip().lower()


def key_text(value: str, what: str) -> str:
    """``value`` as a lookup key; PostgreSQL text cannot hold NUL, so neither may a key on
    SQLite (``ValueError``)."""
    if "\x00" in value:
        raise ValueError(f"{what} must not contain a NUL character")
    return value


def _dump(value: dict[str, Any], what: str) -> str:
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a dict, not {type(value).__name__}")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _load(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise StoreError("a stored runtime record is not a JSON object; the store is damaged")
    return value


def _revision() -> int:
    """A fresh opaque PIN revision (positive, fits a signed 64-bit column)."""
    return secrets.randbits(62) + 1


def _insert(connection: AsyncConnection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An ``INSERT`` that can take ``ON CONFLICT`` on this connection's database."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


async def _upsert(
    connection: AsyncConnection, table: Table, key: str, values: dict[str, Any]
) -> None:
    """Insert ``values``, or overwrite the other columns of the row with the same ``key``."""
    statement = _insert(connection, table).values(**values)
    rest = {name: statement.excluded[name] for name in values if name != key}
    await connection.execute(statement.on_conflict_do_update(index_elements=[key], set_=rest))


async def _bump(connection: AsyncConnection, counter: str) -> None:
    """Add one to a ``runtime_state`` counter (locks the row until the transaction ends)."""
    column = runtime_state.c[counter]
    await connection.execute(
        update(runtime_state).where(runtime_state.c.id == 1).values({counter: column + 1})
    )


# -- the polled counters -----------------------------------------------------------------------


async def state(connection: AsyncConnection) -> StateVersion:
    """All counters in one statement (one row of each single-row table)."""
    query = (
        select(
            config_state.c.version,
            runtime_state.c.keys_generation,
            runtime_state.c.revocation_seq,
            runtime_state.c.service_tokens_generation,
            runtime_state.c.tunnels_generation,
        )
        .select_from(config_state.join(runtime_state, runtime_state.c.id == config_state.c.id))
        .where(config_state.c.id == 1)
    )
    row = (await connection.execute(query)).one_or_none()
    if row is None:
        raise StoreError("the store has no state rows; it was not created by zerogate")
    return StateVersion(int(row[0]), int(row[1]), int(row[2]), int(row[3]), int(row[4]))


# -- secrets -------------------------------------------------------------------------------------


async def seal_secrets(connection: AsyncConnection, box: SecretBox, now: datetime) -> None:
    """Check that ``box`` opens every sealed secret row (``StoreError`` for a missing or wrong
    key) and, when it has a key, seal the rows still stored in plain text."""
    rows = (await connection.execute(select(server_secrets.c.name, server_secrets.c.value))).all()
    for name, stored in rows:
        plain = box.open(str(name), str(stored))
        if box.encrypting and not box.is_sealed(str(stored)):
            await connection.execute(
                update(server_secrets)
                .where(server_secrets.c.name == name)
                .values(value=box.seal(str(name), plain), updated_at=now)
            )


async def server_secret(connection: AsyncConnection, now: datetime, box: SecretBox) -> bytes:
    """The shared server secret, created by whichever process asks first."""
    candidate = secrets.token_bytes(SERVER_SECRET_BYTES).hex()
    text = await named_secret(connection, SERVER_SECRET, candidate, now, box)
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise StoreError("the stored server secret is not hex; the store is damaged") from None


async def named_secret(
    connection: AsyncConnection, name: str, candidate: str, now: datetime, box: SecretBox
) -> str:
    """The stored value of ``name``, ``candidate`` if there was none."""
    await connection.execute(
        _insert(connection, server_secrets)
        .values(name=name, value=box.seal(name, candidate), updated_at=now)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    result = await connection.execute(
        select(server_secrets.c.value).where(server_secrets.c.name == name)
    )
    return box.open(name, str(result.scalar_one()))


#: the ``server_secrets`` rows binding a secret variable to an issuer (``secret_env_issuer``)
SECRET_ENV_ISSUER = "secret-env-issuer:"  # noqa: S105 - a row name prefix


async def secret_env_issuer(
    connection: AsyncConnection,
    variable: str,
    issuer: str,
    now: datetime,
    box: SecretBox,
    *,
    replace: bool,
) -> str:
    """The issuer environment variable ``variable`` is bound to: ``issuer`` when it was bound
    to none (or with ``replace``), else the one it was bound to first."""
    name = SECRET_ENV_ISSUER + variable
    value = box.seal(name, issuer)
    statement = _insert(connection, server_secrets).values(name=name, value=value, updated_at=now)
    if replace:
        upsert = statement.on_conflict_do_update(
            index_elements=["name"], set_={"value": value, "updated_at": now}
        )
    else:
        upsert = statement.on_conflict_do_nothing(index_elements=["name"])
    await connection.execute(upsert)
    result = await connection.execute(
        select(server_secrets.c.value).where(server_secrets.c.name == name)
    )
    return box.open(name, str(result.scalar_one()))


async def keyset(connection: AsyncConnection, box: SecretBox) -> tuple[dict[str, Any] | None, int]:
    document = (
        select(server_secrets.c.value).where(server_secrets.c.name == KEYSET).scalar_subquery()
    )
    query = select(runtime_state.c.keys_generation, document).where(runtime_state.c.id == 1)
    row = (await connection.execute(query)).one()
    generation, text = int(row[0]), row[1]
    return (None if text is None else _load(box.open(KEYSET, str(text)))), generation


async def put_keyset(
    connection: AsyncConnection,
    doc: dict[str, Any],
    expected_generation: int,
    now: datetime,
    box: SecretBox,
) -> bool:
    """Compare-and-set on the generation; the winner's row lock covers the document write."""
    text = box.seal(KEYSET, _dump(doc, "the key set"))
    bumped = await connection.execute(
        update(runtime_state)
        .where(
            runtime_state.c.id == 1,
            runtime_state.c.keys_generation == expected_generation,
        )
        .values(keys_generation=runtime_state.c.keys_generation + 1)
    )
    if bumped.rowcount != 1:
        return False
    await _upsert(
        connection, server_secrets, "name", {"name": KEYSET, "value": text, "updated_at": now}
    )
    return True


# -- one-time PINs -----------------------------------------------------------------------------


async def put_pin(
    connection: AsyncConnection, key: str, record: dict[str, Any], now: datetime
) -> None:
    values = {
        "pin_key": key,
        "record": _dump(record, "a PIN record"),
        "revision": _revision(),
        "updated_at": now,
    }
    await _upsert(connection, pins, "pin_key", values)


async def get_pin(connection: AsyncConnection, key: str) -> tuple[dict[str, Any], int] | None:
    result = await connection.execute(
        select(pins.c.record, pins.c.revision).where(pins.c.pin_key == key)
    )
    row = result.one_or_none()
    return None if row is None else (_load(row[0]), int(row[1]))


async def update_pin(
    connection: AsyncConnection, key: str, record: dict[str, Any], revision: int, now: datetime
) -> bool:
    result = await connection.execute(
        update(pins)
        .where(pins.c.pin_key == key, pins.c.revision == revision)
        .values(record=_dump(record, "a PIN record"), revision=_revision(), updated_at=now)
    )
    return result.rowcount == 1


async def delete_pin(connection: AsyncConnection, key: str) -> None:
    await connection.execute(delete(pins).where(pins.c.pin_key == key))


# -- authorization codes -----------------------------------------------------------------------


async def put_code(
    connection: AsyncConnection, code_hash: str, data: dict[str, Any], expires_at: datetime
) -> None:
    await connection.execute(
        insert(auth_codes).values(
            code_hash=code_hash, data=_dump(data, "an authorization code"), expires_at=expires_at
        )
    )


async def take_code(
    connection: AsyncConnection, code_hash: str, now: datetime
) -> dict[str, Any] | None:
    """Delete the code and return its data when it had not expired; also delete up to
    ``EXPIRED_CODES_PER_TAKE`` expired codes (on PostgreSQL skipping rows another taker holds,
    so two takers never wait for each other)."""
    found = await connection.execute(
        select(auth_codes.c.data, auth_codes.c.expires_at).where(
            auth_codes.c.code_hash == code_hash
        )
    )
    row = found.one_or_none()
    data: dict[str, Any] | None = None
    if row is not None:
        # the DELETE is the claim: of several takers only one deletes the row
        taken = await connection.execute(
            delete(auth_codes).where(auth_codes.c.code_hash == code_hash)
        )
        if taken.rowcount == 1 and row[1] > now:
            data = _load(row[0])
    expired = (
        select(auth_codes.c.code_hash)
        .where(auth_codes.c.expires_at <= now)
        .order_by(auth_codes.c.expires_at)
        .limit(EXPIRED_CODES_PER_TAKE)
    )
    if connection.dialect.name == "postgresql":
        expired = expired.with_for_update(skip_locked=True)
    await connection.execute(delete(auth_codes).where(auth_codes.c.code_hash.in_(expired)))
    return data


# -- revocations -------------------------------------------------------------------------------


async def revoke(
    connection: AsyncConnection, email: str, not_before: datetime, now: datetime
) -> int:
    """Take the next revocation id from the counter (its row lock makes revokers commit in id
    order, so a watcher asking for ``id > since`` never misses one) and record the revocation,
    dropping this address's earlier revocations that the new one covers."""
    await _bump(connection, "revocation_seq")
    result = await connection.execute(
        select(runtime_state.c.revocation_seq).where(runtime_state.c.id == 1)
    )
    revocation_id = int(result.scalar_one())
    address = normalise_email(email)
    await connection.execute(
        delete(revocations).where(
            revocations.c.email == address,
            revocations.c.not_before <= not_before,
            revocations.c.session_id.is_(None),
        )
    )
    await connection.execute(
        insert(revocations).values(
            id=revocation_id, email=address, not_before=not_before, created_at=now
        )
    )
    return revocation_id


async def revocations_since(
    connection: AsyncConnection, since: int
) -> list[tuple[int, str, datetime]]:
    result = await connection.execute(
        select(revocations.c.id, revocations.c.email, revocations.c.not_before)
        .where(revocations.c.id > since, revocations.c.session_id.is_(None))
        .order_by(revocations.c.id)
    )
    return [(int(i), email, not_before) for i, email, not_before in result.all()]


# -- service-token credentials -----------------------------------------------------------------


async def put_service_credential(connection: AsyncConnection, cred: ServiceCredential) -> None:
    values = {
        "name": cred.name,
        "client_id": cred.client_id,
        "secret_hash": cred.secret_hash,
        "created_at": cred.created_at,
        "expires_at": cred.expires_at,
    }
    await _upsert(connection, service_credentials, "name", values)
    await _bump(connection, "service_tokens_generation")


async def delete_service_credentials(connection: AsyncConnection, names: Iterable[str]) -> int:
    """Delete the credentials of these service tokens; bumps the generation when any went."""
    wanted = sorted(set(names))
    if not wanted:
        return 0
    result = await connection.execute(
        delete(service_credentials).where(service_credentials.c.name.in_(wanted))
    )
    deleted = int(result.rowcount)
    if deleted:
        await _bump(connection, "service_tokens_generation")
    return deleted


async def all_service_credentials(connection: AsyncConnection) -> list[ServiceCredential]:
    table = service_credentials
    result = await connection.execute(
        select(
            table.c.name,
            table.c.client_id,
            table.c.secret_hash,
            table.c.created_at,
            table.c.expires_at,
        ).order_by(table.c.name)
    )
    return [ServiceCredential(*row) for row in result.all()]


# -- access log --------------------------------------------------------------------------------


def _cut(value: str | None, limit: int) -> str | None:
    """At most ``limit`` characters, NUL (which PostgreSQL text cannot hold) as U+FFFD."""
    if value is None:
        return None
    return value[:limit].replace("\x00", "\ufffd")


def _access_values(event: AccessEvent) -> tuple[Any, ...]:
    """An event's row, in the order of :data:`_ACCESS_COLUMNS`."""
    email = event.email
    text = ACCESS_TEXT_CHARS
    return (
        utc(event.at, "an access event's time"),
        _cut(event.kind, 16),
        _cut(event.app, ACCESS_INDEXED_CHARS),
        _cut(normalise_email(email) if email is not None else None, ACCESS_INDEXED_CHARS),
        _cut(event.idp, text),
        _cut(event.ip, text),
        _cut(event.country, text),
        _cut(event.decision, 32),
        _cut(event.policy, text),
        _cut(event.method, text),
        _cut(event.host, text),
        _cut(event.path, text),
        _cut(event.detail, text),
        event.status,
        event.duration_ms,
        max(1, event.count),
    )


_ACCESS_COLUMNS = (
    "at",
    "kind",
    "app",
    "email",
    "idp",
    "ip",
    "country",
    "decision",
    "policy",
    "method",
    "host",
    "path",
    "detail",
    "status",
    "duration_ms",
    "count",
)
#: the same insert for SQLite's driver, bound by position
_SQLITE_ACCESS_INSERT = (
    "INSERT INTO access_log (at, kind, app, email, idp, ip, country, decision, policy, method, "
    "host, path, detail, status, duration_ms, count) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _access_row(event: AccessEvent) -> dict[str, Any]:
    return dict(zip(_ACCESS_COLUMNS, _access_values(event), strict=True))


async def write_access(connection: AsyncConnection, events: Sequence[AccessEvent]) -> None:
    """Append ``events`` in the caller's transaction. On SQLite the rows go to the driver's
    ``executemany`` as tuples (one per allowed request: SQLAlchemy's per-row parameter work
    was most of a request's access-log cost), the time converted by the column type's own
    bind processor, so the stored text is the one SQLAlchemy writes and reads back."""
    dialect = connection.dialect
    if dialect.name == "sqlite":
        # the dialect's own type (SQLite's DATETIME text), not the generic one (which would
        # leave a datetime for the driver's adapter: another text)
        at = access_log.c.at.type.dialect_impl(dialect).bind_processor(dialect)
        rows = [_access_values(event) for event in events]
        if at is not None:
            rows = [(at(row[0]), *row[1:]) for row in rows]
        raw = await connection.get_raw_connection()
        driver: Any = raw.driver_connection
        await driver.executemany(_SQLITE_ACCESS_INSERT, rows)
        return
    await connection.execute(insert(access_log), [_access_row(event) for event in events])


async def read_access(
    connection: AsyncConnection, where: AccessFilter, *, limit: int
) -> list[AccessEvent]:
    """Newest first (or, with ``after_id``, oldest first) at most ``limit`` matching rows."""
    table = access_log
    conditions: list[ColumnElement[bool]] = []
    if where.app is not None:
        conditions.append(table.c.app == where.app)
    if where.email is not None:
        conditions.append(table.c.email == normalise_email(where.email))
    if where.since is not None:
        conditions.append(table.c.at >= utc(where.since, "since"))
    if where.until is not None:
        conditions.append(table.c.at < utc(where.until, "until"))
    if where.decision is not None:
        conditions.append(table.c.decision == where.decision)
    if where.kind is not None:
        conditions.append(table.c.kind == where.kind)
    if where.ip is not None:
        conditions.append(table.c.ip == where.ip)
    if where.status is not None:
        conditions.append(table.c.status.between(*where.status))
    if where.before is not None:
        at, ident = where.before
        at = utc(at, "a cursor's time")
        conditions.append(or_(table.c.at < at, and_(table.c.at == at, table.c.id < ident)))
    query = select(table).where(*conditions)
    if where.after_id is not None:
        query = query.where(table.c.id > where.after_id).order_by(table.c.id)
    else:
        query = query.order_by(table.c.at.desc(), table.c.id.desc())
    result = await connection.execute(query.limit(max(0, limit)))
    return [
        AccessEvent(
            at=record["at"],
            kind=record["kind"],
            app=record["app"],
            email=record["email"],
            idp=record["idp"],
            ip=record["ip"],
            country=record["country"],
            decision=record["decision"],
            policy=record["policy"],
            method=record["method"],
            host=record["host"],
            path=record["path"],
            detail=record["detail"],
            id=record["id"],
            status=record["status"],
            duration_ms=record["duration_ms"],
            count=record["count"],
        )
        for record in result.mappings().all()
    ]
