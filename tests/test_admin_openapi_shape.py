"""The admin API's OpenAPI document keeps its shape: every path, method, operation id,
parameter, request body, success status and response model, and the component schemas, as they
were when ``create_api`` was one function (issue 11 item 5 split it into one router per
resource; clients generated from the document must not notice). Built in-process, no server.
"""

from __future__ import annotations

from typing import Any

from zerogate.admin.api import create_api
from zerogate.admin.service import AdminService

#: (method, path, operation id, parameters ("in:name", "!" = required), request body,
#: success status, response model); the order of paths in the document does not matter
OPERATIONS = [
    (
        "DELETE",
        "/api/v1/identity-providers/{name}/client-secret",
        "delete_client_secret",
        "path:name!",
        "",
        "204",
        "",
    ),
    (
        "PUT",
        "/api/v1/identity-providers/{name}/client-secret",
        "set_client_secret",
        "path:name!",
        "ClientSecretIn",
        "204",
        "",
    ),
    (
        "POST",
        "/api/v1/identity-providers/{name}/test",
        "test_identity_provider",
        "path:name!",
        "",
        "200",
        "ConnectionTestOut",
    ),
    (
        "GET",
        "/api/v1/access-log",
        "access_log",
        "query:app query:cursor query:decision query:email query:ip query:kind query:limit "
        "query:since query:status query:until",
        "",
        "200",
        "AccessLogOut",
    ),
    (
        "GET",
        "/api/v1/access-log/export",
        "access_log_export",
        "query:app query:decision query:email query:format query:ip query:kind query:since "
        "query:status query:until",
        "",
        "200",
        "",
    ),
    ("GET", "/api/v1/admin-log", "admin_log", "query:limit query:since", "", "200", "AdminLogOut"),
    ("GET", "/api/v1/mail-health", "mail_health", "", "", "200", "MailHealthOut"),
    ("GET", "/api/v1/certificates", "certificates", "", "", "200", "CertificatesOut"),
    ("GET", "/api/v1/admins", "get_admins", "", "", "200", "AdminsOut"),
    (
        "PUT",
        "/api/v1/admins",
        "replace_admins",
        "header:if-match query:force",
        "AdminsIn",
        "200",
        "AdminsOut",
    ),
    ("GET", "/api/v1/api-tokens", "list_api_tokens", "", "", "200", "list[ApiTokenOut]"),
    ("POST", "/api/v1/api-tokens", "create_api_token", "", "ApiTokenIn", "201", "ApiTokenSecret"),
    ("DELETE", "/api/v1/api-tokens/{name}", "revoke_api_token", "path:name!", "", "204", ""),
    # issue 16: portal sessions
    (
        "GET",
        "/api/v1/sessions",
        "list_sessions",
        "query:email query:limit",
        "",
        "200",
        "list[PortalSessionOut]",
    ),
    (
        "DELETE",
        "/api/v1/sessions/{session_id}",
        "end_session",
        "path:session_id!",
        "",
        "204",
        "",
    ),
    ("GET", "/api/v1/applications", "list_applications", "", "", "200", "list[ApplicationOut]"),
    (
        "POST",
        "/api/v1/applications",
        "create_applications",
        "query:force",
        "Application",
        "201",
        "ApplicationOut",
    ),
    (
        "GET",
        "/api/v1/applications/{app_name}/policies",
        "list_policies",
        "path:app_name!",
        "",
        "200",
        "list[PolicyOut]",
    ),
    (
        "POST",
        "/api/v1/applications/{app_name}/policies",
        "create_policy",
        "header:if-match path:app_name! query:force query:position",
        "Policy",
        "201",
        "PolicyOut",
    ),
    (
        "DELETE",
        "/api/v1/applications/{app_name}/policies/{name}",
        "delete_policy",
        "header:if-match path:app_name! path:name! query:force query:version",
        "",
        "204",
        "",
    ),
    (
        "GET",
        "/api/v1/applications/{app_name}/policies/{name}",
        "get_policy",
        "path:app_name! path:name!",
        "",
        "200",
        "PolicyOut",
    ),
    (
        "PUT",
        "/api/v1/applications/{app_name}/policies/{name}",
        "replace_policy",
        "header:if-match path:app_name! path:name! query:force query:position",
        "PolicyPut",
        "200",
        "PolicyOut",
    ),
    (
        "DELETE",
        "/api/v1/applications/{name}",
        "delete_applications",
        "header:if-match path:name! query:force query:version",
        "",
        "204",
        "",
    ),
    (
        "GET",
        "/api/v1/applications/{name}",
        "get_applications",
        "path:name!",
        "",
        "200",
        "ApplicationOut",
    ),
    (
        "PUT",
        "/api/v1/applications/{name}",
        "replace_applications",
        "header:if-match path:name! query:force",
        "ApplicationPut",
        "200",
        "ApplicationOut",
    ),
    ("GET", "/api/v1/groups", "list_groups", "", "", "200", "list[GroupOut]"),
    ("POST", "/api/v1/groups", "create_groups", "query:force", "Group", "201", "GroupOut"),
    (
        "DELETE",
        "/api/v1/groups/{name}",
        "delete_groups",
        "header:if-match path:name! query:force query:version",
        "",
        "204",
        "",
    ),
    ("GET", "/api/v1/groups/{name}", "get_groups", "path:name!", "", "200", "GroupOut"),
    (
        "PUT",
        "/api/v1/groups/{name}",
        "replace_groups",
        "header:if-match path:name! query:force",
        "GroupPut",
        "200",
        "GroupOut",
    ),
    ("GET", "/api/v1/identity-providers", "list_identity_providers", "", "", "200", "list[inline]"),
    (
        "POST",
        "/api/v1/identity-providers",
        "create_identity_providers",
        "query:force",
        "inline",
        "201",
        "inline",
    ),
    (
        "DELETE",
        "/api/v1/identity-providers/{name}",
        "delete_identity_providers",
        "header:if-match path:name! query:force query:version",
        "",
        "204",
        "",
    ),
    (
        "GET",
        "/api/v1/identity-providers/{name}",
        "get_identity_providers",
        "path:name!",
        "",
        "200",
        "inline",
    ),
    (
        "PUT",
        "/api/v1/identity-providers/{name}",
        "replace_identity_providers",
        "header:if-match path:name! query:force",
        "inline",
        "200",
        "inline",
    ),
    ("GET", "/api/v1/nodes", "list_nodes", "", "", "200", "NodesOut"),  # issue 14
    ("POST", "/api/v1/policy-test", "policy_test", "", "PolicyTestIn", "200", "PolicyTestOut"),
    (
        "GET",
        "/api/v1/service-tokens",
        "list_service_tokens",
        "",
        "",
        "200",
        "list[ServiceTokenOut]",
    ),
    (
        "POST",
        "/api/v1/service-tokens",
        "create_service_tokens",
        "query:force",
        "ServiceToken",
        "201",
        "ServiceTokenSecret",
    ),
    (
        "DELETE",
        "/api/v1/service-tokens/{name}",
        "delete_service_tokens",
        "header:if-match path:name! query:force query:version",
        "",
        "204",
        "",
    ),
    (
        "GET",
        "/api/v1/service-tokens/{name}",
        "get_service_tokens",
        "path:name!",
        "",
        "200",
        "ServiceTokenOut",
    ),
    (
        "PUT",
        "/api/v1/service-tokens/{name}",
        "replace_service_tokens",
        "header:if-match path:name! query:force",
        "ServiceTokenPut",
        "200",
        "ServiceTokenOut",
    ),
    (
        "POST",
        "/api/v1/service-tokens/{name}/rotate",
        "rotate_service_token",
        "path:name!",
        "",
        "200",
        "ServiceTokenSecret",
    ),
    ("GET", "/api/v1/session", "get_session", "", "", "200", "SessionOut"),
    ("GET", "/api/v1/tunnels", "list_tunnels", "", "", "200", "list[TunnelOut]"),
    ("POST", "/api/v1/tunnels", "create_tunnels", "query:force", "Tunnel", "201", "TunnelOut"),
    (
        "DELETE",
        "/api/v1/tunnels/{name}",
        "delete_tunnels",
        "header:if-match path:name! query:force query:version",
        "",
        "204",
        "",
    ),
    ("GET", "/api/v1/tunnels/{name}", "get_tunnels", "path:name!", "", "200", "TunnelOut"),
    (
        "PUT",
        "/api/v1/tunnels/{name}",
        "replace_tunnels",
        "header:if-match path:name! query:force",
        "TunnelPut",
        "200",
        "TunnelOut",
    ),
    (
        "POST",
        "/api/v1/tunnels/{name}/token",
        "create_tunnel_token",
        "path:name!",
        "",
        "201",
        "ConnectorTokenOut",
    ),
]

