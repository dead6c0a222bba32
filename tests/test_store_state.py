"""Tests for the store's runtime state (migration 0002): the polled counters, the server secret,
signing keys, one-time PINs, authorization codes, revocations, service-token credentials and
the access log, on SQLite and (marked ``postgres``) on PostgreSQL, with concurrent callers on
separate engines standing in for separate processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from alembic import command
from sqlalchemy import event, func, insert, inspect, select, update
from sqlalchemy.engine import Connection

import test_store as base
from zerogate.model import Objects
from zerogate.store import (
    AccessEvent,
    ServiceCredential,
    StateVersion,
    Store,
    StoreError,
    migrate,
    storage_url,
)
from zerogate.store import runtime as runtime_module
from zerogate.store import store as store_module
from zerogate.store.diff import rows_of
from zerogate.store.engine import create_engine, sqlite_file, write_lock
from zerogate.store.secretbox import prepare_sqlite_file
from zerogate.store.tables import access_log, auth_codes, config_state
from zerogate.store.tables import objects as objects_table

# the fixtures of test_store.py: a fresh database per module, an empty store per test
pg_database = base.pg_database
url = base.url
store = base.store

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def stores(url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores on their own engines, as two server processes would have."""
    one, two = await Store.open(url), await Store.open(url)
    try:
        yield one, two
    finally:
        await one.close()
        await two.close()


def credential(name: str, client_id: str, *, days: int = 365) -> ServiceCredential:
    return ServiceCredential(
        name=name,
        client_id=client_id,
        secret_hash=f"sha256:{client_id}",
        created_at=NOW,
        expires_at=NOW + timedelta(days=days),
    )


KEYSET_ONE = {"format": 1, "active": {"kid": "k1", "algorithm": "ES256"}, "previous": []}
KEYSET_TWO = {
    "format": 1,
    "active": {"kid": "k2", "algorithm": "ES256"},
    "previous": [{"kid": "k1", "algorithm": "ES256", "not_after": 1.5}],
}


# -- the polled state -------------------------------------------------------------------------


async def test_new_store_has_empty_runtime_state(store: Store) -> None:
    assert await store.state() == StateVersion(0, 0, 0, 0)
    assert await store.keyset() == (None, 0)
    assert await store.get_pin("alice@example.com|wiki") is None
    assert await store.revocations() == []
    assert await store.service_credentials() == []
    assert await store.access_log() == []


async def test_state_moves_with_each_counter(store: Store) -> None:
    await store.apply(base.objects(base.FULL), actor="a")
    assert await store.state() == StateVersion(1, 0, 0, 0)
    assert await store.put_keyset(KEYSET_ONE, expected_generation=0)
    assert await store.state() == StateVersion(1, 1, 0, 0)
    assert await store.revoke("alice@example.com", not_before=NOW) == 1
    assert await store.state() == StateVersion(1, 1, 1, 0)
    await store.put_service_credential(credential("ci-bot", "id-1"))
    assert await store.state() == StateVersion(1, 1, 1, 1)
    # what the edge does not poll does not move the counters
    await store.put_pin("k", {"tries_left": 5})
    await store.put_code("h", {"email": "a@example.com"}, expires_at=NOW + timedelta(minutes=1))
    await store.write_access([access(0)])
    await store.server_secret()
    assert await store.state() == StateVersion(1, 1, 1, 1)


async def test_state_is_one_statement(store: Store) -> None:
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    await store.state()  # the pool's first connection may run its own set-up queries
    event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    try:
        await store.state()
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", record)
    assert len(statements) == 1


# -- server secret and signing keys -----------------------------------------------------------


async def test_server_secret_is_created_once(url: str) -> None:
    stores = [await Store.open(url) for _ in range(4)]
    try:
        # first calls race from four "processes"
        secrets = await asyncio.gather(*(s.server_secret() for s in stores))
        assert len(secrets[0]) == 32
        assert len(set(secrets)) == 1
        assert await stores[0].server_secret() == secrets[0]
    finally:
        for s in stores:
            await s.close()
    reopened = await Store.open(url)
    try:
        assert await reopened.server_secret() == secrets[0]
    finally:
        await reopened.close()


