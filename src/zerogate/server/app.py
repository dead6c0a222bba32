"""The ASGI application one server process runs: lifespan wiring and host dispatch.

granian imports ``create_app`` in every worker (``--workers N``); the configuration file's path
comes in ``ZEROGATE_CONFIG`` (set by ``zerogate server``). On startup each worker opens the
store, loads the runtime state, starts the watcher, the upstream pool, the mailer and the
access-log writer; on shutdown it flushes the access log and closes everything.

The tunnel endpoint (:class:`TunnelEndpoint`) starts once a tunnel has a credential. With it
the process joins the cluster (issue #14, docs/cluster.md): it is a node with a relay listener
(mutual TLS), writes its heartbeat and which connector connections it holds to the store, and
keeps an in-memory view of what the other nodes hold, so that a request for a tunnel held
elsewhere (another worker of this server, or another server on the same store) is relayed
there. The workers of one server share the tunnel port (``ZEROGATE_TUNNEL_FD``, bound by
``zerogate server``): the kernel hands each connector connection to one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from zerogate import logsetup
from zerogate.accesslog import AccessStream, LogKeeper
from zerogate.admin.app import AdminFrontDoor
from zerogate.admin.app import handles as admin_paths
from zerogate.autotls.http01 import ChallengeListener
from zerogate.autotls.manager import CertManager
from zerogate.dns.routes import RouteDns
from zerogate.edge import pipeline
from zerogate.edge.front import CLIENT_HEADER, Front, FrontSettings
from zerogate.edge.proxy import OriginProxy
from zerogate.edge.relay import (
    ClusterTunnels,
    Peers,
    PeerTLS,
    RelayListener,
    RelayUpstream,
    advertised,
    relay_bind,
)
from zerogate.edge.tunnel import TunnelListener, server_ssl_context
from zerogate.mail import Mailer
from zerogate.model import load_file
from zerogate.model.objects import Settings
from zerogate.model.values import parse_duration
from zerogate.net import http
from zerogate.net.asgi import Receive, Scope, Send
from zerogate.net.upstream import DEFAULT_TIMEOUTS, Timeouts
from zerogate.outbox import Outbox
from zerogate.policy import compile_timeouts
from zerogate.portal import handlers as portal
from zerogate.runtime import Runtime
from zerogate.runtime.request import describe_request
from zerogate.runtime.services import Services
from zerogate.runtime.state import settle_heap
from zerogate.server.connections import ConnectionGuard
from zerogate.store import (
    CLUSTER_CHANNEL,
    ClusterNode,
    Presence,
    Store,
    StoreError,
    TunnelConnection,
    storage_url,
)
from zerogate.tunnel import certs, peers
from zerogate.tunnel.routes import cert_hosts, listen_address

log = logging.getLogger("zerogate.server")

#: how often a process reports its connector connections to the store (``tunnel list`` shows
#: rows seen within three times this)
REPORT_SECONDS = 5.0
#: reports older than this are deleted (by whichever process prunes first)
FORGET_AFTER = timedelta(hours=1)
#: how often a node writes its heartbeat (and its presence rows, at once after a change)
HEARTBEAT_SECONDS = 2.0
#: how often a node reads which nodes hold which tunnel
VIEW_SECONDS = 1.0
#: a node whose heartbeat is older than this holds nothing any more (its rows stop counting)
LIVE = timedelta(seconds=6)
#: nodes (and their rows) whose heartbeat is older than this are deleted
EXPIRE_AFTER = timedelta(seconds=60)
#: a worker of several copies its runtime and access-log figures to the metrics folder this often
METRICS_SECONDS = 1.0


def upstream_timeouts(settings: Settings) -> Timeouts:
    """The settings' ``upstream_timeouts``, each key not set: the built-in default."""
    own = compile_timeouts(settings.upstream_timeouts)
    return DEFAULT_TIMEOUTS if own is None else own.over(DEFAULT_TIMEOUTS)


