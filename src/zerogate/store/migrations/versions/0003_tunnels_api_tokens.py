"""Tunnel credentials, the edges' reports of connector connections, admin API tokens, and the
``tunnels_generation`` counter.

New tables and one new counter column (with a default), so the downgrade drops them and leaves
revision 0002's data as it was.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("runtime_state") as batch:
        batch.add_column(
            sa.Column(
                "tunnels_generation", sa.BigInteger, server_default=sa.text("0"), nullable=False
            )
        )

    op.create_table(
        "tunnel_credentials",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("tunnel_id", sa.String(64), nullable=False),
        sa.Column("secret_hash", sa.String(128), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("rotated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_tunnel_credentials"),
    )
    op.create_index(
        "ix_tunnel_credentials_tunnel_id", "tunnel_credentials", ["tunnel_id"], unique=True
    )

    op.create_table(
        "tunnel_connections",
        sa.Column("edge_id", sa.String(64), nullable=False),
        sa.Column("connection_id", sa.String(64), nullable=False),
        sa.Column("tunnel", sa.String(200), nullable=False),
        sa.Column("connector_id", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("address", sa.String(128), nullable=False),
        sa.Column("connection_index", sa.Integer, nullable=False),
        sa.Column("since", TIMESTAMP, nullable=False),
        sa.Column("seen_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("edge_id", "connection_id", name="pk_tunnel_connections"),
    )
    op.create_index("ix_tunnel_connections_tunnel", "tunnel_connections", ["tunnel"])

    op.create_table(
        "api_tokens",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("token_id", sa.String(64), nullable=False),
        sa.Column("secret_hash", sa.String(128), nullable=False),
        sa.Column("read_only", sa.Boolean, nullable=False),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=True),
        sa.Column("last_used_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_api_tokens"),
    )
    op.create_index("ix_api_tokens_token_id", "api_tokens", ["token_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_api_tokens_token_id", table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_index("ix_tunnel_connections_tunnel", table_name="tunnel_connections")
    op.drop_table("tunnel_connections")
    op.drop_index("ix_tunnel_credentials_tunnel_id", table_name="tunnel_credentials")
    op.drop_table("tunnel_credentials")
    with op.batch_alter_table("runtime_state") as batch:
        batch.drop_column("tunnels_generation")
