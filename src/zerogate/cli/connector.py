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
from zerogate.cli.helpers import err, fail, out

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


# ---------------------------------------------------------------- connector service (systemd)

service_app: typer.Typer = typer.Typer(
    help="Run the connector as a systemd service (the token stays in a root-only file).",
    no_args_is_help=True,
)
connector_app.add_typer(service_app, name="service")

#: where the units and the token files go (under ``--root`` when given)
UNIT_DIR = Path("/etc/systemd/system")
TOKEN_DIR = Path("/etc/zerogate")
#: folders the service cannot see (``ProtectHome=``, ``PrivateTmp=``)
_HIDDEN = tuple(
    Path(p)
    for p in ("/home", "/root", "/run/user", "/tmp", "/var/tmp")  # noqa: S108 - not written to
)

NameOption = Annotated[
    str | None,
    typer.Option(
        "--name",
        help="Name the service zerogate-connector-NAME (several connectors on one machine).",
        show_default=False,
    ),
]
RootOption = Annotated[
    Path | None,
    typer.Option(
        "--root",
        help="Write under this folder instead of / and run no systemctl (building an image).",
        show_default=False,
    ),
]


def _names(name: str | None) -> tuple[str, Path]:
    """The unit's file name and the token file's path (as the running system sees it)."""
    from zerogate.connector.service import unit_name

    if name is None:
        return "zerogate-connector.service", TOKEN_DIR / "connector.token"
    try:
        return unit_name(name), TOKEN_DIR / f"connector-{name}.token"
    except ValueError as exc:
        fail(f"--name: {escape(str(exc))}")


def _under(root: Path | None, path: Path) -> Path:
    return path if root is None else root / path.relative_to("/")


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        fail(
            f"{what} must run as root: it writes {UNIT_DIR} and a root-only token file in "
            f"{TOKEN_DIR}. Run it with sudo, or add --print to see the unit without writing"
            " anything."
        )


def _visible_file(option: str, path: Path) -> str:
    """An absolute path the sandboxed service can read, or exit 2 saying why not."""
    full = path.expanduser().absolute()
    if not full.is_file():
        fail(f"{option}: {escape(str(path))} is not a readable file")
    for hidden in _HIDDEN:
        if full.is_relative_to(hidden):
            fail(
                f"{option}: {escape(str(full))} is under {hidden}, which the service cannot see"
                " (ProtectHome / PrivateTmp): put it under /etc/zerogate"
            )
    return str(full)


def _program(exec_path: Path | None) -> tuple[str, ...]:
    """How the unit starts zerogate: ``--exec``, else the ``zerogate`` beside this Python,
    else this Python with ``-m zerogate``."""
    if exec_path is not None:
        full = exec_path.absolute()
        if not (full.is_file() and os.access(full, os.X_OK)):
            fail(f"--exec: {escape(str(exec_path))} is not an executable file")
        return (str(full),)
    beside = Path(sys.executable).parent / "zerogate"
    if beside.is_file() and os.access(beside, os.X_OK):
        return (str(beside),)
    return (sys.executable, "-m", "zerogate")


