"""Run the server with granian: one process per worker, each building its own ``ZerogateApp``.

Tunnels and workers: a connector's connections end on whichever worker accepted them, and
granian gives a request to any worker, so a worker without a connection to the tunnel could
not serve it. Tunnels are therefore served only by a server of one worker: with
``--workers 2`` or more, ``serve`` refuses to start while the store holds a tunnel, and the
workers never open the tunnel endpoint (``ZEROGATE_WORKERS``; a tunnel created later gets a
502 page that says why). Several processes serve tunnels as several ``zerogate server``
instances, each with its own ``listen.tunnel``, every connector dialling each of them.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from zerogate.model.objects import Settings


def _tunnels_in_store(settings: Settings, base: Path) -> list[str]:
    from zerogate.store import Store, storage_url

    async def names() -> list[str]:
        store = await Store.open(storage_url(settings.storage, base_dir=base))
        try:
            objects, _ = await store.load()
        finally:
            await store.close()
        return [t.name for t in objects.tunnels]

    return asyncio.run(names())


def serve(config: Path | None, settings: Settings, *, workers: int = 1, demo: bool = False) -> None:
    """Block serving ``listen.http`` (and ``listen.tunnel`` once a tunnel exists) until
    interrupted. Exits with code 2 when ``workers`` > 1 and the store holds tunnels."""
    from granian.constants import Interfaces
    from granian.server import Server

    base = config.resolve().parent if config is not None else Path.cwd()
    if workers > 1:
        tunnels = _tunnels_in_store(settings, base)
        if tunnels:
            sys.stderr.write(
                f"error: the store holds tunnels ({', '.join(tunnels)}), which are served only "
                "by a server of one worker: run `zerogate server --workers 1` (start more "
                "servers, each with its own listen.tunnel, to spread the load)\n"
            )
            raise SystemExit(2)
    os.environ["ZEROGATE_WORKERS"] = str(workers)
    if config is not None:
        os.environ["ZEROGATE_CONFIG"] = str(config.resolve())
    if demo:
        os.environ["ZEROGATE_DEMO"] = "1"
    host, _, port = settings.listen.http.rpartition(":")
    tls = settings.listen.tls

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
