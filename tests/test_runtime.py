"""The runtime's watcher: a configuration swap never stalls the requests being served."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from zerogate.model.loader import validate_objects
from zerogate.model.objects import Settings
from zerogate.policy import Context
from zerogate.runtime import Runtime
from zerogate.store import Store, storage_url


def _big_config(apps: int) -> dict[str, object]:
    return {
        "groups": [{"name": "staff", "include": [{"email_domain": ["example.test"]}]}],
        "applications": [
            {
                "name": f"app{i}",
                "domain": f"app{i}.example.test",
                "origin": "http://127.0.0.1:9",
                "policies": [
                    {"name": "staff", "decision": "allow", "include": [{"group": ["staff"]}]},
                    {
                        "name": "office",
                        "decision": "bypass",
                        "include": [{"ip": [f"10.{i // 250}.{i % 250}.0/24"]}],
                    },
                ],
            }
            for i in range(apps)
        ],
    }


async def test_swapping_a_large_configuration_keeps_the_loop_responsive(tmp_path: Path) -> None:
    """Loading and compiling 2,000 applications happens off the event loop: while the
    watcher swaps them in, a task that wakes every millisecond is never held up for long
    (when compiled on the loop, one gap was the whole swap)."""
    store = await Store.open(storage_url(f"sqlite:///{tmp_path / 'zg.db'}"))
    try:
        # as in a server: the configuration was applied by another process (so its copy is
        # not on this heap), and this process had loaded one before
        await store.apply(validate_objects(_big_config(2000)), actor="test")
        runtime = await Runtime.load(store, Settings(), tmp_path)
        changed = _big_config(2000)
        changed["groups"] = [{"name": "staff", "include": [{"email_domain": ["example.org"]}]}]
        await store.apply(validate_objects(changed), actor="test")
        del changed
        gc.collect()

        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        started = time.perf_counter()
        assert await runtime.refresh()
        took = time.perf_counter() - started
        done.set()
        await ticking

        assert runtime.snapshot.route("app1999.example.test", "/") is not None
        # the loop never stood still for long (compiled on it, with the collector walking
        # the whole heap again and again, one pause was 0.8 s or more)
        assert max(gaps) < 0.3, (max(gaps), took)
    finally:
        await store.close()


def test_a_replaced_snapshot_is_freed_without_the_cycle_collector() -> None:
    """A compiled snapshot holds no reference cycles, so the one a swap replaces is freed
    at once by reference counting (the runtime keeps the collector off long-lived state)."""
    import weakref

    from zerogate.policy import compile_snapshot

    objects = validate_objects(_big_config(20))
    gc.collect()
    gc.disable()
    try:
        snapshot = compile_snapshot(objects, 1)
        app = snapshot.route("app3.example.test", "/")
        assert app is not None
        verdict = snapshot.decide(app, None, Context(ip="10.0.3.7"))
        assert verdict.decision == "bypass"
        assert verdict.application is app
        alive = weakref.ref(app)
        del snapshot, verdict, app
        assert alive() is None
        assert gc.collect() == 0
    finally:
        gc.enable()


async def test_logging_a_mailbox_out_ends_its_subaddresses_sessions(tmp_path: Path) -> None:
    store = await Store.open(storage_url(f"sqlite:///{tmp_path / 'zg.db'}"))
    try:
        runtime = await Runtime.load(store, Settings(), tmp_path)
        issued = time.time() - 10
        await runtime.revoke("mallory@example.com")
        assert runtime.is_revoked("mallory@example.com", issued)
        assert runtime.is_revoked("mallory+x@example.com", issued)
        assert runtime.is_revoked("MALLORY+y@example.com", issued)
        assert not runtime.is_revoked("mallory2@example.com", issued)
        await runtime.revoke("ann+x@example.com")  # a tag names only itself
        assert runtime.is_revoked("ann+x@example.com", issued)
        assert not runtime.is_revoked("ann@example.com", issued)
    finally:
        await store.close()


PG_SERVER = os.environ.get("ZEROGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    import asyncpg  # type: ignore[import-untyped]

    name = f"zg_notify_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_SERVER)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield storage_url(PG_SERVER.rsplit("/", 1)[0] + "/" + name)
    finally:
        admin = await asyncpg.connect(PG_SERVER)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.mark.postgres
async def test_postgresql_announces_changes_to_every_server_at_once(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change made through one server's store reaches another server's runtime through
    LISTEN/NOTIFY, long before its poll would (the poll is 30 s here)."""
    from zerogate.runtime import state

    monkeypatch.setattr(state, "POLL_SECONDS", 30.0)
    writer, watcher_store = await Store.open(pg_url), await Store.open(pg_url)
    try:
        runtime = await Runtime.load(watcher_store, Settings(), tmp_path)
        runtime.start()
        await asyncio.sleep(0.2)  # let the watcher open its listening connection
        before = runtime.version.config_version
        started = time.perf_counter()
        await writer.apply(validate_objects(_big_config(3)), actor="test")
        async with asyncio.timeout(5):
            while runtime.version.config_version == before:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        took = time.perf_counter() - started
        assert runtime.snapshot.route("app2.example.test", "/") is not None
        assert took < 2.0, took
        # a revocation (another watched counter) arrives the same way
        seq = runtime.version.revocation_seq
        await writer.revoke("x@example.test", not_before=datetime.now(UTC))
        async with asyncio.timeout(5):
            while runtime.version.revocation_seq == seq:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert runtime.is_revoked("x@example.test", time.time() - 60)
        await runtime.stop()
    finally:
        await writer.close()
        await watcher_store.close()


