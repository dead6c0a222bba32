"""``zerogate connector run``: parse the options, check them, run the connector until SIGTERM.

Everything the user can get wrong (token, edge addresses, ingress file, CA file, metrics
address, durations) is checked before any connection is made and reported as one line per
problem on stderr with exit code 2. Logs are structlog lines on stderr.

Registered on the main app by ``cli/main.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import structlog
import typer
from rich.markup import escape

from zerogate import logsetup
from zerogate.cli.helpers import fail

connector_app: typer.Typer = typer.Typer(
    help="The connector: serve a tunnel's hostnames from next to the origins.",
    no_args_is_help=True,
)

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


def _configure_logging(level: str) -> None:
    number = _LEVELS[level]
    logsetup.configure(number)
    structlog.configure(
        processors=[
            logsetup.escape_event,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(number),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,  # logs are rare; tests may reconfigure
    )


def _seconds(text: str, option: str) -> float:
    from zerogate.model.values import parse_duration

    try:
        return (
            float(text)
            if text.replace(".", "", 1).isdigit()
            else (parse_duration(text).total_seconds())
        )
    except ValueError as exc:
        fail(f"{option}: {escape(str(exc))}")


@connector_app.command("run")
def run_connector(
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="ZEROGATE_TUNNEL_TOKEN",
            help="The tunnel's connector token. Prefer ZEROGATE_TUNNEL_TOKEN or --token-file:"
            " a token on the command line shows in `ps` and the shell history.",
            show_default=False,
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="A file (mode 0600) holding the tunnel's connector token.",
            show_default=False,
        ),
    ] = None,
    edge: Annotated[
        str | None,
        typer.Option(
            "--edge",
            help="HOST:PORT[,HOST:PORT...] to dial instead of the token's edge addresses.",
            show_default=False,
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="Send every request to this service (http://…, https://…, unix:/path).",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="An ingress rules file (YAML).", show_default=False),
    ] = None,
    ha_connections: Annotated[
        int,
        typer.Option("--ha-connections", min=1, max=64, help="Connections to keep to the edges."),
    ] = 4,
    ca: Annotated[
        Path | None,
        typer.Option(
            "--ca",
            help="Verify the edge's certificate chain against this PEM bundle (instead of the"
            " token's fingerprint pin).",
            show_default=False,
        ),
    ] = None,
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            help="ADDRESS:PORT for /ready and /metrics (default: 127.0.0.1, the first free"
            " port of 20241-20245).",
            show_default=False,
        ),
    ] = None,
    grace_period: Annotated[
        str,
        typer.Option("--grace-period", help="How long in-flight requests may finish on SIGTERM."),
    ] = "30s",
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info or warning.")] = "info",
    wire: Annotated[
        str,
        typer.Option(
            "--wire",
            help="auto (the default: tunnel protocol 2, the multiplexer, and 1 with an edge that"
            " does not speak 2 yet), mux (2 only) or h2 (1 only).",
        ),
    ] = "auto",
) -> None:
    """Connect to the edge and serve the tunnel's requests until SIGTERM."""
    from zerogate.connector import Connector, ConnectorConfig, ingress
    from zerogate.connector.metrics import MetricsBindError
    from zerogate.connector.tls import EdgeTrust, parse_edges
    from zerogate.model.loader import ConfigError
    from zerogate.model.values import check_listen
    from zerogate.tunnel.protocol import PROTOCOL_H2, PROTOCOL_MUX
    from zerogate.tunnel.token import TokenError, decode

    if log_level not in _LEVELS:
        fail("--log-level: expected debug, info or warning")
    wires = {"auto": None, "mux": PROTOCOL_MUX, "h2": PROTOCOL_H2}
    if wire not in wires:
        fail("--wire: expected auto, mux or h2")
    if token_file is not None:
        if token:
            fail("give the token once: --token-file, or --token / ZEROGATE_TUNNEL_TOKEN")
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"--token-file: cannot read {escape(str(token_file))}: {escape(str(exc))}")
    if not token:
        fail("a connector token is required: --token-file FILE or ZEROGATE_TUNNEL_TOKEN")
    try:
        tunnel = decode(token)
    except TokenError as exc:
        fail(f"--token: {escape(str(exc))}")
    try:
        edges = parse_edges(edge) if edge else None
    except ValueError as exc:
        fail(f"--edge: {escape(str(exc))}")
    if edges is None:
        if not tunnel.edges:
            fail("the token names no edge address: give --edge HOST:PORT")
        try:
            edges = parse_edges(",".join(tunnel.edges))
        except ValueError as exc:
            fail(f"the token's edge addresses: {escape(str(exc))}")
    if (url is None) == (config is None):
        fail("give exactly one of --url URL and --config ingress.yaml")
    try:
        rules = ingress.from_url(url) if url is not None else ingress.load_file(config or "")
    except ConfigError as exc:
        fail(*(escape(line) for line in exc.lines()))
    if ca is not None and not ca.is_file():
        fail(f"--ca: {escape(str(ca))} is not a readable file")
    if metrics is not None:
        host, sep, port = metrics.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            fail(f"--metrics: {escape(metrics)!r}: expected ADDRESS:PORT, e.g. 127.0.0.1:20241")
        try:
            check_listen(f"{host}:1")  # the address part (port 0 picks a free port)
        except ValueError:
            fail(f"--metrics: {escape(host)!r} is not an IP address")
    grace = _seconds(grace_period, "--grace-period")
    trust = EdgeTrust(ca_file=ca, fingerprint=tunnel.fingerprint)
    try:
        trust.context()
    except (OSError, ssl.SSLError) as exc:
        fail(f"--ca: cannot load {escape(str(ca))}: {escape(str(exc))}")
    _configure_logging(log_level)
    settings = ConnectorConfig(
        token=token.strip(),
        tunnel=tunnel,
        edges=edges,
        rules=rules,
        trust=trust,
        ha_connections=ha_connections,
        metrics_address=metrics,
        grace_period=grace,
        protocol=wires[wire],
    )

    async def main() -> int:
        try:
            connector = Connector(settings)
        except (OSError, ssl.SSLError) as exc:  # an ingress rule's ca_file
            fail(f"ingress: cannot load a CA file: {escape(str(exc))}")
        try:
            return await connector.run()
        except MetricsBindError as exc:
            fail(f"--metrics: {escape(str(exc))}")

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        raise typer.Exit(runner.run(main()))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (its C transports halve the cost of the connector's many small
    socket and TLS writes), unless ``ZEROGATE_CONNECTOR_LOOP=asyncio`` asks for the default."""
    if os.environ.get("ZEROGATE_CONNECTOR_LOOP", "") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a dependency, but the connector runs without it
        return None
    return uvloop.new_event_loop
