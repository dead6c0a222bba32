"""The ASGI application one server process runs: lifespan wiring and host dispatch.

granian imports ``create_app`` in every worker (``--workers N``); the configuration file's path
comes in ``ZEROGATE_CONFIG`` (set by ``zerogate server``). On startup each worker opens the
store, loads the runtime state, starts the watcher, the upstream pool, the mailer and the
access-log writer; on shutdown it flushes the access log and closes everything.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from zerogate.accesslog import AccessLogWriter
from zerogate.edge import http, pipeline
from zerogate.edge.asgi_types import Receive, Scope, Send
from zerogate.edge.proxy import Upstream
from zerogate.mail import Mailer
from zerogate.model import load_file
from zerogate.model.objects import Settings
from zerogate.outbox import Outbox
from zerogate.portal import handlers as portal
from zerogate.runtime import Runtime
from zerogate.services import Services
from zerogate.store import Store, storage_url

log = logging.getLogger("zerogate.server")


def load_settings(config: str | None) -> tuple[Settings, Path]:
    if not config:
        return Settings(), Path.cwd()
    path = Path(config)
    return load_file(path).config.settings(), path.resolve().parent


class ZerogateApp:
    """Edge + portal for one process."""

    def __init__(self, config: str | None, *, demo: bool = False) -> None:
        self.config = config
        self.demo = demo
        self.svc: Services | None = None
        self._store: Store | None = None

    async def startup(self) -> None:
        settings, base_dir = load_settings(self.config)
        store = await Store.open(storage_url(settings.storage, base_dir=base_dir))
        self._store = store
        runtime = await Runtime.load(store, settings, base_dir)
        runtime.start()
        outbox: Outbox | None = None
        if settings.email.smtp is None:
            port = int(os.environ.get("ZEROGATE_OUTBOX_PORT", "0"))
            outbox = Outbox(port=port)
            await outbox.start()
            if not self.demo:
                log.warning(
                    "email.smtp is not configured: PIN emails go to a local outbox on port %d "
                    "that only `zerogate demo` shows",
                    outbox.port,
                )
        mailer = Mailer(settings.email.smtp, settings.email.from_, outbox=outbox)
        writer = AccessLogWriter(store.write_access)
        await writer.start()
        self.svc = Services(
            runtime=runtime,
            upstream=Upstream(),
            mailer=mailer,
            accesslog=writer,
            outbox=outbox,
            show_outbox=self.demo,
        )
        self.svc.metrics.watch_access_log(writer)

    async def shutdown(self) -> None:
        svc = self.svc
        if svc is not None:
            await svc.drain()
            await svc.runtime.stop()
            await svc.accesslog.stop()
            await svc.upstream.close()
            if svc.outbox is not None:
                await svc.outbox.stop()
        if self._store is not None:
            await self._store.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        svc = self.svc
        if svc is None:
            await http.respond(send, 503, b"starting", content_type=b"text/plain")
            return
        try:
            req = pipeline.describe_request(scope, svc)
        except http.BadRequest as exc:
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await pipeline.bad_request(send, svc, scope, str(exc))
            return
        if req.host == svc.runtime.portal_host:
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


def create_app() -> ZerogateApp:
    """granian's factory: one app per worker, configured from the environment."""
    logging.basicConfig(
        level=os.environ.get("ZEROGATE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return ZerogateApp(
        os.environ.get("ZEROGATE_CONFIG") or None, demo=os.environ.get("ZEROGATE_DEMO") == "1"
    )
