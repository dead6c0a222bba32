"""Portal sessions (migration 0009): one row per login, what a person and the administrators
see of it (``zerogate sessions``, the portal's sessions page, the admin panel and API), and
ending one.

A session's id is the ``sid`` claim of its portal token and of every application token
handed out from it. Ending a session marks its row and records a revocation naming it
(``revocations.session_id``), taking the next revocation id, so every server learns it the
way it learns "log out everywhere" (PostgreSQL's announcement, or the next poll) and refuses
its tokens from then on. Last seen is written by the servers at most once a minute per session
(``Runtime.seen``), in batches, never on a request's path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from zerogate.model.values import mailbox_of
from zerogate.store.runtime import _bump, normalise_email
from zerogate.store.tables import revocations, runtime_state, sessions

#: a stored User-Agent is cut to this many characters
USER_AGENT_CHARS = 400


@dataclass(frozen=True)
class Session:
    """One portal login: ``ended_at`` is set once it was ended (or its address logged out
    everywhere)."""

    id: str
    email: str
    idp: str
    user_agent: str | None
    ip: str | None
    created_at: datetime
    seen_at: datetime
    expires_at: datetime
    ended_at: datetime | None = None


def _session(row: object) -> Session:
    m = row._mapping  # type: ignore[attr-defined]
    return Session(
        id=m["id"],
        email=m["email"],
        idp=m["idp"],
        user_agent=m["user_agent"],
        ip=m["ip"],
        created_at=m["created_at"],
        seen_at=m["seen_at"],
        expires_at=m["expires_at"],
        ended_at=m["ended_at"],
    )


async def add(connection: AsyncConnection, session: Session) -> None:
    await connection.execute(
        insert(sessions).values(
            id=session.id,
            email=normalise_email(session.email),
            idp=session.idp,
            user_agent=(session.user_agent or "")[:USER_AGENT_CHARS] or None,
            ip=session.ip,
            created_at=session.created_at,
            seen_at=session.seen_at,
            expires_at=session.expires_at,
        )
    )


async def active(
    connection: AsyncConnection, now: datetime, email: str | None = None, limit: int = 1000
) -> list[Session]:
    """The sessions not ended and not expired at ``now`` (of ``email`` and its subaddresses
    when given), the most recently seen first."""
    query = select(sessions).where(sessions.c.ended_at.is_(None), sessions.c.expires_at > now)
    if email is not None:
        address = normalise_email(email)
        local, _, domain = address.partition("@")
        query = query.where(
            (sessions.c.email == address)
            | (
                sessions.c.email.startswith(f"{local}+", autoescape=True)
                & sessions.c.email.endswith(f"@{domain}", autoescape=True)
            )
        )
    query = query.order_by(sessions.c.seen_at.desc(), sessions.c.id).limit(max(0, limit))
    result = await connection.execute(query)
    found = [_session(row) for row in result.all()]
    if email is not None:  # the prefix test above is wider than a subaddress
        address = normalise_email(email)
        found = [s for s in found if s.email == address or mailbox_of(s.email) == address]
    return found


async def get(connection: AsyncConnection, session_id: str) -> Session | None:
    result = await connection.execute(select(sessions).where(sessions.c.id == session_id))
    row = result.first()
    return _session(row) if row is not None else None


async def end(connection: AsyncConnection, session_id: str, now: datetime) -> Session | None:
    """End an active session: its row marked, a revocation naming it recorded (the next
    revocation id). ``None`` when there is no such active session."""
    found = await get(connection, session_id)
    if found is None or found.ended_at is not None or found.expires_at <= now:
        return None
    await connection.execute(
        update(sessions).where(sessions.c.id == session_id).values(ended_at=now)
    )
    await _bump(connection, "revocation_seq")
    result = await connection.execute(
        select(runtime_state.c.revocation_seq).where(runtime_state.c.id == 1)
    )
    revocation_id = int(result.scalar_one())
    await connection.execute(
        insert(revocations).values(
            id=revocation_id,
            email=found.email,
            not_before=now,
            created_at=now,
            session_id=session_id,
        )
    )
    return Session(**{**found.__dict__, "ended_at": now})


async def end_of_address(connection: AsyncConnection, email: str, not_before: datetime) -> None:
    """ "Log out everywhere": the sessions of ``email`` (and its subaddresses) made before
    ``not_before`` are marked ended (the revocation itself is ``runtime.revoke``)."""
    for found in await active(connection, not_before, email):
        if found.created_at <= not_before:
            await connection.execute(
                update(sessions).where(sessions.c.id == found.id).values(ended_at=not_before)
            )


async def ended_since(connection: AsyncConnection, since: int) -> list[tuple[int, str]]:
    """``(revocation id, session id)`` of the session revocations with ``id > since``."""
    result = await connection.execute(
        select(revocations.c.id, revocations.c.session_id)
        .where(revocations.c.id > since, revocations.c.session_id.is_not(None))
        .order_by(revocations.c.id)
    )
    return [(int(i), str(s)) for i, s in result.all()]


async def touch(
    connection: AsyncConnection, seen: Sequence[tuple[str, datetime, str | None]]
) -> None:
    """Move each session's last seen (and address) forward; never back."""
    for session_id, at, ip in seen:
        values: dict[str, object] = {"seen_at": at}
        if ip:
            values["ip"] = ip
        await connection.execute(
            update(sessions)
            .where(and_(sessions.c.id == session_id, sessions.c.seen_at < at))
            .values(**values)
        )


async def trim_batch(connection: AsyncConnection, before: datetime, limit: int) -> int:
    """Forget at most ``limit`` sessions that expired before ``before``, with the revocations
    that ended them (no token naming them can still be valid then: see ``Store.trim_sessions``).
    The number of sessions deleted."""
    ids = [
        str(i)
        for i in (
            await connection.execute(
                select(sessions.c.id)
                .where(sessions.c.expires_at < before)
                .order_by(sessions.c.expires_at)
                .limit(limit)
            )
        ).scalars()
    ]
    if not ids:
        return 0
    await connection.execute(delete(revocations).where(revocations.c.session_id.in_(ids)))
    result = await connection.execute(delete(sessions).where(sessions.c.id.in_(ids)))
    return int(result.rowcount or 0)
