"""Connector tokens: the parts ``AdminService.create_tunnel_token`` puts together.

A tunnel is two things, like a service token: the configured object (name, routes) and its
credential (a random tunnel id + the SHA-256 of a secret, ``zerogate.tunnel.token``), runtime
state in the store. A connector token carries the tunnel id, the secret, the edges' tunnel
addresses and the fingerprint of the listener's generated certificate (none with
``listen.tls``: the connector then verifies the chain). The addresses and the certificate's
names come from the server's settings through ``zerogate.edge.tunnel`` (``token_edges``,
``cert_hosts``); the certificate is the one kept in the store, made here when no edge made it
yet (the first writer wins, so every edge presents that one).

``zerogate tunnel create/token``, the web panel and ``POST /api/v1/tunnels/{name}/token`` all
go through ``AdminService.create_tunnel_token``, which also writes the admin log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from zerogate.identity.secret_hash import SecretKind, hash_secret
from zerogate.model.objects import Settings
from zerogate.store import Store, TunnelCredential
from zerogate.tunnel import certs
from zerogate.tunnel import token as tunnel_token

#: the names of the generated certificate when no settings are known (tests, a bare panel)
DEFAULT_CERT_HOSTS = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class ConnectorToken:
    """A connector token just made: shown once (the store keeps only the secret's hash)."""

    name: str
    tunnel_id: str
    token: str = field(repr=False)
    edges: tuple[str, ...]
    fingerprint: str | None
    #: whether it replaced an earlier token (whose connectors are disconnected)
    rotated: bool

    def command(self, url: str = "http://localhost:8080") -> str:
        """The command that runs a connector with it (``--edge`` when it names none). The token
        goes into a file (mode 0600) or ``$ZEROGATE_TUNNEL_TOKEN``, never onto the command
        line, where ``ps`` and the shell history would show it."""
        edge = "" if self.edges else " --edge EDGE-HOST:7844"
        return f"zerogate connector run --token-file {self.token_file}{edge} --url {url}"

    @property
    def token_file(self) -> str:
        """Where the suggested command expects the token (a suggestion, nothing is written)."""
        return f"/etc/zerogate/{self.name}.token"


def token_edges(settings: Settings | None) -> tuple[str, ...]:
    """The edge addresses a new token names (none without the server's settings)."""
    if settings is None:
        return ()
    from zerogate.tunnel.routes import token_edges as edges_of

    return tuple(edges_of(settings))


async def listener_fingerprint(store: Store, settings: Settings | None) -> str | None:
    """The generated listener certificate's fingerprint (made now if missing); ``None`` when
    ``listen.tls`` names a certificate."""
    tls = settings.listen.tls if settings is not None else None
    if tls is not None and tls.cert is not None:
        return None
    from zerogate.tunnel.routes import cert_hosts

    hosts = cert_hosts(settings) if settings is not None else list(DEFAULT_CERT_HOSTS)
    stored = await store.named_secret(certs.SECRET_NAME, certs.generate(hosts).to_json())
    return certs.GeneratedCert.from_json(stored).fingerprint


def new_credential(
    name: str, previous: TunnelCredential | None = None
) -> tuple[TunnelCredential, str]:
    """A new secret for tunnel ``name`` and its credential to store; a rotation keeps the
    tunnel id and creation time of ``previous``."""
    secret = tunnel_token.new_secret()
    now = datetime.now(UTC).replace(microsecond=0)
    cred = TunnelCredential(
        name=name,
        tunnel_id=previous.tunnel_id if previous else tunnel_token.new_tunnel_id(),
        secret_hash=hash_secret(SecretKind.TUNNEL, secret),
        created_at=previous.created_at if previous else now,
        rotated_at=now,
    )
    return cred, secret
