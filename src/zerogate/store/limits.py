"""Rate-limit windows every server process shares (``rate_windows``, migration 0007).

A limited key's row holds the times of its latest hits. ``hit_windows`` takes the rows of one
hit's keys under their row locks (an ``INSERT … ON CONFLICT DO UPDATE … RETURNING``, which
creates a missing row and locks an existing one in the same statement; keys in sorted order, so
two hits never wait for each other in a cycle), lets a pure function decide (the caller's:
``zerogate.identity.otp.hit_all``), writes the windows back and commits. Two processes hitting
the same key therefore queue on its row and the second sees the first's hit: the check and
the record are one atomic step across the cluster, on PostgreSQL as on SQLite (whose writers
queue at ``BEGIN IMMEDIATE``).

Nothing here knows what is limited: keys are opaque (callers pass a hash), hits are epoch
seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from zerogate.store.errors import StoreError
from zerogate.store.runtime import _insert
from zerogate.store.tables import rate_windows

#: expired rows removed by one hit (the rest go on later hits)
EXPIRED_PER_HIT = 100

T = TypeVar("T")

#: ``decide(windows) -> (result, windows to store)``: one list of hit times per key, in the
#: order the keys were given
Decide = Callable[[list[list[float]]], tuple[T, list[list[float]]]]


def _hits(text: str) -> list[float]:
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(v, int | float) for v in value):
        raise StoreError("a stored rate-limit window is not a list of times; the store is damaged")
    return [float(v) for v in value]


async def hit_windows(
    connection: AsyncConnection,
    keys: Sequence[tuple[str, float]],
    decide: Decide[T],
    now: float,
) -> T:
    """Lock and read the window of every ``(key, window seconds)``, call ``decide`` with them,
    store what it returns; also forget some expired rows. In the caller's transaction."""
    seconds = dict(keys)
    if len(seconds) != len(keys):
        raise ValueError("each key once")
    windows: dict[str, list[float]] = {}
    for key in sorted(seconds):
        insert = _insert(connection, rate_windows).values(key=key, hits="[]", expires_at=now)
        # the no-op update takes the row's lock; RETURNING reads it in the same statement
        lock_and_read = insert.on_conflict_do_update(
            index_elements=["key"], set_={"hits": rate_windows.c.hits}
        ).returning(rate_windows.c.hits, rate_windows.c.expires_at)
        hits, expires_at = (await connection.execute(lock_and_read)).one()
        windows[key] = _hits(hits) if expires_at > now else []
    result, stored = decide([windows[key] for key, _ in keys])
    if len(stored) != len(keys):
        raise ValueError("decide returned a window per key")
    for (key, window_seconds), hits_after in zip(keys, stored, strict=True):
        until = (max(hits_after) if hits_after else now) + window_seconds
        await connection.execute(
            update(rate_windows)
            .where(rate_windows.c.key == key)
            .values(hits=json.dumps(hits_after), expires_at=until)
        )
    expired = (
        select(rate_windows.c.key)
        .where(rate_windows.c.expires_at <= now)
        .order_by(rate_windows.c.expires_at)
        .limit(EXPIRED_PER_HIT)
    )
    if connection.dialect.name == "postgresql":
        expired = expired.with_for_update(skip_locked=True)
    await connection.execute(delete(rate_windows).where(rate_windows.c.key.in_(expired)))
    return result