async def test_keyset_compare_and_set(stores: tuple[Store, Store]) -> None:
    one, two = stores
    assert await one.put_keyset(KEYSET_ONE, expected_generation=0)
    assert await two.keyset() == (KEYSET_ONE, 1)
    # a writer that read generation 0 is refused and changes nothing
    assert not await two.put_keyset(KEYSET_TWO, expected_generation=0)
    assert await one.keyset() == (KEYSET_ONE, 1)
    assert (await one.state()).keys_generation == 1
    assert await two.put_keyset(KEYSET_TWO, expected_generation=1)
    assert await one.keyset() == (KEYSET_TWO, 2)
    # two rotations from the same read: exactly one wins
    results = await asyncio.gather(
        one.put_keyset(KEYSET_ONE, expected_generation=2),
        two.put_keyset({**KEYSET_ONE, "active": {"kid": "k3"}}, expected_generation=2),
    )
    assert sorted(results) == [False, True]
    winner = KEYSET_ONE if results[0] else {**KEYSET_ONE, "active": {"kid": "k3"}}
    assert await two.keyset() == (winner, 3)


# -- one-time PINs ----------------------------------------------------------------------------


def pin(tries: int = 5, pin_hash: str = "h1", *, used: bool = False) -> dict[str, Any]:
    return {
        "email": "alice@example.com",
        "app": "wiki",
        "pin_hash": pin_hash,
        "created_at": 1.0,
        "expires_at": 601.0,
        "tries_left": tries,
        "used": used,
    }


async def test_pin_put_get_update_delete(store: Store) -> None:
    key = "alice@example.com|wiki"
    await store.put_pin(key, pin())
    found = await store.get_pin(key)
    assert found is not None
    record, revision = found
    assert record == pin()
    assert await store.update_pin(key, pin(4), revision=revision)
    stale = revision
    found = await store.get_pin(key)
    assert found is not None and found[0] == pin(4) and found[1] != stale
    # an update against a revision that was already updated is refused
    assert not await store.update_pin(key, pin(3), revision=stale)
    assert (await store.get_pin(key) or ({}, 0))[0] == pin(4)
    # a new PIN replaces (voids) the old one: updates from a read of the old one fail
    before_replace = found[1]
    await store.put_pin(key, pin(pin_hash="h2"))
    assert not await store.update_pin(key, pin(0, used=True), revision=before_replace)
    replaced = await store.get_pin(key)
    assert replaced is not None and replaced[0] == pin(pin_hash="h2")
    # deleting, then putting again, does not resurrect an old revision
    await store.delete_pin(key)
    assert await store.get_pin(key) is None
    assert not await store.update_pin(key, pin(), revision=replaced[1])
    await store.put_pin(key, pin(pin_hash="h3"))
    assert not await store.update_pin(key, pin(), revision=replaced[1])
    await store.delete_pin(key)
    await store.delete_pin(key)  # deleting nothing is fine
    assert await store.get_pin("other") is None
    with pytest.raises(ValueError, match="NUL"):
        await store.put_pin("alice\x00wiki", pin())


async def test_concurrent_pin_updates_one_wins(stores: tuple[Store, Store]) -> None:
    one, two = stores
    key = "bob@example.com|wiki"
    await one.put_pin(key, pin())
    for round_ in range(3):
        found = await two.get_pin(key)
        assert found is not None
        record, revision = found
        attempts = [
            pin(record["tries_left"] - 1, pin_hash=f"one{round_}"),
            pin(record["tries_left"] - 1, pin_hash=f"two{round_}"),
        ]
        results = await asyncio.gather(
            one.update_pin(key, attempts[0], revision=revision),
            two.update_pin(key, attempts[1], revision=revision),
        )
        assert sorted(results) == [False, True]
        stored = await one.get_pin(key)
        assert stored is not None and stored[0] == attempts[results.index(True)]


# -- authorization codes ----------------------------------------------------------------------


async def _code_count(store: Store) -> int:
    async with store.engine.connect() as connection:
        result = await connection.execute(select(func.count()).select_from(auth_codes))
        return int(result.scalar_one())


async def test_code_is_single_use(stores: tuple[Store, Store]) -> None:
    one, two = stores
    data = {"email": "alice@example.com", "app": "wiki", "nonce": "n"}
    await one.put_code("hash-1", data, expires_at=NOW + timedelta(minutes=1))
    takes = await asyncio.gather(
        *(s.take_code("hash-1", now=NOW) for s in (one, two, one, two, one))
    )
    assert [t for t in takes if t is not None] == [data]
    assert takes.count(None) == 4
    assert await one.take_code("hash-1", now=NOW) is None
    assert await one.take_code("never-stored", now=NOW) is None


