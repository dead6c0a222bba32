"""The rate limits every server process shares through the store (``rate_windows``, migration
0007; ``runtime/limits.py``), on SQLite and (marked ``postgres``) on PostgreSQL, with separate
engines standing in for separate processes (the cross-process test with real servers is
``test_cluster_state.py``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select, text

import test_store as base
from zerogate.identity.otp import Limit, hit_all, slide
from zerogate.runtime.limits import SharedLimits, rate_key
from zerogate.store import Store, StoreError
from zerogate.store.tables import rate_windows

pg_database = base.pg_database
url = base.url

T0 = 1_750_000_000.0


@pytest.fixture
async def edges(url: str) -> AsyncIterator[list[SharedLimits]]:
    """Three processes' limits: three stores on their own engines, one database."""
    stores = [await Store.open(url) for _ in range(3)]
    try:
        yield [SharedLimits(s) for s in stores]
    finally:
        for s in stores:
            await s.close()


async def test_pin_sends_are_counted_once_across_processes(edges: list[SharedLimits]) -> None:
    decisions = [
        await edges[i % 3].pin_send("Alice@Example.com", f"192.0.2.{i}", T0 + i) for i in range(5)
    ]
    assert all(d.allowed for d in decisions)
    sixth = await edges[2].pin_send("alice@example.com", "198.51.100.7", T0 + 10)
    assert not sixth.allowed
    assert sixth.retry_after == pytest.approx(900 - 10)
    # the window slides for every process alike
    assert (await edges[1].pin_send("alice@example.com", "198.51.100.7", T0 + 900)).allowed
    assert not (await edges[0].pin_send("alice@example.com", "198.51.100.7", T0 + 900.5)).allowed


async def test_concurrent_sends_from_three_processes_get_exactly_the_limit(
    edges: list[SharedLimits],
) -> None:
    """Thirty requests for one address at once over three processes: five PINs, not fifteen
    (the check and the record are one step under the row lock)."""
    decisions = await asyncio.gather(
        *(edges[i % 3].pin_send("bob@example.com", f"192.0.2.{i}", T0) for i in range(30))
    )
    assert sum(d.allowed for d in decisions) == 5


async def test_a_flood_refused_per_ip_does_not_use_up_other_addresses(
    edges: list[SharedLimits],
) -> None:
    for i in range(20):
        assert (await edges[i % 3].pin_send(f"user{i}@x.io", "203.0.113.9", T0)).allowed
    assert not (await edges[0].pin_send("victim@x.io", "203.0.113.9", T0)).allowed
    assert not (await edges[1].pin_send("victim@x.io", "203.0.113.9", T0)).allowed
    for i in range(5):  # the refused attempts counted for nobody
        assert (await edges[i % 3].pin_send("victim@x.io", f"192.0.2.{i}", T0)).allowed
    # IPv6 clients count per /64, on every process
    six = [await edges[i % 3].pin_send(f"v{i}@x.io", f"2001:db8::{i + 1:x}", T0) for i in range(21)]
    assert [d.allowed for d in six] == [True] * 20 + [False]


async def test_oidc_starts_are_shared_and_separate_from_pins(edges: list[SharedLimits]) -> None:
    for i in range(60):
        assert (await edges[i % 3].oidc_start("198.51.100.1", T0)).allowed
    assert not (await edges[2].oidc_start("198.51.100.1", T0 + 1)).allowed
    assert (await edges[0].pin_send("carol@x.io", "198.51.100.1", T0 + 1)).allowed
    assert (await edges[0].oidc_start("198.51.100.1", T0 + 301)).allowed


async def test_the_store_keeps_hashes_and_forgets_expired_windows(
    edges: list[SharedLimits],
) -> None:
    store = edges[0].store
    await edges[0].pin_send("dave@example.com", "192.0.2.1", T0)
    async with store.engine.connect() as connection:
        keys = set((await connection.execute(select(rate_windows.c.key))).scalars())
    assert keys == {rate_key("pin-address", "dave@example.com"), rate_key("pin-ip", "192.0.2.1")}
    assert not any("dave" in k for k in keys)
    # long after the window, any hit removes the stale rows (a few per hit)
    await edges[1].oidc_start("192.0.2.99", T0 + 10_000)
    async with store.engine.connect() as connection:
        left = (await connection.execute(select(func.count()).select_from(rate_windows))).scalar()
    assert left == 1


async def test_a_limit_that_cannot_be_counted_refuses(edges: list[SharedLimits]) -> None:
    """Fail closed: when the store cannot count (here its table is gone), the hit is an
    error (the portal's error page, no PIN), never a skipped limit."""
    store = edges[0].store
    async with store.engine.begin() as connection:
        await connection.execute(text("DROP TABLE rate_windows"))
    with pytest.raises(StoreError):
        await edges[0].pin_send("erin@example.com", "192.0.2.1", time.time())


def test_slide_and_hit_all_are_the_in_memory_rule() -> None:
    limit = Limit(3, 60)
    decision, kept = slide([T0 - 61, T0 - 30, T0 - 20, T0 - 10], limit, T0)
    assert not decision.allowed and decision.retry_after == pytest.approx(30)
    assert kept == [T0 - 30, T0 - 20, T0 - 10]
    decision, windows = hit_all([[T0 - 10], []], [limit, Limit(1, 60)], T0)
    assert decision.allowed and windows == [[T0 - 10, T0], [T0]]
    decision, windows = hit_all([[], [T0 - 5]], [limit, Limit(1, 60)], T0)
    assert not decision.allowed and windows == [[], [T0 - 5]]
    # another process's clock a little ahead still counts; out-of-order hits are sorted
    decision, kept = slide([T0 + 1, T0 - 2], limit, T0)
    assert decision.allowed and kept == [T0 - 2, T0 + 1]


async def test_subaddresses_count_against_their_mailbox(edges: list[SharedLimits]) -> None:
    """ann+1@…, ann+2@… reach ann's mailbox: five sends over any tags, then every tag (and
    the bare address) is refused on every process."""
    for n in range(5):
        decision = await edges[n % 3].pin_send(f"ann+{n}@example.com", f"192.0.2.{n}", T0 + n)
        assert decision.allowed, n
    for email in ("ann+5@example.com", "ANN@example.com", "ann+@example.com"):
        assert not (await edges[1].pin_send(email, "198.51.100.9", T0 + 10)).allowed, email
    # a listed subaddress's own mailbox differs only by the tag: another person is not limited
    assert (await edges[2].pin_send("anna@example.com", "198.51.100.9", T0 + 10)).allowed
