"""OIDC login on the portal: the provider buttons' start URL and the callback.

``GET /.zerogate/oidc/NAME/start?flow=…`` (a button on the login page, or the automatic
redirect when the provider is the application's only login method) checks the signed flow and
that NAME is a login method of that application, keeps ``state`` → {flow, nonce, PKCE
verifier, hash of a browser cookie} server-side as a single-use record (the store's
authorization-code table, 10 minutes), and redirects to the provider.

``GET /.zerogate/oidc/NAME/callback?code=…&state=…`` consumes that record (so a replayed or
forged ``state`` finds nothing), checks that the same browser started the login (cookie), then
lets ``zerogate.identity.oidc`` exchange the code, validate the id_token and read the claims. On
success it sets the portal session (idp = NAME, the IdP groups, ``amr``), remembers NAME as this
browser's last login method, and hands the application a one-time code as the PIN flow does.

Every failure is a page (never a traceback) and an access-log record (kind ``login``,
decision ``block``, ``detail`` = ``oidc <reason>: …``); no session is created.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from zerogate.identity.flow import Flow, FlowError, code_hash, open_flow
from zerogate.identity.oidc import (
    ClientSettings,
    EmailUnverified,
    OidcClient,
    OidcError,
    OidcIdentity,
)
from zerogate.model.objects import OidcProvider
from zerogate.model.values import check_email
from zerogate.net import http
from zerogate.net.asgi import Scope, Send
from zerogate.policy.engine import CompiledApp
from zerogate.portal.session import hand_over, session_cookie, start_session
from zerogate.runtime import cookies
from zerogate.runtime.cookies import secure_cookies
from zerogate.runtime.fetch import oidc_fetch
from zerogate.runtime.request import Request, portal_origin
from zerogate.runtime.services import Services

log = logging.getLogger("zerogate.portal.oidc")

#: a random value per browser, signed by zerogate (``new_browser_value``); the stored state
#: keeps its hash (login CSRF: the callback must come back to the browser that started the
#: login); an unsigned value a client supplies is replaced at the start and refused at the end
BROWSER_COOKIE = "__zg_oidc"
#: the last login method used on this browser (an IdP name), shown first on the login page
LAST_METHOD_COOKIE = "__zg_last_login"
LAST_METHOD_SECONDS = 180 * 86400
STATE_SECONDS = 600
FETCH_TIMEOUT_SECONDS = 10.0
MAX_RESPONSE_BYTES = 1024 * 1024

_PATH = re.compile(r"/\.zerogate/oidc/([A-Za-z0-9][A-Za-z0-9._-]*)/(start|callback)")


def route(path: str) -> tuple[str, str] | None:
    """``(provider name, "start" | "callback")`` for an OIDC path, else None."""
    found = _PATH.fullmatch(path)
    return (found.group(1), found.group(2)) if found else None


def start_url(idp: OidcProvider, flow_blob: str) -> str:
    return f"/.zerogate/oidc/{quote(idp.name)}/start?" + urlencode({"flow": flow_blob})


def callback_url(scope: Scope, svc: Services, name: str) -> str:
    """The OIDC ``redirect_uri``: on the portal's public origin (the pinned scheme of a URL
    ``portal``, else this request's: a trusted proxy's ``X-Forwarded-Proto`` or the transport)."""
    origin = portal_origin(scope, svc.runtime)
    return f"{origin}/.zerogate/oidc/{quote(name)}/callback"


def providers_for(svc: Services, app: CompiledApp) -> list[OidcProvider]:
    """The OIDC providers offered on ``app``'s login page, in configuration order."""
    allowed = app.model.identity_providers
    return [
        idp
        for idp in svc.runtime.snapshot.objects.identity_providers
        if isinstance(idp, OidcProvider) and (allowed is None or idp.name in allowed)
    ]


def last_method(scope: Scope, svc: Services) -> str | None:
    value = (
        cookies.cookie(scope, LAST_METHOD_COOKIE, secure=secure_cookies(svc.runtime, scope)) or ""
    )
    return value if 0 < len(value) <= 200 else None


