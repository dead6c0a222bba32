"""What an access-log row says about the origin's answer and how many requests it stands for.

- ``access_log.status``: the HTTP status the client got for a forwarded request (the origin's,
  or zerogate's own 502 / 504 when the origin failed); null when none was sent (the client
  went away first) or for rows that are not requests.
- ``access_log.duration_ms``: from the decision to the end of the response, in milliseconds.
- ``access_log.count``: how many requests the row stands for (1, or more for the aggregated
  "sent to login" rows, one per application and client address per minute).

Revision ID: 0010
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("access_log") as batch:
        batch.add_column(sa.Column("status", sa.Integer, nullable=True))
        batch.add_column(sa.Column("duration_ms", sa.Float, nullable=True))
        batch.add_column(sa.Column("count", sa.Integer, nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("access_log") as batch:
        batch.drop_column("count")
        batch.drop_column("duration_ms")
        batch.drop_column("status")
