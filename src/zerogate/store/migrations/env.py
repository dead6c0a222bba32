"""Alembic environment for the zerogate store (the migrations live in ``versions/``).

Three ways in:

- from ``zerogate.store.migrate.upgrade``: the caller passes its open (sync-facing) connection
  in ``config.attributes["connection"]`` and owns the transaction;
- from the ``alembic`` command line (``alembic -c src/zerogate/store/migrations/alembic.ini
  ...``): the URL comes from ``sqlalchemy.url`` or ``$ZEROGATE_STORAGE`` (a zerogate
  ``storage`` setting) and an async engine is opened here;
- offline (``--sql``): the SQL is printed for that URL's dialect.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from zerogate.store.engine import create_engine, sqlite_file
from zerogate.store.secretbox import prepare_sqlite_file
from zerogate.store.tables import metadata
from zerogate.store.urls import storage_url

config = context.config
if config.config_file_name is not None and "connection" not in config.attributes:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    configured = config.get_main_option("sqlalchemy.url")
    if configured:
        return configured
    return storage_url(os.environ.get("ZEROGATE_STORAGE"))


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER much
        compare_type=True,
    )


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    url = _url()
    file = sqlite_file(url)
    if file is not None:
        prepare_sqlite_file(file)  # private folder and files, as ``Store.open`` makes them
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        asyncio.run(_run_async())
    else:
        _run_sync(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