def last_method_cookie(scope: Scope, svc: Services, name: str) -> tuple[bytes, bytes]:
    return cookies.set_cookie(
        LAST_METHOD_COOKIE,
        name,
        max_age=LAST_METHOD_SECONDS,
        path="/.zerogate/",
        secure=secure_cookies(svc.runtime, scope),
    )


# --------------------------------------------------------------------------- HTTP client


#: the network for ``identity.oidc``: bounded time and size, redirects on the same origin only
aiohttp_fetch = oidc_fetch(FETCH_TIMEOUT_SECONDS, MAX_RESPONSE_BYTES)


# --------------------------------------------------------------------------- clients


@dataclass
class _Registry:
    """One ``OidcClient`` per provider configuration (its discovery and JWKS caches)."""

    clients: dict[tuple[object, ...], OidcClient]


_REGISTRY = _Registry({})


async def client_secret(svc: Services, idp: OidcProvider) -> str | None:
    """The provider's client secret: the environment variable ``client_secret_env`` names
    when it is set and not empty, else the one stored through the panel or API, else none."""
    if idp.client_secret_env:
        value = os.environ.get(idp.client_secret_env)
        if value:
            return value
    return await svc.runtime.store.oidc_secret(idp.name, idp.issuer)


def client_for(
    scope: Scope, svc: Services, idp: OidcProvider, secret: str | None = None
) -> OidcClient:
    settings = ClientSettings(
        name=idp.name,
        issuer=idp.issuer,
        client_id=idp.client_id,
        client_secret=secret or None,
        redirect_uri=callback_url(scope, svc, idp.name),
        scopes=idp.effective_scopes,
        groups_claim=idp.effective_groups_claim,
        auth_method=idp.token_endpoint_auth_method,
    )
    key = (
        settings.name,
        settings.issuer,
        settings.client_id,
        hashlib.sha256((secret or "").encode()).hexdigest(),
        settings.redirect_uri,
        settings.scopes,
        settings.groups_claim,
        settings.auth_method,
    )
    client = _REGISTRY.clients.get(key)
    if client is None:
        if len(_REGISTRY.clients) > 64:  # configurations come and go; start afresh
            _REGISTRY.clients.clear()
        client = _REGISTRY.clients[key] = OidcClient(settings, aiohttp_fetch)
    return client


# --------------------------------------------------------------------------- pages


