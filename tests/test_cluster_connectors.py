"""Connectors spread over the edges of a cluster, and leave a dead one (issue #14).

Two ``zerogate server`` processes on one PostgreSQL store, each with its own tunnel listener;
``listen.tunnel_edges`` names both, so the connector token ``zerogate tunnel token`` makes
carries both. A real ``zerogate connector run`` (four HA connections, no ``--edge``) connects
to both edges, two connections each; each edge serves the tunnel's application with its own
connections. Then one edge is killed (``SIGKILL``, its worker too): its connections come back
on the other edge within the connector's backoff cap, and requests through the survivor work.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import test_store as base
from edge_harness import Origin
from harness import free_port, wait_for, wait_for_port, wait_until
from zerogate.connector import Connector, ConnectorConfig, ingress
from zerogate.connector.tls import EdgeTrust, parse_edge
from zerogate.store import Store, TunnelConnection, storage_url
from zerogate.tunnel.token import decode
from zg_harness import ZEROGATE, Zerogate, wait_ready, worker_pids

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

pg_database = base.pg_database

#: the connector's backoff cap (``connector.backoff.Backoff.cap``): the promise to keep
BACKOFF_CAP_SECONDS = 30.0
HA = 4

CONFIG = """
identity_providers: [{name: otp, type: onetimepin}]
tunnels:
  - {name: lab, routes: [open.localhost]}
applications:
  - name: open
    domain: open.localhost
    tunnel: lab
    policies:
      - {name: anyone, decision: bypass, include: [{everyone: true}]}
