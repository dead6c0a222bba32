"""The connector process: keeps ``ha_connections`` connections to the edges up, drains on SIGTERM.

The edges are the token's addresses (or ``--edge``); a name that resolves to several IPv4
addresses (or, with none, several IPv6 ones) counts as that many edges (``spread_edges``, at
start), so one DNS name for a cluster spreads the connections like a list of addresses.

:class:`Connector` runs one *slot* per HA connection. Slot ``i`` dials edge ``i mod n``, so
the connections are spread over every edge (the next edge after each failure, so a dead edge
does not hold a slot: an edge that dies loses its connections to the others within the
backoff; a connection away from its own edge moves back, draining, as soon as that edge
answers TCP again, at the earliest ``rehome_after`` (30 s) after it moved). When its
connection ends, a slot redials after a jittered exponential backoff
(:class:`~zerogate.connector.backoff.Backoff`: 0.5 s doubling to 30 s, full jitter; back to
0.5 s once a connection had been registered for ``healthy_after`` seconds), cut short when the
edge that was unreachable answers TCP again (checked about once a second, so a short outage
costs seconds, not the cap). The other slots keep serving meanwhile. A permanent refusal by
the edge (bad or revoked token, unsupported version) is logged as an error on every attempt
and retried only slowly (2.5–5 s, doubling to a 60 s cap), never in a hot loop. When the edge
drains a connection (GOAWAY), the slot dials its replacement at once while the old one
finishes its streams.

Shutdown (:meth:`Connector.shutdown`, on the first SIGTERM or SIGINT): every connection sends
GOAWAY, so the edge sends no new streams and moves new requests to other connectors; in-flight
streams finish, for at most ``grace_period`` seconds, then whatever is left is closed. A second
signal closes everything at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import signal
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from zerogate import __version__
from zerogate.connector.backoff import Backoff
from zerogate.connector.connection import EdgeConnection, Liveness, Outcome
from zerogate.connector.ingress import Rule
from zerogate.connector.metrics import ConnectorMetrics, MetricsServer
from zerogate.connector.origin import Dispatcher
from zerogate.connector.tls import EdgeAddress, EdgeTrust
from zerogate.tunnel.protocol import (
    PROTOCOL_H2,
    PROTOCOL_VERSION,
    RefusalReason,
    Registration,
    TunnelSettings,
)
from zerogate.tunnel.token import TunnelToken

log = structlog.get_logger("zerogate.connector")

FEATURES = frozenset({"websocket"})
#: the longest a connection away from its own edge waits before trying to move back
REHOME_CAP = 600.0


@dataclass(slots=True)
class ConnectorConfig:
    """Everything ``zerogate connector run`` decided from its options."""

    token: str
    tunnel: TunnelToken
    edges: list[EdgeAddress]
    rules: list[Rule]
    trust: EdgeTrust
    ha_connections: int = 4
    metrics_address: str | None = None  # None: 127.0.0.1, first free of 20241-20245
    grace_period: float = 30.0
    liveness: Liveness = field(default_factory=Liveness)
    settings: TunnelSettings | None = None
    #: the wire asked for in the registration: PROTOCOL_MUX (2) or PROTOCOL_H2 (1); None (the
    #: default): 2, and 1 on a slot whose edge refused 2 as unsupported (an edge older than
    #: the multiplexer), so connectors may be upgraded before their edges
    protocol: int | None = None
    healthy_after: float = 10.0
    #: a connection away from its own edge (slot ``i``'s is edge ``i mod n``) moves back as
    #: soon as that edge answers TCP again, at the earliest this long after it moved (doubling
    #: after each failed return, up to ``REHOME_CAP``): the connections spread again after an
    #: edge came back
    rehome_after: float = 30.0
    #: while a slot backs off from an unreachable edge, how often it checks (TCP) whether
    #: the edge is back (jittered)
    probe_interval: float = 1.0
    backoff: Backoff = field(default_factory=Backoff)  # a template: each slot copies it
    # a refused token waits at least half the base: "slowly" must hold for every random draw
    refused_backoff: Backoff = field(default_factory=lambda: Backoff(base=5.0, cap=60.0, floor=2.5))


class Connector:
    """The running connector (see the module docstring)."""

    def __init__(self, config: ConnectorConfig) -> None:
        self.config = config
        self.connector_id = f"zgc-{uuid.uuid4().hex[:16]}"
        self.metrics = ConnectorMetrics()
        self.dispatcher = Dispatcher(config.rules)
        self.metrics_server = MetricsServer(self.metrics, config.metrics_address)
        self.connections: set[EdgeConnection] = set()
        self.dials = 0
        self.stopping = False
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._conn_tasks: set[asyncio.Task[Outcome]] = set()

    # -- control --------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """First call: drain gracefully; second call: close everything now."""
        if self.stopping:
            log.warning("second signal: closing every connection now")
            self._force.set()
            return
        log.info("shutting down: draining", grace_period=self.config.grace_period)
        self.stopping = True
        for conn in list(self.connections):
            conn.go_away()
        self._stop.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.shutdown)

    # -- running --------------------------------------------------------------------------------

    async def run(self, *, signals: bool = True) -> int:
        """Serve until shut down; the exit code: 0, or 1 after a second signal."""
        if signals:
            self.install_signal_handlers()
        self.config.edges = await spread_edges(self.config.edges)
        await self.metrics_server.start()
        log.info(
            "connector starting",
            connector=self.connector_id,
            version=__version__,
            tunnel=self.config.tunnel.tunnel_id,
            edges=[str(e) for e in self.config.edges],
            connections=self.config.ha_connections,
        )
        slots = [asyncio.create_task(self._slot(i)) for i in range(self.config.ha_connections)]
        forced = False
        try:
            await self._stop.wait()
            forced = not await self._drain()
        finally:
            for task in slots:
                task.cancel()
            await asyncio.gather(*slots, return_exceptions=True)
            for conn in list(self.connections):
                conn.close("connector stopped")
            if self._conn_tasks:
                await asyncio.gather(*self._conn_tasks, return_exceptions=True)
            await self.dispatcher.close()
            await self.metrics_server.stop()
        log.info("connector stopped", drained=not forced)
        return 1 if self._force.is_set() else 0

    async def _drain(self) -> bool:
        """Wait for the connections to finish their streams; False when cut short."""
        waiting = asyncio.create_task(self._all_closed())
        force = asyncio.create_task(self._force.wait())
        try:
            done, _ = await asyncio.wait(
                {waiting, force},
                timeout=self.config.grace_period,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            waiting.cancel()
            force.cancel()
        if waiting in done:
            return True
        if force not in done:
            left = sum(conn.open_streams for conn in self.connections)
            log.warning("grace period over: closing", open_streams=left)
        return False

    async def _all_closed(self) -> None:
        while self._conn_tasks:
            await asyncio.gather(*list(self._conn_tasks), return_exceptions=True)

    def _registration(self, index: int, protocol: int) -> Registration:
        return Registration(
            token=self.config.token,
            connector_id=self.connector_id,
            version=__version__,
            connection_index=index,
            features=FEATURES,
            protocol=protocol,
        )

    async def _slot(self, index: int) -> None:
        cfg = self.config
        backoff = Backoff(cfg.backoff.base, cfg.backoff.factor, cfg.backoff.cap, cfg.backoff.floor)
        refused = Backoff(
            cfg.refused_backoff.base,
            cfg.refused_backoff.factor,
            cfg.refused_backoff.cap,
            cfg.refused_backoff.floor,
        )
        offset = 0
        protocol = cfg.protocol or PROTOCOL_VERSION
        n = len(cfg.edges)
        home = cfg.edges[index % n]
        rehome_failures = 0
        going_home = False
        while not self.stopping:
            edge = cfg.edges[(index + offset) % n]
            conn = EdgeConnection(
                edge,
                self._registration(index, protocol),
                cfg.trust,
                self.dispatcher,
                self.metrics,
                settings=cfg.settings,
                liveness=cfg.liveness,
            )
            self.dials += 1
            self.connections.add(conn)
            task = asyncio.create_task(conn.run())
            self._conn_tasks.add(task)
            task.add_done_callback(self._conn_tasks.discard)
            task.add_done_callback(_forget(self.connections, conn))
            if self.stopping:  # a signal arrived while we were dialling
                conn.go_away()
            replaced = asyncio.create_task(conn.edge_goaway.wait())
            waits: set[asyncio.Future[Any]] = {task, replaced}
            rehome: asyncio.Task[None] | None = None
            if edge != home:
                delay = min(REHOME_CAP, cfg.rehome_after * 2**rehome_failures)
                rehome = asyncio.create_task(_reachable_after(home, delay, cfg.probe_interval))
                waits.add(rehome)
            try:
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                replaced.cancel()
                if rehome is not None:
                    rehome.cancel()
            if not task.done() and rehome is not None and rehome in done and not self.stopping:
                # This slot's own edge is back: drain this connection, dial that edge now.
                log.info("own edge reachable again; moving back", conn=index, edge=str(home))
                conn.go_away("connector moving this connection to its own edge")
                offset, going_home = 0, True
                self.metrics.reconnects.inc()
                continue
            if not task.done():
                # The edge drains this connection: replace it now, let it finish on its own.
                backoff.reset()
                refused.reset()
                self.metrics.reconnects.inc()
                continue
            outcome = task.result()
            if self.stopping:
                return
            if going_home:  # a return that did not register waits longer before the next
                rehome_failures = 0 if outcome.registered else min(rehome_failures + 1, 16)
                going_home = False
            if (
                outcome.refused is RefusalReason.VERSION_UNSUPPORTED
                and cfg.protocol is None
                and protocol != PROTOCOL_H2
            ):
                log.warning(
                    "the edge does not speak tunnel protocol 2; using 1 (HTTP/2) on this"
                    " connection: upgrade the edge",
                    conn=index,
                    edge=str(edge),
                    message=outcome.message,
                )
                protocol = PROTOCOL_H2
                continue
            if outcome.refused is not None and outcome.refused.permanent:
                delay = refused.next()
                log.error(
                    "the edge refuses this connector's registration; check the token",
                    reason=outcome.refused.value,
                    message=outcome.message,
                    retry_in=round(delay, 1),
                )
            else:
                refused.reset()
                if outcome.registered and outcome.healthy_for >= cfg.healthy_after:
                    backoff.reset()
                if not outcome.registered:
                    offset += 1  # try the next edge next time
                delay = backoff.next()
                log.info("redialling", conn=index, edge=str(edge), retry_in=round(delay, 2))
            self.metrics.reconnects.inc()
            if outcome.refused is not None:  # the edge answered: only the backoff decides
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
            else:
                next_edge = cfg.edges[(index + offset) % n]
                await self._wait_or_edge_back(next_edge, delay)

    async def _wait_or_edge_back(self, edge: EdgeAddress, delay: float) -> None:
        """Sleep ``delay`` (the backoff), but no longer than until ``edge`` comes back after
        being unreachable: after a short edge outage the backoff would otherwise keep the
        tunnel down for up to its cap (30 s) though the edge answers again. A cheap TCP probe
        every ~1 s (jittered) notices; a slot then redials after a short random pause, so
        connectors still come back spread out. The probe counts only a change from refused
        to accepted: an edge that accepts TCP but refuses the tunnel keeps the backoff."""
        stop = asyncio.create_task(self._stop.wait())
        back = asyncio.create_task(_came_back(edge, self.config.probe_interval))
        try:
            await asyncio.wait({stop, back}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            back.cancel()
        if back.done() and not back.cancelled() and back.exception() is None and not self.stopping:
            pause = random.uniform(0, min(delay, self.config.probe_interval))
            log.info("edge reachable again; redialling", edge=str(edge), in_s=round(pause, 2))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), pause)

    @property
    def registered_connections(self) -> int:
        return self.metrics.registered


async def _reachable_after(edge: EdgeAddress, delay: float, interval: float) -> None:
    """Returns once ``edge`` accepts a TCP connection, checked every ~``interval`` from
    ``delay`` on."""
    await asyncio.sleep(delay)
    while True:
        try:
            async with asyncio.timeout(interval):
                _, writer = await asyncio.open_connection(edge.host, edge.port)
        except (OSError, TimeoutError):
            await asyncio.sleep(random.uniform(interval / 2, interval * 1.5))
            continue
        writer.transport.abort()
        return


Resolver = Callable[[str, int], Awaitable[list[tuple[Any, ...]]]]


async def _getaddrinfo(host: str, port: int) -> list[tuple[Any, ...]]:
    return await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)


async def spread_edges(
    edges: list[EdgeAddress], resolve: Resolver = _getaddrinfo
) -> list[EdgeAddress]:
    """``edges`` with every name that resolves to several IPv4 addresses (or, without IPv4,
    several IPv6 ones) replaced by one edge per address, which keeps the name for TLS. A name
    with one address per family stays a name (the system then tries each family in turn, as
    for ``localhost``), as does one that cannot be resolved now (dialling will say why)."""
    spread: list[EdgeAddress] = []
    for edge in edges:
        try:
            ipaddress.ip_address(edge.host)
            literal = True
        except ValueError:
            literal = False
        if literal or edge.name is not None:
            spread.append(edge)
            continue
        try:
            found = await resolve(edge.host, edge.port)
        except OSError as exc:
            log.warning("cannot resolve the edge name now", edge=str(edge), error=str(exc))
            spread.append(edge)
            continue
        v4 = list(dict.fromkeys(str(i[4][0]) for i in found if i[0] == socket.AF_INET))
        v6 = list(dict.fromkeys(str(i[4][0]) for i in found if i[0] == socket.AF_INET6))
        addresses = v4 if len(v4) > 1 else v6 if not v4 and len(v6) > 1 else []
        if not addresses:
            spread.append(edge)
            continue
        log.info(
            "the edge name has several addresses: one edge each",
            edge=str(edge),
            addresses=addresses,
        )
        spread += [EdgeAddress(a, edge.port, name=edge.host) for a in addresses]
    return list(dict.fromkeys(spread))


async def _came_back(edge: EdgeAddress, interval: float) -> None:
    """Returns once a TCP connection to ``edge`` succeeds after at least one that did not;
    never when the first one succeeds (nothing was down: the backoff decides)."""
    refused = False
    while True:
        try:
            async with asyncio.timeout(interval):
                _, writer = await asyncio.open_connection(edge.host, edge.port)
        except (OSError, TimeoutError):
            refused = True
            await asyncio.sleep(random.uniform(interval / 2, interval * 1.5))
            continue
        writer.transport.abort()
        if refused:
            return
        await asyncio.get_running_loop().create_future()  # wait to be cancelled


def _forget(
    connections: set[EdgeConnection], conn: EdgeConnection
) -> Callable[[asyncio.Task[Outcome]], None]:
    def done(_task: asyncio.Task[Outcome]) -> None:
        connections.discard(conn)

    return done
