"""The REST API under ``/api/v1`` (FastAPI), served behind the admin front door.

Objects have the fields of the YAML file (a group posted to ``/api/v1/groups`` is the YAML group
as JSON) plus ``version``, also sent as ``ETag: "N"``. Writes go through ``AdminService``: the
same validation as ``zerogate apply`` (422 with ``problems: [{where, message}]``) and
compare-and-set on the object's version: ``PUT`` and ``DELETE`` need it, as ``If-Match: "N"``
(or a ``version`` field in a ``PUT`` body, or ``?version=N`` on a ``DELETE``); a stale one gets
409 and changes nothing. Policies live in their application: their version is the
application's. With a browser session, a configuration write that would lock the caller out of
the admin surface is refused (422, problem ``admins``; ``AdminService``'s lock-out guard) unless
``?force=true``. The caller (a ``Principal``) was established by the front door; the API never
authenticates by itself and refuses to run without one.

Deliberately no ``from __future__ import annotations``: the route factories below annotate
parameters with model classes held in variables, which FastAPI reads at definition time.
"""

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import Body, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from zerogate import __version__
from zerogate.admin.auth import CSRF_HEADER, csrf_token
from zerogate.admin.principal import Principal, principal_of
from zerogate.admin.service import Actor, AdminError, AdminService, Invalid, Item
from zerogate.model.loader import Problem
from zerogate.model.objects import (
    Application,
    Group,
    OidcProvider,
    OneTimePinProvider,
    Policy,
    ServiceToken,
    Settings,
    Tunnel,
)
from zerogate.store import StoreError

PREFIX = "/api/v1"
#: the largest request body the API reads (bigger ones get 413)
MAX_BODY = 1024 * 1024

# ---------------------------------------------------------------- shared models


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


class _Versioned(BaseModel):
    version: int = Field(
        description="the configuration version that last changed this object; send it back "
        "as If-Match to change or delete it"
    )


class _PutVersion(BaseModel):
    version: int | None = Field(
        default=None, description="the version this change is based on (or send If-Match)"
    )


class GroupOut(Group, _Versioned):
    pass


class GroupPut(Group, _PutVersion):
    pass


class ApplicationOut(Application, _Versioned):
    pass


class ApplicationPut(Application, _PutVersion):
    pass


class PolicyOut(Policy, _Versioned):
    """A policy; ``version`` is its application's."""


class PolicyPut(Policy, _PutVersion):
    pass


class OneTimePinProviderOut(OneTimePinProvider, _Versioned):
    pass


class OidcProviderOut(OidcProvider, _Versioned):
    pass


class OneTimePinProviderPut(OneTimePinProvider, _PutVersion):
    pass


class OidcProviderPut(OidcProvider, _PutVersion):
    pass


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


class TunnelOut(Tunnel, _Versioned):
    status: Literal["healthy", "down"] = Field(
        description="healthy while at least one connector connection is live"
    )
    connections: list[ConnectionOut] = Field(default_factory=list)


class TunnelPut(Tunnel, _PutVersion):
    pass


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


class ServiceTokenOut(ServiceToken, _Versioned):
    client_id: str | None = Field(default=None, description="null until a credential exists")
    created_at: datetime | None = None
    expires_at: datetime | None = None


class ServiceTokenPut(ServiceToken, _PutVersion):
    pass


class ServiceTokenSecret(ServiceTokenOut):
    client_secret: str = Field(description="shown only this once; the store keeps its hash")
    headers: dict[str, str] = Field(description="the two headers a client sends")


class AdminsOut(BaseModel):
    admins: list[str] = Field(description="emails or group:NAME")
    version: int = Field(description="0 while the list was never set")


class AdminsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    admins: list[str]
    version: int | None = Field(default=None, description="or send If-Match")


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


class PolicyTestIn(BaseModel):
    """The inputs of ``zerogate policy test``: exactly one of ``app`` and ``url``."""

    model_config = ConfigDict(extra="forbid")
    app: str | None = None
    url: str | None = None
    email: str | None = None
    idp: str | None = None
    idp_groups: list[str] = Field(default_factory=list)
    amr: list[str] = Field(default_factory=list)
    ip: str | None = None
    country: str | None = None
    service_token: str | None = None


