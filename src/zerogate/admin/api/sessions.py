"""Portal sessions: list anyone's active sessions and end one (its tokens stop working on
every server within a second)."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, Field

from zerogate.admin.api.common import PREFIX, actor
from zerogate.admin.service import AdminService
from zerogate.runtime.devices import device_of
from zerogate.store import Session


class PortalSessionOut(BaseModel):
    id: str = Field(description="the session's id (the sid claim of its tokens)")
    email: str
    idp: str = Field(description="the identity provider it signed in with")
    device: str = Field(description='read from the User-Agent, e.g. "Firefox on Windows"')
    user_agent: str | None
    ip: str | None = Field(description="the address it was last seen from")
    created_at: datetime = Field(description="when it signed in")
    last_seen_at: datetime = Field(description="when it was last used (written once a minute)")
    expires_at: datetime


def session_out(session: Session) -> PortalSessionOut:
    return PortalSessionOut(
        id=session.id,
        email=session.email,
        idp=session.idp,
        device=device_of(session.user_agent),
        user_agent=session.user_agent,
        ip=session.ip,
        created_at=session.created_at,
        last_seen_at=session.seen_at,
        expires_at=session.expires_at,
    )


def router(service: AdminService) -> APIRouter:
    sessions_router = APIRouter()

    @sessions_router.get(
        f"{PREFIX}/sessions",
        response_model=list[PortalSessionOut],
        operation_id="list_sessions",
        tags=["sessions"],
        summary="The active portal sessions, most recently seen first",
    )
    async def list_sessions(
        email: Annotated[
            str | None,
            Query(max_length=320, description="only this address's (and its subaddresses')"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    ) -> list[PortalSessionOut]:
        found = await service.sessions(email=email, limit=limit)
        return [session_out(s) for s in found]

    @sessions_router.delete(
        f"{PREFIX}/sessions/{{session_id}}",
        status_code=204,
        response_class=Response,
        operation_id="end_session",
        tags=["sessions"],
        summary="End a session: its tokens stop working on every server within a second",
        description='Recorded in the admin log. "Log out everywhere" of an address stays the '
        "portal's sign-out.",
    )
    async def end_session(
        session_id: Annotated[str, Path(max_length=100)], request: Request
    ) -> Response:
        await service.end_session(session_id, actor(request))
        return Response(status_code=204)

    return sessions_router
