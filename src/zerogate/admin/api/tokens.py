"""Credentials, each shown only once: a service token's client id and secret (create, rotate),
a tunnel's connector token, and the API's own Bearer tokens (list, create, revoke)."""

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from zerogate.admin.api.common import PREFIX, Force, actor, etag, ownership, spec_of
from zerogate.admin.api.objects import ServiceTokenOut
from zerogate.admin.service import AdminService, Item
from zerogate.model.objects import ServiceToken, Settings


class ServiceTokenSecret(ServiceTokenOut):
    client_secret: str = Field(description="shown only this once; the store keeps its hash")
    headers: dict[str, str] = Field(description="the two headers a client sends")


class ConnectorTokenOut(BaseModel):
    name: str
    id: str = Field(description="the tunnel id (kept when the token is rotated)")
    token: str = Field(description="the connector token; shown only this once")
    edges: list[str] = Field(description="the edge addresses the token names")
    fingerprint: str | None = Field(
        description="SHA-256 of the edge's generated tunnel certificate, pinned by the "
        "connector; null with listen.tls (the connector verifies the chain)"
    )
    rotated: bool = Field(description="true when it replaced a token (now disconnected)")
    command: str = Field(description="how to run a connector with it")


class ApiTokenOut(BaseModel):
    name: str
    read_only: bool
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    expired: bool


class ApiTokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    read_only: bool = False
    expires: str | None = Field(default=None, description="a duration such as 30d; null: never")


class ApiTokenSecret(ApiTokenOut):
    token: str = Field(description="Authorization: Bearer <token>; shown only this once")


def secret_out(item: Item, cred: Any, secret_text: str) -> ServiceTokenSecret:
    return ServiceTokenSecret(
        **item.spec,
        **ownership(item),
        client_id=cred.client_id,
        created_at=cred.created_at,
        expires_at=cred.expires_at,
        client_secret=secret_text,
        headers={"Zerogate-Client-Id": cred.client_id, "Zerogate-Client-Secret": secret_text},
    )


def token_out(token: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "name": token.name,
        "read_only": token.read_only,
        "created_by": token.created_by,
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "last_used_at": token.last_used_at,
        "expired": token.expires_at is not None and token.expires_at <= now,
    }


def credentials_router(service: AdminService, settings: Settings | None) -> APIRouter:
    """Service-token secrets and connector tokens. ``settings`` (the server's) give connector
    tokens their edge addresses and certificate fingerprint."""
    router = APIRouter()

    @router.post(
        f"{PREFIX}/service-tokens",
        response_model=ServiceTokenSecret,
        status_code=201,
        operation_id="create_service_tokens",
        tags=["service-tokens"],
        summary="Add a service token; its client id and secret are returned only this once",
    )
    async def create_service_token(
        body: Annotated[ServiceToken, Body()],
        request: Request,
        response: Response,
        force: Force = False,
    ) -> ServiceTokenSecret:
        item, cred, secret_text = await service.create_service_token(
            spec_of(body), actor(request, force)
        )
        etag(response, item.version)
        return secret_out(item, cred, secret_text)

    @router.post(
        f"{PREFIX}/service-tokens/{{name}}/rotate",
        response_model=ServiceTokenSecret,
        operation_id="rotate_service_token",
        tags=["service-tokens"],
        summary="A new client id and secret (the old pair stops working at once)",
    )
    async def rotate_service_token(
        name: Annotated[str, Path()], request: Request
    ) -> ServiceTokenSecret:
        cred, secret_text = await service.rotate_service_token(name, actor(request))
        return secret_out(await service.get("service_tokens", name), cred, secret_text)

    @router.post(
        f"{PREFIX}/tunnels/{{name}}/token",
        response_model=ConnectorTokenOut,
        status_code=201,
        operation_id="create_tunnel_token",
        tags=["tunnels"],
        summary="A new connector token (returned only this once; a previous one stops working "
        "and its connectors are disconnected)",
    )
    async def create_tunnel_token(
        name: Annotated[str, Path()], request: Request
    ) -> ConnectorTokenOut:
        issued = await service.create_tunnel_token(name, actor=actor(request), settings=settings)
        return ConnectorTokenOut(
            name=issued.name,
            id=issued.tunnel_id,
            token=issued.token,
            edges=list(issued.edges),
            fingerprint=issued.fingerprint,
            rotated=issued.rotated,
            command=issued.command(),
        )

    return router


def api_tokens_router(service: AdminService) -> APIRouter:
    """The API's Bearer tokens."""
    router = APIRouter()

    @router.get(
        f"{PREFIX}/api-tokens",
        response_model=list[ApiTokenOut],
        operation_id="list_api_tokens",
        tags=["api-tokens"],
    )
    async def list_api_tokens() -> list[dict[str, Any]]:
        return [token_out(t) for t in await service.api_tokens()]

    @router.post(
        f"{PREFIX}/api-tokens",
        response_model=ApiTokenSecret,
        status_code=201,
        operation_id="create_api_token",
        tags=["api-tokens"],
        summary="A new Bearer token for this API; the token is returned only this once",
    )
    async def create_api_token(
        body: Annotated[ApiTokenIn, Body()], request: Request
    ) -> dict[str, Any]:
        token, text = await service.create_api_token(
            body.name, read_only=body.read_only, expires=body.expires, actor=actor(request)
        )
        return {**token_out(token), "token": text}

    @router.delete(
        f"{PREFIX}/api-tokens/{{name}}",
        status_code=204,
        response_class=Response,
        operation_id="revoke_api_token",
        tags=["api-tokens"],
        summary="Revoke an API token (it stops working on its next request)",
    )
    async def revoke_api_token(name: Annotated[str, Path()], request: Request) -> Response:
        await service.revoke_api_token(name, actor(request))
        return Response(status_code=204)

    return router
