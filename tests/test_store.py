"""Tests for zerogate.store: URLs, diffing, migrations, load/plan/apply and the admin log, on
SQLite and (marked ``postgres``) on PostgreSQL, each test module in a fresh database."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pathlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from zerogate.model import Objects, load_text
from zerogate.store import AdminLogEntry, Change, Plan, Store, StoreError, migrate, storage_url
from zerogate.store import diff as diff_module
from zerogate.store import store as store_module
from zerogate.store.tables import metadata

T = TypeVar("T")

PG_SERVER = os.environ.get("ZEROGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def run_blocking(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a private loop in another thread (safe from fixtures
    and from inside a running loop)."""

    async def main() -> T:
        return await make()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


# -- configurations ---------------------------------------------------------------------------

FULL = """
admins: [ops@example.com, "group:Admins"]
identity_providers:
  - {name: okta, type: oidc, issuer: https://example.okta.com, client_id: abc,
     client_secret_env: OKTA_SECRET, groups_claim: groups}
  - {name: otp, type: onetimepin}
groups:
  - name: Third-Party Partners
    include: [{email: [alice@partner.test, bob@vendor.test]}]
  - name: Office Networks
    include: [{ip: [203.0.113.0/24, "2001:db8::/48"]}]
  - name: Admins
    include: [{email: [ops@example.com]}]
applications:
  - name: wiki
    domain: wiki.example.com
    origin: http://10.0.0.5:8080
    identity_providers: [okta, otp]
    session_duration: 24h
    policies:
      - name: staff and partners
        decision: allow
        include: [{email_domain: [example.com]}, {group: [Third-Party Partners]}]
      - name: office only
        decision: allow
        include: [{everyone: true}]
        require: [{group: [Office Networks]}]
      - {name: health check, decision: bypass, include: [{ip: [10.0.0.0/8]}]}
  - name: intranet
    domain: intranet.example.com
    tunnel: office
    cors: {mode: edge, allowed_origins: ["https://app.example.com"]}
    policies:
      - {name: staff, decision: allow, include: [{email_domain: [example.com]}]}
tunnels:
  - {name: office, routes: [intranet.example.com]}
service_tokens:
  - {name: ci-bot, duration: 8760h}
"""

# FULL with: admins changed, group "Contractors" added, the wiki's policy changed,
# tunnel "office" and application "intranet" removed, service token duration changed
CHANGED = """
admins: [ops@example.com]
identity_providers:
  - {name: okta, type: oidc, issuer: https://example.okta.com, client_id: abc,
     client_secret_env: OKTA_SECRET, groups_claim: groups}
  - {name: otp, type: onetimepin}
groups:
  - name: Third-Party Partners
    include: [{email: [alice@partner.test, bob@vendor.test]}]
  - name: Office Networks
    include: [{ip: [203.0.113.0/24, "2001:db8::/48"]}]
  - name: Admins
    include: [{email: [ops@example.com]}]
  - name: Contractors
    include: [{email_domain: [contractor.test]}]
applications:
  - name: wiki
    domain: wiki.example.com
    origin: http://10.0.0.5:8080
    identity_providers: [okta, otp]
    session_duration: 24h
    policies:
      - name: staff and partners
        decision: allow
        include: [{email_domain: [example.com]}, {group: [Third-Party Partners, Contractors]}]
      - name: office only
        decision: allow
        include: [{everyone: true}]
        require: [{group: [Office Networks]}]
      - {name: health check, decision: bypass, include: [{ip: [10.0.0.0/8]}]}
service_tokens:
  - {name: ci-bot, duration: 720h}
"""


def objects(yaml_text: str) -> Objects:
    return load_text(yaml_text).config.objects()


def groups(*names: str) -> Objects:
    body = "".join(f"  - {{name: {n}, include: [{{email: [{n}@example.com]}}]}}\n" for n in names)
    return objects("groups:\n" + body if names else "")