SCHEMAS = [
    "AccessEventOut",
    "AccessLogOut",
    "AdminLogEntryOut",
    "AdminLogOut",
    "AdminsIn",
    "AdminsOut",
    "ApiTokenIn",
    "ApiTokenOut",
    "ApiTokenSecret",
    "Application",
    "ApplicationOut",
    "ApplicationPut",
    "CertificateOut",
    "CertificatesOut",
    "CheckOut",
    "ClientSecretIn",
    "ConnectionOut",
    "ConnectionTestOut",
    "ConnectorTokenOut",
    "Cors",
    "ErrorOut",
    "Group",
    "GroupOut",
    "GroupPut",
    "MailHealthOut",
    "NodeOut",
    "NodesOut",
    "OidcProvider",
    "OidcProviderOut",
    "OidcProviderPut",
    "OneTimePinProvider",
    "OneTimePinProviderOut",
    "OneTimePinProviderPut",
    "Policy",
    "PolicyOut",
    "PolicyPut",
    "PolicyTestIn",
    "PolicyTestOut",
    "PortalSessionOut",
    "ProblemOut",
    "Rule",
    "ServiceToken",
    "ServiceTokenOut",
    "ServiceTokenPut",
    "ServiceTokenSecret",
    "SessionOut",
    "Tunnel",
    "TunnelOut",
    "TunnelPut",
    "UpstreamTimeouts",
]

