"""The connector token the web panel makes for a tunnel and shows once.

The tunnel object (name, routes) goes through ``AdminService`` like every other change; its
credential (random tunnel id + SHA-256 of the secret, ``zerogate.tunnel.token``) is runtime
state written to the store, in the same shape ``zerogate tunnel create`` / ``token --rotate``
make it (a rotation keeps the tunnel id). A connector token also names the edges' tunnel
addresses and pins the fingerprint of the listener's generated certificate; both come from the
server's settings through ``zerogate.tunnel.edge`` (``token_edges``, ``cert_hosts``), the same
functions the CLI uses, and the certificate is the one kept in the store (made here when no
edge made it yet — the first writer wins, every edge presents that one). With ``listen.tls``
configured there is no fingerprint: the connector verifies the chain.

(Service-token credentials are made by ``AdminService.create_service_token`` /
``rotate_service_token``, shared with the CLI and the API.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from zerogate.model.objects import Settings
from zerogate.store import Store, TunnelCredential
from zerogate.tunnel import certs
from zerogate.tunnel import token as tunnel_token

#: tunnel name -> a new connector token (its credential already stored)
ConnectorTokenFactory = Callable[[str], Awaitable[str]]


def token_edges(settings: Settings | None) -> tuple[str, ...]:
    """The edge addresses a token names (none when the panel was not given the settings)."""
    if settings is None:
        return ()
    from zerogate.tunnel.edge import token_edges as edges_of

    return tuple(edges_of(settings))


async def listener_fingerprint(store: Store, settings: Settings | None) -> str | None:
    """The generated listener certificate's fingerprint (made now if missing); ``None`` when
    ``listen.tls`` names a certificate."""
    if settings is not None and settings.listen.tls is not None:
        return None
    from zerogate.tunnel.edge import cert_hosts

    hosts = cert_hosts(settings) if settings is not None else ["localhost", "127.0.0.1"]
    stored = await store.named_secret(certs.SECRET_NAME, certs.generate(hosts).to_json())
    return certs.GeneratedCert.from_json(stored).fingerprint


@dataclass(frozen=True)
class StoreConnectorTokens:
    """Makes a connector token: a new secret per call (replacing the tunnel's previous one,
    which disconnects its connectors), the tunnel id kept when it had a credential."""

    store: Store
    settings: Settings | None = None

    async def __call__(self, name: str) -> str:
        secret = tunnel_token.new_secret()
        now = datetime.now(UTC).replace(microsecond=0)
        old = next((c for c in await self.store.tunnel_credentials() if c.name == name), None)
        cred = TunnelCredential(
            name=name,
            tunnel_id=old.tunnel_id if old else tunnel_token.new_tunnel_id(),
            secret_hash=tunnel_token.hash_secret(secret),
            created_at=old.created_at if old else now,
            rotated_at=now,
        )
        await self.store.put_tunnel_credential(cred)
        fingerprint = await listener_fingerprint(self.store, self.settings)
        edges = token_edges(self.settings)
        return tunnel_token.TunnelToken(cred.tunnel_id, secret, edges, fingerprint).encode()
