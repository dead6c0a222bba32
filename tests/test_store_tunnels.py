"""Tests for migration 0003's store parts: tunnel credentials (and the generation servers poll),
the edges' reports of connector connections, admin API tokens, and compare-and-set on
``apply`` — on SQLite and (marked ``postgres``) on PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

import test_store as base
from zerogate.model import Objects
from zerogate.model.objects import Group, Tunnel
from zerogate.store import (
    ApiToken,
    StaleWrite,
    Store,
    StoreError,
    TunnelConnection,
    TunnelCredential,
)

pg_database = base.pg_database
url = base.url
store = base.store

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def cred(name: str, tunnel_id: str, secret_hash: str = "h1") -> TunnelCredential:
    return TunnelCredential(name, tunnel_id, secret_hash, NOW, NOW)


def conn(edge: str, cid: str, tunnel: str, *, seen: datetime = NOW) -> TunnelConnection:
    return TunnelConnection(
        edge, cid, tunnel, "connector-1", "0.1.0", "10.0.0.9:5000", 0, NOW, seen
    )


def group(name: str, email: str) -> Group:
    return Group.model_validate({"name": name, "include": [{"email": [email]}]})


async def test_tunnel_credentials_bump_the_generation(store: Store) -> None:
    before = (await store.state()).tunnels_generation
    await store.put_tunnel_credential(cred("office", "tid00000001"))
    assert (await store.state()).tunnels_generation == before + 1
    await store.put_tunnel_credential(cred("office", "tid00000001", "h2"))  # rotation
    assert (await store.state()).tunnels_generation == before + 2
    assert [c.secret_hash for c in await store.tunnel_credentials()] == ["h2"]
    assert await store.delete_tunnel_credential("office") is True
    assert await store.delete_tunnel_credential("office") is False
    assert (await store.state()).tunnels_generation == before + 3
    assert await store.tunnel_credentials() == []


async def test_tunnel_ids_are_unique(store: Store) -> None:
    await store.put_tunnel_credential(cred("office", "tid00000001"))
    with pytest.raises(StoreError):
        await store.put_tunnel_credential(cred("lab", "tid00000001"))


async def test_removing_a_tunnel_object_drops_its_credential(store: Store) -> None:
    await store.apply(Objects(tunnels=[Tunnel(name="office")]), actor="t")
    await store.put_tunnel_credential(cred("office", "tid00000001"))
    generation = (await store.state()).tunnels_generation
    await store.apply(Objects(), actor="t")
    assert await store.tunnel_credentials() == []
    assert (await store.state()).tunnels_generation == generation + 1


async def test_connection_reports_replace_per_edge_and_age_out(store: Store) -> None:
    await store.report_tunnel_connections("edge-a", [conn("edge-a", "c1", "office")])
    await store.report_tunnel_connections("edge-b", [conn("edge-b", "c2", "lab")])
    await store.report_tunnel_connections(
        "edge-a", [conn("edge-a", "c3", "office"), conn("edge-a", "c4", "office")]
    )
    rows = await store.tunnel_connections(seen_after=NOW - timedelta(seconds=1))
    assert sorted((r.edge_id, r.connection_id) for r in rows) == [
        ("edge-a", "c3"),
        ("edge-a", "c4"),
        ("edge-b", "c2"),
    ]
    office = await store.tunnel_connections(seen_after=NOW, tunnel="office")
    assert {r.connection_id for r in office} == {"c3", "c4"}
    assert await store.tunnel_connections(seen_after=NOW + timedelta(seconds=1)) == []
    assert await store.forget_tunnel_connections(seen_before=NOW + timedelta(seconds=1)) == 3
    await store.report_tunnel_connections("edge-a", [])
    assert await store.tunnel_connections(seen_after=NOW - timedelta(days=1)) == []


async def test_api_tokens(store: Store) -> None:
    token = ApiToken(
        "ci", "id000001", "hash", True, "ops@example.com", NOW, NOW + timedelta(days=1)
    )
    assert await store.add_api_token(token) is True
    assert await store.add_api_token(token) is False  # the name is taken
    found = await store.api_token("id000001")
    assert found is not None and found.read_only and found.last_used_at is None
    await store.touch_api_token("ci")
    touched = await store.api_token("id000001")
    assert touched is not None and touched.last_used_at is not None
    assert [t.name for t in await store.api_tokens()] == ["ci"]
    assert await store.revoke_api_token("ci") is True
    assert await store.api_token("id000001") is None
    assert await store.revoke_api_token("ci") is False


async def test_apply_refuses_a_stale_object_version(store: Store) -> None:
    await store.apply(Objects(groups=[group("a", "x@example.test")]), actor="t")
    _, versions = await store.versions()
    seen = versions[("group", "a")]
    await store.apply(Objects(groups=[group("a", "y@example.test")]), actor="someone else")
    with pytest.raises(StaleWrite) as caught:
        await store.apply(
            Objects(groups=[group("a", "z@example.test")]), actor="t", expect={("group", "a"): seen}
        )
    assert "changed by someone else" in str(caught.value)
    objects, _ = await store.load()
    assert objects.groups[0].include[0].model_dump(exclude_none=True)["email"] == ["y@example.test"]
    # expecting absence fails once the object exists; the whole-config version check too
    with pytest.raises(StaleWrite):
        await store.apply(Objects(), actor="t", expect={("group", "a"): None})
    version, _ = await store.versions()
    with pytest.raises(StaleWrite):
        await store.apply(Objects(), actor="t", expect_version=version - 1)
    assert len((await store.load())[0].groups) == 1


async def test_concurrent_compare_and_set_writes_let_exactly_one_win(url: str) -> None:
    one, two = await Store.open(url), await Store.open(url)
    try:
        await one.apply(Objects(groups=[group("a", "x@example.test")]), actor="t")
        _, versions = await one.versions()
        seen = versions[("group", "a")]

        async def write(s: Store, email: str) -> bool:
            try:
                await s.apply(
                    Objects(groups=[group("a", email)]), actor=email, expect={("group", "a"): seen}
                )
            except StaleWrite:
                return False
            return True

        results = await asyncio.gather(write(one, "p@example.test"), write(two, "q@example.test"))
        assert sorted(results) == [False, True]
    finally:
        await one.close()
        await two.close()
