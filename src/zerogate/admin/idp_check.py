"""An OIDC provider's "test connection", shared by the panel and the API: the discovery
document (and that its issuer is the configured one), the signing keys, where the client
secret comes from, and whether the provider accepts the client id and secret (a token request
with a code it never issued: ``identity.oidc.credentials_probe``). Nobody logs in; the secret
goes only to the token endpoint the provider's own discovery document names."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from zerogate.admin.service import AdminService
from zerogate.identity.oidc import (
    ClientConfigError,
    ClientSettings,
    Fetch,
    FetchError,
    HttpRequest,
    OidcError,
    credentials_probe,
    discovery_url,
    judge_probe,
    parse_discovery,
)
from zerogate.model.objects import Settings
from zerogate.runtime.fetch import oidc_fetch

#: how long "test connection" waits for the provider
TEST_TIMEOUT_SECONDS = 5.0
TEST_MAX_BYTES = 1024 * 1024

#: "test connection": short timeout, bounded size, no cookies, redirects on the same origin only
aiohttp_fetch = oidc_fetch(TEST_TIMEOUT_SECONDS, TEST_MAX_BYTES)


def callback_url(settings: Settings | None, name: str) -> str:
    """The redirect URI of provider ``name`` on the configured portal."""
    scheme = (settings.portal_scheme if settings else None) or "https"
    portal = settings.portal_address if settings else "auth.invalid"
    return f"{scheme}://{portal}/.zerogate/oidc/{name}/callback"


async def check_oidc(
    service: AdminService, fetch: Fetch, spec: Mapping[str, Any], *, callback: str
) -> dict[str, Any]:
    """``{"ok", "url", "checks": [(ok, message)], "endpoints", "algorithms"}`` for the
    provider ``spec``; ``callback`` is its redirect URI (sent with the test code, as a real
    token request would)."""
    issuer = str(spec["issuer"])
    name = str(spec["name"])
    url = discovery_url(issuer)
    result: dict[str, Any] = {"ok": False, "url": url, "checks": []}
    checks: list[tuple[bool, str]] = result["checks"]
    try:
        response = await fetch(HttpRequest("GET", url, {"Accept": "application/json"}))
    except FetchError as exc:
        checks.append((False, f"could not reach the provider: {exc}"))
        return result
    if response.status != 200:
        checks.append((False, f"{url} answered HTTP {response.status}"))
        return result
    try:
        doc = response.json()
    except (ValueError, UnicodeDecodeError):
        checks.append((False, "the discovery document is not JSON"))
        return result
    if not isinstance(doc, dict):
        checks.append((False, "the discovery document is not a JSON object"))
        return result
    try:
        meta = parse_discovery(doc, issuer)
    except OidcError as exc:
        checks.append((False, str(exc)))
        return result
    checks.append((True, f"discovery document found; issuer {meta.issuer} matches"))
    result["endpoints"] = {
        "authorization": meta.authorization_endpoint,
        "token": meta.token_endpoint,
        "userinfo": meta.userinfo_endpoint or "—",
        "jwks": meta.jwks_uri,
    }
    result["algorithms"] = sorted(meta.id_token_algorithms)
    try:
        keys = await fetch(HttpRequest("GET", meta.jwks_uri))
        found = keys.json().get("keys") if keys.status == 200 else None
    except (FetchError, ValueError, UnicodeDecodeError, AttributeError):
        found = None
    if isinstance(found, list):
        checks.append((True, f"signing keys (JWKS): {len(found)}"))
    else:
        checks.append((False, f"could not read the signing keys at {meta.jwks_uri}"))

    secret, source = await _secret(service, spec, checks)
    if secret is not None:
        settings = ClientSettings(
            name=name,
            issuer=issuer,
            client_id=str(spec.get("client_id", "")),
            client_secret=secret,
            redirect_uri=callback,
            auth_method=spec.get("token_endpoint_auth_method"),
        )
        try:
            probe = credentials_probe(meta, settings)
            answer = await fetch(probe)
        except ClientConfigError as exc:
            checks.append((False, str(exc)))
        except FetchError as exc:
            checks.append((False, f"could not reach the token endpoint: {exc}"))
        else:
            accepted, why = judge_probe(answer)
            checks.append((accepted is True, f"client credentials ({source}): {why}"))
    result["ok"] = all(ok for ok, _ in checks)
    return result


async def _secret(
    service: AdminService, spec: Mapping[str, Any], checks: list[tuple[bool, str]]
) -> tuple[str | None, str]:
    """The client secret a login would use, and where it comes from; notes the checks."""
    env = spec.get("client_secret_env")
    if env and not service.secret_env_allowed(str(env)):
        checks.append(
            (
                False,
                f"client secret variable not checked: the panel and API look only at "
                f"variables starting with {service.secret_env_prefix}",
            )
        )
        return None, ""
    if env and os.environ.get(str(env)):
        checks.append((True, f"client secret variable {env} is set on this server"))
        return os.environ[str(env)], f"from {env}"
    stored = await service.store.oidc_secret(str(spec["name"]), str(spec["issuer"]))
    if stored is not None:
        if env:
            checks.append((True, f"{env} is not set here: the stored client secret is used"))
        return stored, "the stored secret"
    if env:
        checks.append((False, f"client secret variable {env} is NOT set on this server"))
    else:
        checks.append(
            (False, "no client secret: store one here, or set client_secret_env and the variable")
        )
    return None, ""
