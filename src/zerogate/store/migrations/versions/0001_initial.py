"""The initial store: configuration state, objects, admin log.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: 64-bit auto-incrementing key (SQLite only auto-increments a plain INTEGER primary key)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    config_state = op.create_table(
        "config_state",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_config_state"),
        sa.CheckConstraint("id = 1", name="ck_config_state_single_row"),
    )
    op.bulk_insert(config_state, [{"id": 1, "version": 0, "updated_at": datetime.now(UTC)}])

    op.create_table(
        "objects",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_objects"),
        sa.UniqueConstraint("kind", "name", name="uq_objects_kind_name"),
    )

    op.create_table(
        "admin_log",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("source", sa.Text, nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(32), nullable=True),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("before_json", sa.Text, nullable=True),
        sa.Column("after_json", sa.Text, nullable=True),
        sa.Column("config_version", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_admin_log"),
    )
    op.create_index("ix_admin_log_at", "admin_log", ["at"])


def downgrade() -> None:
    op.drop_index("ix_admin_log_at", table_name="admin_log")
    op.drop_table("admin_log")
    op.drop_table("objects")
    op.drop_table("config_state")
