"""What every router of the admin API shares: the error model and the error responses every
operation documents, the version a write is based on (``If-Match``), the caller's actor, the
``?force`` flag, and the small conversions between the service's items and JSON.

Deliberately no ``from __future__ import annotations`` (nor in the routers): FastAPI reads the
parameter annotations at definition time, some of them model classes held in variables.
"""

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import Query, Request, Response
from pydantic import BaseModel, Field

from zerogate.admin.principal import Principal, principal_of
from zerogate.admin.service import Actor, AdminError, Invalid, Item
from zerogate.model.loader import Problem

PREFIX = "/api/v1"
#: the largest request body the API reads (bigger ones get 413)
MAX_BODY = 1024 * 1024


class ProblemOut(BaseModel):
    where: str = Field(
        description="the object and field, e.g. "
        "application 'wiki' › policy 'p' › include[0].group[0]"
    )
    message: str


class ErrorOut(BaseModel):
    error: str
    detail: str | None = None
    problems: list[ProblemOut] = Field(default_factory=list)
    login_url: str | None = None


Origin = Literal["file", "api", "panel", "cli"]


class Versioned(BaseModel):
    version: int = Field(
        description="the configuration version that last changed this object; send it back "
        "as If-Match to change or delete it"
    )
    changed_via: Origin = Field(
        description="where this object was last added or changed: file (zerogate apply), "
        "api, panel or cli (a zerogate command such as tunnel create)"
    )
    managed_by_file: bool = Field(
        description="the last zerogate apply from a file listed this object: the next one "
        "overwrites a change made here, and removes the object once the file no longer lists "
        "it; objects not managed by the file are kept by apply unless --prune"
    )


class PutVersion(BaseModel):
    version: int | None = Field(
        default=None, description="the version this change is based on (or send If-Match)"
    )
    changed_via: Origin | None = Field(
        default=None, description="read-only (what a GET answered may be sent back): ignored"
    )
    managed_by_file: bool | None = Field(
        default=None, description="read-only (what a GET answered may be sent back): ignored"
    )


class PreconditionRequired(AdminError):
    status = 428


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": text}
    for status, text in (
        (400, "a malformed request (e.g. an unsafe path such as one holding %5C or %2F)"),
        (401, "no valid API token or admin session"),
        (403, "not an administrator, a read-only token writing, or a missing CSRF header"),
        (404, "no such object"),
        (409, "the object changed since the version given, or the name is taken"),
        (422, "the request or the resulting configuration is not valid"),
        (428, "the version (If-Match) is missing"),
        (503, "the store cannot be reached"),
    )
}

_ETAG = re.compile(r'\s*(?:W/)?"?(\d{1,18})"?\s*')


def wanted_version(if_match: str | None, body_version: int | None) -> int:
    """The version a write is based on: ``If-Match`` (an ETag) or the body's ``version``."""
    if if_match is not None and if_match.strip():
        match = _ETAG.fullmatch(if_match)
        if match is None:
            raise Invalid(
                'If-Match must be the object\'s ETag, e.g. "12"',
                [Problem("If-Match", f"{if_match[:40]!r} is not a version")],
            )
        version = int(match.group(1))
        if body_version is not None and body_version != version:
            raise Invalid(
                "If-Match and the body's version differ",
                [Problem("version", f"{body_version} but If-Match says {version}")],
            )
        return version
    if body_version is not None:
        return body_version
    raise PreconditionRequired(
        'send the version this change is based on: If-Match: "N" with the object\'s ETag '
        "(or a version field), so a change made meanwhile is not overwritten"
    )


def problems_out(problems: list[Problem]) -> list[dict[str, str]]:
    return [{"where": p.where, "message": p.message} for p in problems]


def etag(response: Response, version: int) -> None:
    response.headers["ETag"] = f'"{version}"'


def principal(request: Request) -> Principal:
    return principal_of(request.scope)


def actor(request: Request, force: bool = False) -> Actor:
    """The service's actor for this request (a session is guarded against locking itself out
    unless ``force``)."""
    return Actor.of(principal(request), force=force)


#: ``?force=true`` on every configuration write: skip the lock-out guard
Force = Annotated[
    bool,
    Query(
        description="with a browser session: save even if the change removes your own admin "
        "access (the lock-out guard answers 422 otherwise); ignored for API tokens"
    ),
]


def spec_of(body: Any) -> dict[str, Any]:
    """A request body as the service's spec (the YAML fields, without ``version``)."""
    data: dict[str, Any] = body.model_dump(mode="json", by_alias=True, exclude_none=True)
    for key in ("version", "changed_via", "managed_by_file"):
        data.pop(key, None)
    return data


def ownership(item: Item) -> dict[str, Any]:
    """The fields every configured object answers with besides its spec."""
    return {"version": item.version, "changed_via": item.origin, "managed_by_file": item.managed}


def item_out(item: Item, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A configured object as JSON: its spec, the extra fields, its version and ownership."""
    return {**item.spec, **(extra or {}), **ownership(item)}


def utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
