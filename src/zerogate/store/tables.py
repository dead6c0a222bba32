"""The store's tables as SQLAlchemy Core metadata: the source of truth that the migrations in
``migrations/versions`` must match (a test compares them).

- ``config_state``: exactly one row (``id = 1``) holding the configuration version.
- ``objects``: one row per configured object; ``spec`` is the object's canonical JSON.
- ``admin_log``: one row per admin change (who, when, from where, before and after).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator

#: constraint names are spelled out so that later migrations can refer to them
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s_%(column_1_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always written and read back as a timezone-aware UTC datetime
    (SQLite keeps no zone, so naive values read from it are UTC by construction)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps written to the store must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


#: a 64-bit auto-incrementing key (SQLite only auto-increments a plain INTEGER primary key)
BigId = BigInteger().with_variant(Integer(), "sqlite")

config_state = Table(
    "config_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint("id = 1", name="single_row"),
)

objects = Table(
    "objects",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("name", String(200), nullable=False),
    Column("position", Integer, nullable=False),
    Column("spec", Text, nullable=False),
    # the configuration version that last added or changed this object
    Column("version", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("kind", "name"),
)

admin_log = Table(
    "admin_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", Text, nullable=False),
    Column("source", Text, nullable=True),
    Column("action", String(32), nullable=False),
    Column("kind", String(32), nullable=True),
    Column("name", String(200), nullable=True),
    Column("before_json", Text, nullable=True),
    Column("after_json", Text, nullable=True),
    # the configuration version this change produced (None for changes outside the objects)
    Column("config_version", BigInteger, nullable=True),
    Index(None, "at"),
)
