"""Automatic HTTPS (``listen.tls.acme``): the certificates every node serves, the ACME
challenges an order waits for, and named leases (one holder at a time; the ACME renewer takes
one so that a single node orders).

- ``certificates``: one row per hostname: the PEM chain, its private key sealed with a key
  derived from the server secret, validity and issuer.
- ``acme_challenges``: ``http-01`` tokens and ``tls-alpn-01`` hostnames with their key
  authorization, until they expire.
- ``leases``: ``name`` → ``holder`` until ``expires_at``.

Revision ID: 0008
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "certificates",
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("cert_pem", sa.Text, nullable=False),
        sa.Column("key_sealed", sa.Text, nullable=False),
        sa.Column("not_before", TIMESTAMP, nullable=False),
        sa.Column("not_after", TIMESTAMP, nullable=False),
        sa.Column("issuer", sa.Text, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("host", name="pk_certificates"),
    )
    op.create_table(
        "acme_challenges",
        sa.Column("id", sa.String(300), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_acme_challenges"),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("acme_challenges")
    op.drop_table("certificates")
