"""A connector spreads its connections over the edges of a cluster: a name that resolves to
several addresses is several edges (``supervisor.spread_edges``), each dialled by address and
verified by the name (``EdgeAddress.tls_name``). The end-to-end test with two servers, one of
them killed, is ``test_cluster_connectors.py``."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tunnel_testedge import TestEdge, running_edge
from zerogate.connector.connection import EdgeConnection
from zerogate.connector.metrics import ConnectorMetrics
from zerogate.connector.stream import TunnelStream
from zerogate.connector.supervisor import spread_edges
from zerogate.connector.tls import EdgeAddress, EdgeTrust
from zerogate.tunnel.protocol import Registration


def resolver(table: dict[str, list[tuple[socket.AddressFamily, str]]]) -> Any:
    async def resolve(host: str, port: int) -> list[tuple[Any, ...]]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(family, socket.SOCK_STREAM, 6, "", (ip, port)) for family, ip in table[host]]

    return resolve


V4, V6 = socket.AF_INET, socket.AF_INET6


async def test_a_name_with_several_ipv4_addresses_is_several_edges() -> None:
    table = {
        "edges.example.com": [
            (V4, "10.0.0.1"),
            (V4, "10.0.0.2"),
            (V6, "fd00::1"),
            (V4, "10.0.0.1"),
        ],
        "localhost": [(V6, "::1"), (V4, "127.0.0.1")],
        "v6.example.com": [(V6, "fd00::1"), (V6, "fd00::2")],
        "one.example.com": [(V4, "10.0.0.9")],
    }
    given = [
        EdgeAddress("edges.example.com", 7844),
        EdgeAddress("localhost", 7844),
        EdgeAddress("v6.example.com", 7844),
        EdgeAddress("one.example.com", 7844),
        EdgeAddress("192.0.2.1", 7844),
        EdgeAddress("unknown.example.com", 7844),
        EdgeAddress("10.0.0.1", 7844, name="edges.example.com"),  # already spread: kept
    ]
    spread = await spread_edges(given, resolver(table))
    assert spread == [
        EdgeAddress("10.0.0.1", 7844, name="edges.example.com"),
        EdgeAddress("10.0.0.2", 7844, name="edges.example.com"),
        # one address per family: the system tries both in turn, as before
        EdgeAddress("localhost", 7844),
        EdgeAddress("fd00::1", 7844, name="v6.example.com"),
        EdgeAddress("fd00::2", 7844, name="v6.example.com"),
        EdgeAddress("one.example.com", 7844),
        EdgeAddress("192.0.2.1", 7844),
        # not resolvable now: dialling will say why, and retry
        EdgeAddress("unknown.example.com", 7844),
    ]
    assert [e.tls_name for e in spread[:2]] == ["edges.example.com"] * 2
    assert str(spread[0]) == "10.0.0.1:7844 (edges.example.com)"


# ------------------------------------------------------------------------------- TLS by name


@pytest.fixture
async def edge() -> AsyncIterator[TestEdge]:
    async with running_edge() as e:
        yield e


async def _dial(edge: TestEdge, address: EdgeAddress, trust: EdgeTrust) -> tuple[bool, str]:
    async def never(stream: TunnelStream) -> None:  # pragma: no cover - no stream here
        raise AssertionError

    registration = Registration(token=edge.token, connector_id="spread-test", version="t")
    conn = EdgeConnection(address, registration, trust, never, ConnectorMetrics())
    task = asyncio.create_task(conn.run())
    await asyncio.wait(
        {task, asyncio.create_task(conn.registered.wait())},
        timeout=5,
        return_when=asyncio.FIRST_COMPLETED,
    )
    registered = conn.registered.is_set()
    conn.close()
    outcome = await asyncio.wait_for(task, 5)
    return registered, outcome.message


async def test_an_edge_dialled_by_address_is_verified_by_its_name(
    edge: TestEdge, tmp_path: Path
) -> None:
    """--ca: the address a name resolved to is dialled, the certificate must carry the name
    (the test edge's names localhost); another name is refused before the token is sent."""
    ca = tmp_path / "ca.pem"
    edge.ca.cert_pem.write_to_path(str(ca))
    trust = EdgeTrust(ca_file=ca)
    ok, _ = await _dial(edge, EdgeAddress("127.0.0.1", edge.port, name="localhost"), trust)
    assert ok
    ok, message = await _dial(edge, EdgeAddress("127.0.0.1", edge.port, name="evil.example"), trust)
    assert not ok
    assert "certificate verify failed" in message, message
    assert len(edge.registrations) == 1


# ------------------------------------------------------------------------------- the setting


def test_new_tokens_name_every_edge_of_listen_tunnel_edges() -> None:
    from zerogate.model.objects import Settings
    from zerogate.tunnel.routes import cert_hosts, token_edges

    settings = Settings.model_validate(
        {"listen": {"tunnel_edges": ["Edge1.example.com:7844", "10.0.0.2:7844", "[fd00::3]:7844"]}}
    )
    assert token_edges(settings) == ["edge1.example.com:7844", "10.0.0.2:7844", "[fd00::3]:7844"]
    assert {"edge1.example.com", "10.0.0.2", "fd00::3"} <= set(cert_hosts(settings))
    assert token_edges(Settings()) == ["127.0.0.1:7844"]  # unset: listen.tunnel, as before
    for bad in ["edge.example.com", "a b.example.com:7844", "[zz]:7844", "edge:0", "e:99999"]:
        with pytest.raises(ValueError, match="tunnel_edges"):
            Settings.model_validate({"listen": {"tunnel_edges": [bad]}})
    with pytest.raises(ValueError, match="tunnel_edges"):
        Settings.model_validate(
            {"listen": {"tunnel_edges": [f"e{i}.example.com:1" for i in range(17)]}}
        )
