"""schemathesis against the admin API's own OpenAPI document, served by a real, throwaway
``zerogate server``: every operation is called with generated data using a read-write API
token; no answer may be a 5xx, and every answer must match the document (status code, content
type, headers, body schema). Bounded by a small number of examples per operation."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from harness import free_port
from zerogate.admin.service import Actor, AdminService
from zg_harness import ThreadedOutbox, Zerogate, open_store

CONFIG = """
admins: [ops@example.test]
identity_providers: [{name: otp, type: onetimepin}]
groups:
  - {name: Office, include: [{ip: [203.0.113.0/24]}]}
applications:
  - name: wiki
    domain: wiki.localhost
    origin: http://127.0.0.1:9
    policies:
      - {name: staff, decision: allow, include: [{email_domain: [example.test]}],
         require: [{group: [Office]}]}
tunnels: [{name: office, routes: [office.localhost]}]
service_tokens: [{name: ci, duration: 1h}]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zerogate]:
    outbox = ThreadedOutbox().start()
    zg = Zerogate(tmp_path_factory.mktemp("zg"), free_port(), outbox.port)
    zg.apply(CONFIG)
    zg.start()

    async def token() -> str:
        async with open_store(zg) as store:
            # a long random name: generated DELETEs never revoke the token the run uses
            name = "schemathesis-" + secrets.token_hex(16)
            _, text = await AdminService(store).create_api_token(
                name, read_only=False, expires="1h", actor=Actor("test")
            )
        return text

    zg.extra["token"] = asyncio.run(token())
    try:
        yield zg
    finally:
        zg.stop()
        outbox.stop()


@pytest.fixture(scope="module")
def headers(server: Zerogate) -> dict[str, str]:
    return {"Host": server.portal, "Authorization": f"Bearer {server.extra['token']}"}


def operations(server: Zerogate, headers: dict[str, str]) -> list[Any]:
    reply = requests.get(
        f"http://127.0.0.1:{server.port}/api/v1/openapi.json", headers=headers, timeout=10
    )
    reply.raise_for_status()
    schema = schemathesis.openapi.from_dict(reply.json())
    found = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the document itself must be valid
        found.append(result.ok())
    return found


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def test_api_conforms_to_its_document(server: Zerogate, headers: dict[str, str]) -> None:
    """Every operation, a few generated requests each (one hypothesis run per operation, so
    a failure names the operation)."""
    ops = operations(server, headers)
    assert len(ops) >= 30
    base_url = f"http://127.0.0.1:{server.port}"
    with requests.Session() as session:
        for operation in ops:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=10,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                derandomize=True,
                database=None,
            )
            def call(case: Any) -> None:
                case.call_and_validate(
                    base_url=base_url, session=session, headers=headers, checks=CHECKS, timeout=10
                )

            try:
                call()
            except Exception as exc:
                raise AssertionError(f"{operation.label}: {exc}") from exc
