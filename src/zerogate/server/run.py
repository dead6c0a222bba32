"""Run the server with granian: one process per worker, each building its own ``ZerogateApp``.

Tunnels and workers: a connector's connections end on whichever worker accepted them, and
granian gives a request to any worker. Every worker is a node of the cluster (issue #14): a
request for a tunnel held by another worker is relayed to it over the edge-to-edge relay
(``edge/relay.py``). With ``--workers 2`` or more and tunnels in the store, this process binds
``listen.tunnel`` once and the workers inherit the socket (``ZEROGATE_TUNNEL_FD``), so the
kernel spreads the connector connections over them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from zerogate.model.objects import Objects, OneTimePinProvider, Settings
from zerogate.model.values import parse_duration

#: a worker that dies (the OOM killer, a crash) is started again; granian gives up (and the
#: server exits with an error) when the new one dies again within 5.5 s: a crash loop
RESPAWN_FAILED_WORKERS = True


def can_bind(address: str) -> str | None:
    """None when ``HOST:PORT`` can be listened on now, else why not. ``SO_REUSEADDR`` only
    (never ``SO_REUSEPORT``): a port another process listens on is refused, also when that
    process shares its port (as granian does), so a second server never quietly splits the
    traffic with an older one."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - the operator's listen address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, int(port)))
            probe.listen(1)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def fail_closed(what: str, address: str, why: str) -> None:
    sys.stderr.write(f"error: cannot listen on {address} ({what}): {why}\n")
    raise SystemExit(2)


def _stored_objects(settings: Settings, base: Path) -> Objects:
    from zerogate.store import Store, storage_url

    async def load() -> Objects:
        store = await Store.open(storage_url(settings.storage, base_dir=base))
        try:
            objects, _ = await store.load()
        finally:
            await store.close()
        return objects

    return asyncio.run(load())


def mail_problem(settings: Settings, objects: Objects) -> str | None:
    """Why this server could not mail the PINs of a configured PIN login (None: it can)."""
    email = settings.email
    if email.smtp is not None or email.outbox:
        return None
    pins = [p.name for p in objects.identity_providers if isinstance(p, OneTimePinProvider)]
    if not pins:
        return None
    return (
        f"login method {', '.join(repr(p) for p in pins)} (type: onetimepin) mails a PIN, but "
        "no way to send mail is configured: set email.smtp (your mail server), or "
        "email: {outbox: true} for a local trial (the login page then says that codes stay in "
        "the server's outbox)"
    )


#: the listening sockets the workers inherit, kept open for the life of this process
_keep: list[socket.socket] = []


