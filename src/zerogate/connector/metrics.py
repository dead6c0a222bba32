"""The connector's own metrics and its small HTTP server for ``/ready`` and ``/metrics``.

A private Prometheus registry (never prometheus-client's global one):

========================================  =======  ============================================
name                                      type     meaning
========================================  =======  ============================================
zerogate_connector_connections            gauge    connections to the edge that are registered
zerogate_connector_requests_total         counter  streams served, by ``status`` class (``2xx``
                                                   .. ``5xx``, ``reset`` when the edge or the
                                                   client gave up before a response)
zerogate_connector_active_streams         gauge    streams being served now
zerogate_connector_bytes_total            counter  body bytes, by ``direction``: ``request``
                                                   (edge → origin) and ``response`` (origin → edge)
zerogate_connector_reconnects_total       counter  redials after a connection ended or failed
zerogate_connector_ping_rtt_seconds       gauge    last PING round trip, by ``connection``
========================================  =======  ============================================

``/ready`` answers 200 while at least one connection is registered, else 503; the JSON body
says ``{"status": "ready"|"not ready", "connections": N}``. The server listens on
``--metrics ADDRESS:PORT``; by default on 127.0.0.1, the first free port of 20241–20245 (as
cloudflared does), else any free port; the address is logged at start.
"""

from __future__ import annotations

import json

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = structlog.get_logger("zerogate.connector")

DEFAULT_PORTS = range(20241, 20246)


class MetricsBindError(OSError):
    """The ``--metrics`` address cannot be listened on (in use, not local, no permission)."""


class ConnectorMetrics:
    """The counters and gauges above, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "zerogate_connector_connections", "Registered connections to the edge", registry=r
        )
        self.requests = Counter(
            "zerogate_connector_requests",
            "Streams served, by status class",
            ["status"],
            registry=r,
        )
        self.active_streams = Gauge(
            "zerogate_connector_active_streams", "Streams being served now", registry=r
        )
        self.bytes = Counter(
            "zerogate_connector_bytes", "Body bytes by direction", ["direction"], registry=r
        )
        self.reconnects = Counter(
            "zerogate_connector_reconnects", "Redials of a connection to the edge", registry=r
        )
        self.ping_rtt = Gauge(
            "zerogate_connector_ping_rtt_seconds",
            "Last PING round trip per connection",
            ["connection"],
            registry=r,
        )
        for status in ("2xx", "3xx", "4xx", "5xx", "reset"):
            self.requests.labels(status)
        for direction in ("request", "response"):
            self.bytes.labels(direction)
        self.registered = 0
        #: streams being served now, read when scraped (no gauge update per request)
        self.active = 0
        self.active_streams.set_function(lambda: self.active)
        self._by_class = {
            label: self.requests.labels(label) for label in ("2xx", "3xx", "4xx", "5xx", "reset")
        }
        self._request_bytes = self.bytes.labels("request")
        self._response_bytes = self.bytes.labels("response")

    def request_done(self, status: int, bytes_in: int, bytes_out: int) -> None:
        label = f"{status // 100}xx" if 200 <= status <= 599 else "reset"
        self._by_class[label].inc()
        if bytes_in:
            self._request_bytes.inc(bytes_in)
        if bytes_out:
            self._response_bytes.inc(bytes_out)

    def connection_up(self) -> None:
        self.registered += 1
        self.connections.set(self.registered)

    def connection_down(self) -> None:
        self.registered -= 1
        self.connections.set(self.registered)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def build_app(metrics: ConnectorMetrics) -> web.Application:
    async def ready(request: web.Request) -> web.Response:
        n = metrics.registered
        body = {"status": "ready" if n > 0 else "not ready", "connections": n}
        return web.Response(
            status=200 if n > 0 else 503,
            body=json.dumps(body).encode(),
            content_type="application/json",
        )

    async def scrape(request: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", scrape)
    return app


class MetricsServer:
    """``/ready`` and ``/metrics`` on one address; ``port`` is the one actually bound."""

    def __init__(self, metrics: ConnectorMetrics, address: str | None) -> None:
        self.metrics = metrics
        self.address = address
        self.host = "127.0.0.1"
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        runner = web.AppRunner(build_app(self.metrics), access_log=None)
        await runner.setup()
        self._runner = runner
        if self.address is not None:
            host, _, port = self.address.rpartition(":")
            self.host = host.strip("[]") or "127.0.0.1"
            candidates: list[int] = [int(port)]
        else:
            candidates = [*DEFAULT_PORTS, 0]
        for index, port_number in enumerate(candidates):
            site = web.TCPSite(runner, self.host, port_number)
            try:
                await site.start()
            except OSError as exc:
                if index == len(candidates) - 1:
                    await runner.cleanup()
                    raise MetricsBindError(
                        f"cannot listen on {self.host}:{port_number} for /metrics:"
                        f" {exc.strerror or exc}"
                    ) from None
                continue
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.port = sockets[0].getsockname()[1] if sockets else port_number
            break
        log.info("metrics server listening", url=f"http://{self.host}:{self.port}/metrics")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