async def test_sessions_last_seen_marks_and_ending_by_id(tmp_path: Path) -> None:
    """Last seen: marked in memory at most once a minute per session, written in a batch by
    ``flush_seen`` (the watcher's job), never on the request. An ended session is refused by
    this runtime at once and by one loaded afterwards (a restart, another process)."""
    from datetime import timedelta

    from zerogate.identity import Claims
    from zerogate.store import Session

    store = await Store.open(storage_url(f"sqlite:///{tmp_path / 'zg.db'}"))
    try:
        runtime = await Runtime.load(store, Settings(), tmp_path)
        t0 = datetime.now(UTC).replace(microsecond=0)
        await store.add_session(
            Session(
                id="s1",
                email="ann@example.com",
                idp="otp",
                user_agent=None,
                ip="192.0.2.1",
                created_at=t0 - timedelta(hours=1),
                seen_at=t0 - timedelta(hours=1),
                expires_at=t0 + timedelta(hours=1),
            )
        )
        claims = Claims(
            iss="https://auth.example.com",
            aud=("x",),
            sub="ann@example.com",
            email="ann@example.com",
            iat=t0.timestamp() - 3600,
            nbf=t0.timestamp() - 3600,
            exp=t0.timestamp() + 3600,
            type="portal",
            idp="otp",
            jti="j",
            groups=None,
            amr=None,
            kid="k",
            extra={"sid": "s1"},
        )
        now = t0.timestamp()
        runtime.seen(claims, "192.0.2.9", now)
        runtime.seen(claims, "192.0.2.10", now + 30)  # within the minute: nothing new
        assert await runtime.flush_seen(now + 30) == 1
        assert await runtime.flush_seen(now + 31) == 0
        got = await store.session("s1")
        assert got is not None and got.seen_at == t0 and got.ip == "192.0.2.9"
        runtime.seen(claims, "192.0.2.10", now + 61)
        assert await runtime.flush_seen(now + 61) == 1
        got = await store.session("s1")
        assert got is not None and got.ip == "192.0.2.10"

        assert not runtime.rejects(claims)
        assert await runtime.end_session("s1") is not None
        assert runtime.rejects(claims)
        later = await Runtime.load(store, Settings(), tmp_path)
        assert later.rejects(claims)
        other = dataclasses.replace(claims, extra={"sid": "s2"})
        assert not later.rejects(other)
    finally:
        await store.close()