def load_settings(config: str | None) -> tuple[Settings, Path]:
    if not config:
        return Settings(), Path.cwd()
    path = Path(config)
    return load_file(path).config.settings(), path.resolve().parent


class TunnelEndpoint:
    """The tunnel listener of one process and its chores: started once any tunnel has a
    credential, told about credential reloads (rotated or deleted tokens lose their
    connections), reporting its connections to the store every few seconds and at once after
    a change (``edge_id`` is random per process), removing them at shutdown."""

    def __init__(self, svc: Services, base_dir: Path) -> None:
        self.svc = svc
        self.base_dir = base_dir
        self.edge_id = secrets.token_hex(8)
        self.listener: TunnelListener | None = None
        self._starting: asyncio.Task[None] | None = None
        self._reporter: asyncio.Task[None] | None = None
        self._dirty = asyncio.Event()
        #: the cluster: this node's relay listener, its relay upstream and its heartbeat
        self.relay_listener: RelayListener | None = None
        self.relay: RelayUpstream | None = None
        self.node: ClusterNode | None = None
        self._presence_dirty = asyncio.Event()
        #: set by a change of this node's connections and by the store's cluster announcement
        self._wake = asyncio.Event()
        self._heart: asyncio.Task[None] | None = None
        self._unlisten: Callable[[], Awaitable[None]] | None = None

    def _changed(self) -> None:
        self._dirty.set()
        self._presence_dirty.set()
        self._wake.set()

    def wanted(self) -> bool:
        return bool(self.svc.runtime.tunnel_credentials) and self.svc.tunnels_disabled is None

    def on_credentials(self) -> None:
        """``Runtime.on_tunnel_credentials``: revalidate connections, or start listening."""
        if self.listener is not None:
            self.listener.revalidate()
        elif self.wanted() and self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self.start())

    async def _context(self) -> Any:
        settings = self.svc.runtime.settings
        tls = settings.listen.tls
        if tls is not None and tls.cert is not None and tls.key is not None:
            # certificate files (with listen.tls.acme the listener keeps its generated,
            # pinned certificate: connectors dial an address, not a name ACME could prove)

            def resolve(name: str) -> Path:
                path = Path(name)
                return path if path.is_absolute() else self.base_dir / path

            return server_ssl_context(cert_file=resolve(tls.cert), key_file=resolve(tls.key))
        candidate = certs.generate(cert_hosts(settings)).to_json()
        stored = certs.GeneratedCert.from_json(
            await self.svc.runtime.store.named_secret(certs.SECRET_NAME, candidate)
        )
        return server_ssl_context(cert_pem=stored.cert_pem, key_pem=stored.key_pem)

    async def start(self, *, at_startup: bool = False) -> None:
        """Listen; at startup a failure is raised (the server does not start without the
        listener its tunnels need), later it is logged and retried at the next change."""
        settings = self.svc.runtime.settings
        host, port = listen_address(settings)
        listener = TunnelListener(
            self.svc.runtime, on_change=self._changed, timeouts=upstream_timeouts(settings)
        )
        shared = os.environ.get("ZEROGATE_TUNNEL_FD")
        sock = socket.socket(fileno=os.dup(int(shared))) if shared else None
        try:
            await listener.start(host, port, await self._context(), sock=sock)
            try:
                await self._join(listener)
            except BaseException:
                await listener.stop(grace=0)
                raise
        except (OSError, ValueError) as exc:
            if at_startup:
                raise RuntimeError(
                    f"the tunnel endpoint cannot listen on {settings.listen.tunnel}: {exc}"
                ) from exc
            log.error("the tunnel endpoint cannot listen on %s: %s", settings.listen.tunnel, exc)
            self._starting = None  # the next credential change tries again
            return
        self.listener = listener
        assert self.relay is not None
        self.svc.tunnels = ClusterTunnels(listener, self.relay)
        listener.revalidate()  # credentials may have changed while starting
        loop = asyncio.get_running_loop()
        self._reporter = loop.create_task(self._report_loop())
        self._heart = loop.create_task(self._heartbeat_loop())

    async def _join(self, listener: TunnelListener) -> None:
        """Become a node: the relay listener (certificate from the store's cluster CA), the
        relay upstream, a first heartbeat and view."""
        store = self.svc.runtime.store
        settings = self.svc.runtime.settings
        ca = peers.CertPair.from_json(
            await store.named_secret(peers.SECRET_NAME, peers.make_ca().to_json())
        )
        tls = PeerTLS(ca, self.edge_id)
        relay_listener = RelayListener(listener, tls, served=self.svc.metrics.relay_served.inc)
        host, port = relay_bind(settings.listen.relay)
        workers = int(os.environ.get("ZEROGATE_WORKERS", "1"))
        await relay_listener.start(host, port, tries=2 * workers + 2)
        assert relay_listener.address is not None
        self.relay_listener = relay_listener
        now = datetime.now(UTC)
        self.node = ClusterNode(
            node_id=self.edge_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            relay_address=advertised(relay_listener.address, settings.listen.relay_advertise),
            started_at=now,
            heartbeat_at=now,
        )
        self.relay = RelayUpstream(Peers(self.edge_id), tls, timeouts=upstream_timeouts(settings))
        try:
            await store.cluster_heartbeat(self.node, [])
            self.relay.peers.update(await store.cluster_view(live_for=LIVE))
        except Exception:
            log.exception("could not join the cluster in the store (retrying)")
        try:  # PostgreSQL: read the view at once when another node's presence changes
            self._unlisten = await store.listen_for_changes(self._wake.set, channel=CLUSTER_CHANNEL)
        except StoreError as exc:
            log.warning("cluster changes are read once a second only: %s", exc)

    def presence(self) -> list[Presence]:
        listener = self.listener
        if listener is None:
            return []
        now = datetime.now(UTC)
        return [
            Presence(
                node_id=self.edge_id,
                connection_id=c.connection_id,
                tunnel=c.tunnel,
                connector_id=c.connector_id,
                connection_index=c.connection_index,
                since=c.since,
                seen_at=now,
            )
            for c in listener.connections()
            if c.state == "ready"
        ]

    async def _heartbeat_loop(self) -> None:
        """Every second, and at once when the store announces a cluster change: read the view;
        every :data:`HEARTBEAT_SECONDS` (at once after a change of this node's connections):
        write the heartbeat and presence; every minute: expire dead nodes."""
        store = self.svc.runtime.store
        relay, node = self.relay, self.node
        assert relay is not None and node is not None
        loop = asyncio.get_running_loop()
        beat = expired = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), VIEW_SECONDS)
            self._wake.clear()
            try:
                now = loop.time()
                if self._presence_dirty.is_set() or now - beat >= HEARTBEAT_SECONDS:
                    rows = self.presence() if self._presence_dirty.is_set() else None
                    self._presence_dirty.clear()
                    await store.cluster_heartbeat(node, rows)
                    beat = now
                relay.peers.update(await store.cluster_view(live_for=LIVE))
                if now - expired > 60:
                    expired = now
                    await store.cluster_expire(older_than=EXPIRE_AFTER)
                relay.tls.renew_if_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not refresh this node's place in the cluster")
                await asyncio.sleep(VIEW_SECONDS)

    async def _report_loop(self) -> None:
        store = self.svc.runtime.store
        pruned = 0.0
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), REPORT_SECONDS)
            await asyncio.sleep(0.2)  # one report for a burst of changes
            self._dirty.clear()
            try:
                await store.report_tunnel_connections(self.edge_id, self.rows())
                if loop.time() - pruned > 60:
                    pruned = loop.time()
                    await store.forget_tunnel_connections(
                        seen_before=datetime.now(UTC) - FORGET_AFTER
                    )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not report the tunnel connections to the store")

    def rows(self) -> list[TunnelConnection]:
        listener = self.listener
        if listener is None:
            return []
        now = datetime.now(UTC)
        return [
            TunnelConnection(
                edge_id=self.edge_id,
                connection_id=c.connection_id,
                tunnel=c.tunnel,
                connector_id=c.connector_id,
                version=c.version,
                address=c.address,
                connection_index=c.connection_index,
                since=c.since,
                seen_at=now,
            )
            for c in listener.connections()
        ]

    async def stop(self) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starting
        for task in (self._reporter, self._heart):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._unlisten is not None:
            await self._unlisten()
        if self.relay_listener is not None:
            await self.relay_listener.stop()
        if self.relay is not None:
            await self.relay.close()
        if self.listener is not None:
            await self.listener.stop()
            try:
                await self.svc.runtime.store.report_tunnel_connections(self.edge_id, [])
                await self.svc.runtime.store.cluster_leave(self.edge_id)
            except Exception:
                log.exception("could not remove this process's tunnel connections from the store")