ERROR_STATUSES = {"400", "401", "403", "404", "409", "422", "428", "503"}


def _ref(schema: dict[str, Any]) -> str:
    if not schema:
        return ""
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if schema.get("type") == "array":
        return f"list[{_ref(schema['items'])}]"
    return "inline"


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, str, str, str, str, str]]:
    found = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            params = " ".join(
                sorted(
                    f"{p['in']}:{p['name']}{'!' if p.get('required') else ''}"
                    for p in op.get("parameters", [])
                )
            )
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            ok = next(code for code in op["responses"] if code.startswith("2"))
            out = op["responses"][ok].get("content", {}).get("application/json", {})
            found.append(
                (
                    method.upper(),
                    path,
                    op.get("operationId"),
                    params,
                    _ref(body.get("schema", {})),
                    ok,
                    _ref(out.get("schema", {})),
                )
            )
    return found


def _document() -> dict[str, Any]:
    service = AdminService(None)  # type: ignore[arg-type]  # building the app reads nothing
    doc: dict[str, Any] = create_api(service, secret=b"s" * 32).openapi()
    return doc


def test_every_operation_keeps_its_path_method_id_parameters_and_models() -> None:
    assert sorted(_operations(_document())) == sorted(OPERATIONS)


def test_component_schemas_and_error_responses_are_unchanged() -> None:
    doc = _document()
    assert sorted(doc["components"]["schemas"]) == SCHEMAS
    for methods in doc["paths"].values():
        for op in methods.values():
            assert set(op["responses"]) >= ERROR_STATUSES