def inherited_listener(what: str, address: str, backlog: int) -> socket.socket:
    """A listening socket on ``address`` that the workers this process forks inherit (kept
    open for the life of the process); exits with code 2 when it cannot be bound."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - the operator's listen address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        fail_closed(what, address, exc.strerror or str(exc))
    sock.listen(backlog)
    sock.set_inheritable(True)
    _keep.append(sock)
    return sock


def acme_problem(settings: Settings, objects: Objects) -> str | None:
    """Why ``listen.tls.acme`` cannot certify some application now (None: it can try all)."""
    tls = settings.listen.tls
    if tls is None or tls.acme is None or settings.dns is not None:
        return None
    wildcards = sorted(
        a.domain.split("/", 1)[0] for a in objects.applications if a.domain.startswith("*.")
    )
    if not wildcards:
        return None
    return (
        f"listen.tls.acme: {', '.join(wildcards)} can only be certified with the DNS-01 "
        "challenge, which needs dns.rfc2136; until then TLS handshakes for these names fail"
    )


def front_listener(address: str, backlog: int) -> dict[str, object]:
    """``listen.fast_path``: this process binds the public port (the workers it forks inherit
    the socket and serve it with ``edge.front``) and granian listens on a Unix socket in a
    private folder, reached only by the fronts; a random secret proves a relayed request came
    from one (``ZEROGATE_FRONT_*``)."""
    sock = inherited_listener("listen.http", address, max(1024, backlog))
    folder = tempfile.mkdtemp(prefix="zerogate-front-")  # 0700: only this user
    uds = Path(folder) / "app.sock"
    os.environ["ZEROGATE_FRONT_FD"] = str(sock.fileno())
    os.environ["ZEROGATE_FRONT_UDS"] = str(uds)
    os.environ["ZEROGATE_FRONT_SECRET"] = secrets.token_hex(16)
    return {"uds": uds, "uds_permissions": 0o600}


#: the workers' shared metrics folders are named after the server's pid (``metrics_folder``)
METRICS_PREFIX = "zerogate-metrics-"


def metrics_folder(workers: int) -> str | None:
    """``--workers N`` (N > 1): a new, empty, private folder the workers keep their metrics in
    (``PROMETHEUS_MULTIPROC_DIR``, ``zerogate/metrics.py``), so that a scrape, whichever worker
    answers it, counts every worker. Folders an earlier server left (killed before it could
    remove its own) are removed first. One worker: the variable is unset, values stay in the
    process."""
    from zerogate.metrics import MULTIPROC_ENV, process_alive

    os.environ.pop(MULTIPROC_ENV, None)
    if workers <= 1:
        return None
    base = Path(tempfile.gettempdir())
    for old in base.glob(f"{METRICS_PREFIX}*"):
        pid = old.name[len(METRICS_PREFIX) :].partition("-")[0]
        if pid.isdigit() and not process_alive(int(pid)) and old.stat().st_uid == os.getuid():
            shutil.rmtree(old, ignore_errors=True)
    folder = tempfile.mkdtemp(prefix=f"{METRICS_PREFIX}{os.getpid()}-")  # 0700: this user
    os.environ[MULTIPROC_ENV] = folder
    return folder


def shared_tunnel_listener(address: str) -> None:
    """``--workers N`` with tunnels: bind ``listen.tunnel`` here, once; every worker accepts
    on the inherited socket (``ZEROGATE_TUNNEL_FD``) and relays to the others the requests for
    tunnels it holds no connection of."""
    sock = inherited_listener("listen.tunnel", address, 1024)
    os.environ["ZEROGATE_TUNNEL_FD"] = str(sock.fileno())


def serve(config: Path | None, settings: Settings, *, workers: int = 1, demo: bool = False) -> None:
    """Block serving ``listen.http`` (and ``listen.tunnel`` once a tunnel exists) until
    interrupted. Exits with code 2 when a listener cannot be bound, and when a PIN login is
    configured without a way to send mail (``mail_problem``)."""
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings
    from granian.server import Server

    base = config.resolve().parent if config is not None else Path.cwd()
    # fail closed at start: every listener this server needs must be free now (an old
    # server, or its orphaned worker, still holding a port would share or steal its traffic)
    problem = can_bind(settings.listen.http)
    if problem is not None:
        fail_closed("listen.http", settings.listen.http, problem)
    from zerogate.dns.routes import DnsError, RouteDns

    try:
        RouteDns.from_settings(settings)  # the admin API and panel write route records
    except DnsError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    objects = _stored_objects(settings, base)
    tunnels = [t.name for t in objects.tunnels]
    problem = mail_problem(settings, objects)
    if problem is not None:
        sys.stderr.write(f"error: {problem}\n")
        raise SystemExit(2)
    problem = acme_problem(settings, objects)
    if problem is not None:
        sys.stderr.write(f"warning: {problem}\n")
    if tunnels:
        problem = can_bind(settings.listen.tunnel)
        if problem is not None:
            fail_closed("listen.tunnel", settings.listen.tunnel, problem)
        if workers > 1:
            shared_tunnel_listener(settings.listen.tunnel)
    os.environ["ZEROGATE_WORKERS"] = str(workers)
    metrics = metrics_folder(workers)
    os.environ["ZEROGATE_MAIN_PID"] = str(os.getpid())  # workers die with this process
    if config is not None:
        os.environ["ZEROGATE_CONFIG"] = str(config.resolve())
    if demo:
        os.environ["ZEROGATE_DEMO"] = "1"
    host, _, port = settings.listen.http.rpartition(":")
    tls = settings.listen.tls
    bind: dict[str, object] = {
        "address": host.strip("[]") or "0.0.0.0",  # noqa: S104 - the operator chose to listen there
        "port": int(port),
    }
    acme = tls.acme if tls is not None else None
    if settings.listen.fast_path and tls is not None and acme is None:
        sys.stderr.write(
            "error: listen.fast_path does not serve TLS from certificate files yet; remove "
            "listen.fast_path, or use listen.tls.acme\n"
        )
        raise SystemExit(2)
    if acme is not None:
        # automatic HTTPS: the workers' fronts terminate TLS (the certificate is picked per
        # hostname and changes at runtime: granian's one certificate file cannot) and relay
        # to granian's private socket; see docs/deploy.md "Automatic HTTPS (ACME)"
        if acme.http is not None:
            problem = can_bind(acme.http)
            if problem is not None:
                fail_closed("listen.tls.acme.http", acme.http, problem)
        bind = front_listener(settings.listen.http, settings.listen.max_connections)
        os.environ["ZEROGATE_FRONT_FAST"] = "1" if settings.listen.fast_path else "0"
        if acme.http is not None:
            os.environ["ZEROGATE_ACME_HTTP_FD"] = str(
                inherited_listener("listen.tls.acme.http", acme.http, 1024).fileno()
            )
    elif settings.listen.fast_path:
        bind = front_listener(settings.listen.http, settings.listen.max_connections)

    def resolve(p: str) -> Path:
        path = Path(p)
        return path if path.is_absolute() else base / path

    server = Server(
        "zerogate.server.app:create_app",
        **bind,  # type: ignore[arg-type]
        interface=Interfaces.ASGI,
        workers=workers,
        factory=True,
        log_access=False,
        ssl_cert=resolve(tls.cert) if tls is not None and tls.cert is not None else None,
        ssl_key=resolve(tls.key) if tls is not None and tls.key is not None else None,
        websockets=True,
        # connection limits (SPEC "HTTP contract"); what granian cannot do, the workers'
        # ConnectionGuard does (server/connections.py)
        http1_settings=HTTP1Settings(
            header_read_timeout=int(
                parse_duration(settings.listen.header_timeout).total_seconds() * 1000
            )
        ),
        backpressure=settings.listen.max_connections,
        backlog=max(1024, settings.listen.max_connections),
        respawn_failed_workers=RESPAWN_FAILED_WORKERS,
    )
    try:
        server.serve()
    finally:
        if metrics is not None:
            shutil.rmtree(metrics, ignore_errors=True)
