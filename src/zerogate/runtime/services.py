"""What a server process holds while it runs, passed to the edge, portal and admin handlers.

One ``Services`` per process (per granian worker): the in-memory runtime (snapshot, keys,
revocations), the upstreams (the origin proxy, the tunnel listener once it runs: both only as
:class:`~zerogate.net.upstream.Upstream`, so this layer imports no surface), the mailer, the
access-log writer, the rate limits (kept in the store: ``limits``) and the page templates.
Built and torn down only by ``zerogate.server`` on ASGI lifespan.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from zerogate.accesslog import AccessLogWriter
from zerogate.mail import Mailer
from zerogate.metrics import Metrics
from zerogate.net.upstream import Upstream
from zerogate.outbox import Outbox
from zerogate.runtime.limits import SharedLimits
from zerogate.runtime.state import Runtime
from zerogate.store import AccessEvent


def templates() -> Environment:
    return Environment(
        loader=PackageLoader("zerogate.portal", "templates"),
        autoescape=select_autoescape(["html"]),
        auto_reload=False,
    )


@dataclass
class Services:
    runtime: Runtime
    #: the upstream of ``origin:`` applications (``zerogate.edge.proxy.OriginProxy``)
    upstream: Upstream
    mailer: Mailer
    accesslog: AccessLogWriter
    outbox: Outbox | None = None
    show_outbox: bool = False
    #: every rate limit (PIN sends, OIDC starts), counted in the store: one count for every
    #: process on it (``runtime/limits.py``)
    limits: SharedLimits = field(init=False)
    metrics: Metrics = field(default_factory=Metrics)
    pages: Environment = field(default_factory=templates)
    #: the tunnel endpoint of this process, once it listens (``zerogate.server.app`` starts
    #: ``zerogate.edge.tunnel.TunnelListener``); the upstream of tunnelled applications
    tunnels: Upstream | None = None
    #: why this process serves no tunnel (shown on the 502 page), when it never will
    tunnels_disabled: str | None = None

    mail_failed_at: float | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    #: after a failed send, PIN requests are answered "try again" for this long
    MAIL_RETRY_SECONDS = 60.0

    def __post_init__(self) -> None:
        self.limits = SharedLimits(self.runtime.store)

    def mail_unhealthy(self, now: float) -> bool:
        failed = self.mail_failed_at
        return failed is not None and now - failed < self.MAIL_RETRY_SECONDS

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` after the response; kept referenced until done, awaited at shutdown."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, grace: float = 30.0) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)

    def page(self, name: str, **values: object) -> str:
        return self.pages.get_template(name).render(**values)

    def log(
        self,
        kind: str,
        *,
        app: str | None,
        email: str | None,
        idp: str | None,
        ip: str | None,
        country: str | None,
        decision: str,
        policy: str | None = None,
        method: str | None = None,
        host: str | None = None,
        path: str | None = None,
        detail: str | None = None,
        status: int | None = None,
        duration_ms: float | None = None,
        repeat_key: tuple[str, str] | None = None,
    ) -> None:
        """Queue an access-log record (never blocks; a full queue is counted). With
        ``repeat_key`` (application, client address) the record is aggregated per key and
        minute (``AccessLogWriter.record_repeated``): for what a scan could send by the
        thousand."""
        event = AccessEvent(
            at=datetime.fromtimestamp(time.time(), UTC),
            kind=kind,
            app=app,
            email=email,
            idp=idp,
            ip=ip,
            country=country,
            decision=decision,
            policy=policy,
            method=method,
            host=host,
            path=path,
            detail=detail,
            status=status,
            duration_ms=duration_ms,
        )
        if repeat_key is None:
            self.accesslog.record(event)
        else:
            self.accesslog.record_repeated(repeat_key, (repeat_key[0], "*"), event)
