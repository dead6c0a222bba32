"""The ``admins`` list: who may use the admin surface."""

from typing import Annotated

from fastapi import APIRouter, Body, Header, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from zerogate.admin.api.common import PREFIX, Force, Origin, actor, etag, wanted_version
from zerogate.admin.service import AdminService


class AdminsOut(BaseModel):
    admins: list[str] = Field(description="emails or group:NAME")
    version: int = Field(description="0 while the list was never set")
    changed_via: Origin | None = Field(
        default=None, description="where the list was last changed (null: never set)"
    )
    managed_by_file: bool = Field(
        default=False,
        description="the last zerogate apply from a file listed it: the next one overwrites a "
        "change made here",
    )


async def admins_out(service: AdminService) -> AdminsOut:
    admins, version = await service.admins()
    owned = await service.admins_ownership()
    return AdminsOut(
        admins=admins,
        version=version,
        changed_via=owned[0] if owned else None,
        managed_by_file=owned[1] if owned else False,
    )


class AdminsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    admins: list[str]
    version: int | None = Field(default=None, description="or send If-Match")
    changed_via: Origin | None = Field(
        default=None, description="read-only (what a GET answered may be sent back): ignored"
    )
    managed_by_file: bool | None = Field(
        default=None, description="read-only (what a GET answered may be sent back): ignored"
    )


def router(service: AdminService) -> APIRouter:
    admins_router = APIRouter()

    @admins_router.get(
        f"{PREFIX}/admins", response_model=AdminsOut, operation_id="get_admins", tags=["admins"]
    )
    async def get_admins(response: Response) -> AdminsOut:
        out = await admins_out(service)
        etag(response, out.version)
        return out

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
        out = await admins_out(service)
        etag(response, out.version)
        return out

    return admins_router