"""


@dataclass
class Setup:
    edges: list[Zerogate]
    tunnel_ports: list[int]
    connector: subprocess.Popen[bytes]
    metrics_port: int
    url: str
    workdir: Path
    token: str
    origin_url: str


def status_via(edge: Zerogate) -> int | None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{edge.port}/echo", headers={"Host": f"open.localhost:{edge.port}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return int(reply.status)
    except OSError:
        return None


def connector_connections(metrics_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/ready", timeout=5) as r:
            return int(json.loads(r.read())["connections"])
    except OSError:
        return -1


async def reported(url: str, since: datetime) -> list[TunnelConnection]:
    store = await Store.open(url)
    try:
        return await store.tunnel_connections(seen_after=since, tunnel="lab")
    finally:
        await store.close()


def per_edge(url: str, since: datetime) -> Counter[str]:
    return Counter(c.edge_id for c in asyncio.run(reported(url, since)))


@pytest.fixture(scope="module")
def setup(pg_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("cluster-connectors")
    origin = Origin().start()
    tunnel_ports = [free_port(), free_port()]
    both = ", ".join(f"127.0.0.1:{p}" for p in tunnel_ports)
    edges = [
        Zerogate(
            workdir / f"edge{i}",
            free_port(),
            free_port(),
            tunnel_listen=f"127.0.0.1:{port}",
            listen_extra=f"tunnel_edges: [{both}]",
            storage=pg_database,
        )
        for i, port in enumerate(tunnel_ports)
    ]
    connector: subprocess.Popen[bytes] | None = None
    try:
        for edge in edges:
            edge.workdir.mkdir()
            edge.write(CONFIG)
        edges[0].apply(CONFIG)
        made = edges[0].cli(
            "tunnel", "token", "lab", "--rotate", "--json", "-c", str(edges[0].config)
        )
        assert made.returncode == 0, made.stderr
        issued = json.loads(made.stdout)
        assert issued["edges"] == [f"127.0.0.1:{p}" for p in tunnel_ports]  # the setting
        for edge, port in zip(edges, tunnel_ports, strict=True):
            edge.start()
            wait_ready(edge)
            wait_for_port(port, edge.proc, timeout=15)
        metrics_port = free_port()
        with (workdir / "connector.log").open("ab") as log:
            connector = subprocess.Popen(
                [
                    *ZEROGATE,
                    "connector",
                    "run",
                    "--url",
                    origin.url,
                    "--ha-connections",
                    str(HA),
                    "--metrics",
                    f"127.0.0.1:{metrics_port}",
                    "--grace-period",
                    "2s",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                # the token names both edges: no --edge
                env={**os.environ, "ZEROGATE_TUNNEL_TOKEN": issued["token"]},
            )
        wait_until(lambda: connector_connections(metrics_port) == HA, timeout=30)
        yield Setup(
            edges,
            tunnel_ports,
            connector,
            metrics_port,
            storage_url(pg_database),
            workdir,
            issued["token"],
            origin.url,
        )
    finally:
        if connector is not None:
            connector.terminate()
            try:
                connector.wait(15)
            except subprocess.TimeoutExpired:
                connector.kill()
                connector.wait(5)
        for edge in edges:
            edge.stop()
        origin.stop()


def test_the_connector_spreads_over_both_edges_and_leaves_a_dead_one(setup: Setup) -> None:
    started = datetime.now(UTC)
    # both edges hold connections: each serves the tunnel's application by itself
    for edge in setup.edges:
        assert status_via(edge) == 200, edge.log_text()[-2000:]
    wait_until(
        lambda: sorted(per_edge(setup.url, started - timedelta(seconds=1)).values()) == [2, 2],
        timeout=15,
    )
    # kill -9 edge A (the server process and its worker, as a crash of the machine would)
    dead, survivor = setup.edges
    assert dead.proc is not None
    workers = worker_pids(dead)
    for pid in [*workers, dead.proc.pid]:
        os.kill(pid, signal.SIGKILL)
    dead.proc.wait(10)
    killed_at, killed = time.monotonic(), datetime.now(UTC)

    def all_on_survivor() -> bool:
        fresh = per_edge(setup.url, killed + timedelta(milliseconds=300))
        return list(fresh.values()) == [HA] and connector_connections(setup.metrics_port) == HA

    wait_until(all_on_survivor, timeout=BACKOFF_CAP_SECONDS, interval=0.1)
    took = time.monotonic() - killed_at
    print(f"\nthe dead edge's connections were back on the other edge {took:.2f} s after the kill")
    assert took < BACKOFF_CAP_SECONDS
    assert setup.connector.poll() is None
    for _ in range(20):
        assert status_via(survivor) == 200


async def test_connections_move_back_when_their_edge_returns(setup: Setup) -> None:
    """After an edge came back, the connections that left it return (draining, one slot at a
    time), so the connector is spread over both edges again: here with ``rehome_after`` 1 s
    (30 s by default), an in-process connector against the two servers."""
    for edge in setup.edges:  # the previous test killed one
        if edge.proc is None or edge.proc.poll() is not None:
            edge.start()
            wait_ready(edge)
    token = decode(setup.token)
    config = ConnectorConfig(
        token=setup.token,
        tunnel=token,
        edges=[parse_edge(e) for e in token.edges],
        rules=ingress.from_url(setup.origin_url),
        trust=EdgeTrust(fingerprint=token.fingerprint),
        ha_connections=HA,
        metrics_address="127.0.0.1:0",
        grace_period=2.0,
        rehome_after=1.0,
    )
    connector = Connector(config)
    running = asyncio.create_task(connector.run(signals=False))

    def spread() -> list[int]:
        ports = [c.edge.port for c in connector.connections if c.registered.is_set()]
        return [ports.count(p) for p in setup.tunnel_ports]

    try:
        await wait_for(lambda: spread() == [2, 2], timeout=20)
        first, second = setup.edges
        assert second.proc is not None
        second.proc.send_signal(signal.SIGINT)  # a graceful stop: its connections drain
        # (a graceful stop is quick when the machine is idle; once under heavy load it took over
        # 20 s: the bound is for a hung stop, not for a busy machine)
        await asyncio.to_thread(second.proc.wait, 60)
        await wait_for(lambda: spread() == [HA, 0], timeout=BACKOFF_CAP_SECONDS)
        second.start()
        await asyncio.to_thread(wait_ready, second)
        back = time.monotonic()
        await wait_for(lambda: spread() == [2, 2], timeout=20)
        print(f"\nspread again {time.monotonic() - back:.2f} s after the edge was back")
        # (off the loop: the in-process connector on this loop serves the request)
        assert await asyncio.to_thread(status_via, first) == 200
        assert await asyncio.to_thread(status_via, second) == 200
    finally:
        connector.shutdown()
        await asyncio.wait_for(running, 15)
