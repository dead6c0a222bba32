"""The configured objects' generic CRUD: groups, applications, identity providers, tunnels (with
their connector connections) and service tokens (with their credential's dates). One
``collection`` call registers list / create / get / replace / delete for one kind.
"""

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response
from pydantic import BaseModel, Field

from zerogate.admin.api.common import (
    PREFIX,
    Force,
    PutVersion,
    Versioned,
    actor,
    etag,
    item_out,
    spec_of,
    wanted_version,
)
from zerogate.admin.service import AdminService, Item
from zerogate.model.objects import (
    Application,
    Group,
    OidcProvider,
    OneTimePinProvider,
    ServiceToken,
    Tunnel,
    default_audience,
)


class GroupOut(Group, Versioned):
    pass


class GroupPut(Group, PutVersion):
    pass


class ApplicationOut(Application, Versioned):
    audience: str = Field(
        description="the aud claim of this application's Zerogate-Jwt-Assertion (stable across "
        "renames; see docs/verify-jwt.md)"
    )


class ApplicationPut(Application, PutVersion):
    pass


class OneTimePinProviderOut(OneTimePinProvider, Versioned):
    pass


class OidcProviderOut(OidcProvider, Versioned):
    client_secret_stored: bool = Field(
        default=False,
        description="a client secret was stored through the panel or API (never shown); "
        "client_secret_env, when set on the server, is used first",
    )


class OneTimePinProviderPut(OneTimePinProvider, PutVersion):
    pass


class OidcProviderPut(OidcProvider, PutVersion):
    client_secret_stored: bool | None = Field(
        default=None, exclude=True, description="read-only: ignored (a GET's body can be PUT back)"
    )


IdentityProviderIn = Annotated[OneTimePinProvider | OidcProvider, Field(discriminator="type")]
IdentityProviderOut = Annotated[
    OneTimePinProviderOut | OidcProviderOut, Field(discriminator="type")
]
IdentityProviderPut = Annotated[
    OneTimePinProviderPut | OidcProviderPut, Field(discriminator="type")
]


class ConnectionOut(BaseModel):
    edge_id: str
    connection_id: str
    connector_id: str
    connector_version: str
    address: str
    connection_index: int
    since: datetime
    seen_at: datetime


class TunnelOut(Tunnel, Versioned):
    status: Literal["healthy", "down"] = Field(
        description="healthy while at least one connector connection is live"
    )
    connections: list[ConnectionOut] = Field(default_factory=list)


class TunnelPut(Tunnel, PutVersion):
    pass


class ServiceTokenOut(ServiceToken, Versioned):
    client_id: str | None = Field(default=None, description="null until a credential exists")
    created_at: datetime | None = None
    expires_at: datetime | None = None


class ServiceTokenPut(ServiceToken, PutVersion):
    pass


Extra = Callable[[list[Item]], Awaitable[list[dict[str, Any]]]]


async def application_extra(items: list[Item]) -> list[dict[str, Any]]:
    """Every application's audience (``aud`` of its tokens), also when derived from its name."""
    return [
        {"audience": item.spec.get("audience") or default_audience(item.name)} for item in items
    ]


def idp_extra(service: AdminService) -> Extra:
    """Whether an OIDC provider has a stored client secret (never the secret)."""

    async def extra(items: list[Item]) -> list[dict[str, Any]]:
        stored = await service.oidc_secrets_stored()
        return [
            {"client_secret_stored": item.name in stored} if item.spec.get("type") == "oidc" else {}
            for item in items
        ]

    return extra


def tunnel_extra(service: AdminService) -> Extra:
    """A tunnel's status and its live connector connections."""

    async def extra(items: list[Item]) -> list[dict[str, Any]]:
        connections = await service.connections()
        result = []
        for item in items:
            mine = [
                {
                    "edge_id": c.edge_id,
                    "connection_id": c.connection_id,
                    "connector_id": c.connector_id,
                    "connector_version": c.version,
                    "address": c.address,
                    "connection_index": c.connection_index,
                    "since": c.since,
                    "seen_at": c.seen_at,
                }
                for c in connections
                if c.tunnel == item.name
            ]
            result.append({"status": "healthy" if mine else "down", "connections": mine})
        return result

    return extra


def token_extra(service: AdminService) -> Extra:
    """A service token's client id and credential dates (null before it has one)."""

    async def extra(items: list[Item]) -> list[dict[str, Any]]:
        creds = await service.service_credentials()
        result = []
        for item in items:
            cred = creds.get(item.name)
            result.append(
                {
                    "client_id": cred.client_id if cred else None,
                    "created_at": cred.created_at if cred else None,
                    "expires_at": cred.expires_at if cred else None,
                }
            )
        return result

    return extra


