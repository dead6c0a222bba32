"""Cluster membership and tunnel presence (issue #14).

- ``cluster_nodes``: one row per running edge process (a node: one ``zerogate server``
  worker): its random id, host and pid, when it started, its last heartbeat and the address of
  its edge-to-edge relay listener. A node refreshes its heartbeat every few seconds; rows whose
  heartbeat is older than the expiry are deleted by whichever node prunes first.
- ``tunnel_presence``: which node holds which connector connection: tunnel, connector id (a
  random id per connector start, so a restarted connector never shares rows with its earlier
  self), connection index, the node's connection id, when the connection registered
  (``since``: of two rows for the same connector connection the newer wins) and the
  heartbeat (``seen_at``) that the holding node refreshes with its own.

On PostgreSQL a new node and every change of a node's presence rows (they are replaced,
never updated, when its connections change) announce themselves with ``NOTIFY
zerogate_cluster``, so the other nodes read the new state at once; a heartbeat (an update)
announces nothing.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)
CHANNEL = "zerogate_cluster"


def upgrade() -> None:
    op.create_table(
        "cluster_nodes",
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("relay_address", sa.String(300), nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("heartbeat_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("node_id", name="pk_cluster_nodes"),
    )
    op.create_table(
        "tunnel_presence",
        sa.Column("node_id", sa.String(64), nullable=False),
        sa.Column("connection_id", sa.String(64), nullable=False),
        sa.Column("tunnel", sa.String(200), nullable=False),
        sa.Column("connector_id", sa.String(128), nullable=False),
        sa.Column("connection_index", sa.Integer, nullable=False),
        sa.Column("since", TIMESTAMP, nullable=False),
        sa.Column("seen_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("node_id", "connection_id", name="pk_tunnel_presence"),
    )
    op.create_index("ix_tunnel_presence_tunnel", "tunnel_presence", ["tunnel"])
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION zerogate_notify_cluster() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql
        """
    )
    # statement level: one announcement for a node's whole replacement of its rows
    op.execute(
        "CREATE TRIGGER zerogate_cluster_presence AFTER INSERT OR DELETE ON tunnel_presence "
        "FOR EACH STATEMENT EXECUTE FUNCTION zerogate_notify_cluster()"
    )
    # row level: a heartbeat's upsert of an existing node is an update and announces nothing
    op.execute(
        "CREATE TRIGGER zerogate_cluster_nodes AFTER INSERT OR DELETE ON cluster_nodes "
        "FOR EACH ROW EXECUTE FUNCTION zerogate_notify_cluster()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS zerogate_cluster_nodes ON cluster_nodes")
        op.execute("DROP TRIGGER IF EXISTS zerogate_cluster_presence ON tunnel_presence")
        op.execute("DROP FUNCTION IF EXISTS zerogate_notify_cluster()")
    op.drop_index("ix_tunnel_presence_tunnel", table_name="tunnel_presence")
    op.drop_table("tunnel_presence")
    op.drop_table("cluster_nodes")
