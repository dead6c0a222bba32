"""Who owns an object, and one row per portal session (issue #16).

- ``objects.origin``: where the object was last added or changed (``file``: ``zerogate
  apply``; ``api``, ``panel``, ``cli``: the admin API, the web panel, a ``zerogate`` command
  such as ``tunnel create``). Existing rows are filled from the admin log: ``file`` when their
  newest logged change came from the command line (``source = 'cli'``) or is not logged,
  ``api`` otherwise (the log does not tell the API from the panel).
- ``objects.in_file``: whether the last ``apply`` from a file listed it (the object is
  file-managed: the next apply overwrites an edit made elsewhere, and removes it once the file
  no longer lists it). Existing rows: true exactly when their origin is ``file``.
- ``sessions``: one row per portal login (its id is the ``sid`` claim of the portal token and
  of every application token handed out from it): who, how, the browser's User-Agent, the
  address, since, last seen (written at most once a minute), until, and when it was ended.
- ``revocations.session_id``: a revocation that ends one session only (``NULL``: every session
  of the address issued before ``not_before``, "log out everywhere").

Revision ID: 0009
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("objects") as batch:
        batch.add_column(sa.Column("origin", sa.String(16), nullable=False, server_default="file"))
        batch.add_column(sa.Column("in_file", sa.Boolean, nullable=False, server_default=sa.true()))
    op.execute(
        """
        UPDATE objects SET origin = 'api', in_file = false
        WHERE COALESCE((
            SELECT a.source FROM admin_log a
            WHERE a.kind = objects.kind AND a.name = objects.name
              AND a.config_version IS NOT NULL AND a.action IN ('add', 'change')
            ORDER BY a.id DESC LIMIT 1
        ), 'cli') <> 'cli'
        """
    )
    with op.batch_alter_table("revocations") as batch:
        batch.add_column(sa.Column("session_id", sa.String(64), nullable=True))
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("idp", sa.Text, nullable=False),
        sa.Column("user_agent", sa.Text, nullable=True),
        sa.Column("ip", sa.Text, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("seen_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.Column("ended_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
    )
    op.create_index("ix_sessions_email", "sessions", ["email"])
    op.create_index("ix_sessions_expires_at", "sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_sessions_expires_at", table_name="sessions")
    op.drop_index("ix_sessions_email", table_name="sessions")
    op.drop_table("sessions")
    with op.batch_alter_table("revocations") as batch:
        batch.drop_column("session_id")
    with op.batch_alter_table("objects") as batch:
        batch.drop_column("in_file")
        batch.drop_column("origin")