async def test_code_expiry_and_cleanup(store: Store) -> None:
    await store.put_code("live", {"n": 1}, expires_at=NOW + timedelta(minutes=1))
    await store.put_code("old-1", {"n": 2}, expires_at=NOW - timedelta(seconds=1))
    await store.put_code("old-2", {"n": 3}, expires_at=NOW - timedelta(days=1))
    await store.put_code("edge", {"n": 4}, expires_at=NOW)
    assert await _code_count(store) == 4
    # expired (expiry is exclusive) is unknown, and taking anything sweeps the expired ones
    assert await store.take_code("edge", now=NOW) is None
    assert await _code_count(store) == 1
    assert await store.take_code("live", now=NOW + timedelta(minutes=2)) is None
    assert await _code_count(store) == 0
    # the same hash can be stored again once the old one is gone
    await store.put_code("old-1", {"n": 5}, expires_at=NOW + timedelta(minutes=1))
    assert await store.take_code("old-1", now=NOW) == {"n": 5}
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.put_code("naive", {}, expires_at=datetime(2025, 1, 1))


# -- revocations ------------------------------------------------------------------------------


async def test_revocations_order_and_since(store: Store) -> None:
    paris = timezone(timedelta(hours=1))
    first = datetime(2025, 3, 1, 13, 0, tzinfo=paris)  # 12:00 UTC
    assert await store.revoke("  Alice@Example.COM ", not_before=first) == 1
    assert await store.revoke("bob@example.com", not_before=NOW + timedelta(hours=1)) == 2
    listed = await store.revocations()
    assert listed == [
        (1, "alice@example.com", NOW),
        (2, "bob@example.com", NOW + timedelta(hours=1)),
    ]
    assert all(nb.utcoffset() == timedelta(0) for _, _, nb in listed)
    assert await store.revocations(since=1) == [(2, "bob@example.com", NOW + timedelta(hours=1))]
    assert await store.revocations(since=2) == []
    # a later revocation of the same address supersedes (and removes) the earlier one
    assert await store.revoke("alice@example.com", not_before=NOW + timedelta(hours=2)) == 3
    assert await store.revocations() == [
        (2, "bob@example.com", NOW + timedelta(hours=1)),
        (3, "alice@example.com", NOW + timedelta(hours=2)),
    ]
    # an earlier bound does not remove the later one; readers keep the latest not_before
    assert await store.revoke("alice@example.com", not_before=NOW) == 4
    assert [r[0] for r in await store.revocations()] == [2, 3, 4]
    assert (await store.state()).revocation_seq == 4
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.revoke("a@example.com", not_before=datetime(2025, 1, 1))


async def test_concurrent_revocations_get_distinct_ordered_ids(
    stores: tuple[Store, Store],
) -> None:
    one, two = stores
    ids = await asyncio.gather(
        *((one if i % 2 else two).revoke(f"user{i}@example.com", not_before=NOW) for i in range(10))
    )
    assert sorted(ids) == list(range(1, 11))
    listed = await one.revocations()
    assert [r[0] for r in listed] == list(range(1, 11))
    by_id = dict(zip(ids, (f"user{i}@example.com" for i in range(10)), strict=True))
    assert all(email == by_id[i] for i, email, _ in listed)
    assert (await two.state()).revocation_seq == 10


# -- service-token credentials ----------------------------------------------------------------


async def test_service_credentials(store: Store) -> None:
    await store.put_service_credential(credential("ci-bot", "id-1"))
    assert await store.service_credentials() == [credential("ci-bot", "id-1")]
    assert (await store.state()).service_tokens_generation == 1
    # put again for the name: replaces (a rotation)
    await store.put_service_credential(credential("ci-bot", "id-2", days=30))
    await store.put_service_credential(credential("deploy", "id-3"))
    assert await store.service_credentials() == [
        credential("ci-bot", "id-2", days=30),
        credential("deploy", "id-3"),
    ]
    assert (await store.state()).service_tokens_generation == 3
    # a client id in use by another token is refused, nothing changes
    with pytest.raises(StoreError, match="service token 'other'"):
        await store.put_service_credential(credential("other", "id-3"))
    assert len(await store.service_credentials()) == 2
    assert (await store.state()).service_tokens_generation == 3
    assert not await store.delete_service_credential("nope")
    assert (await store.state()).service_tokens_generation == 3
    assert await store.delete_service_credential("deploy")
    assert (await store.state()).service_tokens_generation == 4
    assert [c.name for c in await store.service_credentials()] == ["ci-bot"]
    read = (await store.service_credentials())[0]
    assert read.created_at.utcoffset() == timedelta(0)