class PolicyTestOut(BaseModel):
    application: str | None
    decision: Literal["allow", "block", "bypass", "authenticate"]
    policy: str | None
    reason: str
    steps: list[dict[str, Any]]


class SessionOut(BaseModel):
    who: str
    via: Literal["session", "token"]
    read_only: bool
    source: str | None
    csrf_header: str = CSRF_HEADER
    csrf_token: str | None = Field(
        description="for writes with the session cookie: send it in the X-Zerogate-CSRF header"
    )


# ---------------------------------------------------------------- errors and versions


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


def _problems(problems: list[Problem]) -> list[dict[str, str]]:
    return [{"where": p.where, "message": p.message} for p in problems]


def _etag(response: Response, version: int) -> None:
    response.headers["ETag"] = f'"{version}"'


def _principal(request: Request) -> Principal:
    return principal_of(request.scope)


def _actor(request: Request, force: bool = False) -> Actor:
    """The service's actor for this request (a session is guarded against locking itself out
    unless ``force``)."""
    return Actor.of(_principal(request), force=force)


#: ``?force=true`` on every configuration write: skip the lock-out guard
Force = Annotated[
    bool,
    Query(
        description="with a browser session: save even if the change removes your own admin "
        "access (the lock-out guard answers 422 otherwise); ignored for API tokens"
    ),
]


def _spec(body: Any) -> dict[str, Any]:
    data: dict[str, Any] = body.model_dump(mode="json", by_alias=True, exclude_none=True)
    data.pop("version", None)
    return data


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


# ---------------------------------------------------------------- the app


