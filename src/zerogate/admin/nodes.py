"""The cluster's nodes as people read them (``zerogate nodes list``, ``GET /api/v1/nodes``).

Each server process that serves tunnels is a node (``zerogate.store.cluster``): this turns the
store's view into one row per node with the tunnels and connections it holds and whether its
heartbeat is recent (``live``, as the servers judge it: :data:`LIVE_SECONDS`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from zerogate.store import ClusterView, Store

#: a node whose heartbeat is older than this is ``silent``: its rows no longer count
LIVE_SECONDS = 6.0


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def node_rows(view: ClusterView, now: datetime) -> list[dict[str, Any]]:
    """One dict per node (also for the admin API): id, host, pid, relay address, started,
    heartbeat, live, and per tunnel the connections held."""
    rows = []
    for node in view.nodes:
        held: dict[str, int] = {}
        for row in view.presence:
            if row.node_id == node.node_id:
                held[row.tunnel] = held.get(row.tunnel, 0) + 1
        age = (now - node.heartbeat_at).total_seconds()
        rows.append(
            {
                "node": node.node_id,
                "host": node.host,
                "pid": node.pid,
                "relay_address": node.relay_address,
                "started_at": _iso(node.started_at),
                "heartbeat_at": _iso(node.heartbeat_at),
                "live": age <= LIVE_SECONDS,
                "tunnels": dict(sorted(held.items())),
                "connections": sum(held.values()),
            }
        )
    return rows


async def read_nodes(store: Store) -> list[dict[str, Any]]:
    """Every node the store knows (silent ones too) as :func:`node_rows`."""
    view = await store.cluster_view(live_for=timedelta(days=3650))
    return node_rows(view, view.now)
