"""Bring a store's schema to the newest revision with alembic, from code (no alembic.ini).

``upgrade`` runs on the caller's connection inside its transaction, so a migration applies
completely or not at all. On PostgreSQL a transaction-scoped advisory lock makes concurrent
upgrades from several processes wait for each other; on SQLite the caller's ``BEGIN IMMEDIATE``
does the same. A database stamped with a revision this version of zerogate does not know (it
was upgraded by a newer zerogate) is refused with a ``StoreError``.
"""

from __future__ import annotations

import pathlib

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from zerogate.store.errors import StoreError

MIGRATIONS = pathlib.Path(__file__).with_name("migrations")

#: pg_advisory_xact_lock key shared by every zerogate process upgrading the same database
ADVISORY_LOCK_KEY = 0x7A67_5F6D_6967  # "zg_mig"


def alembic_config(url: str | None = None) -> Config:
    """An alembic ``Config`` for the store's migrations; ``url`` is only needed when alembic
    opens the database itself (the ``alembic`` command line, offline SQL)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head() -> str:
    """The newest revision this version of zerogate knows."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise AssertionError(f"the store's migrations have {len(heads)} heads: {heads}")
    return heads[0]


def current(connection: Connection) -> tuple[str, ...]:
    """The revisions the database is stamped with; ``()`` for an empty database."""
    return tuple(MigrationContext.configure(connection).get_current_heads())


def upgrade(connection: Connection) -> None:
    """Migrate the database behind ``connection`` (in a transaction) to the newest revision."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
    config = alembic_config()
    script = ScriptDirectory.from_config(config)
    known = {revision.revision for revision in script.walk_revisions()}
    stamped = current(connection)
    unknown = [revision for revision in stamped if revision not in known]
    if unknown:
        raise StoreError(
            f"the store's schema is at revision {', '.join(unknown)}, which this version of "
            f"zerogate does not know (it knows up to {head()}); it was probably upgraded by a "
            "newer zerogate: run that version, or restore a backup"
        )
    if set(stamped) == set(script.get_heads()):
        return
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
