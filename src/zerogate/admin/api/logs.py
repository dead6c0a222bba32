"""The access log and the admin log, newest first; mail health and the certificates of
automatic HTTPS (both with what the access log recorded)."""

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from zerogate.admin.api.common import PREFIX, utc
from zerogate.admin.service import EXPORT_FORMATS, AdminService, Invalid
from zerogate.store import (
    ACCESS_DECISIONS,
    ACCESS_KINDS,
    AccessFilter,
    access_filter,
    cursor_of,
)

DECISIONS_TEXT = "only this decision: " + ", ".join(ACCESS_DECISIONS)
KINDS_TEXT = "only this kind: " + ", ".join(ACCESS_KINDS)
STATUS_TEXT = "only this status (502) or class (5xx)"
SINCE_TEXT = "at or after: a duration back from now (30m, 7d) or an ISO 8601 time"
UNTIL_TEXT = "before: a duration back from now or an ISO 8601 time"
CURSOR_TEXT = "the next_cursor of the previous page"


def export_response(service: AdminService, filters: AccessFilter, fmt: str) -> StreamingResponse:
    """The export as a download (``Content-Disposition``), shared by the API and the panel."""
    if fmt not in EXPORT_FORMATS:
        raise Invalid(f"format: {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    return StreamingResponse(
        service.export_access(filters, fmt),
        media_type=media,
        headers={
            "content-disposition": f'attachment; filename="zerogate-access-{stamp}.{fmt}"',
            "cache-control": "no-store",
        },
    )


class AccessEventOut(BaseModel):
    id: int | None
    at: datetime
    kind: str
    app: str | None
    email: str | None
    idp: str | None
    ip: str | None
    country: str | None
    decision: str = Field(description="one of " + ", ".join(ACCESS_DECISIONS))
    policy: str | None
    method: str | None
    host: str | None
    path: str | None
    detail: str | None
    status: int | None = Field(
        description="the status the client got for a forwarded request (the origin's, or "
        "zerogate's 502 / 504 when the origin failed); null when no response went out"
    )
    duration_ms: float | None = Field(description="from the decision to the response's end")
    count: int = Field(description="requests this row stands for (aggregated rows: more)")


class AccessLogOut(BaseModel):
    events: list[AccessEventOut]
    next_cursor: str | None = Field(
        description="pass as cursor for the next (older) page; null on the last page"
    )


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


class CertificateOut(BaseModel):
    host: str = Field(description="the hostname (``*.`` for a wildcard)")
    state: str = Field(description="valid, renewing (past two thirds), expired or missing")
    issuer: str | None = Field(description="the CA's name; null: no certificate stored yet")
    not_before: datetime | None
    not_after: datetime | None
    renew_at: datetime | None = Field(description="when renewal begins (two thirds in)")
    updated_at: datetime | None = Field(description="when this certificate was stored")
    last_error: str | None = Field(description="the latest failed order since it was stored")
    last_error_at: datetime | None


class CertificatesOut(BaseModel):
    certificates: list[CertificateOut]


#: how many entries a page holds
Limit = Annotated[int, Query(ge=1, le=1000)]


def router(service: AdminService) -> APIRouter:
    logs = APIRouter()

    def where(
        app_name: str | None,
        email: str | None,
        decision: str | None,
        kind: str | None,
        ip: str | None,
        status: str | None,
        since: str | None,
        until: str | None,
        cursor: str | None,
    ) -> AccessFilter:
        try:
            return access_filter(
                now=datetime.now(UTC),
                app=app_name,
                email=email,
                decision=decision,
                kind=kind,
                ip=ip,
                status=status,
                since=since,
                until=until,
                cursor=cursor,
            )
        except ValueError as exc:
            raise Invalid(str(exc)) from None

    @logs.get(
        f"{PREFIX}/access-log",
        response_model=AccessLogOut,
        operation_id="access_log",
        tags=["logs"],
        summary="Logins and allowed, blocked or sent-to-login requests, newest first",
    )
    async def access_log(
        app_name: Annotated[str | None, Query(alias="app")] = None,
        email: str | None = None,
        decision: Annotated[str | None, Query(description=DECISIONS_TEXT)] = None,
        kind: Annotated[str | None, Query(description=KINDS_TEXT)] = None,
        ip: str | None = None,
        status: Annotated[str | None, Query(description=STATUS_TEXT)] = None,
        since: Annotated[str | None, Query(description=SINCE_TEXT)] = None,
        until: Annotated[str | None, Query(description=UNTIL_TEXT)] = None,
        cursor: Annotated[str | None, Query(description=CURSOR_TEXT)] = None,
        limit: Limit = 100,
    ) -> AccessLogOut:
        filters = where(app_name, email, decision, kind, ip, status, since, until, cursor)
        events = await service.access_log(filters, limit=limit + 1)
        more = len(events) > limit
        events = events[:limit]
        return AccessLogOut(
            events=[AccessEventOut(**vars(e)) for e in events],
            next_cursor=cursor_of(events[-1]) if more else None,
        )

    @logs.get(
        f"{PREFIX}/access-log/export",
        operation_id="access_log_export",
        tags=["logs"],
        summary="Every matching access-log row as CSV or JSON lines, newest first",
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"text/csv": {}, "application/x-ndjson": {}},
                "description": "CSV with a header row, or one JSON object per line",
            }
        },
    )
    async def access_log_export(
        fmt: Annotated[str, Query(alias="format", description="csv or jsonl")] = "csv",
        app_name: Annotated[str | None, Query(alias="app")] = None,
        email: str | None = None,
        decision: Annotated[str | None, Query(description=DECISIONS_TEXT)] = None,
        kind: Annotated[str | None, Query(description=KINDS_TEXT)] = None,
        ip: str | None = None,
        status: Annotated[str | None, Query(description=STATUS_TEXT)] = None,
        since: Annotated[str | None, Query(description=SINCE_TEXT)] = None,
        until: Annotated[str | None, Query(description=UNTIL_TEXT)] = None,
    ) -> StreamingResponse:
        filters = where(app_name, email, decision, kind, ip, status, since, until, None)
        return export_response(service, filters, fmt)

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

    @logs.get(
        f"{PREFIX}/certificates",
        response_model=CertificatesOut,
        operation_id="certificates",
        tags=["logs"],
        summary="Automatic HTTPS: each hostname's certificate (issuer, validity) and last error",
    )
    async def certificates() -> CertificatesOut:
        found = await service.certificates()
        return CertificatesOut(certificates=[CertificateOut(**vars(c)) for c in found])

    return logs
