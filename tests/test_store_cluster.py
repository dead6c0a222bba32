"""The store's cluster rows (migration 0006): node heartbeats, tunnel presence, which row wins
for a connector connection seen on two nodes, and expiry of a dead node — on SQLite and
(marked ``postgres``) on PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import test_store as base
from zerogate.store import CLUSTER_CHANNEL, ClusterNode, Presence, Store

pg_database = base.pg_database
url = base.url
store = base.store


def node(node_id: str, started: datetime) -> ClusterNode:
    return ClusterNode(node_id, "host", 1, f"127.0.0.1:{len(node_id)}", started, started)


def row(
    node_id: str, conn: str, tunnel: str, connector: str, index: int, since: datetime
) -> Presence:
    return Presence(node_id, conn, tunnel, connector, index, since, since)


async def test_presence_newest_row_wins_and_dead_nodes_stop_counting(store: Store) -> None:
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    a, b, c = node("node-a", t0), node("node-b", t0), node("node-c", t0)
    # connector zgc-1 connection 0 first on c, then (later) on a: a's row wins
    await store.cluster_heartbeat(c, [row("node-c", "c1", "web", "zgc-1", 0, t0)])
    await store.cluster_heartbeat(
        a, [row("node-a", "a1", "web", "zgc-1", 0, t0 + timedelta(seconds=5))]
    )
    await store.cluster_heartbeat(b, [row("node-b", "b1", "web", "zgc-2", 0, t0)])
    view = await store.cluster_view(live_for=timedelta(seconds=6))
    assert {n.node_id for n in view.nodes} == {"node-a", "node-b", "node-c"}
    assert sorted((p.node_id, p.connector_id) for p in view.presence) == [
        ("node-a", "zgc-1"),
        ("node-b", "zgc-2"),
    ]
    assert {n.node_id for n in view.holders("web")} == {"node-a", "node-b"}
    assert view.holders("other") == []

    # a heartbeat without rows keeps them; with rows replaces them
    await store.cluster_heartbeat(b)
    view = await store.cluster_view(live_for=timedelta(seconds=6))
    assert any(p.node_id == "node-b" for p in view.presence)
    await store.cluster_heartbeat(b, [])
    view = await store.cluster_view(live_for=timedelta(seconds=6))
    assert [n.node_id for n in view.holders("web")] == ["node-a"]

    # a node whose heartbeat is old holds nothing, and expiry deletes it and its rows
    await store.cluster_heartbeat(b, [row("node-b", "b2", "web", "zgc-2", 1, t0)])
    await asyncio.sleep(0.3)
    view = await store.cluster_view(live_for=timedelta(seconds=0.2))
    assert view.nodes == () and view.presence == ()
    assert await store.cluster_expire(older_than=timedelta(seconds=0.2)) == 3
    view = await store.cluster_view(live_for=timedelta(days=1))
    assert view.nodes == () and view.presence == ()


async def test_a_node_that_leaves_removes_its_rows(store: Store) -> None:
    t0 = datetime.now(UTC)
    a = node("node-a", t0)
    await store.cluster_heartbeat(a, [row("node-a", "a1", "web", "zgc-1", 0, t0)])
    await store.cluster_leave("node-a")
    view = await store.cluster_view(live_for=timedelta(days=1))
    assert view.nodes == () and view.presence == ()


async def test_postgresql_announces_new_nodes_and_presence_changes_not_heartbeats(
    store: Store,
) -> None:
    """``NOTIFY zerogate_cluster`` (migration 0006) wakes the other nodes for what changes
    routing — a node joining, a node's connections changing — and never for a heartbeat."""
    woken = asyncio.Event()
    close = await store.listen_for_changes(woken.set, channel=CLUSTER_CHANNEL)
    postgres = store.safe_url.startswith("postgresql")

    async def announced() -> bool:
        try:
            await asyncio.wait_for(woken.wait(), 5 if postgres else 0.3)
        except TimeoutError:
            return False
        woken.clear()
        return True

    try:
        t0 = datetime.now(UTC)
        a = node("node-a", t0)
        await store.cluster_heartbeat(a, [])  # joins
        assert await announced() is postgres
        await store.cluster_heartbeat(a)  # a heartbeat
        await store.cluster_heartbeat(a)
        await asyncio.sleep(0.3)
        assert not woken.is_set()
        await store.cluster_heartbeat(a, [row("node-a", "a1", "web", "zgc-1", 0, t0)])
        assert await announced() is postgres
        await store.cluster_leave("node-a")
        assert await announced() is postgres
    finally:
        await close()
