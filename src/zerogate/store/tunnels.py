"""Runtime rows of tunnels and of the admin API (migration 0003): tunnel credentials (bumping
``tunnels_generation``), the edges' reports of connector connections, and API tokens.

Module functions taking a connection, wrapped one transaction each by ``Store``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from zerogate.store.runtime import _bump, _insert, _upsert
from zerogate.store.tables import api_tokens, tunnel_connections, tunnel_credentials


@dataclass(frozen=True)
class TunnelCredential:
    """The secret half of a tunnel: its random id (in the connector token) and secret hash."""

    name: str
    tunnel_id: str
    secret_hash: str
    created_at: datetime
    rotated_at: datetime


@dataclass(frozen=True)
class TunnelConnection:
    """One connector connection as the edge process ``edge_id`` reported it at ``seen_at``."""

    edge_id: str
    connection_id: str
    tunnel: str
    connector_id: str
    version: str
    address: str
    connection_index: int
    since: datetime
    seen_at: datetime


@dataclass(frozen=True)
class ApiToken:
    """A Bearer token of the admin API (the secret itself is never stored)."""

    name: str
    token_id: str
    secret_hash: str
    read_only: bool
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = None


# -- tunnel credentials ------------------------------------------------------------------------


async def put_tunnel_credential(connection: AsyncConnection, cred: TunnelCredential) -> None:
    values = {
        "name": cred.name,
        "tunnel_id": cred.tunnel_id,
        "secret_hash": cred.secret_hash,
        "created_at": cred.created_at,
        "rotated_at": cred.rotated_at,
    }
    await _upsert(connection, tunnel_credentials, "name", values)
    await _bump(connection, "tunnels_generation")


async def delete_tunnel_credentials(connection: AsyncConnection, names: Iterable[str]) -> int:
    wanted = sorted(set(names))
    if not wanted:
        return 0
    result = await connection.execute(
        delete(tunnel_credentials).where(tunnel_credentials.c.name.in_(wanted))
    )
    deleted = int(result.rowcount)
    if deleted:
        await _bump(connection, "tunnels_generation")
    return deleted


async def all_tunnel_credentials(connection: AsyncConnection) -> list[TunnelCredential]:
    t = tunnel_credentials
    result = await connection.execute(
        select(t.c.name, t.c.tunnel_id, t.c.secret_hash, t.c.created_at, t.c.rotated_at).order_by(
            t.c.name
        )
    )
    return [TunnelCredential(*row) for row in result.all()]


# -- connector connections as the edges report them --------------------------------------------


async def report_connections(
    connection: AsyncConnection, edge_id: str, rows: Sequence[TunnelConnection]
) -> None:
    """Replace every row of ``edge_id`` with ``rows``."""
    await connection.execute(
        delete(tunnel_connections).where(tunnel_connections.c.edge_id == edge_id)
    )
    if rows:
        await connection.execute(
            _insert(connection, tunnel_connections),
            [
                {
                    "edge_id": edge_id,
                    "connection_id": row.connection_id,
                    "tunnel": row.tunnel,
                    "connector_id": row.connector_id[:128],
                    "version": row.version[:64],
                    "address": row.address[:128],
                    "connection_index": row.connection_index,
                    "since": row.since,
                    "seen_at": row.seen_at,
                }
                for row in rows
            ],
        )


async def read_connections(
    connection: AsyncConnection, *, seen_after: datetime, tunnel: str | None = None
) -> list[TunnelConnection]:
    t = tunnel_connections
    query = select(t).where(t.c.seen_at >= seen_after)
    if tunnel is not None:
        query = query.where(t.c.tunnel == tunnel)
    query = query.order_by(t.c.tunnel, t.c.connector_id, t.c.connection_index, t.c.connection_id)
    result = await connection.execute(query)
    return [
        TunnelConnection(
            edge_id=r["edge_id"],
            connection_id=r["connection_id"],
            tunnel=r["tunnel"],
            connector_id=r["connector_id"],
            version=r["version"],
            address=r["address"],
            connection_index=r["connection_index"],
            since=r["since"],
            seen_at=r["seen_at"],
        )
        for r in result.mappings().all()
    ]


async def forget_connections(connection: AsyncConnection, *, seen_before: datetime) -> int:
    result = await connection.execute(
        delete(tunnel_connections).where(tunnel_connections.c.seen_at < seen_before)
    )
    return int(result.rowcount)


# -- admin API tokens --------------------------------------------------------------------------


def _api_token(r: object) -> ApiToken:
    m = r._mapping  # type: ignore[attr-defined]
    return ApiToken(
        name=m["name"],
        token_id=m["token_id"],
        secret_hash=m["secret_hash"],
        read_only=bool(m["read_only"]),
        created_by=m["created_by"],
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        last_used_at=m["last_used_at"],
    )


async def insert_api_token(connection: AsyncConnection, token: ApiToken) -> bool:
    """Add ``token``; ``False`` when a token of that name exists."""
    statement = (
        _insert(connection, api_tokens)
        .values(
            name=token.name,
            token_id=token.token_id,
            secret_hash=token.secret_hash,
            read_only=token.read_only,
            created_by=token.created_by,
            created_at=token.created_at,
            expires_at=token.expires_at,
            last_used_at=None,
        )
        .on_conflict_do_nothing(index_elements=["name"])
    )
    result = await connection.execute(statement)
    return int(result.rowcount) == 1


async def all_api_tokens(connection: AsyncConnection) -> list[ApiToken]:
    result = await connection.execute(select(api_tokens).order_by(api_tokens.c.name))
    return [_api_token(r) for r in result.all()]


async def api_token_by_id(connection: AsyncConnection, token_id: str) -> ApiToken | None:
    result = await connection.execute(select(api_tokens).where(api_tokens.c.token_id == token_id))
    row = result.one_or_none()
    return None if row is None else _api_token(row)


async def delete_api_token(connection: AsyncConnection, name: str) -> bool:
    result = await connection.execute(delete(api_tokens).where(api_tokens.c.name == name))
    return int(result.rowcount) > 0


async def touch_api_token(connection: AsyncConnection, name: str, at: datetime) -> None:
    await connection.execute(
        update(api_tokens).where(api_tokens.c.name == name).values(last_used_at=at)
    )