# -- fixtures -------------------------------------------------------------------------------


def _unreachable(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required in CI: {message}", pytrace=False)
    pytest.skip(f"PostgreSQL not reachable: {message}")


async def _admin(database_url: str, *statements: str) -> None:
    """Run statements outside a transaction (CREATE/DROP DATABASE) on a PostgreSQL database."""
    engine = create_async_engine(
        storage_url(database_url), isolation_level="AUTOCOMMIT", connect_args={"timeout": 3}
    )
    try:
        async with engine.connect() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this module, dropped afterwards; its plain URL."""
    name = f"zg_test_{secrets.token_hex(6)}"
    try:
        run_blocking(lambda: _admin(PG_SERVER, f'CREATE DATABASE "{name}"'))
    except (OSError, SQLAlchemyError) as exc:
        _unreachable(f"{PG_SERVER}: {str(exc).splitlines()[0]}")
    yield PG_SERVER.rsplit("/", 1)[0] + "/" + name
    run_blocking(lambda: _admin(PG_SERVER, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _reset_postgres(url: str) -> None:
    """Empty the module's database between tests (a fresh ``public`` schema)."""
    run_blocking(lambda: _admin(url, "DROP SCHEMA public CASCADE", "CREATE SCHEMA public"))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> str:
    """The async URL of an empty store (nothing created yet)."""
    if request.param == "sqlite":
        return storage_url("sqlite:///store/zerogate.db", base_dir=tmp_path)
    database: str = request.getfixturevalue("pg_database")
    _reset_postgres(database)
    return storage_url(database)


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    opened = await Store.open(url)
    try:
        yield opened
    finally:
        await opened.close()


# -- storage_url ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("sqlite:////abs/path/z.db", "sqlite+aiosqlite:////abs/path/z.db"),
        ("sqlite:///:memory:", "sqlite+aiosqlite:///:memory:"),
        ("sqlite://", "sqlite+aiosqlite:///:memory:"),
        (
            "postgresql://u:p@db.example.com:5432/zg",
            "postgresql+asyncpg://u:p@db.example.com:5432/zg",
        ),
        ("postgres://u@db/zg", "postgresql+asyncpg://u@db/zg"),
        ("postgresql+asyncpg://u@db/zg", "postgresql+asyncpg://u@db/zg"),
        ("postgresql://u@db/zg?sslmode=require", "postgresql+asyncpg://u@db/zg?ssl=require"),
    ],
)
def test_storage_url(setting: str, expected: str) -> None:
    assert storage_url(setting) == expected


def test_storage_url_relative_sqlite(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert storage_url("sqlite:///data/z.db", base_dir=tmp_path) == (
        f"sqlite+aiosqlite:///{tmp_path}/data/z.db"
    )
    monkeypatch.chdir(tmp_path)
    assert storage_url("sqlite:///z.db") == f"sqlite+aiosqlite:///{tmp_path}/z.db"


def test_storage_url_default_is_the_data_dir(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data" / "zerogate"
    monkeypatch.setenv("ZEROGATE_DATA_DIR", str(data))
    assert storage_url(None) == f"sqlite+aiosqlite:///{data}/zerogate.db"
    assert data.is_dir()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("", "empty"),
        ("zerogate.db", "not a URL"),
        ("mysql://u:secret@db/zg", "'mysql' databases are not supported"),
        ("sqlite:relative.db", "not a SQLite URL"),
        ("sqlite://host/z.db", "has a host part"),
        ("postgresql+psycopg2://u@db/zg", r"drop the '\+psycopg2' part"),
        ("postgresql://", "names no server or database"),
    ],
)
def test_storage_url_rejects(setting: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        storage_url(setting)
    assert "secret" not in str(info.value)


# -- diffing (pure) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ("abc", "abc", set()),
        ("abc", "bac", {"b"}),  # of two equally short answers, the later-listed object moved
        ("abcd", "dabc", {"d"}),
        ("abc", "xaybzc", set()),  # insertions move nothing
        ("abcd", "bd", set()),  # nor do removals
        ("abc", "cba", {"b", "c"}),
        ("", "abc", set()),
    ],
)
def test_moved(before: str, after: str, expected: set[str]) -> None:
    assert diff_module.moved(list(before), list(after)) == expected