class _Failure(Exception):
    """A failed OIDC login: the page to show and the log record to write."""

    def __init__(
        self,
        status: int,
        message: str,
        reason: str,
        detail: str = "",
        *,
        flow: str | None = None,
        app: str | None = None,
        email: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.detail = detail
        self.flow = flow
        self.app = app
        self.email = email


def _oidc_failure(exc: OidcError, label: str) -> tuple[int, str]:
    """The page (status, message) for a protocol failure; the reason goes to the log."""
    reason = exc.reason
    if reason in ("provider_unreachable",):
        return 502, f"We could not reach {label}. Try again in a minute."
    if reason in (
        "discovery_invalid",
        "client_misconfigured",
        "client_rejected",
        "token_response_invalid",
        "userinfo_invalid",
    ):
        return 502, (
            f"Sign-in with {label} is not set up correctly on this gateway. "
            "Tell your administrator (the access log says why)."
        )
    if reason == "code_rejected":
        return 400, f"{label} did not accept this sign-in any more (it was used or has expired)."
    if reason == "email_unverified":
        return 403, (
            f"{label} has not verified your email address, so it cannot be used to sign in. "
            f"Verify it at {label}, then try again."
        )
    if reason == "email_missing":
        return 403, f"{label} did not tell us your email address, so you cannot sign in with it."
    if reason == "groups_unusable":
        return 403, (
            f"{label} sent a list of groups this gateway cannot use (too many, or left out). "
            "Tell your administrator."
        )
    if reason == "claims_invalid":
        return 403, f"{label} sent an answer this gateway cannot use. Tell your administrator."
    # id_token problems: signature, key, alg, iss, aud, azp, exp, iat, nonce, at_hash
    return 400, (
        f"The answer from {label} could not be verified, so you are not signed in. "
        "Go back to the application and try again."
    )


async def _fail(send: Send, svc: Services, req: Request, name: str, failure: _Failure) -> None:
    svc.metrics.logins.labels("oidc", failure.reason).inc()
    detail = f"oidc {failure.reason}" + (f": {failure.detail}" if failure.detail else "")
    svc.log(
        "login",
        app=failure.app,
        email=failure.email,
        idp=name,
        ip=req.client.ip,
        country=svc.runtime.country(req.client.ip),
        decision="block",
        detail=detail[:500],
    )
    log.info("oidc login via %s failed: %s", name, detail)
    link = f"/.zerogate/login?{urlencode({'flow': failure.flow})}" if failure.flow else None
    page = svc.page(
        "message.html",
        title="Sign-in failed",
        app_name=failure.app,
        message=failure.message,
        detail=f"Reason: {failure.reason}",
        link=link,
        link_text="Try again" if link else None,
        error=True,
    )
    await http.respond_html(send, failure.status, page)


def _provider(svc: Services, name: str) -> OidcProvider | None:
    for idp in svc.runtime.snapshot.objects.identity_providers:
        if isinstance(idp, OidcProvider) and idp.name == name:
            return idp
    return None


def _state_key(state: str) -> str:
    return code_hash("zerogate-oidc-state\x00" + state)


def _browser_hash(value: str) -> str:
    return hashlib.sha256(b"zerogate-oidc-browser\x00" + value.encode()).hexdigest()


def _browser_mac(secret: bytes, nonce: str) -> str:
    mac = hmac.new(secret, b"zerogate-oidc-browser-cookie\x00" + nonce.encode(), hashlib.sha256)
    return mac.hexdigest()[:32]


def new_browser_value(secret: bytes) -> str:
    """A fresh value for the browser cookie: a random nonce and zerogate's MAC of it."""
    nonce = secrets.token_urlsafe(32)
    return f"{nonce}.{_browser_mac(secret, nonce)}"


def browser_value_ok(secret: bytes, value: str) -> bool:
    """Whether ``value`` is one :func:`new_browser_value` made (with this server's secret): a
    value a client or a sibling host made up (OIDC state fixation) is refused."""
    nonce, dot, mac = value.rpartition(".")
    if not dot or not 32 <= len(nonce) <= 100 or len(mac) != 32:
        return False
    return hmac.compare_digest(_browser_mac(secret, nonce), mac)


# --------------------------------------------------------------------------- handlers


async def handle(
    scope: Scope, send: Send, svc: Services, req: Request, name: str, step: str
) -> None:
    """``/.zerogate/oidc/NAME/{start,callback}`` (GET only; the caller routes here)."""
    try:
        if step == "start":
            await start(scope, send, svc, req, name)
        elif scope.get("method") == "GET":  # not HEAD: it consumes the state
            await callback(scope, send, svc, req, name)
        else:
            raise _Failure(405, "Open this sign-in link in a browser.", "bad_method")
    except _Failure as failure:
        await _fail(send, svc, req, name, failure)
    except http.BadRequest:
        raise
    except Exception as exc:  # a bug or a provider answer nobody foresaw: a page, not a trace
        log.exception("oidc %s via %s failed unexpectedly", step, name)
        internal = _Failure(
            500,
            "Sign-in failed because of an error on this gateway. Try again.",
            "internal_error",
            f"{type(exc).__name__}: {exc}",
        )
        await _fail(send, svc, req, name, internal)


def open_flow_blob(svc: Services, blob: str) -> tuple[Flow, CompiledApp]:
    """The signed login flow and its application, or a failure page."""
    try:
        flow = open_flow(svc.runtime.secret, blob, time.time())
    except FlowError as exc:
        raise _Failure(
            400, f"{exc}. Go back to the application and try again.", "flow_invalid", str(exc)
        ) from None
    app = svc.runtime.snapshot.application(flow.app)  # the built-in admin one too
    if app is None:
        raise _Failure(400, "This application no longer exists.", "flow_invalid", flow.app)
    return flow, app


async def start(scope: Scope, send: Send, svc: Services, req: Request, name: str) -> None:
    flow_blob = http.query(scope).get("flow", "")
    flow, app = open_flow_blob(svc, flow_blob)
    await redirect_to_provider(scope, send, svc, req, name, flow_blob, flow, app)


async def auto_redirect(
    scope: Scope,
    send: Send,
    svc: Services,
    req: Request,
    name: str,
    flow_blob: str,
    flow: Flow,
    app: CompiledApp,
) -> None:
    """The login page's shortcut when ``name`` is the application's only login method."""
    try:
        await redirect_to_provider(scope, send, svc, req, name, flow_blob, flow, app)
    except _Failure as failure:
        await _fail(send, svc, req, name, failure)


async def redirect_to_provider(
    scope: Scope,
    send: Send,
    svc: Services,
    req: Request,
    name: str,
    flow_blob: str,
    flow: Flow,
    app: CompiledApp,
) -> None:
    """Begin the login at provider ``name`` for ``app`` (also the login page's auto-redirect)."""
    idp = _provider(svc, name)
    if idp is None or idp not in providers_for(svc, app):
        raise _Failure(
            404,
            "This sign-in method is not offered for this application.",
            "unknown_provider",
            name,
            flow=flow_blob,
            app=app.name,
        )
    now = time.time()
    if not (await svc.limits.oidc_start(req.client.ip, now)).allowed:
        raise _Failure(
            429,
            "Too many sign-in attempts from your network. Try again in a few minutes.",
            "rate_limited",
            app=app.name,
        )
    client = client_for(scope, svc, idp, await client_secret(svc, idp))
    try:
        auth = await client.begin()
    except OidcError as exc:
        status, message = _oidc_failure(exc, idp.label)
        raise _Failure(
            status, message, exc.reason, str(exc), flow=flow_blob, app=app.name
        ) from None
    secure = secure_cookies(svc.runtime, scope)
    browser = cookies.cookie(scope, BROWSER_COOKIE, secure=secure) or ""
    if not browser_value_ok(svc.runtime.secret, browser):
        browser = new_browser_value(svc.runtime.secret)
    # (re)set with a fresh lifetime: logins in other tabs of this browser share the value
    cookie = cookies.set_cookie(
        BROWSER_COOKIE,
        browser,
        max_age=STATE_SECONDS,
        path="/.zerogate/oidc/",
        secure=secure,
    )
    expires = min(now + STATE_SECONDS, float(flow.expires))
    await svc.runtime.store.put_code(
        _state_key(auth.state),
        {
            "kind": "oidc-state",
            "idp": idp.name,
            "flow": flow_blob,
            "nonce": auth.nonce,
            "verifier": auth.code_verifier,
            "browser": _browser_hash(browser),
        },
        expires_at=datetime.fromtimestamp(expires, UTC),
    )
    await http.redirect(send, auth.url, [cookie])


async def callback(scope: Scope, send: Send, svc: Services, req: Request, name: str) -> None:
    """The provider's answer: the state (single use, this browser), the provider's error if
    any, then the code exchanged for the identity that signs in."""
    q = http.query(scope)
    configured = _provider(svc, name)
    label = configured.label if configured is not None else name
    record, idp = await _take_state(scope, svc, q.get("state", ""), name, configured)
    flow_blob = str(record.get("flow", ""))
    flow, app = open_flow_blob(svc, flow_blob)
    if idp not in providers_for(svc, app):
        raise _Failure(
            403,
            "This sign-in method is not offered for this application.",
            "unknown_provider",
            app=app.name,
        )
    _provider_refused(q, label, flow_blob, app)
    code = q.get("code", "")
    if not code or len(code) > 4096:
        raise _Failure(
            400,
            f"{label} sent no sign-in code. Try again.",
            "code_missing",
            flow=flow_blob,
            app=app.name,
        )
    client = client_for(scope, svc, idp, await client_secret(svc, idp))
    try:
        identity = await client.finish(
            code=code,
            code_verifier=str(record["verifier"]),
            nonce=str(record["nonce"]),
            iss=q.get("iss"),
        )
    except OidcError as exc:
        status, message = _oidc_failure(exc, label)
        email = None
        if isinstance(exc, EmailUnverified):
            # logged only in canonical form: the provider's text may be anything
            with contextlib.suppress(ValueError):
                email = check_email(exc.email)
        raise _Failure(
            status, message, exc.reason, str(exc), flow=flow_blob, app=app.name, email=email
        ) from None
    await _signed_in(scope, send, svc, req, idp, identity, flow, app)


async def _take_state(
    scope: Scope, svc: Services, state: str, name: str, idp: OidcProvider | None
) -> tuple[dict[str, Any], OidcProvider]:
    """Consume the stored state of this answer: it must exist (once), belong to provider
    ``name`` (still configured: ``idp``) and to the browser that started the login."""
    if not state or len(state) > 512:
        raise _Failure(
            400,
            "This sign-in answer has no valid state. Go back to the application and try again.",
            "state_missing",
        )
    record = await svc.runtime.store.take_code(_state_key(state), now=datetime.now(UTC))
    if record is None or record.get("kind") != "oidc-state":
        raise _Failure(
            400,
            "This sign-in answer has expired or was already used. "
            "Go back to the application and try again.",
            "state_unknown",
            "unknown, replayed or expired state",
        )
    browser = cookies.cookie(scope, BROWSER_COOKIE, secure=secure_cookies(svc.runtime, scope)) or ""
    if record.get("idp") != name or idp is None:
        raise _Failure(
            400, "This sign-in answer belongs to another sign-in method.", "state_wrong_provider"
        )
    if not browser_value_ok(svc.runtime.secret, browser) or not hmac.compare_digest(
        _browser_hash(browser), str(record.get("browser", ""))
    ):
        raise _Failure(
            400,
            "This sign-in did not start in this browser. Go back to the application and try again.",
            "state_other_browser",
        )
    return record, idp


def _provider_refused(q: dict[str, str], label: str, flow_blob: str, app: CompiledApp) -> None:
    """An ``error`` the provider sent back instead of a code, as a failure page."""
    error = q.get("error")
    if error is None:
        return
    description = q.get("error_description", "")[:300]
    if error == "access_denied":
        raise _Failure(
            401,
            f"You cancelled the sign-in at {label}, or it refused it.",
            "access_denied",
            description,
            flow=flow_blob,
            app=app.name,
        )
    raise _Failure(
        400,
        f"{label} did not sign you in ({error[:60]}).",
        "provider_error",
        f"{error[:60]} {description}".strip(),
        flow=flow_blob,
        app=app.name,
    )


async def _signed_in(
    scope: Scope,
    send: Send,
    svc: Services,
    req: Request,
    idp: OidcProvider,
    identity: OidcIdentity,
    flow: Flow,
    app: CompiledApp,
) -> None:
    """The portal session, the access-log record, the hand-over to the application."""
    rt = svc.runtime
    try:
        email = check_email(identity.email)
    except ValueError as exc:
        raise _Failure(
            403,
            f"{idp.label} sent an email address this gateway cannot use.",
            "email_invalid",
            str(exc),
            app=app.name,
        ) from None
    now = time.time()
    sid, token = await start_session(
        scope,
        svc,
        req.client.ip,
        email=email,
        idp=idp.name,
        groups=list(identity.groups),
        amr=list(identity.amr),
        now=now,
        extra={"idp_sub": identity.sub},
    )
    svc.metrics.logins.labels("oidc", "ok").inc()
    svc.log(
        "login",
        app=app.name,
        email=email,
        idp=idp.name,
        ip=req.client.ip,
        country=rt.country(req.client.ip),
        decision="allow",
        detail=f"oidc login (groups: {len(identity.groups)}, amr: {','.join(identity.amr)})"[:500],
    )
    await hand_over(
        send,
        svc,
        flow,
        app,
        email,
        idp.name,
        list(identity.groups),
        list(identity.amr),
        [
            session_cookie(scope, svc, token),
            last_method_cookie(scope, svc, idp.name),
        ],
        sid=sid,
    )