async def test_apply_removes_the_credential_of_a_removed_token(store: Store) -> None:
    await store.apply(base.objects(base.FULL), actor="a")  # holds service token ci-bot
    await store.put_service_credential(credential("ci-bot", "id-1"))
    await store.put_service_credential(credential("unconfigured", "id-2"))
    # changing the token (its duration) keeps the credential
    await store.apply(base.objects(base.CHANGED), actor="a")
    assert len(await store.service_credentials()) == 2
    assert await store.state() == StateVersion(2, 0, 0, 2)
    # removing it removes the credential in the same transaction
    without = base.objects(base.CHANGED).model_copy(update={"service_tokens": []})
    plan = await store.apply(without, actor="a")
    assert [(c.kind, c.action) for c in plan.changes] == [("service_token", "remove")]
    assert [c.name for c in await store.service_credentials()] == ["unconfigured"]
    assert await store.state() == StateVersion(3, 0, 0, 3)


async def test_failed_apply_keeps_the_credential(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.apply(base.objects(base.FULL), actor="a")
    await store.put_service_credential(credential("ci-bot", "id-1"))
    original = store_module._drop_removed_credentials

    async def fail_after(*args: Any, **kwargs: Any) -> None:
        await original(*args, **kwargs)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store_module, "_drop_removed_credentials", fail_after)
    with pytest.raises(RuntimeError, match="disk on fire"):
        await store.apply(Objects(), actor="a")
    assert [c.name for c in await store.service_credentials()] == ["ci-bot"]
    assert await store.state() == StateVersion(1, 0, 0, 1)


# -- access log -------------------------------------------------------------------------------

APPS = ("wiki", "intranet", "grafana")
EMAILS = ("Alice@Example.com", "bob@example.com", None)


def access(i: int) -> AccessEvent:
    login = i % 10 == 0
    return AccessEvent(
        at=NOW + timedelta(seconds=i),
        kind="login" if login else "request",
        app=APPS[i % 3],
        email=EMAILS[i % 3 if i % 7 else 2],
        idp="otp" if login else None,
        ip=f"203.0.113.{i % 250}",
        country="DE",
        decision="block" if i % 4 == 0 else "allow",
        policy="staff" if i % 4 else None,
        method=None if login else "GET",
        host=f"{APPS[i % 3]}.example.com",
        path=f"/page/{i}",
        detail="pin sent" if login else None,
    )