def test_changed_fields_compare_canonical_json() -> None:
    before = {"name": "a", "x": {"b": 1, "a": 2}, "gone": 1}
    after = {"x": {"a": 2, "b": 1}, "name": "a", "new": [1]}
    assert diff_module.changed_fields(before, after) == ("gone", "new")


def test_plan_empty_property() -> None:
    assert Plan((), 3, 3).empty
    assert not Plan((Change("group", "g", "add"),), 3, 4).empty


# -- the store --------------------------------------------------------------------------------


async def test_new_store_is_empty(store: Store) -> None:
    assert await store.version() == 0
    assert await store.load() == (Objects(), 0)
    assert await store.admin_log() == []
    assert (await store.plan(Objects())).empty


async def test_apply_then_load_round_trips(store: Store) -> None:
    wanted = objects(FULL)
    plan = await store.apply(wanted, actor="ops@example.com", source="cli")
    assert (plan.version_before, plan.version_after) == (0, 1)
    assert {(c.kind, c.name, c.action) for c in plan.changes} == {
        ("admins", "admins", "add"),
        ("identity_provider", "okta", "add"),
        ("identity_provider", "otp", "add"),
        ("group", "Third-Party Partners", "add"),
        ("group", "Office Networks", "add"),
        ("group", "Admins", "add"),
        ("application", "wiki", "add"),
        ("application", "intranet", "add"),
        ("tunnel", "office", "add"),
        ("service_token", "ci-bot", "add"),
    }
    loaded, version = await store.load()
    assert loaded == wanted
    assert version == 1 == await store.version()
    log = await store.admin_log()
    assert len(log) == len(plan.changes)
    assert all(e.actor == "ops@example.com" and e.source == "cli" for e in log)
    assert all(e.action == "add" and e.before is None and e.version == 1 for e in log)
    wiki = next(e for e in log if e.name == "wiki")
    assert wiki.after is not None and wiki.after["domain"] == "wiki.example.com"
    assert [p["name"] for p in wiki.after["policies"]] == [
        "staff and partners",
        "office only",
        "health check",
    ]
    assert abs(log[0].at - datetime.now(UTC)) < timedelta(minutes=1)
    assert log[0].at.tzinfo is not None and log[0].at.utcoffset() == timedelta(0)


async def test_reapply_is_an_empty_plan(store: Store) -> None:
    await store.apply(objects(FULL), actor="a")
    log = await store.admin_log()
    # the same objects written differently (scalar for list, other key order) are equal
    rewritten = FULL.replace("{email: [ops@example.com]}", "{email: ops@example.com}")
    rewritten = rewritten.replace(
        "{name: ci-bot, duration: 8760h}", "{duration: 8760h, name: ci-bot}"
    )
    assert rewritten.count("ci-bot") == 1 and "{email: ops@example.com}" in rewritten
    again = objects(rewritten)
    plan = await store.plan(again)
    assert plan == Plan((), 1, 1)
    assert await store.apply(again, actor="b") == Plan((), 1, 1)
    assert await store.version() == 1
    assert await store.admin_log() == log


