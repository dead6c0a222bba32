"""Indexes for the log filters the panel, API and CLI offer, and the access-log writers'
sessions (how the loss of a crash is bounded and reported).

- ``access_log``: ``(decision, at)`` and ``(kind, at)``, so "blocked only" or "logins only"
  reads the newest rows of an index instead of scanning the whole table.
- ``admin_log``: ``(kind, at)``.
- ``log_writers``: one row per process's access-log writer (started, last flush, rows written,
  rows dropped, ended cleanly or found gone), see ``zerogate.accesslog``.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_index("ix_access_log_decision_at", "access_log", ["decision", "at"])
    op.create_index("ix_access_log_kind_at", "access_log", ["kind", "at"])
    op.create_index("ix_admin_log_kind_at", "admin_log", ["kind", "at"])
    op.create_table(
        "log_writers",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("seen_at", TIMESTAMP, nullable=False),
        sa.Column("written", sa.BigInteger, nullable=False),
        sa.Column("dropped", sa.BigInteger, nullable=False),
        sa.Column("ended_at", TIMESTAMP, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_log_writers"),
    )
    op.create_index("ix_log_writers_state", "log_writers", ["state"])


def downgrade() -> None:
    op.drop_index("ix_log_writers_state", table_name="log_writers")
    op.drop_table("log_writers")
    op.drop_index("ix_admin_log_kind_at", table_name="admin_log")
    op.drop_index("ix_access_log_kind_at", table_name="access_log")
    op.drop_index("ix_access_log_decision_at", table_name="access_log")