def _token_text(token_file: Path | None) -> str:
    """The token from ``--token-file`` or ``ZEROGATE_TUNNEL_TOKEN`` (never an argument)."""
    env = os.environ.get("ZEROGATE_TUNNEL_TOKEN", "").strip()
    if token_file is not None:
        if env:
            fail("give the token once: --token-file or ZEROGATE_TUNNEL_TOKEN")
        try:
            return token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"--token-file: cannot read {escape(str(token_file))}: {escape(str(exc))}")
    if not env:
        fail(
            "the connector token is required: --token-file FILE or ZEROGATE_TUNNEL_TOKEN"
            " (`zerogate tunnel create` or `tunnel token` prints it)"
        )
    return env


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte: a new temporary file of
    a random name in the same folder (``mkstemp``: ``O_EXCL``, so nobody can have opened it
    before), then renamed over. A missing folder is made 0755; an existing one keeps its mode
    (``/etc/zerogate`` also holds the ingress file and CA bundle the service must read, and
    the server's own files: making it root-only would lock both out)."""
    import tempfile

    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o755)
        os.chmod(path.parent, 0o755)  # noqa: S103 - a folder, like /etc
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _systemctl(*args: str) -> str | None:
    """Run ``systemctl ARGS``; None when it worked, else why not."""
    import shutil
    import subprocess

    program = shutil.which("systemctl")
    if program is None:
        return "systemctl is not installed"
    done = subprocess.run(  # noqa: S603 - systemctl with our own arguments
        [program, *args], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        return (done.stderr or done.stdout).strip() or f"exit code {done.returncode}"
    return None


@service_app.command("install")
def install_service(
    url: Annotated[
        str | None,
        typer.Option("--url", help="Send every request to this service.", show_default=False),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="An ingress rules file (YAML).", show_default=False),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="A file holding the connector token (else ZEROGATE_TUNNEL_TOKEN); it is copied"
            " to a root-only file the unit loads it from.",
            show_default=False,
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", hidden=True, show_default=False),
    ] = None,
    edge: Annotated[
        str | None,
        typer.Option("--edge", help="HOST:PORT[,...] instead of the token's.", show_default=False),
    ] = None,
    ca: Annotated[
        Path | None,
        typer.Option("--ca", help="Verify the edge against this PEM bundle.", show_default=False),
    ] = None,
    metrics: Annotated[
        str | None,
        typer.Option("--metrics", help="ADDRESS:PORT for /ready and /metrics.", show_default=False),
    ] = None,
    grace_period: Annotated[
        str, typer.Option("--grace-period", help="How long in-flight requests may finish.")
    ] = "30s",
    name: NameOption = None,
    exec_path: Annotated[
        Path | None,
        typer.Option(
            "--exec",
            help="The zerogate program the unit starts (default: the one running now).",
            show_default=False,
        ),
    ] = None,
    show: Annotated[
        bool,
        typer.Option("--print", "--dry-run", help="Print the unit; write and start nothing."),
    ] = False,
    root: RootOption = None,
    no_start: Annotated[
        bool, typer.Option("--no-start", help="Write the files; do not enable or start.")
    ] = False,
) -> None:
    """Write a hardened systemd unit for the connector, its token in a root-only file, and
    start it (systemctl enable --now)."""
    from zerogate.connector import ingress
    from zerogate.connector.service import ServiceUnit, render_unit
    from zerogate.connector.tls import parse_edges
    from zerogate.model.loader import ConfigError
    from zerogate.tunnel.token import TokenError, decode

    if token is not None:
        fail(
            "--token: a token on the command line shows in `ps`, the shell history and the"
            " unit; give --token-file FILE or set ZEROGATE_TUNNEL_TOKEN"
        )
    if not show:
        _require_root("connector service install")
    unit_file, token_path = _names(name)
    if (url is None) == (config is None):
        fail("give exactly one of --url URL and --config ingress.yaml")
    run_args: list[str] = []
    try:
        if url is not None:
            ingress.from_url(url)
            run_args += ["--url", url]
        else:
            ingress.load_file(config or "")
    except ConfigError as exc:
        fail(*(escape(line) for line in exc.lines()))
    if config is not None:
        run_args += ["--config", _visible_file("--config", config)]
    if edge is not None:
        try:
            parse_edges(edge)
        except ValueError as exc:
            fail(f"--edge: {escape(str(exc))}")
        run_args += ["--edge", edge]
    if ca is not None:
        run_args += ["--ca", _visible_file("--ca", ca)]
    if metrics is not None:
        run_args += ["--metrics", metrics]
    grace = _seconds(grace_period, "--grace-period")
    run_args += ["--grace-period", grace_period]
    secret: str | None = None
    if not show or token_file is not None or os.environ.get("ZEROGATE_TUNNEL_TOKEN"):
        secret = _token_text(token_file)
        try:
            tunnel = decode(secret)
        except TokenError as exc:
            fail(f"the token: {escape(str(exc))}")
        if edge is None and not tunnel.edges:
            fail("the token names no edge address: give --edge HOST:PORT")
        if any(tunnel.secret in word or secret in word for word in run_args):
            fail("the token must not be part of any option: it would be written in the unit")
    unit = ServiceUnit(
        name=name or "",
        command=_program(exec_path),
        run_args=tuple(run_args),
        token_file=str(token_path),
        grace_seconds=grace,
    )
    try:
        text = render_unit(unit)
    except ValueError as exc:
        fail(escape(str(exc)))
    if show:
        out.print(text, markup=False, end="")
        return
    assert secret is not None
    unit_path = _under(root, UNIT_DIR / unit_file)
    _write_private(_under(root, token_path), secret + "\n")
    unit_path.parent.mkdir(parents=True, exist_ok=True)
    unit_path.write_text(text, encoding="utf-8")
    os.chmod(unit_path, 0o644)
    err.print(f"wrote {unit_path} and {_under(root, token_path)} (mode 0600)")
    if root is not None or no_start:
        err.print(f"start it with: systemctl daemon-reload && systemctl enable --now {unit_file}")
        return
    for args in (("daemon-reload",), ("enable", "--now", unit_file)):
        problem = _systemctl(*args)
        if problem is not None:
            fail(
                f"systemctl {' '.join(args)}: {escape(problem)}",
                "the files are written; start the service yourself once systemd runs",
                code=1,
            )
    err.print(f"started {unit_file}: systemctl status {unit_file}, journalctl -u {unit_file}")


@service_app.command("uninstall")
def uninstall_service(name: NameOption = None, root: RootOption = None) -> None:
    """Stop and disable the connector's service; remove its unit and its token file."""
    _require_root("connector service uninstall")
    unit_file, token_path = _names(name)
    if root is None:
        problem = _systemctl("disable", "--now", unit_file)
        if problem is not None:
            err.print(f"systemctl disable --now {unit_file}: {escape(problem)}")
    removed = []
    for path in (_under(root, UNIT_DIR / unit_file), _under(root, token_path)):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(str(path))
    if root is None:
        _systemctl("daemon-reload")
    if not removed:
        fail(f"{unit_file} is not installed (no unit, no token file)", code=1)
    err.print("removed " + ", ".join(removed))


@service_app.command("status")
def service_status(name: NameOption = None) -> None:
    """systemctl status of the connector's service."""
    import shutil
    import subprocess

    unit_file, _ = _names(name)
    program = shutil.which("systemctl")
    if program is None:
        fail("systemctl is not installed", code=1)
    done = subprocess.run([program, "status", "--no-pager", unit_file], check=False)  # noqa: S603
    raise typer.Exit(done.returncode)