async def test_add_change_remove(store: Store) -> None:
    first = await store.apply(objects(FULL), actor="alice", source="10.0.0.1")
    assert first.version_after == 1
    wanted = objects(CHANGED)
    expected = (
        Change("admins", "admins", "change", ("admins",)),
        Change("group", "Contractors", "add"),
        Change("application", "wiki", "change", ("policies",)),
        Change("application", "intranet", "remove"),
        Change("tunnel", "office", "remove"),
        Change("service_token", "ci-bot", "change", ("duration",)),
    )
    planned = await store.plan(wanted)
    assert planned == Plan(expected, 1, 1)
    assert await store.version() == 1  # planning wrote nothing
    plan = await store.apply(wanted, actor="bob", source="10.0.0.2")
    assert plan == Plan(expected, 1, 2)
    assert await store.version() == 2
    assert (await store.load()) == (wanted, 2)

    log = await store.admin_log()
    newest = log[: len(expected)]
    assert [(e.kind, e.name, e.action) for e in reversed(newest)] == [
        (c.kind, c.name, c.action) for c in expected
    ]
    assert all(e.actor == "bob" and e.source == "10.0.0.2" and e.version == 2 for e in newest)
    by_name = {e.name: e for e in newest}
    assert by_name["admins"].before == {"admins": ["ops@example.com", "group:Admins"]}
    assert by_name["admins"].after == {"admins": ["ops@example.com"]}
    assert by_name["Contractors"].before is None
    assert by_name["Contractors"].after == {
        "name": "Contractors",
        "include": [{"email_domain": ["contractor.test"]}],
        "require": [],
        "exclude": [],
    }
    wiki = by_name["wiki"]
    assert wiki.before is not None and wiki.after is not None
    assert wiki.before["policies"][0]["include"][1] == {"group": ["Third-Party Partners"]}
    assert wiki.after["policies"][0]["include"][1] == {
        "group": ["Third-Party Partners", "Contractors"]
    }
    assert by_name["office"].before == {"name": "office", "routes": ["intranet.example.com"]}
    assert by_name["office"].after is None
    assert by_name["ci-bot"].before == {"name": "ci-bot", "duration": "8760h"}
    assert by_name["ci-bot"].after == {"name": "ci-bot", "duration": "720h"}
    assert [e.id for e in log] == sorted((e.id for e in log), reverse=True)
    assert len(log) == 10 + len(expected)
    assert len(await store.admin_log(limit=3)) == 3


async def test_empty_admins_list_is_no_row(store: Store) -> None:
    await store.apply(objects("admins: [ops@example.com]"), actor="a")
    plan = await store.apply(Objects(), actor="a")
    assert plan.changes == (Change("admins", "admins", "remove"),)
    assert await store.load() == (Objects(), 2)


async def test_order_is_kept_and_moves_are_changes(store: Store) -> None:
    await store.apply(groups("a", "b", "c"), actor="x")
    # inserting and removing objects moves nothing else
    plan = await store.apply(groups("z", "a", "c", "d"), actor="x")
    assert plan.changes == (
        Change("group", "z", "add"),
        Change("group", "d", "add"),
        Change("group", "b", "remove"),
    )
    assert (await store.load())[0] == groups("z", "a", "c", "d")
    # a reorder is a change of the moved object's position
    plan = await store.apply(groups("z", "c", "a", "d"), actor="x")
    assert plan.changes == (Change("group", "c", "change", ("position",)),)
    assert await store.load() == (groups("z", "c", "a", "d"), 3)
    assert (await store.plan(groups("z", "c", "a", "d"))).empty


async def test_duplicate_names_are_refused(store: Store) -> None:
    twice = Objects.model_validate({"tunnels": [{"name": "t"}, {"name": "t"}]})
    with pytest.raises(StoreError, match="two tunnels are named 't'"):
        await store.apply(twice, actor="a")
    assert await store.version() == 0


