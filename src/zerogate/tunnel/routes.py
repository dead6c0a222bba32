"""Which tunnel serves an application, and the addresses a tunnel listener is known by. Pure.

:class:`TunnelRoutes` is built once per configuration version (the compiled
:class:`~zerogate.policy.engine.Snapshot` gives each application its tunnel with it);
:func:`listen_address`, :func:`cert_hosts` and :func:`token_edges` derive the listener's
address, the names of its generated certificate and the edge address a new connector token
names from the settings.
"""

from __future__ import annotations

from zerogate.model.objects import Application, Objects, Settings

__all__ = ["TunnelRoutes", "cert_hosts", "listen_address", "token_edges"]


class TunnelRoutes:
    """Which tunnel an application's requests go to: built once per configuration version.

    An application reaches a tunnel only when its host is among the tunnel's ``routes``: with
    ``tunnel: NAME`` (the model refuses a host that NAME does not route), or with neither
    ``origin`` nor ``tunnel`` when a tunnel routes its host. Anything else has no tunnel, so a
    connector never gets a request for a hostname not routed to it.
    """

    __slots__ = ("_by_host",)

    def __init__(self, objects: Objects) -> None:
        by_host: dict[str, str] = {}
        for tunnel in objects.tunnels:
            for host in tunnel.routes:
                by_host.setdefault(host.lower(), tunnel.name)
        self._by_host = by_host

    def tunnel_for(self, app: Application) -> str | None:
        if app.origin is not None:
            return None
        routed = self._by_host.get(app.host.lower())
        if routed is None:
            return None
        if app.tunnel is not None and app.tunnel != routed:
            return None
        return routed


def _split_host_port(address: str) -> tuple[str, int | None]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or (host.count(":") and not host.startswith("[")):
        return address.strip("[]"), None
    return host.strip("[]"), int(port)


def listen_address(settings: Settings) -> tuple[str, int]:
    """``listen.tunnel`` as (host, port) for ``asyncio.start_server``."""
    host, port = _split_host_port(settings.listen.tunnel)
    return host or "0.0.0.0", port or 7844  # noqa: S104 - the operator chose where to listen


def _portal_host(settings: Settings) -> str:
    return _split_host_port(settings.portal_address)[0]


def cert_hosts(settings: Settings) -> list[str]:
    """The names the generated listener certificate is made for."""
    host, _ = listen_address(settings)
    hosts = [_portal_host(settings)]
    if host not in ("0.0.0.0", "::", ""):  # noqa: S104 - compared, not bound
        hosts.append(host)
    hosts += [_split_host_port(edge)[0] for edge in settings.listen.tunnel_edges]
    hosts += ["localhost", "127.0.0.1"]
    return list(dict.fromkeys(hosts))


def token_edges(settings: Settings) -> list[str]:
    """The edge addresses a new connector token names: ``listen.tunnel_edges`` (a cluster's
    edges), else ``listen.tunnel``, or the portal's host with the tunnel port when the
    listener binds every address."""
    if settings.listen.tunnel_edges:
        return list(dict.fromkeys(settings.listen.tunnel_edges))
    host, port = listen_address(settings)
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - compared, not bound
        host = _portal_host(settings)
    shown = f"[{host}]" if ":" in host else host
    return [f"{shown}:{port}"]
