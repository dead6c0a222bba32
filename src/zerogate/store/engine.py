"""Create the async SQLAlchemy engine for a store URL, with the per-database settings the store
relies on.

SQLite: the driver's own transaction handling is switched off and every transaction starts with
an explicit ``BEGIN`` (so DDL and DML are transactional), or ``BEGIN IMMEDIATE`` on a connection
marked with ``write_lock()`` so that writers take the database lock before reading and two
writers serialise. File databases use WAL so readers do not block the writer.
PostgreSQL: asyncpg with a bounded connect timeout.
"""

from __future__ import annotations

import pathlib
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

#: execution option that makes the next SQLite transaction on a connection a ``BEGIN IMMEDIATE``
WRITE_LOCK = "zerogate_write_lock"

CONNECT_TIMEOUT = 10.0  # seconds to reach PostgreSQL
SQLITE_BUSY_TIMEOUT = 30.0  # seconds a SQLite writer waits for another one


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def is_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in database


def sqlite_file(url: str | URL) -> pathlib.Path | None:
    """The database file of a SQLite URL, ``None`` for in-memory and URI-filename databases."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or is_memory(parsed):
        return None
    database = parsed.database or ""
    if database.startswith("file:"):
        return None
    return pathlib.Path(database)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # no implicit BEGIN/COMMIT from the driver
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode")
        row = cursor.fetchone()
        if row is not None and str(row[0]).lower() not in ("memory", "wal"):
            cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    immediate = connection.get_execution_options().get(WRITE_LOCK, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def create_engine(url: str) -> AsyncEngine:
    """An async engine for a URL as returned by ``storage_url``."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT})
        event.listen(engine.sync_engine, "connect", _sqlite_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(
        parsed, pool_pre_ping=True, connect_args={"timeout": CONNECT_TIMEOUT}
    )


async def write_lock(connection: AsyncConnection) -> AsyncConnection:
    """Mark ``connection`` so its next SQLite transaction locks the database for writing at
    ``BEGIN``; call before ``begin()``. No effect on PostgreSQL (lock rows there instead)."""
    return await connection.execution_options(**{WRITE_LOCK: True})