class ZerogateApp:
    """Edge + portal for one process."""

    def __init__(self, config: str | None, *, demo: bool = False) -> None:
        self.config = config
        self.demo = demo
        self.svc: Services | None = None
        self.tunnels: TunnelEndpoint | None = None
        self.origins: OriginProxy | None = None
        self._store: Store | None = None
        self.logs: LogKeeper | None = None
        #: the admin API and panel (``/api/v1``, ``/admin`` on the portal host)
        self.admin: AdminFrontDoor | None = None
        #: closes silent and idle connections granian keeps (``server/connections.py``)
        self.guard: ConnectionGuard | None = None
        #: ``listen.fast_path``: the worker's HTTP/1.1 front (``edge/front.py``), and the
        #: secret its relayed requests carry
        self.front: Front | None = None
        #: ``listen.tls.acme``: the certificates (served by SNI, renewed) and the HTTP-01 port
        self.certs: CertManager | None = None
        self.challenges: ChallengeListener | None = None
        #: a worker of several: copies its figures to the shared metrics folder every second
        self._metrics_task: asyncio.Task[None] | None = None
        secret = os.environ.get("ZEROGATE_FRONT_SECRET")
        self.front_secret: bytes | None = secret.encode() if secret else None

    async def startup(self) -> None:
        settings, base_dir = load_settings(self.config)
        store = await Store.open(storage_url(settings.storage, base_dir=base_dir))
        self._store = store
        runtime = await Runtime.load(store, settings, base_dir)
        runtime.start()
        outbox: Outbox | None = None
        if settings.email.outbox:
            port = int(os.environ.get("ZEROGATE_OUTBOX_PORT", "0"))
            outbox = Outbox(port=port)
            await outbox.start()
            if not self.demo:
                log.warning(
                    "email.outbox: true: PIN emails are not sent; they stay in this process's "
                    "outbox, shown at /.zerogate/outbox on the portal to this machine only "
                    "(for local trials: set email.smtp to send mail)"
                )
        mailer = Mailer(settings.email.smtp, settings.email.from_, outbox=outbox)
        retention = settings.logs
        stream = retention.stream
        self.logs = LogKeeper(
            store,
            access_retention=_retention(retention.access_retention),
            admin_retention=_retention(retention.admin_retention),
            stream=AccessStream(
                stdout=stream.stdout == "json",
                syslog_address=stream.syslog.address if stream.syslog else None,
                facility=stream.syslog.facility if stream.syslog else "local0",
            )
            if stream.stdout or stream.syslog
            else None,
            session_keep=runtime.session_keep,
        )
        await self.logs.start()
        writer = self.logs.writer
        self.origins = OriginProxy(timeouts=upstream_timeouts(settings))
        self.svc = Services(
            runtime=runtime,
            upstream=self.origins,
            mailer=mailer,
            accesslog=writer,
            outbox=outbox,
            show_outbox=outbox is not None,
        )
        # the login pages announce that codes are not mailed (templates read this global)
        self.svc.pages.globals["mail_outbox"] = outbox is not None
        self.svc.metrics.watch_access_log(writer)
        if self.svc.metrics.folder is not None:
            # a worker of several: its figures reach the shared metrics folder every second,
            # whichever worker answers the scrape (zerogate/metrics.py)
            self._metrics_task = asyncio.get_running_loop().create_task(self._metrics_loop())
        self.admin = AdminFrontDoor(self.svc)
        self.tunnels = TunnelEndpoint(self.svc, base_dir)
        runtime.on_tunnel_credentials.append(self.tunnels.on_credentials)
        if self.tunnels.wanted():
            # fail closed: a server that cannot open its tunnel listener does not start
            await self.tunnels.start(at_startup=True)
        # everything loaded so far lives as long as the worker: out of the collector's walks
        settle_heap()
        listen = settings.listen
        if self.front_secret is not None:
            # listen.fast_path: this worker's front serves the public port and enforces the
            # limits there; granian listens only on the fronts' private Unix socket
            self.front = Front(
                self.svc,
                FrontSettings(
                    uds=os.environ["ZEROGATE_FRONT_UDS"],
                    secret=self.front_secret,
                    header_timeout=parse_duration(listen.header_timeout).total_seconds(),
                    idle_timeout=parse_duration(listen.idle_timeout).total_seconds(),
                    max_connections=listen.max_connections,
                    timeouts=upstream_timeouts(settings),
                    fast=os.environ.get("ZEROGATE_FRONT_FAST", "1") == "1",
                ),
            )
            tls = await self._automatic_https(settings, base_dir, runtime)
            fd = os.dup(int(os.environ["ZEROGATE_FRONT_FD"]))
            await self.front.start(socket.socket(fileno=fd), tls)
            return
        self.guard = ConnectionGuard(
            port=int(listen.http.rpartition(":")[2]),
            header_timeout=parse_duration(listen.header_timeout).total_seconds(),
            idle_timeout=parse_duration(listen.idle_timeout).total_seconds(),
            max_connections=listen.max_connections,
        )
        self.guard.start()

    async def _automatic_https(
        self, settings: Settings, base_dir: Path, runtime: Runtime
    ) -> ssl.SSLContext | None:
        """``listen.tls.acme``: load the stored certificates, start renewing, and serve the
        HTTP-01 port (inherited from ``zerogate server``); the TLS context for the front."""
        tls = settings.listen.tls
        if tls is None or tls.acme is None:
            return None
        route_dns = RouteDns.from_settings(settings)

        def hostnames() -> list[str]:
            return [app.host for app in runtime.snapshot.apps.values()]

        self.certs = CertManager(
            runtime.store,
            tls.acme,
            hostnames=hostnames,
            portal_host=runtime.portal_host,
            dns=route_dns.client if route_dns is not None else None,
            base_dir=base_dir,
        )
        await self.certs.refresh()
        self.certs.start()
        fd = os.environ.get("ZEROGATE_ACME_HTTP_FD")
        if fd is not None:
            self.challenges = ChallengeListener(
                self.certs, https_port=int(settings.listen.http.rpartition(":")[2])
            )
            await self.challenges.start(socket.socket(fileno=os.dup(int(fd))))
        return self.certs.context

    async def _metrics_loop(self) -> None:
        svc = self.svc
        assert svc is not None
        while True:
            svc.metrics.observe_runtime(svc.runtime.version.config_version, svc.runtime.swaps)
            svc.metrics.observe_access_log()
            svc.metrics.observe_process()
            await asyncio.sleep(METRICS_SECONDS)

    async def shutdown(self) -> None:
        svc = self.svc
        if self._metrics_task is not None:
            self._metrics_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._metrics_task
        if self.challenges is not None:
            await self.challenges.stop()
        if self.certs is not None:
            await self.certs.stop()
        if self.front is not None:
            await self.front.stop()
        if self.guard is not None:
            await self.guard.stop()
        if self.tunnels is not None:
            await self.tunnels.stop()
        if svc is not None:
            await svc.drain()
            await svc.runtime.stop()
            if self.logs is not None:
                await self.logs.stop()
            if self.origins is not None:
                await self.origins.close()
            if svc.outbox is not None:
                await svc.outbox.stop()
            svc.metrics.close()
        if self._store is not None:
            await self._store.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if self.front_secret is not None:
            relayed = from_front(scope, self.front_secret)
            if relayed is None:
                # only a front can reach this socket; a request without its secret is refused
                if kind == "http":
                    await http.respond(send, 400, b"bad request\n", content_type=b"text/plain")
                else:
                    await send({"type": "websocket.close", "code": 1008})
                return
            scope = relayed
        guard = self.guard
        key = guard.enter(scope.get("client")) if guard is not None else None
        started = False

        async def tracked(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self._dispatch(scope, receive, tracked if kind == "http" else send)
            if kind == "http" and not started:
                await malformed_body(send)
        finally:
            if guard is not None:
                guard.leave(key)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        svc = self.svc
        if svc is None:
            await http.respond(send, 503, b"starting", content_type=b"text/plain")
            return
        try:
            req = describe_request(scope, svc)
        except http.BadRequest as exc:
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await pipeline.bad_request(send, svc, scope, str(exc))
            return
        if req.host == svc.runtime.portal_host:
            if self.admin is not None and admin_paths(req.raw_path):
                await self.admin(scope, receive, send)
                return
            await portal.handle(scope, receive, send, svc, req)
        else:
            await pipeline.handle(scope, receive, send, svc, req)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: dict[str, Any] = dict(await receive())
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("zerogate could not start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


def from_front(scope: Scope, secret: bytes) -> Scope | None:
    """A request the front relayed, with the client's address it carries (``edge.front``
    ``CLIENT_HEADER``: ``<secret> <ip> <port>``) as ``client`` and that header removed; None
    without exactly one such header bearing this server's secret."""
    found: list[bytes] = []
    kept = []
    for key, value in scope["headers"]:
        if key == CLIENT_HEADER:
            found.append(value)
        else:
            kept.append((key, value))
    if len(found) != 1:
        return None
    sent, _, rest = found[0].partition(b" ")
    ip, _, port = rest.partition(b" ")
    if not hmac.compare_digest(sent, secret) or not port.isdigit():
        return None
    return {**scope, "headers": kept, "client": (ip.decode("latin-1"), int(port))}


def _retention(text: str | None) -> timedelta | None:
    return parse_duration(text) if text is not None else None


async def malformed_body(send: Send) -> None:
    """A request the edge ended without an answer: its body stopped before its framing said
    it would end. granian reports a malformed chunked body (a size that is not hex, more data
    than the size) exactly as a client that went away, as ``http.disconnect``; the edge then
    stops forwarding and answers nothing, which granian used to turn into a 500. It is the
    client's error: 400 (a client that really went away never reads it)."""
    with contextlib.suppress(Exception):
        await http.respond(
            send,
            400,
            b"bad request: the request body is malformed or incomplete\n",
            content_type=b"text/plain",
            headers=[(b"connection", b"close")],
        )


def die_with_parent() -> None:
    """Make this worker die when the process that started it dies (``kill -9`` of the main
    process included), so that no orphan keeps serving the ports a restarted server needs.

    Linux: ``PR_SET_PDEATHSIG`` (SIGKILL when the parent goes); ``ZEROGATE_MAIN_PID`` (set by
    ``zerogate server``) catches a parent that died before the call. Elsewhere: nothing."""
    expected = os.environ.get("ZEROGATE_MAIN_PID")
    if sys.platform != "linux" or not expected or str(os.getpid()) == expected:
        return
    import ctypes
    import ctypes.util

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("cannot tie this worker to its main process (prctl failed)")
        return
    if str(os.getppid()) != expected:  # the main process is already gone
        os._exit(1)


def create_app() -> ZerogateApp:
    """granian's factory: one app per worker, configured from the environment."""
    die_with_parent()
    logsetup.configure(os.environ.get("ZEROGATE_LOG_LEVEL", "INFO"))
    return ZerogateApp(
        os.environ.get("ZEROGATE_CONFIG") or None, demo=os.environ.get("ZEROGATE_DEMO") == "1"
    )
