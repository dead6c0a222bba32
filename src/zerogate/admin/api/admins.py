"""The ``admins`` list: who may use the admin surface."""

from typing import Annotated

from fastapi import APIRouter, Body, Header, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from zerogate.admin.api.common import PREFIX, Force, actor, etag, wanted_version
from zerogate.admin.service import AdminService


class AdminsOut(BaseModel):
    admins: list[str] = Field(description="emails or group:NAME")
    version: int = Field(description="0 while the list was never set")


class AdminsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    admins: list[str]
    version: int | None = Field(default=None, description="or send If-Match")


def router(service: AdminService) -> APIRouter:
    admins_router = APIRouter()

    @admins_router.get(
        f"{PREFIX}/admins", response_model=AdminsOut, operation_id="get_admins", tags=["admins"]
    )
    async def get_admins(response: Response) -> AdminsOut:
        admins, version = await service.admins()
        etag(response, version)
        return AdminsOut(admins=admins, version=version)

    @admins_router.put(
        f"{PREFIX}/admins",
        response_model=AdminsOut,
        operation_id="replace_admins",
        tags=["admins"],
        summary="Replace the admins list (If-Match: its version, 0 before it was ever set)",
        description="With a session (not an API token), a list that would remove the caller's "
        "own admin access is refused with 422 unless `?force=true` (as is every configuration "
        "write that would).",
    )
    async def put_admins(
        body: Annotated[AdminsIn, Body()],
        request: Request,
        response: Response,
        if_match: Annotated[str | None, Header()] = None,
        force: Force = False,
    ) -> AdminsOut:
        base = wanted_version(if_match, body.version)
        await service.set_admins(body.admins, version=base, actor=actor(request, force))
        admins, version = await service.admins()
        etag(response, version)
        return AdminsOut(admins=admins, version=version)

    return admins_router
