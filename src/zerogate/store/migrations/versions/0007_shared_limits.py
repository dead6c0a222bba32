"""Rate limits shared by every server process on one store (issue #14): PIN sends per address
and per client network, OIDC logins started per client network. One row per limited key with
the times of its latest hits; a hit reads and writes its rows under their row locks, so several
edges count as one.

- ``rate_windows``: ``key`` (SHA-256 hex of the limit's name and subject), ``hits`` (JSON list
  of epoch seconds, at most the limit's count), ``expires_at`` (epoch seconds; expired rows are
  removed a few at a time by later hits).

Revision ID: 0007
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_windows",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("hits", sa.Text, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_rate_windows"),
    )
    op.create_index("ix_rate_windows_expires_at", "rate_windows", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_rate_windows_expires_at", table_name="rate_windows")
    op.drop_table("rate_windows")
