"""The access log and the admin log, newest first; mail health (from the access log)."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from zerogate.admin.api.common import PREFIX, utc
from zerogate.admin.service import AdminService


class AccessEventOut(BaseModel):
    id: int | None
    at: datetime
    kind: str
    app: str | None
    email: str | None
    idp: str | None
    ip: str | None
    country: str | None
    decision: str
    policy: str | None
    method: str | None
    host: str | None
    path: str | None
    detail: str | None


class AccessLogOut(BaseModel):
    events: list[AccessEventOut]


class AdminLogEntryOut(BaseModel):
    id: int
    at: datetime
    actor: str = Field(description="an email, api-token:NAME or cli:USER")
    source: str | None = Field(description="the client address the change came from")
    action: str
    kind: str | None
    name: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    version: int | None


class AdminLogOut(BaseModel):
    entries: list[AdminLogEntryOut]


class MailHealthOut(BaseModel):
    mode: str = Field(description="smtp, outbox (a trial: nobody gets the mail) or none")
    transport: str = Field(description="how PIN mail leaves, in words")
    healthy: bool | None = Field(
        description="false after a failed send or without a way to send; null: nothing sent yet"
    )
    outcome: str | None = Field(description="the latest: sent, failed or reachable")
    at: datetime | None
    detail: str | None = Field(description="the server's reply, or why it failed")
    last_sent_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None


#: how many entries a page holds
Limit = Annotated[int, Query(ge=1, le=1000)]


def router(service: AdminService) -> APIRouter:
    logs = APIRouter()

    @logs.get(
        f"{PREFIX}/access-log",
        response_model=AccessLogOut,
        operation_id="access_log",
        tags=["logs"],
        summary="Logins and allowed or blocked requests, newest first",
    )
    async def access_log(
        app_name: Annotated[str | None, Query(alias="app")] = None,
        email: str | None = None,
        decision: str | None = None,
        since: datetime | None = None,
        limit: Limit = 100,
    ) -> AccessLogOut:
        events = await service.access_log(
            app=app_name, email=email, decision=decision, since=utc(since), limit=limit
        )
        return AccessLogOut(events=[AccessEventOut(**vars(e)) for e in events])

    @logs.get(
        f"{PREFIX}/admin-log",
        response_model=AdminLogOut,
        operation_id="admin_log",
        tags=["logs"],
        summary="Admin changes (who, when, from where, before → after), newest first",
    )
    async def admin_log(since: datetime | None = None, limit: Limit = 100) -> AdminLogOut:
        entries = await service.admin_log(limit, since=utc(since))
        return AdminLogOut(entries=[AdminLogEntryOut(**vars(e)) for e in entries])

    @logs.get(
        f"{PREFIX}/mail-health",
        response_model=MailHealthOut,
        operation_id="mail_health",
        tags=["logs"],
        summary="PIN mail: how it leaves, the latest send's outcome and the latest failure",
    )
    async def mail_health() -> MailHealthOut:
        health = await service.mail_health()
        return MailHealthOut(**vars(health), healthy=health.healthy)

    return logs
