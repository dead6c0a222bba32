"""The admin API's FastAPI application: the shared error handlers, the principal check, the
``session`` route, and one router per resource (``objects``, ``tokens``, ``policies``,
``admins``, ``logs``, ``tester``)."""

from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from zerogate import __version__
from zerogate.admin.api import (
    admins,
    logs,
    nodes,
    objects,
    oidc,
    policies,
    sessions,
    tester,
    tokens,
)
from zerogate.admin.api.common import ERRORS, MAX_BODY, PREFIX, principal, problems_out
from zerogate.admin.auth import CSRF_HEADER, csrf_token
from zerogate.admin.service import AdminError, AdminService
from zerogate.model.objects import Settings
from zerogate.store import StoreError

DESCRIPTION = (
    "Objects have the fields of zerogate's YAML configuration plus `version` (also the "
    'ETag). PUT and DELETE need `If-Match: "N"`; a stale version gets 409. '
    "Authenticate with `Authorization: Bearer zga_…` (zerogate api-token create) or "
    "an administrator's session cookie plus the X-Zerogate-CSRF header for writes."
)


class SessionOut(BaseModel):
    who: str
    via: Literal["session", "token"]
    read_only: bool
    source: str | None
    csrf_header: str = CSRF_HEADER
    csrf_token: str | None = Field(
        description="for writes with the session cookie: send it in the X-Zerogate-CSRF header"
    )


def create_api(
    service: AdminService, *, secret: bytes, settings: Settings | None = None
) -> FastAPI:
    """The FastAPI application; it serves full paths (``/api/v1/...``). ``settings`` (the
    server's) give connector tokens their edge addresses and certificate fingerprint."""
    app = FastAPI(
        title="zerogate admin API",
        version=__version__,
        description=DESCRIPTION,
        openapi_url=f"{PREFIX}/openapi.json",
        max_body_size=MAX_BODY,  # as the panel's forms: no object needs more
        docs_url=None,
        redoc_url=None,
        responses=ERRORS,
    )
    _guard_and_errors(app)

    @app.get(f"{PREFIX}/session", response_model=SessionOut, operation_id="get_session")
    async def session(request: Request) -> SessionOut:
        """Who the caller is; for a browser session also the CSRF token API writes need."""
        p = principal(request)
        return SessionOut(
            who=p.who,
            via=p.via,
            read_only=p.read_only,
            source=p.source,
            csrf_token=csrf_token(secret, p.session_id) if p.via == "session" else None,
        )

    app.include_router(objects.router(service))
    app.include_router(tokens.credentials_router(service, settings))
    app.include_router(policies.router(service))
    app.include_router(admins.router(service))
    app.include_router(tokens.api_tokens_router(service))
    app.include_router(logs.router(service))
    app.include_router(tester.router(service))
    app.include_router(sessions.router(service))
    app.include_router(nodes.router(service))
    app.include_router(oidc.router(service, settings))
    return app


def _guard_and_errors(app: FastAPI) -> None:
    """Refuse to serve without a principal; answer errors as ``ErrorOut`` JSON."""

    @app.middleware("http")
    async def require_principal(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        principal(request)  # a wiring bug must fail, never serve unauthenticated
        return await call_next(request)

    @app.exception_handler(AdminError)
    async def admin_error(request: Request, exc: AdminError) -> JSONResponse:
        return JSONResponse(
            {"error": exc.message, "problems": problems_out(exc.problems)},
            status_code=exc.status,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {
                "where": " › ".join(str(part) for part in error.get("loc", ())),
                "message": str(error.get("msg", "invalid")).removeprefix("Value error, "),
            }
            for error in exc.errors()
        ]
        return JSONResponse(
            {"error": "the request is not valid", "problems": problems}, status_code=422
        )

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"error": "store unavailable", "detail": str(exc)}, status_code=503)
