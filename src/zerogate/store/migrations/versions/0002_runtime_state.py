"""Runtime state: the counters servers poll, server secrets (signing keys), one-time PINs,
authorization codes, revocations, service-token credentials and the access log.

Only new tables, so the downgrade drops them and leaves revision 0001's data as it was.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: 64-bit auto-incrementing key (SQLite only auto-increments a plain INTEGER primary key)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)
ZERO = sa.text("0")


def upgrade() -> None:
    runtime_state = op.create_table(
        "runtime_state",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("keys_generation", sa.BigInteger, server_default=ZERO, nullable=False),
        sa.Column("revocation_seq", sa.BigInteger, server_default=ZERO, nullable=False),
        sa.Column("service_tokens_generation", sa.BigInteger, server_default=ZERO, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runtime_state"),
        sa.CheckConstraint("id = 1", name="ck_runtime_state_single_row"),
    )
    op.bulk_insert(
        runtime_state,
        [{"id": 1, "keys_generation": 0, "revocation_seq": 0, "service_tokens_generation": 0}],
    )

    op.create_table(
        "server_secrets",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_server_secrets"),
    )

    op.create_table(
        "pins",
        sa.Column("pin_key", sa.Text, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("pin_key", name="pk_pins"),
    )

    op.create_table(
        "auth_codes",
        sa.Column("code_hash", sa.String(128), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("code_hash", name="pk_auth_codes"),
    )
    op.create_index("ix_auth_codes_expires_at", "auth_codes", ["expires_at"])

    op.create_table(
        "revocations",
        sa.Column("id", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("not_before", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_revocations"),
    )
    op.create_index("ix_revocations_email", "revocations", ["email"])

    op.create_table(
        "service_credentials",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("client_id", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.Text, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_service_credentials"),
    )
    op.create_index(
        "ix_service_credentials_client_id", "service_credentials", ["client_id"], unique=True
    )

    op.create_table(
        "access_log",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("app", sa.Text, nullable=True),
        sa.Column("email", sa.Text, nullable=True),
        sa.Column("idp", sa.Text, nullable=True),
        sa.Column("ip", sa.Text, nullable=True),
        sa.Column("country", sa.Text, nullable=True),
        sa.Column("decision", sa.String(32), nullable=False),
        sa.Column("policy", sa.Text, nullable=True),
        sa.Column("method", sa.Text, nullable=True),
        sa.Column("host", sa.Text, nullable=True),
        sa.Column("path", sa.Text, nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_access_log"),
    )
    op.create_index("ix_access_log_at", "access_log", ["at"])
    op.create_index("ix_access_log_app_at", "access_log", ["app", "at"])
    op.create_index("ix_access_log_email_at", "access_log", ["email", "at"])


def downgrade() -> None:
    op.drop_index("ix_access_log_email_at", table_name="access_log")
    op.drop_index("ix_access_log_app_at", table_name="access_log")
    op.drop_index("ix_access_log_at", table_name="access_log")
    op.drop_table("access_log")
    op.drop_index("ix_service_credentials_client_id", table_name="service_credentials")
    op.drop_table("service_credentials")
    op.drop_index("ix_revocations_email", table_name="revocations")
    op.drop_table("revocations")
    op.drop_index("ix_auth_codes_expires_at", table_name="auth_codes")
    op.drop_table("auth_codes")
    op.drop_table("pins")
    op.drop_table("server_secrets")
    op.drop_table("runtime_state")