async def test_access_rows_are_stored_as_sqlalchemy_stores_them(store: Store) -> None:
    """SQLite's rows go to the driver as tuples (``runtime.write_access``): the stored time
    text is the one SQLAlchemy's own insert writes (UTC, no offset), so comparisons in SQL
    and reading back treat both alike; PostgreSQL takes SQLAlchemy's insert."""
    east = timezone(timedelta(hours=5))
    fast = replace(access(1), at=datetime(2026, 3, 1, 17, 30, 0, 123456, tzinfo=east))
    await store.write_access([fast])
    async with store.engine.begin() as connection:
        await connection.execute(insert(access_log).values(**runtime_module._access_row(access(2))))
        raw = (await connection.exec_driver_sql("SELECT at FROM access_log ORDER BY id")).all()
    if store.engine.dialect.name == "sqlite":
        assert [r[0] for r in raw] == [
            "2026-03-01 12:30:00.123456",
            (NOW + timedelta(seconds=2)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
        ]
    [back] = await store.access_log(app=fast.app, email=fast.email)
    assert back == replace(fast, id=back.id, at=fast.at.astimezone(UTC), email="bob@example.com")
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.write_access([replace(access(3), at=datetime(2026, 3, 1))])


async def test_access_log_batch_and_queries(store: Store) -> None:
    events = [access(i) for i in range(1000)]
    started = time.perf_counter()
    await store.write_access(events)
    assert time.perf_counter() - started < 5.0
    await store.write_access([])

    newest = await store.access_log()
    assert len(newest) == 100
    assert [e.at for e in newest] == [NOW + timedelta(seconds=999 - k) for k in range(100)]
    assert newest[0].at.utcoffset() == timedelta(0)
    assert newest[0].id is not None
    assert events[999].email == "Alice@Example.com"
    assert newest[0] == replace(events[999], id=newest[0].id, email="alice@example.com")

    everything = await store.access_log(limit=5000)
    assert len(everything) == 1000
    assert len({e.id for e in everything}) == 1000

    def expect(keep: Any) -> list[datetime]:
        return sorted((e.at for e in events if keep(e)), reverse=True)

    wiki = await store.access_log(app="wiki", limit=5000)
    assert [e.at for e in wiki] == expect(lambda e: e.app == "wiki")
    alice = await store.access_log(email="ALICE@example.COM", limit=5000)
    assert [e.at for e in alice] == expect(lambda e: e.email == "Alice@Example.com")
    assert all(e.email == "alice@example.com" for e in alice)
    since = NOW + timedelta(seconds=900)
    recent_blocks = await store.access_log(since=since, decision="block", limit=5000)
    assert [e.at for e in recent_blocks] == expect(
        lambda e: e.at >= since and e.decision == "block"
    )
    logins = await store.access_log(kind="login", app="grafana", limit=5000)
    assert [e.at for e in logins] == expect(lambda e: e.kind == "login" and e.app == "grafana")
    assert all(e.detail == "pin sent" and e.method is None for e in logins)
    assert await store.access_log(app="nothing") == []
    assert len(await store.access_log(limit=3)) == 3
    assert await store.access_log(limit=0) == []


async def test_access_log_cuts_overlong_text(store: Store) -> None:
    long_path = "/\x00" + "x" * 10_000
    await store.write_access(
        [
            AccessEvent(
                at=NOW,
                kind="request",
                app="wiki",
                email="e" * 5000 + "@example.com",
                idp=None,
                ip="198.51.100.7",
                country=None,
                decision="allow",
                policy="staff",
                path=long_path,
            )
        ]
    )
    (event_,) = await store.access_log()
    assert event_.path is not None and len(event_.path) < len(long_path)
    assert event_.path.startswith("/\ufffdxxx")
    assert event_.email is not None and len(event_.email) < 5000
    assert event_.method is None and event_.country is None


# -- migrations -------------------------------------------------------------------------------


def _alembic(connection: Connection, action: str, target: str) -> None:
    config = migrate.alembic_config()
    config.attributes["connection"] = connection
    getattr(command, action)(config, target)


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def _run(url: str, action: str, target: str) -> set[str]:
    """Migrate the database at ``url`` to ``target``; its tables afterwards."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await write_lock(connection)
            async with connection.begin():
                await connection.run_sync(_alembic, action, target)
                return await connection.run_sync(_tables)
    finally:
        await engine.dispose()


RUNTIME_TABLES = {
    "runtime_state",
    "server_secrets",
    "pins",
    "auth_codes",
    "revocations",
    "service_credentials",
    "access_log",
}


async def test_upgrade_from_0001_with_data_and_downgrade(url: str) -> None:
    file = sqlite_file(url)
    if file is not None:
        prepare_sqlite_file(file)  # the 0600 files the previous zerogate was told to make
    tables = await _run(url, "upgrade", "0001")
    assert not tables & RUNTIME_TABLES
    # configuration stored by the previous zerogate
    wanted = base.objects(base.FULL)
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                insert(objects_table),
                [
                    {
                        "kind": row.kind,
                        "name": row.name,
                        "position": row.position,
                        "spec": row.text,
                        "version": 4,
                        "created_at": NOW,
                        "updated_at": NOW,
                    }
                    for row in rows_of(wanted)
                ],
            )
            await connection.execute(update(config_state).values(version=4))
    finally:
        await engine.dispose()

    store = await Store.open(url)
    try:
        assert await store.load() == (wanted, 4)
        assert await store.state() == StateVersion(4, 0, 0, 0)
        await store.revoke("alice@example.com", not_before=NOW)
        await store.put_service_credential(credential("ci-bot", "id-1"))
        await store.write_access([access(i) for i in range(10)])
    finally:
        await store.close()

    tables = await _run(url, "downgrade", "0001")
    assert not tables & RUNTIME_TABLES
    assert {"config_state", "objects", "admin_log"} <= tables

    store = await Store.open(url)  # upgrades again, with empty runtime tables
    try:
        assert await store.load() == (wanted, 4)
        assert await store.state() == StateVersion(4, 0, 0, 0)
        assert await store.access_log() == []
        async with store.engine.connect() as connection:
            assert await connection.run_sync(migrate.current) == (migrate.head(),)
    finally:
        await store.close()


async def test_in_memory_store_takes_turns() -> None:
    """An in-memory SQLite store is one shared connection; concurrent callers must not trip
    over each other's transactions."""
    store = await Store.open(storage_url("sqlite:///:memory:"))
    try:
        results = await asyncio.gather(
            *(store.state() for _ in range(5)),
            *(store.write_access([access(i)]) for i in range(5)),
            *(store.revoke(f"u{i}@example.com", not_before=NOW) for i in range(5)),
            store.server_secret(),
            store.put_keyset(KEYSET_ONE, expected_generation=0),
        )
        assert sorted(r for r in results[10:15] if isinstance(r, int)) == [1, 2, 3, 4, 5]
        assert len(await store.access_log()) == 5
        assert await store.state() == StateVersion(0, 1, 5, 0)
    finally:
        await store.close()
