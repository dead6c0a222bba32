"""``zerogate nodes list``: the edge processes of the cluster (issue #14, docs/cluster.md).

Each process that serves tunnels is a node: it writes a heartbeat every few seconds and which
connector connections it holds. ``list`` shows every node the store knows: its relay address
(where the other edges relay requests for the tunnels it holds), when it started, its last
heartbeat (``live`` within a few seconds, else ``silent``: its rows no longer count and
expire after a minute), and the tunnels and connections it holds.
"""

from __future__ import annotations

from datetime import datetime

import typer
from rich.markup import escape
from rich.table import Table

from zerogate.admin.nodes import read_nodes
from zerogate.cli.helpers import JsonOption, OptionalConfig, out, print_json, when, with_store

nodes_app = typer.Typer(
    help="The edge processes (nodes) of the cluster and the tunnels each holds.",
    no_args_is_help=True,
)


@nodes_app.command("list")
def nodes_list(config: OptionalConfig = None, as_json: JsonOption = False) -> None:
    """The nodes with their relay address, start, last heartbeat and the tunnels they hold."""
    rows = with_store(config, read_nodes)
    if as_json:
        print_json({"nodes": rows})
        return
    if not rows:
        out.print("No nodes. A server becomes a node once the store holds a tunnel.")
        return
    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("node", overflow="fold")
    table.add_column("host (pid)", overflow="fold")
    table.add_column("relay address", overflow="fold")
    table.add_column("started (UTC)")
    table.add_column("last heartbeat (UTC)")
    table.add_column("tunnels", overflow="fold")
    table.add_column("conns", justify="right")
    for row in rows:
        beat = when(datetime.fromisoformat(row["heartbeat_at"].replace("Z", "+00:00")), zone=False)
        table.add_row(
            escape(row["node"]),
            escape(f"{row['host']} ({row['pid']})"),
            escape(row["relay_address"]),
            when(datetime.fromisoformat(row["started_at"].replace("Z", "+00:00")), zone=False),
            beat if row["live"] else f"[red]{beat} silent[/red]",
            escape(", ".join(f"{t} ({n})" for t, n in row["tunnels"].items())) or "—",
            str(row["connections"]),
        )
    out.print(table)
