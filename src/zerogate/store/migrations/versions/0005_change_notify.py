"""PostgreSQL announces every change of the state servers watch: a trigger on ``config_state``
and ``runtime_state`` sends ``NOTIFY zerogate_changes`` (delivered at commit), so every server
process reloads at once instead of at its next poll (the poll stays as a fallback, and is all
SQLite has). The payload is empty: listeners read ``state()`` as a poll would.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANNEL = "zerogate_changes"
TABLES = ("config_state", "runtime_state")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION zerogate_notify_change() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', '');
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql
        """
    )
    for table in TABLES:
        op.execute(
            f"CREATE TRIGGER zerogate_notify_{table} AFTER INSERT OR UPDATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION zerogate_notify_change()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS zerogate_notify_{table} ON {table}")
    op.execute("DROP FUNCTION IF EXISTS zerogate_notify_change()")