@pytest.mark.parametrize("failing_step", ["_write_log", "_bump_version"])
async def test_apply_is_all_or_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch, failing_step: str
) -> None:
    await store.apply(objects(FULL), actor="a")
    before = (await store.load(), await store.admin_log())
    original = getattr(store_module, failing_step)
    calls: list[str] = []

    async def fail_after_writing(*args: Any, **kwargs: Any) -> None:
        await original(*args, **kwargs)  # the rows are written in the transaction...
        calls.append(failing_step)
        raise RuntimeError("disk on fire")  # ...and then the apply fails

    monkeypatch.setattr(store_module, failing_step, fail_after_writing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        await store.apply(objects(CHANGED), actor="b")
    assert calls == [failing_step]
    assert (await store.load(), await store.admin_log()) == before
    assert await store.version() == 1

    monkeypatch.undo()
    plan = await store.apply(objects(CHANGED), actor="b")
    assert (plan.version_before, plan.version_after) == (1, 2)


async def test_concurrent_applies_serialise(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # two stores on their own engines, as two processes would be
    one, two = await Store.open(url), await Store.open(url)
    try:
        original = store_module._write_objects

        async def slow_write(*args: Any, **kwargs: Any) -> None:
            await original(*args, **kwargs)
            await asyncio.sleep(0.2)  # hold the transaction open while the other apply starts

        monkeypatch.setattr(store_module, "_write_objects", slow_write)
        plans = await asyncio.gather(
            one.apply(groups("a", "b"), actor="one"), two.apply(groups("c"), actor="two")
        )
        assert sorted((p.version_before, p.version_after) for p in plans) == [(0, 1), (1, 2)]
        first, second = sorted(plans, key=lambda p: p.version_after)
        first_objects, second_objects = (
            (groups("a", "b"), groups("c"))
            if plans[0] is first
            else (groups("c"), groups("a", "b"))
        )
        # the second saw what the first wrote
        assert {c.action for c in second.changes} == {"add", "remove"}
        assert len(second.changes) == 3
        assert await one.load() == (second_objects, 2)
        assert first_objects != second_objects

        log = await two.admin_log()
        assert [e.version for e in log] == [2, 2, 2] + [1] * len(first.changes)
        assert {e.actor for e in log if e.version == 2} == {"one" if plans[0] is second else "two"}
        removed = [e for e in log if e.action == "remove"]
        assert all(e.version == 2 and e.before is not None for e in removed)
    finally:
        await one.close()
        await two.close()


async def test_reopen_keeps_everything(url: str) -> None:
    store = await Store.open(url)
    await store.apply(objects(FULL), actor="a")
    await store.apply(objects(CHANGED), actor="b", source="api")
    saved: tuple[tuple[Objects, int], list[AdminLogEntry]] = (
        await store.load(),
        await store.admin_log(),
    )
    await store.close()
    store = await Store.open(url)
    try:
        assert (await store.load(), await store.admin_log()) == saved
        assert (await store.plan(objects(CHANGED))).empty
    finally:
        await store.close()


def _schema(connection: Connection) -> tuple[set[str], tuple[str, ...], list[Any]]:
    tables = set(inspect(connection).get_table_names())
    differences = compare_metadata(MigrationContext.configure(connection), metadata)
    return tables, migrate.current(connection), differences


async def test_migrations_create_the_schema_and_are_idempotent(url: str) -> None:
    for _ in range(2):
        store = await Store.open(url)
        try:
            async with store.engine.connect() as connection:
                tables, revision, differences = await connection.run_sync(_schema)
        finally:
            await store.close()
        assert {"alembic_version", "config_state", "objects", "admin_log"} <= tables
        assert revision == (migrate.head(),)
        assert differences == []  # tables.py and the migrations agree


async def test_newer_schema_is_refused(url: str) -> None:
    store = await Store.open(url)
    try:
        async with store.engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        await store.close()
    with pytest.raises(StoreError, match=r"revision 9999.*newer zerogate"):
        await Store.open(url)


async def test_open_errors_are_store_errors(tmp_path: pathlib.Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="cannot create the folder"):
        await Store.open(storage_url("sqlite:///file/sub/z.db", base_dir=tmp_path))
    with pytest.raises(StoreError, match=r"cannot open the store at postgresql://zg:\*\*\*@"):
        await Store.open(storage_url("postgresql://zg:secret@127.0.0.1:1/zg"))
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    (tmp_path / "junk.db").chmod(0o600)  # a store others can read is refused first
    with pytest.raises(StoreError, match="cannot open the store"):
        await Store.open(storage_url("sqlite:///junk.db", base_dir=tmp_path))


async def test_in_memory_store() -> None:
    store = await Store.open(storage_url("sqlite:///:memory:"))
    try:
        await store.apply(objects(FULL), actor="a")
        assert await store.load() == (objects(FULL), 1)
    finally:
        await store.close()


def test_alembic_command_line_environment(tmp_path: pathlib.Path) -> None:
    """env.py also runs without a caller's connection (the ``alembic`` command, offline SQL)."""
    url = storage_url("sqlite:///cli.db", base_dir=tmp_path)
    command.upgrade(migrate.alembic_config(url), "head")

    async def version() -> int:
        store = await Store.open(url)
        try:
            return await store.version()
        finally:
            await store.close()

    assert run_blocking(version) == 0

    config = migrate.alembic_config(storage_url("postgresql://u@db/zg"))
    config.output_buffer = io.StringIO()
    command.upgrade(config, "head", sql=True)
    sql = config.output_buffer.getvalue()
    assert "CREATE TABLE objects" in sql
    assert "CONSTRAINT uq_objects_kind_name UNIQUE (kind, name)" in sql


# -- leases and certificates (migration 0008, automatic HTTPS) --------------------------------


async def test_a_lease_has_one_holder_until_it_expires_or_is_released(store: Store) -> None:
    assert await store.try_lease("renewer", "node-a", 60)
    assert not await store.try_lease("renewer", "node-b", 60)
    assert await store.try_lease("renewer", "node-a", 60)  # the holder extends it
    assert await store.lease_holder("renewer") == "node-a"
    assert not await store.release_lease("renewer", "node-b")  # only the holder ends it
    assert await store.lease_holder("renewer") == "node-a"
    assert await store.release_lease("renewer", "node-a")
    assert await store.lease_holder("renewer") is None
    assert await store.try_lease("renewer", "node-b", 0)  # expires at once
    assert await store.lease_holder("renewer") is None
    assert await store.try_lease("renewer", "node-c", 60)  # an expired lease is free
    assert await store.lease_holder("renewer") == "node-c"
    # leases are independent of each other
    assert await store.try_lease("other", "node-a", 60)


async def test_of_many_racing_for_a_lease_exactly_one_gets_it(url: str) -> None:
    stores = [await Store.open(url) for _ in range(4)]
    try:
        won = await asyncio.gather(
            *(s.try_lease("race", f"node-{i}", 60) for i, s in enumerate(stores))
        )
    finally:
        for s in stores:
            await s.close()
    assert sorted(won) == [False, False, False, True]


async def test_certificate_private_keys_are_sealed_at_rest(store: Store) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from sqlalchemy import select

    from zerogate.store.certificates import StoredCertificate
    from zerogate.store.tables import certificates

    key_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    now = datetime.now(UTC)
    cert = StoredCertificate(
        "app.example.com", "CERT PEM", key_pem, now, now + timedelta(days=90), "CN=x", now
    )
    await store.put_certificate(cert)
    async with store.engine.connect() as connection:
        row = (await connection.execute(select(certificates))).one()
    assert row.key_sealed.startswith("zgenc1:")
    assert "PRIVATE KEY" not in row.key_sealed
    assert key_pem.split("\n")[1] not in row.key_sealed
    (back,) = await store.certificates()
    assert back.key_pem == key_pem
    assert back.host == "app.example.com"
    assert list(await store.certificate_versions()) == ["app.example.com"]


# -- portal sessions (issue #16) -------------------------------------------------------------


async def test_sessions_are_listed_ended_and_revoked_by_id(store: Store) -> None:
    from zerogate.store import Session

    now = datetime.now(UTC).replace(microsecond=0)

    def session(sid: str, email: str, seen: datetime) -> Session:
        return Session(
            id=sid,
            email=email,
            idp="otp",
            user_agent="curl/8",
            ip="192.0.2.1",
            created_at=now - timedelta(hours=1),
            seen_at=seen,
            expires_at=now + timedelta(hours=1),
        )

    await store.add_session(session("s1", "Ann@Example.com", now - timedelta(minutes=5)))
    await store.add_session(session("s2", "ann+work@example.com", now - timedelta(minutes=1)))
    await store.add_session(session("s3", "annie@example.com", now))
    listed = await store.sessions(email="ann@example.com")
    assert [s.id for s in listed] == ["s2", "s1"]  # subaddress too, most recently seen first
    assert listed[1].email == "ann@example.com"
    assert [s.id for s in await store.sessions()] == ["s3", "s2", "s1"]

    # last seen moves forward only, with the address
    await store.touch_sessions(
        [("s1", now, "198.51.100.4"), ("s3", now - timedelta(hours=1), None)]
    )
    got = await store.session("s1")
    assert got is not None and got.seen_at == now and got.ip == "198.51.100.4"
    got = await store.session("s3")
    assert got is not None and got.seen_at == now

    before = (await store.state()).revocation_seq
    ended = await store.end_session("s1")
    assert ended is not None and ended.ended_at is not None
    after = (await store.state()).revocation_seq
    assert after == before + 1  # every server's watcher sees it
    assert await store.ended_sessions(since=before) == [(after, "s1")]
    assert await store.revocations(since=before) == []  # not a logout of the address
    assert await store.end_session("s1") is None
    assert await store.end_session("nope") is None
    assert [s.id for s in await store.sessions(email="ann@example.com")] == ["s2"]

    # "log out everywhere" ends the address's (and subaddresses') sessions in the list too
    await store.revoke("ann@example.com", not_before=datetime.now(UTC))
    assert await store.sessions(email="ann@example.com") == []
    assert [s.id for s in await store.sessions()] == ["s3"]
    assert [sid for _, sid in await store.ended_sessions()] == ["s1"]  # still refused


def test_migration_0009_names_the_owner_of_existing_objects(tmp_path: pathlib.Path) -> None:
    """Objects stored before ownership was recorded: the file's when their last logged change
    came from the command line (or is not logged), the API's otherwise — so the first apply
    after the upgrade keeps what the panel or the API made."""
    import sqlite3

    url = storage_url("sqlite:///old.db", base_dir=tmp_path)
    command.upgrade(migrate.alembic_config(url), "0005")
    db = sqlite3.connect(tmp_path / "old.db")
    stamp = "2026-01-01 00:00:00"
    for i, name in enumerate(("from-file", "from-panel", "unlogged")):
        db.execute(
            "INSERT INTO objects (kind, name, position, spec, version, created_at, updated_at)"
            " VALUES ('group', ?, ?, ?, 1, ?, ?)",
            (name, i, json.dumps({"name": name, "include": [{"everyone": True}]}), stamp, stamp),
        )
    for source, name in (("cli", "from-file"), ("203.0.113.9", "from-panel")):
        db.execute(
            "INSERT INTO admin_log (at, actor, source, action, kind, name, config_version)"
            " VALUES (?, 'someone', ?, 'add', 'group', ?, 1)",
            (stamp, source, name),
        )
    db.commit()
    db.close()
    (tmp_path / "old.db").chmod(0o600)

    async def owners() -> dict[tuple[str, str], tuple[str, bool]]:
        store = await Store.open(url)
        try:
            return await store.ownership()
        finally:
            await store.close()

    assert run_blocking(owners) == {
        ("group", "from-file"): ("file", True),
        ("group", "from-panel"): ("api", False),
        ("group", "unlogged"): ("file", True),
    }
