"""Cluster membership and tunnel presence (migration 0006): which edge processes (nodes) run,
where their relay listeners are, and which node holds which connector connection.

A node writes only its own rows: :func:`heartbeat` refreshes its node row (re-created if an
expiry removed it while the process was paused) and either replaces its presence rows (after
a change: a connection registered or ended) or refreshes their ``seen_at``. Readers
(:func:`view`) take only nodes whose heartbeat is recent and, of several rows for the same
connector connection (tunnel, connector id, connection index; the connector id is random per
connector start), only the one that registered last: a row left behind by a node that lost the
connection without noticing never wins over the connection's new home. :func:`expire` deletes
nodes (and their rows) whose heartbeat is older than the expiry: a node killed with
``kill -9`` leaves rows that stop counting at once (stale heartbeat) and vanish later.

Every time here is the database's clock (PostgreSQL's ``now()``; SQLite, whose nodes share one
host, the process's): hosts whose clocks disagree by seconds still agree on who is live.

Module functions taking a connection, wrapped one transaction each by ``Store``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from zerogate.store.runtime import _insert, _upsert
from zerogate.store.tables import cluster_nodes, tunnel_presence


@dataclass(frozen=True)
class ClusterNode:
    """One edge process of the cluster."""

    node_id: str
    host: str
    pid: int
    relay_address: str
    started_at: datetime
    heartbeat_at: datetime


@dataclass(frozen=True)
class Presence:
    """One connector connection held by node ``node_id``."""

    node_id: str
    connection_id: str
    tunnel: str
    connector_id: str
    connection_index: int
    since: datetime
    seen_at: datetime


@dataclass(frozen=True)
class ClusterView:
    """The live nodes and the presence rows that count (see the module docstring)."""

    nodes: tuple[ClusterNode, ...]
    presence: tuple[Presence, ...]
    #: the database's time when it was read
    now: datetime = datetime(1970, 1, 1, tzinfo=UTC)

    def holders(self, tunnel: str) -> list[ClusterNode]:
        """The live nodes holding a connection of ``tunnel``, most connections first."""
        count: dict[str, int] = {}
        for row in self.presence:
            if row.tunnel == tunnel:
                count[row.node_id] = count.get(row.node_id, 0) + 1
        nodes = [n for n in self.nodes if n.node_id in count]
        return sorted(nodes, key=lambda n: -count[n.node_id])


async def database_now(connection: AsyncConnection) -> datetime:
    """The database's current time (UTC)."""
    if connection.dialect.name == "postgresql":
        value = (await connection.execute(select(func.now()))).scalar_one()
        return value.astimezone(UTC)
    return datetime.now(UTC)


async def heartbeat(
    connection: AsyncConnection, node: ClusterNode, rows: Sequence[Presence] | None
) -> None:
    """Refresh ``node``'s heartbeat; replace its presence rows with ``rows`` (``None``: keep
    them, refreshing their ``seen_at``)."""
    now = await database_now(connection)
    values = {
        "node_id": node.node_id,
        "host": node.host[:200],
        "pid": node.pid,
        "relay_address": node.relay_address[:300],
        "started_at": node.started_at,
        "heartbeat_at": now,
    }
    await _upsert(connection, cluster_nodes, "node_id", values)
    t = tunnel_presence
    if rows is None:
        await connection.execute(update(t).where(t.c.node_id == node.node_id).values(seen_at=now))
        return
    await connection.execute(delete(t).where(t.c.node_id == node.node_id))
    if rows:
        await connection.execute(
            _insert(connection, t),
            [
                {
                    "node_id": node.node_id,
                    "connection_id": row.connection_id[:64],
                    "tunnel": row.tunnel,
                    "connector_id": row.connector_id[:128],
                    "connection_index": row.connection_index,
                    "since": row.since,
                    "seen_at": now,
                }
                for row in rows
            ],
        )


async def leave(connection: AsyncConnection, node_id: str) -> None:
    """A node that stops removes its rows."""
    await connection.execute(delete(tunnel_presence).where(tunnel_presence.c.node_id == node_id))
    await connection.execute(delete(cluster_nodes).where(cluster_nodes.c.node_id == node_id))


async def expire(connection: AsyncConnection, *, older_than: timedelta) -> int:
    """Delete the nodes whose heartbeat is older than ``older_than``, and every presence row
    of a node that is not (or no longer) there; how many nodes went."""
    n, t = cluster_nodes, tunnel_presence
    heartbeat_before = await database_now(connection) - older_than
    result = await connection.execute(delete(n).where(n.c.heartbeat_at < heartbeat_before))
    await connection.execute(delete(t).where(t.c.node_id.not_in(select(n.c.node_id))))
    return int(result.rowcount)


async def view(connection: AsyncConnection, *, live_for: timedelta) -> ClusterView:
    """The nodes with a heartbeat within ``live_for`` and the presence rows that count."""
    n, t = cluster_nodes, tunnel_presence
    now = await database_now(connection)
    live_after = now - live_for
    node_rows = await connection.execute(
        select(n).where(n.c.heartbeat_at >= live_after).order_by(n.c.started_at, n.c.node_id)
    )
    nodes = tuple(
        ClusterNode(
            node_id=r.node_id,
            host=r.host,
            pid=r.pid,
            relay_address=r.relay_address,
            started_at=r.started_at,
            heartbeat_at=r.heartbeat_at,
        )
        for r in node_rows
    )
    live = {node.node_id for node in nodes}
    result = await connection.execute(
        select(t).order_by(t.c.tunnel, t.c.connector_id, t.c.connection_index)
    )
    newest: dict[tuple[str, str, int], Presence] = {}
    for r in result:
        if r.node_id not in live:
            continue
        row = Presence(
            node_id=r.node_id,
            connection_id=r.connection_id,
            tunnel=r.tunnel,
            connector_id=r.connector_id,
            connection_index=r.connection_index,
            since=r.since,
            seen_at=r.seen_at,
        )
        key = (row.tunnel, row.connector_id, row.connection_index)
        other = newest.get(key)
        if other is None or (row.since, row.node_id) > (other.since, other.node_id):
            newest[key] = row
    return ClusterView(nodes, tuple(newest.values()), now)
