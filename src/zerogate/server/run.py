"""Run the server with granian: one process per worker, each building its own ``ZerogateApp``."""

from __future__ import annotations

import os
from pathlib import Path

from zerogate.model.objects import Settings


def serve(config: Path | None, settings: Settings, *, workers: int = 1, demo: bool = False) -> None:
    """Block serving ``listen.http`` until interrupted."""
    from granian.constants import Interfaces
    from granian.server import Server

    if config is not None:
        os.environ["ZEROGATE_CONFIG"] = str(config.resolve())
    if demo:
        os.environ["ZEROGATE_DEMO"] = "1"
    host, _, port = settings.listen.http.rpartition(":")
    tls = settings.listen.tls
    base = config.resolve().parent if config is not None else Path.cwd()

    def resolve(p: str) -> Path:
        path = Path(p)
        return path if path.is_absolute() else base / path

    server = Server(
        "zerogate.server.app:create_app",
        address=host.strip("[]") or "0.0.0.0",  # noqa: S104 - the operator chose to listen there
        port=int(port),
        interface=Interfaces.ASGI,
        workers=workers,
        factory=True,
        log_access=False,
        ssl_cert=resolve(tls.cert) if tls else None,
        ssl_key=resolve(tls.key) if tls else None,
        websockets=True,
    )
    server.serve()
