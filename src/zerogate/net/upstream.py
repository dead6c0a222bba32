"""The one seam every upstream implements: an origin URL, a tunnel, a relay to another edge.

The edge pipeline decides, builds an :class:`Outbound` and hands the exchange to whichever
:class:`Upstream` serves the application, the way every httpx transport implements
``handle_async_request``. An upstream that cannot take the request before anything reached the
client raises :class:`UpstreamUnavailable` (the pipeline answers its 502 page) or
:class:`UpstreamRefused` (400 / 431, or a WebSocket close 1008); anything after the response
started is the upstream's own to finish or cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from zerogate.net.asgi import Headers, Receive, Scope, Send


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long an upstream waits, in seconds (``None``: not set here, the default applies).

    ``connect``: to get a connection to the origin (a free pooled one, or a new one);
    ``response``: for the response head once the request was sent; ``idle``: with no byte
    either way once the response started (and while an upload waits to drain). One that
    expires frees the origin connection for good: it is closed, never reused.
    """

    connect: float | None = None
    response: float | None = None
    idle: float | None = None

    def over(self, default: Timeouts) -> Timeouts:
        """These values, each unset one taken from ``default``."""
        return Timeouts(
            self.connect if self.connect is not None else default.connect,
            self.response if self.response is not None else default.response,
            self.idle if self.idle is not None else default.idle,
        )


#: what an upstream uses when neither the settings nor the application say otherwise
DEFAULT_TIMEOUTS = Timeouts(connect=10.0, response=60.0, idle=60.0)


@dataclass(frozen=True, slots=True)
class Outbound:
    """An allowed request, ready to leave."""

    #: where to: the origin (``http://…``, ``https://…``, ``unix:/…``) or the tunnel's name
    to: str
    #: the request target as the client sent it (path and query; each upstream checks it
    #: with :func:`zerogate.net.http.request_target`)
    path_qs: str | bytes
    #: what the upstream receives (``zerogate.net.headers.upstream_request_headers``)
    headers: Headers
    #: the Host the client named and the scheme it used (a tunnel carries them as pseudo-headers)
    authority: str = ""
    scheme: str = "http"
    #: the application's own timeouts (each unset one: the upstream's default)
    timeouts: Timeouts | None = None

    def timeouts_over(self, default: Timeouts) -> Timeouts:
        """The timeouts this request gets: the application's, else ``default``."""
        own = self.timeouts
        return default if own is None else own.over(default)


class UpstreamUnavailable(Exception):
    """Nothing was sent to the client: no way to the application right now (the message says
    why, for the 502 page)."""


class UpstreamRefused(Exception):
    """The request cannot be carried (a bad target or header, a header block too large);
    nothing was sent to the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Upstream(Protocol):
    """Relays one allowed ASGI exchange to where the application lives."""

    async def forward_http(self, scope: Scope, receive: Receive, send: Send, out: Outbound) -> int:
        """Relay one HTTP exchange; the status sent to the client (499: the client left)."""
        ...

    async def forward_websocket(
        self, scope: Scope, receive: Receive, send: Send, out: Outbound
    ) -> None:
        """Relay one WebSocket session."""
        ...
