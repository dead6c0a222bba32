"""An OIDC provider's client secret (stored encrypted, never shown back) and its "test
connection", the same as the panel's."""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from zerogate.admin.api.common import PREFIX, actor
from zerogate.admin.idp_check import aiohttp_fetch, callback_url, check_oidc
from zerogate.admin.service import AdminService, Invalid
from zerogate.identity.oidc import Fetch
from zerogate.model.objects import Settings


class ClientSecretIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    client_secret: str = Field(
        min_length=1,
        max_length=4096,
        description="stored encrypted with the server secret and bound to the provider's "
        "issuer; never returned by any endpoint",
    )


class CheckOut(BaseModel):
    ok: bool
    message: str


class ConnectionTestOut(BaseModel):
    ok: bool = Field(description="every check passed")
    url: str = Field(description="the discovery document's URL")
    checks: list[CheckOut]
    endpoints: dict[str, str] | None = None
    algorithms: list[str] | None = None


def router(
    service: AdminService, settings: Settings | None, fetch: Fetch = aiohttp_fetch
) -> APIRouter:
    oidc = APIRouter()
    path = f"{PREFIX}/identity-providers/{{name}}"

    @oidc.put(
        f"{path}/client-secret",
        status_code=204,
        response_class=Response,
        operation_id="set_client_secret",
        tags=["identity-providers"],
        summary="Store an OIDC provider's client secret (encrypted; never shown back)",
    )
    async def set_secret(
        name: Annotated[str, Path()], body: Annotated[ClientSecretIn, Body()], request: Request
    ) -> Response:
        await service.set_oidc_secret(name, body.client_secret, actor(request))
        return Response(status_code=204)

    @oidc.delete(
        f"{path}/client-secret",
        status_code=204,
        response_class=Response,
        operation_id="delete_client_secret",
        tags=["identity-providers"],
        summary="Remove an OIDC provider's stored client secret",
    )
    async def delete_secret(name: Annotated[str, Path()], request: Request) -> Response:
        await service.set_oidc_secret(name, None, actor(request))
        return Response(status_code=204)

    @oidc.post(
        f"{path}/test",
        response_model=ConnectionTestOut,
        operation_id="test_identity_provider",
        tags=["identity-providers"],
        summary="Test an OIDC provider: discovery, signing keys, the client id and secret",
    )
    async def test(name: Annotated[str, Path()]) -> ConnectionTestOut:
        item = await service.get("identity_providers", name)
        if item.spec.get("type") != "oidc":
            raise Invalid(f"identity provider {name!r} is not an OpenID Connect provider")
        callback = callback_url(settings, name)
        result: dict[str, Any] = await check_oidc(service, fetch, item.spec, callback=callback)
        return ConnectionTestOut(
            ok=result["ok"],
            url=result["url"],
            checks=[CheckOut(ok=ok, message=message) for ok, message in result["checks"]],
            endpoints=result.get("endpoints"),
            algorithms=result.get("algorithms"),
        )

    return oidc