def create_api(
    service: AdminService, *, secret: bytes, settings: Settings | None = None
) -> FastAPI:
    """The FastAPI application; it serves full paths (``/api/v1/...``). ``settings`` (the
    server's) give connector tokens their edge addresses and certificate fingerprint."""
    app = FastAPI(
        title="zerogate admin API",
        version=__version__,
        description=(
            "Objects have the fields of zerogate's YAML configuration plus `version` (also the "
            'ETag). PUT and DELETE need `If-Match: "N"`; a stale version gets 409. '
            "Authenticate with `Authorization: Bearer zga_…` (zerogate api-token create) or "
            "an administrator's session cookie plus the X-Zerogate-CSRF header for writes."
        ),
        openapi_url=f"{PREFIX}/openapi.json",
        max_body_size=MAX_BODY,  # as the panel's forms: no object needs more
        docs_url=None,
        redoc_url=None,
        responses=ERRORS,
    )

    @app.middleware("http")
    async def require_principal(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        _principal(request)  # a wiring bug must fail, never serve unauthenticated
        return await call_next(request)

    @app.exception_handler(AdminError)
    async def admin_error(request: Request, exc: AdminError) -> JSONResponse:
        return JSONResponse(
            {"error": exc.message, "problems": _problems(exc.problems)}, status_code=exc.status
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

    # -- who am I -----------------------------------------------------------------------

    @app.get(f"{PREFIX}/session", response_model=SessionOut, operation_id="get_session")
    async def session(request: Request) -> SessionOut:
        """Who the caller is; for a browser session also the CSRF token API writes need."""
        p: Principal = _principal(request)
        return SessionOut(
            who=p.who,
            via=p.via,
            read_only=p.read_only,
            source=p.source,
            csrf_token=csrf_token(secret, p.session_id) if p.via == "session" else None,
        )

    # -- the configured objects -----------------------------------------------------------

    def out(item: Item, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {**item.spec, **(extra or {}), "version": item.version}

    async def tunnel_extra(items: list[Item]) -> list[dict[str, Any]]:
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

    async def token_extra(items: list[Item]) -> list[dict[str, Any]]:
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

    def collection(
        url: str,
        collection: str,
        what: str,
        model_in: Any,
        model_put: Any,
        model_out: Any,
        extra: Callable[[list[Item]], Awaitable[list[dict[str, Any]]]] | None = None,
        *,
        create: bool = True,
    ) -> None:
        path = f"{PREFIX}/{url}"
        tag = url

        async def enrich(items: list[Item]) -> list[dict[str, Any]]:
            extras = await extra(items) if extra is not None else [{} for _ in items]
            return [out(i, e) for i, e in zip(items, extras, strict=True)]

        async def list_items() -> list[dict[str, Any]]:
            return await enrich(await service.items(collection))

        async def get_item(name: Annotated[str, Path()], response: Response) -> dict[str, Any]:
            item = await service.get(collection, name)
            _etag(response, item.version)
            return (await enrich([item]))[0]

        async def create_item(
            body: Annotated[model_in, Body()],
            request: Request,
            response: Response,
            force: Force = False,
        ) -> dict[str, Any]:
            item = await service.create(collection, _spec(body), _actor(request, force))
            _etag(response, item.version)
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
                collection, name, _spec(body), version=version, actor=_actor(request, force)
            )
            _etag(response, item.version)
            return (await enrich([item]))[0]

        async def delete_item(
            name: Annotated[str, Path()],
            request: Request,
            if_match: Annotated[str | None, Header()] = None,
            version: Annotated[int | None, Query(ge=0)] = None,
            force: Force = False,
        ) -> Response:
            base = wanted_version(if_match, version)
            await service.delete(collection, name, version=base, actor=_actor(request, force))
            return Response(status_code=204)

        common: dict[str, Any] = {"tags": [tag], "response_model_exclude_none": True}
        app.get(
            path,
            response_model=list[model_out],
            operation_id=f"list_{collection}",
            summary=f"List the {what}s",
            **common,
        )(list_items)
        if create:
            app.post(
                path,
                response_model=model_out,
                status_code=201,
                operation_id=f"create_{collection}",
                summary=f"Add a {what}",
                **common,
            )(create_item)
        app.get(
            f"{path}/{{name}}",
            response_model=model_out,
            operation_id=f"get_{collection}",
            summary=f"One {what}",
            **common,
        )(get_item)
        app.put(
            f"{path}/{{name}}",
            response_model=model_out,
            operation_id=f"replace_{collection}",
            summary=f"Replace a {what} (If-Match: its version; a new name renames it)",
            **common,
        )(put_item)
        app.delete(
            f"{path}/{{name}}",
            status_code=204,
            response_class=Response,
            operation_id=f"delete_{collection}",
            summary=f"Delete a {what} (If-Match: its version)",
            tags=[tag],
        )(delete_item)

    collection("groups", "groups", "group", Group, GroupPut, GroupOut)
    collection(
        "applications", "applications", "application", Application, ApplicationPut, ApplicationOut
    )
    collection(
        "identity-providers",
        "identity_providers",
        "identity provider",
        IdentityProviderIn,
        IdentityProviderPut,
        IdentityProviderOut,
    )
    collection("tunnels", "tunnels", "tunnel", Tunnel, TunnelPut, TunnelOut, tunnel_extra)
    collection(
        "service-tokens",
        "service_tokens",
        "service token",
        ServiceToken,
        ServiceTokenPut,
        ServiceTokenOut,
        token_extra,
        create=False,
    )

    # -- service tokens: the secret, once ----------------------------------------------------

    def secret_out(item: Item, cred: Any, secret_text: str) -> ServiceTokenSecret:
        return ServiceTokenSecret(
            **item.spec,
            version=item.version,
            client_id=cred.client_id,
            created_at=cred.created_at,
            expires_at=cred.expires_at,
            client_secret=secret_text,
            headers={"Zerogate-Client-Id": cred.client_id, "Zerogate-Client-Secret": secret_text},
        )

    @app.post(
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
            _spec(body), _actor(request, force)
        )
        _etag(response, item.version)
        return secret_out(item, cred, secret_text)

    @app.post(
        f"{PREFIX}/service-tokens/{{name}}/rotate",
        response_model=ServiceTokenSecret,
        operation_id="rotate_service_token",
        tags=["service-tokens"],
        summary="A new client id and secret (the old pair stops working at once)",
    )
    async def rotate_service_token(
        name: Annotated[str, Path()], request: Request
    ) -> ServiceTokenSecret:
        cred, secret_text = await service.rotate_service_token(name, _actor(request))
        return secret_out(await service.get("service_tokens", name), cred, secret_text)

    # -- tunnels: a connector token, once --------------------------------------------------------

    @app.post(
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
        issued = await service.create_tunnel_token(name, actor=_actor(request), settings=settings)
        return ConnectorTokenOut(
            name=issued.name,
            id=issued.tunnel_id,
            token=issued.token,
            edges=list(issued.edges),
            fingerprint=issued.fingerprint,
            rotated=issued.rotated,
            command=issued.command(),
        )

    # -- policies (inside their application) ----------------------------------------------------

    policies = f"{PREFIX}/applications/{{app_name}}/policies"

    def policy_out(item: Item, name: str) -> PolicyOut:
        for spec in item.spec.get("policies", []):
            if spec.get("name") == name:
                return PolicyOut(**spec, version=item.version)
        raise AdminError(f"application {item.name!r} has no policy named {name!r}")

    @app.get(
        policies,
        response_model=list[PolicyOut],
        response_model_exclude_none=True,
        operation_id="list_policies",
        tags=["policies"],
        summary="The policies of an application, in order (version: the application's)",
    )
    async def list_policies(
        app_name: Annotated[str, Path()], response: Response
    ) -> list[PolicyOut]:
        item = await service.get("applications", app_name)
        _etag(response, item.version)
        return [PolicyOut(**p, version=item.version) for p in item.spec.get("policies", [])]

    @app.get(
        f"{policies}/{{name}}",
        response_model=PolicyOut,
        response_model_exclude_none=True,
        operation_id="get_policy",
        tags=["policies"],
    )
    async def get_policy(
        app_name: Annotated[str, Path()], name: Annotated[str, Path()], response: Response
    ) -> PolicyOut:
        item = await service.get("applications", app_name)
        _etag(response, item.version)
        if not any(p.get("name") == name for p in item.spec.get("policies", [])):
            from zerogate.admin.service import NotFound

            raise NotFound(f"application {app_name!r} has no policy named {name!r}")
        return policy_out(item, name)

    @app.post(
        policies,
        response_model=PolicyOut,
        response_model_exclude_none=True,
        status_code=201,
        operation_id="create_policy",
        tags=["policies"],
        summary="Add a policy to an application (If-Match optional: the application's version)",
    )
    async def create_policy(
        app_name: Annotated[str, Path()],
        body: Annotated[Policy, Body()],
        request: Request,
        response: Response,
        if_match: Annotated[str | None, Header()] = None,
        position: Annotated[int | None, Query(ge=0, le=10000)] = None,
        force: Force = False,
    ) -> PolicyOut:
        current = await service.get("applications", app_name)
        if any(p.get("name") == body.name for p in current.spec.get("policies", [])):
            from zerogate.admin.service import Conflict

            raise Conflict(f"application {app_name!r} already has a policy named {body.name!r}")
        version = wanted_version(if_match, None) if if_match else current.version
        item = await service.put_policy(
            app_name,
            _spec(body),
            app_version=version,
            actor=_actor(request, force),
            position=position,
        )
        _etag(response, item.version)
        return policy_out(item, body.name)

    @app.put(
        f"{policies}/{{name}}",
        response_model=PolicyOut,
        response_model_exclude_none=True,
        operation_id="replace_policy",
        tags=["policies"],
        summary="Replace a policy (If-Match: the application's version)",
    )
    async def put_policy(
        app_name: Annotated[str, Path()],
        name: Annotated[str, Path()],
        body: Annotated[PolicyPut, Body()],
        request: Request,
        response: Response,
        if_match: Annotated[str | None, Header()] = None,
        position: Annotated[int | None, Query(ge=0, le=10000)] = None,
        force: Force = False,
    ) -> PolicyOut:
        version = wanted_version(if_match, body.version)
        item = await service.put_policy(
            app_name,
            _spec(body),
            app_version=version,
            actor=_actor(request, force),
            replace=name,
            position=position,
        )
        _etag(response, item.version)
        return policy_out(item, body.name)

    @app.delete(
        f"{policies}/{{name}}",
        status_code=204,
        response_class=Response,
        operation_id="delete_policy",
        tags=["policies"],
        summary="Delete a policy (If-Match: the application's version)",
    )
    async def delete_policy(
        app_name: Annotated[str, Path()],
        name: Annotated[str, Path()],
        request: Request,
        if_match: Annotated[str | None, Header()] = None,
        version: Annotated[int | None, Query(ge=0)] = None,
        force: Force = False,
    ) -> Response:
        base = wanted_version(if_match, version)
        await service.delete_policy(app_name, name, app_version=base, actor=_actor(request, force))
        return Response(status_code=204)

    # -- admins -------------------------------------------------------------------------

    @app.get(
        f"{PREFIX}/admins", response_model=AdminsOut, operation_id="get_admins", tags=["admins"]
    )
    async def get_admins(response: Response) -> AdminsOut:
        admins, version = await service.admins()
        _etag(response, version)
        return AdminsOut(admins=admins, version=version)

    @app.put(
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
        await service.set_admins(body.admins, version=base, actor=_actor(request, force))
        admins, version = await service.admins()
        _etag(response, version)
        return AdminsOut(admins=admins, version=version)

    # -- API tokens -----------------------------------------------------------------------

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

    @app.get(
        f"{PREFIX}/api-tokens",
        response_model=list[ApiTokenOut],
        operation_id="list_api_tokens",
        tags=["api-tokens"],
    )
    async def list_api_tokens() -> list[dict[str, Any]]:
        return [token_out(t) for t in await service.api_tokens()]

    @app.post(
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
            body.name, read_only=body.read_only, expires=body.expires, actor=_actor(request)
        )
        return {**token_out(token), "token": text}

    @app.delete(
        f"{PREFIX}/api-tokens/{{name}}",
        status_code=204,
        response_class=Response,
        operation_id="revoke_api_token",
        tags=["api-tokens"],
        summary="Revoke an API token (it stops working on its next request)",
    )
    async def revoke_api_token(name: Annotated[str, Path()], request: Request) -> Response:
        await service.revoke_api_token(name, _actor(request))
        return Response(status_code=204)

    # -- logs and the policy tester ------------------------------------------------------

    @app.get(
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
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> AccessLogOut:
        events = await service.access_log(
            app=app_name, email=email, decision=decision, since=_utc(since), limit=limit
        )
        return AccessLogOut(events=[AccessEventOut(**vars(e)) for e in events])

    @app.get(
        f"{PREFIX}/admin-log",
        response_model=AdminLogOut,
        operation_id="admin_log",
        tags=["logs"],
        summary="Admin changes (who, when, from where, before → after), newest first",
    )
    async def admin_log(
        since: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> AdminLogOut:
        entries = await service.admin_log(limit, since=_utc(since))
        return AdminLogOut(entries=[AdminLogEntryOut(**vars(e)) for e in entries])

    @app.post(
        f"{PREFIX}/policy-test",
        response_model=PolicyTestOut,
        operation_id="policy_test",
        tags=["policy-test"],
        summary="Would this request get in? The decision and every check made",
    )
    async def policy_test(body: Annotated[PolicyTestIn, Body()]) -> PolicyTestOut:
        verdict = await service.policy_test(
            app=body.app,
            url=body.url,
            email=body.email,
            idp=body.idp,
            idp_groups=tuple(body.idp_groups),
            amr=tuple(body.amr),
            ip=body.ip,
            country=body.country,
            service_token=body.service_token,
        )
        result = verdict.as_dict()
        return PolicyTestOut(
            application=result["application"],
            decision=result["decision"],
            policy=result["policy"],
            reason=result["reason"],
            steps=result["explanation"],
        )

    return app
