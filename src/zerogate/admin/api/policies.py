"""The policies of an application, addressed inside it; their version is the application's."""

from typing import Annotated

from fastapi import APIRouter, Body, Header, Path, Query, Request, Response

from zerogate.admin.api.common import (
    PREFIX,
    Force,
    PutVersion,
    Versioned,
    actor,
    etag,
    ownership,
    spec_of,
    wanted_version,
)
from zerogate.admin.service import AdminError, AdminService, Conflict, Item, NotFound
from zerogate.model.objects import Policy


class PolicyOut(Policy, Versioned):
    """A policy; ``version``, ``changed_via`` and ``managed_by_file`` are its application's."""


class PolicyPut(Policy, PutVersion):
    pass


POLICIES = f"{PREFIX}/applications/{{app_name}}/policies"

#: ``?position=N``: where in the application's list the policy goes
Position = Annotated[int | None, Query(ge=0, le=10000)]


def policy_out(item: Item, name: str) -> PolicyOut:
    for spec in item.spec.get("policies", []):
        if spec.get("name") == name:
            return PolicyOut(**spec, **ownership(item))
    raise AdminError(f"application {item.name!r} has no policy named {name!r}")


def has_policy(item: Item, name: str) -> bool:
    return any(p.get("name") == name for p in item.spec.get("policies", []))


def router(service: AdminService) -> APIRouter:
    policies = APIRouter()

    @policies.get(
        POLICIES,
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
        etag(response, item.version)
        return [PolicyOut(**p, **ownership(item)) for p in item.spec.get("policies", [])]

    @policies.get(
        f"{POLICIES}/{{name}}",
        response_model=PolicyOut,
        response_model_exclude_none=True,
        operation_id="get_policy",
        tags=["policies"],
    )
    async def get_policy(
        app_name: Annotated[str, Path()], name: Annotated[str, Path()], response: Response
    ) -> PolicyOut:
        item = await service.get("applications", app_name)
        etag(response, item.version)
        if not has_policy(item, name):
            raise NotFound(f"application {app_name!r} has no policy named {name!r}")
        return policy_out(item, name)

    @policies.post(
        POLICIES,
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
        position: Position = None,
        force: Force = False,
    ) -> PolicyOut:
        current = await service.get("applications", app_name)
        if has_policy(current, body.name):
            raise Conflict(f"application {app_name!r} already has a policy named {body.name!r}")
        version = wanted_version(if_match, None) if if_match else current.version
        item = await service.put_policy(
            app_name,
            spec_of(body),
            app_version=version,
            actor=actor(request, force),
            position=position,
        )
        etag(response, item.version)
        return policy_out(item, body.name)

    @policies.put(
        f"{POLICIES}/{{name}}",
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
        position: Position = None,
        force: Force = False,
    ) -> PolicyOut:
        version = wanted_version(if_match, body.version)
        item = await service.put_policy(
            app_name,
            spec_of(body),
            app_version=version,
            actor=actor(request, force),
            replace=name,
            position=position,
        )
        etag(response, item.version)
        return policy_out(item, body.name)

    @policies.delete(
        f"{POLICIES}/{{name}}",
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
        await service.delete_policy(app_name, name, app_version=base, actor=actor(request, force))
        return Response(status_code=204)

    return policies
