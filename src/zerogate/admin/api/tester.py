"""The policy tester: would this request get in, and why."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field

from zerogate.admin.api.common import PREFIX
from zerogate.admin.service import AdminService


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


def router(service: AdminService) -> APIRouter:
    tester = APIRouter()

    @tester.post(
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
            steps=result["steps"],
        )

    return tester
