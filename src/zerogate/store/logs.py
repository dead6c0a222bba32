"""Keeping the logs: retention (trimming old rows in small batches) and the access-log
writers' sessions, so that what a crash lost is bounded, counted and recorded.

Each process's access-log writer has a row in ``log_writers``: ``running`` while it works
(``seen_at`` moves with every flush and every idle heartbeat), ``stopped`` after a clean stop
(everything acknowledged was written), ``lost`` when some process found it silent for longer
than ``LOST_AFTER`` — a crash or a kill. Finding one records the gap as an access-log row
(``kind="gap"``) that names the process and the time after which its records may be missing,
so an auditor sees the hole instead of assuming there was no traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from zerogate.store.tables import access_log, log_writers

#: a running writer silent this long is taken for gone (it heartbeats every 10 s when idle)
LOST_AFTER = timedelta(seconds=60)

#: rows deleted per statement when trimming (short transactions, no long table locks)
TRIM_BATCH = 5000


@dataclass(frozen=True, slots=True)
class LostWriter:
    """A writer found gone: records acknowledged after ``seen_at`` may not have been written."""

    id: str
    host: str
    pid: int
    seen_at: datetime
    written: int
    dropped: int


@dataclass(frozen=True, slots=True)
class WriterTotals:
    """What all writers ever reported: rows written, dropped, and writers lost."""

    written: int
    dropped: int
    lost: int


async def register_writer(
    connection: AsyncConnection, writer_id: str, host: str, pid: int, now: datetime
) -> None:
    await connection.execute(
        insert(log_writers).values(
            id=writer_id,
            host=host,
            pid=pid,
            started_at=now,
            seen_at=now,
            written=0,
            dropped=0,
            ended_at=None,
            state="running",
        )
    )


async def touch_writer(
    connection: AsyncConnection,
    writer_id: str,
    *,
    written: int,
    dropped: int,
    now: datetime,
    ended: bool = False,
) -> None:
    """Add ``written`` rows, set the drop count, move ``seen_at``; ``ended``: a clean stop."""
    t = log_writers
    values: dict[str, object] = {
        "written": t.c.written + written,
        "dropped": dropped,
        "seen_at": now,
    }
    if ended:
        values |= {"ended_at": now, "state": "stopped"}
    await connection.execute(
        update(t).where(t.c.id == writer_id, t.c.state == "running").values(**values)
    )


async def find_lost(connection: AsyncConnection, now: datetime) -> list[LostWriter]:
    """Mark running writers silent since before ``now - LOST_AFTER`` as lost, and record a
    gap row in the access log for each (in the caller's transaction)."""
    t = log_writers
    stale = now - LOST_AFTER
    result = await connection.execute(
        select(t.c.id, t.c.host, t.c.pid, t.c.seen_at, t.c.written, t.c.dropped).where(
            t.c.state == "running", t.c.seen_at < stale
        )
    )
    lost = [LostWriter(*row) for row in result.all()]
    for writer in lost:
        done = await connection.execute(
            update(t)
            .where(t.c.id == writer.id, t.c.state == "running")
            .values(state="lost", ended_at=writer.seen_at)
        )
        if done.rowcount != 1:  # another process recorded it first
            continue
        await connection.execute(
            insert(access_log).values(
                at=writer.seen_at,
                kind="gap",
                app=None,
                email=None,
                idp=None,
                ip=None,
                country=None,
                decision="gap",
                policy=None,
                method=None,
                host=writer.host[:200],
                path=None,
                detail=(
                    f"the access-log writer of process {writer.pid} on {writer.host} stopped "
                    f"without flushing: records acknowledged after this time (at most its last "
                    f"half second of traffic) may be missing; it had written {writer.written} "
                    f"and dropped {writer.dropped}"
                ),
            )
        )
    return lost


async def totals(connection: AsyncConnection) -> WriterTotals:
    t = log_writers
    result = await connection.execute(select(t.c.written, t.c.dropped, t.c.state))
    written = dropped = lost = 0
    for w, d, state in result.all():
        written += int(w)
        dropped += int(d)
        lost += int(state == "lost")
    return WriterTotals(written, dropped, lost)


async def trim_batch(connection: AsyncConnection, table: Table, before: datetime) -> int:
    """Delete at most ``TRIM_BATCH`` of ``table``'s oldest rows older than ``before``."""
    ids = (
        select(table.c.id)
        .where(table.c.at < before)
        .order_by(table.c.at)
        .limit(TRIM_BATCH)
        .scalar_subquery()
    )
    result = await connection.execute(delete(table).where(table.c.id.in_(ids)))
    return int(result.rowcount or 0)


async def trim_writers(connection: AsyncConnection, before: datetime) -> int:
    """Forget ended writers' rows older than ``before`` (running ones are kept)."""
    t = log_writers
    result = await connection.execute(
        delete(t).where(t.c.state != "running", t.c.ended_at < before)
    )
    return int(result.rowcount or 0)