def collection(
    router: APIRouter,
    service: AdminService,
    url: str,
    collection: str,
    what: str,
    model_in: Any,
    model_put: Any,
    model_out: Any,
    extra: Extra | None = None,
    *,
    create: bool = True,
) -> None:
    """Register the CRUD operations of one kind of object on ``router``."""
    path = f"{PREFIX}/{url}"
    tag = url

    async def enrich(items: list[Item]) -> list[dict[str, Any]]:
        extras = await extra(items) if extra is not None else [{} for _ in items]
        return [item_out(i, e) for i, e in zip(items, extras, strict=True)]

    async def list_items() -> list[dict[str, Any]]:
        return await enrich(await service.items(collection))

    async def get_item(name: Annotated[str, Path()], response: Response) -> dict[str, Any]:
        item = await service.get(collection, name)
        etag(response, item.version)
        return (await enrich([item]))[0]

    async def create_item(
        body: Annotated[model_in, Body()],
        request: Request,
        response: Response,
        force: Force = False,
    ) -> dict[str, Any]:
        item = await service.create(collection, spec_of(body), actor(request, force))
        etag(response, item.version)
        response.headers["Location"] = f"{path}/{quote(item.name, safe='')}"
        return (await enrich([item]))[0]

    async def put_item(
        name: Annotated[str, Path()],
        body: Annotated[model_put, Body()],
        request: Request,
        response: Response,
        if_match: Annotated[str | None, Header()] = None,
        force: Force = False,
    ) -> dict[str, Any]:
        version = wanted_version(if_match, body.version)
        item = await service.update(
            collection, name, spec_of(body), version=version, actor=actor(request, force)
        )
        etag(response, item.version)
        return (await enrich([item]))[0]

    async def delete_item(
        name: Annotated[str, Path()],
        request: Request,
        if_match: Annotated[str | None, Header()] = None,
        version: Annotated[int | None, Query(ge=0)] = None,
        force: Force = False,
    ) -> Response:
        base = wanted_version(if_match, version)
        await service.delete(collection, name, version=base, actor=actor(request, force))
        return Response(status_code=204)

    common: dict[str, Any] = {"tags": [tag], "response_model_exclude_none": True}
    router.get(
        path,
        response_model=list[model_out],
        operation_id=f"list_{collection}",
        summary=f"List the {what}s",
        **common,
    )(list_items)
    if create:
        router.post(
            path,
            response_model=model_out,
            status_code=201,
            operation_id=f"create_{collection}",
            summary=f"Add a {what}",
            **common,
        )(create_item)
    router.get(
        f"{path}/{{name}}",
        response_model=model_out,
        operation_id=f"get_{collection}",
        summary=f"One {what}",
        **common,
    )(get_item)
    router.put(
        f"{path}/{{name}}",
        response_model=model_out,
        operation_id=f"replace_{collection}",
        summary=f"Replace a {what} (If-Match: its version; a new name renames it)",
        **common,
    )(put_item)
    router.delete(
        f"{path}/{{name}}",
        status_code=204,
        response_class=Response,
        operation_id=f"delete_{collection}",
        summary=f"Delete a {what} (If-Match: its version)",
        tags=[tag],
    )(delete_item)


def router(service: AdminService) -> APIRouter:
    """The objects' routes (service tokens are created in ``tokens``: the secret, once)."""
    objects = APIRouter()
    collection(objects, service, "groups", "groups", "group", Group, GroupPut, GroupOut)
    collection(
        objects,
        service,
        "applications",
        "applications",
        "application",
        Application,
        ApplicationPut,
        ApplicationOut,
        application_extra,
    )
    collection(
        objects,
        service,
        "identity-providers",
        "identity_providers",
        "identity provider",
        IdentityProviderIn,
        IdentityProviderPut,
        IdentityProviderOut,
        idp_extra(service),
    )
    collection(
        objects,
        service,
        "tunnels",
        "tunnels",
        "tunnel",
        Tunnel,
        TunnelPut,
        TunnelOut,
        tunnel_extra(service),
    )
    collection(
        objects,
        service,
        "service-tokens",
        "service_tokens",
        "service token",
        ServiceToken,
        ServiceTokenPut,
        ServiceTokenOut,
        token_extra(service),
        create=False,
    )
    return objects
