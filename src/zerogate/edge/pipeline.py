"""The request pipeline for application hosts (DESIGN "Data flow"):

route → reserved ``/.zerogate/*`` → identify → decide → forward | login | block → record.

Nothing here touches the database on an ordinary request: the snapshot, keys, revocations and
service-token credentials are in memory (``zerogate.runtime``); verified session tokens are
cached. Only the login hand-over (``/.zerogate/authorized``) and logout write to the store.
Everything that is not clearly allowed is denied: unknown hosts get 404, unsafe paths 400,
a session that fails any check is no session.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit

from zerogate.identity import Claims, TokenError, issue_app_token
from zerogate.identity.flow import (
    FLOW_SECONDS,
    LOGOUT_FIELD,
    Flow,
    code_hash,
    logout_token,
    logout_token_ok,
    new_state,
    sign_flow,
    state_hash,
)
from zerogate.model.paths import PathError, fold, normalise_path
from zerogate.net import http
from zerogate.net.asgi import Headers, Message, Receive, Scope, Send
from zerogate.net.headers import (
    is_zerogate_cookie_name,
    upstream_request_headers,
)
from zerogate.net.upstream import Outbound, Upstream, UpstreamRefused, UpstreamUnavailable
from zerogate.policy import Context, Identity
from zerogate.policy.engine import CompiledApp, Snapshot
from zerogate.runtime import Runtime, cookies
from zerogate.runtime.cookies import secure_cookies
from zerogate.runtime.pages import logout_page
from zerogate.runtime.request import Request, public_origin_of
from zerogate.runtime.services import Services

log = logging.getLogger("zerogate.edge")

STATE_COOKIE = "__zg_state"
#: a return URL longer than this is not carried through the login: the app's root is used
MAX_RETURN_URL = 2000
RESERVED = "/.zerogate/"
SERVICE_TOKEN_TTL = 300


def is_reserved(path: str) -> bool:
    """Whether a normalised path is zerogate's own (``/.zerogate`` and below, in any case:
    a case-insensitive origin would serve ``/.ZEROGATE/…`` as ``/.zerogate/…``)."""
    folded = fold(path)
    return folded.startswith(RESERVED) or folded == RESERVED.rstrip("/")


def app_cookie(app: CompiledApp) -> str:
    """Each application has its own session cookie (host-only): app A's never opens app B."""
    return f"__zg_{app.audience[:16]}"


async def bad_request(send: Send, svc: Services, scope: Scope, why: str) -> None:
    if http.wants_json(scope):
        await http.respond_json(send, 400, {"error": "bad request", "detail": why})
    else:
        page = svc.page("message.html", title="Bad request", message=why, error=True)
        await http.respond_html(send, 400, page)


async def not_found(send: Send, svc: Services, scope: Scope) -> None:
    """Unknown host or path: a page that names nothing inside."""
    if http.wants_json(scope):
        await http.respond_json(send, 404, {"error": "not found"})
    else:
        page = svc.page(
            "message.html", title="Not found", message="There is nothing here.", error=True
        )
        await http.respond_html(send, 404, page)


async def handle(scope: Scope, receive: Receive, send: Send, svc: Services, req: Request) -> None:
    """An HTTP or WebSocket request for an application host."""
    rt = svc.runtime
    snapshot = rt.snapshot
    try:
        app = snapshot.route(req.host, req.raw_path)
        reserved = is_reserved(normalise_path(req.raw_path))
    except PathError as exc:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await bad_request(send, svc, scope, str(exc))
        return
    if app is None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await not_found(send, svc, scope)
        return
    if reserved:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await reserved_path(scope, receive, send, svc, req, app)
        return

    cors = app.model.cors
    if cors is not None and scope["type"] == "http" and is_preflight(scope):
        await preflight(scope, receive, send, svc, req, app)
        return

    claims = session_claims(scope, rt, app)
    identity = None
    if claims is not None:
        identity = Identity.of(claims.email, claims.idp, claims.groups or (), claims.amr or ())
        rt.seen(claims, req.client.ip, time.time())  # a mark in memory, written later
    token_name = service_token(scope, rt)
    country = rt.country(req.client.ip)
    ctx = Context(ip=req.client.ip, country=country, service_token=token_name)
    verdict = snapshot.decide(app, identity, ctx)
    decision = verdict.decision
    svc.metrics.requests.labels(app.name, decision).inc()

    if decision == "bypass":
        await forward(scope, receive, send, svc, req, app, inject=[])
        return
    if decision == "authenticate":
        if token_name is None and _presents_service_token(scope):
            await token_refused(scope, send, svc, req, app, country)
            return
        await login_required(scope, send, svc, req, app, country)
        return
    # allow and block are recorded (bypass is not; authenticate in login_required); an
    # allowed request when its response ended, with the status the client got and how long
    email = claims.email if claims is not None else None
    websocket = scope["type"] == "websocket"

    def record(status: int | None, duration_ms: float | None = None) -> None:
        svc.log(
            "request",
            app=app.name,
            email=email or token_name,
            idp=claims.idp if claims is not None else ("service_token" if token_name else None),
            ip=req.client.ip,
            country=country,
            decision=decision,
            policy=verdict.policy,
            method="WEBSOCKET" if websocket else scope.get("method", "GET"),
            host=req.host,
            path=req.raw_path,
            detail=None if decision == "allow" else verdict.reason,
            status=status,
            duration_ms=duration_ms,
        )

    if decision != "allow":
        record(None if websocket else 403)
        await blocked(scope, send, svc, app, email, network_only(app, verdict.policy))
        return
    if claims is not None:
        assertion = cookies.cookie(scope, app_cookie(app), secure=secure_cookies(rt, scope))
        assert assertion is not None  # session_claims verified it
        inject = session_headers(assertion, claims)
    else:
        assert token_name is not None
        inject = service_headers(rt, app, token_name)
    seen = StatusSeen(send)
    started = time.perf_counter()
    try:
        await forward(scope, receive, seen, svc, req, app, inject=inject)
    finally:
        record(seen.status, (time.perf_counter() - started) * 1000.0)


class StatusSeen:
    """``send`` that remembers the status the client got (101 for an accepted WebSocket;
    None while nothing was sent, or for a WebSocket closed before it was accepted)."""

    __slots__ = ("send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status: int | None = None

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind in ("http.response.start", "websocket.http.response.start"):
            self.status = message["status"]
        elif kind == "websocket.accept":
            self.status = 101
        await self.send(message)


def is_preflight(scope: Scope) -> bool:
    """A CORS preflight: OPTIONS with Origin and Access-Control-Request-Method."""
    if scope.get("method") != "OPTIONS":
        return False
    names = {key for key, _ in scope["headers"]}
    return b"origin" in names and b"access-control-request-method" in names


async def preflight(
    scope: Scope, receive: Receive, send: Send, svc: Services, req: Request, app: CompiledApp
) -> None:
    """Preflights carry no credentials, so they cannot pass an identity policy: per the
    application's ``cors`` setting they go to the origin as they are, or the edge answers."""
    cors = app.model.cors
    assert cors is not None
    if cors.mode == "origin":
        await forward(scope, receive, send, svc, req, app, inject=[])
        return
    origin = http.header_text(scope, b"origin")
    headers: list[tuple[bytes, bytes]] = [(b"vary", b"Origin")]
    allowed = cors.allowed_origins
    if "*" in allowed or origin in allowed:
        star = "*" in allowed and not cors.allow_credentials
        headers += [
            (b"access-control-allow-origin", b"*" if star else origin.encode("latin-1")),
            (
                b"access-control-allow-methods",
                ", ".join(
                    cors.allowed_methods or ["GET", "POST", "PUT", "PATCH", "DELETE"]
                ).encode(),
            ),
            (b"access-control-max-age", str(cors.max_age).encode()),
        ]
        if cors.allowed_headers:
            headers.append(
                (b"access-control-allow-headers", ", ".join(cors.allowed_headers).encode())
            )
        if cors.allow_credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
    await http.respond(send, 204, b"", content_type=b"text/plain", headers=headers)


def session_claims(scope: Scope, rt: Runtime, app: CompiledApp) -> Claims | None:
    """The verified, unrevoked session of this application, or None (never an error)."""
    token = cookies.cookie(scope, app_cookie(app), secure=secure_cookies(rt, scope))
    return token_claims(rt, app, token)


def token_claims(rt: Runtime, app: CompiledApp, token: str | None) -> Claims | None:
    """:func:`session_claims` for the value of the application's cookie (None: no cookie)."""
    if not token:
        return None
    try:
        claims = rt.verifier("app").verify(token, app.audience, now=time.time())
    except TokenError:
        return None
    if rt.rejects(claims):  # logged out everywhere, or its session ended
        return None
    return claims


def session_headers(token: str, claims: Claims) -> Headers:
    """What the origin gets for a session: its application token and the user's address."""
    return [
        (b"zerogate-jwt-assertion", token.encode("latin-1")),
        (b"zerogate-authenticated-user-email", claims.email.encode("utf-8")),
    ]


def service_headers(rt: Runtime, app: CompiledApp, name: str) -> Headers:
    """What the origin gets for a service token: a short-lived JWT naming it."""
    return [(b"zerogate-jwt-assertion", service_assertion(rt, app, name))]


def service_token(scope: Scope, rt: Runtime) -> str | None:
    try:
        client_id = http.header(scope, b"zerogate-client-id")
        secret = http.header(scope, b"zerogate-client-secret")
    except http.BadRequest:
        return None
    if client_id is None or secret is None:
        return None
    return rt.service_token(client_id.decode("latin-1"), secret.decode("latin-1"), now=time.time())


_service_assertions: dict[tuple[str, str, str], tuple[bytes, float]] = {}


def service_assertion(rt: Runtime, app: CompiledApp, name: str) -> bytes:
    """A short-lived JWT naming the service token, so the origin can verify every request."""
    now = time.time()
    key = (name, app.name, rt.keyset.active.kid)
    hit = _service_assertions.get(key)
    if hit is not None and hit[1] - now > SERVICE_TOKEN_TTL / 2:
        return hit[0]
    token = issue_app_token(
        rt.keyset,
        issuer=rt.issuer,
        audience=app.audience,
        email="",
        sub=f"service-token:{name}",
        idp="service_token",
        ttl_seconds=SERVICE_TOKEN_TTL,
        now=now,
        extra={"common_name": name},
    ).encode()
    if len(_service_assertions) > 10000:
        _service_assertions.clear()
    _service_assertions[key] = (token, now + SERVICE_TOKEN_TTL)
    return token


async def forward(
    scope: Scope,
    receive: Receive,
    send: Send,
    svc: Services,
    req: Request,
    app: CompiledApp,
    *,
    inject: Headers,
) -> None:
    websocket = scope["type"] == "websocket"
    headers = upstream_request_headers(
        scope["headers"],
        client_ip=req.client.ip,
        proto=req.scheme,
        host=req.host_header,
        inject=inject,
        upgrade=websocket,
        forwarded_for=req.client.forwarded_for,
    )
    headers = [(k, v) for k, v in headers if k != b"cookie"] + strip_zerogate_cookies(
        scope["headers"]
    )
    path_qs = req.raw_path + (f"?{req.query}" if req.query else "")
    picked = upstream_of(svc, app)
    if isinstance(picked, str):
        await unavailable(scope, send, svc, app, picked)
        return
    upstream, to = picked
    out = Outbound(
        to,
        path_qs,
        headers,
        authority=req.host_header,
        scheme=req.scheme,
        timeouts=app.timeouts,
    )
    try:
        if websocket:
            await upstream.forward_websocket(scope, receive, send, out)
        else:
            await upstream.forward_http(scope, receive, send, out)
    except UpstreamUnavailable as exc:
        await unavailable(scope, send, svc, app, str(exc))
    except UpstreamRefused as exc:
        if websocket:
            await send({"type": "websocket.close", "code": 1008})
        elif exc.status == 431:
            await http.respond_json(send, 431, {"error": "request headers too large"})
        else:
            await bad_request(send, svc, scope, str(exc))


def upstream_of(svc: Services, app: CompiledApp) -> tuple[Upstream, str] | str:
    """The upstream that serves ``app`` and where to in it, or why there is none.

    An ``origin:`` application goes to the origin proxy; any other to the tunnel the compiled
    snapshot routed it to (``CompiledApp.tunnel``: only a tunnel that routes its host), through
    ``svc.tunnels`` (``edge.relay.ClusterTunnels``: this process's own connections, else a relay
    to the node of the cluster that holds one)."""
    origin = app.model.origin
    if origin is not None:
        return svc.upstream, origin
    if app.tunnel is None:
        return "this application is not routed to a tunnel"
    if svc.tunnels is None:
        return svc.tunnels_disabled or "this application's tunnel has no connected connector"
    return svc.tunnels, app.tunnel


def strip_zerogate_cookies(headers: Headers) -> Headers:
    """The client's cookies minus zerogate's own, ``__Host-`` ones too (the origin gets
    identity as headers)."""
    kept: list[str] = []
    for key, value in headers:
        if key != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            part = part.strip()
            if part and not is_zerogate_cookie_name(part.partition("=")[0]):
                kept.append(part)
    return [(b"cookie", "; ".join(kept).encode("latin-1"))] if kept else []


async def unavailable(scope: Scope, send: Send, svc: Services, app: CompiledApp, why: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1011})
        return
    if http.wants_json(scope):
        await http.respond_json(send, 502, {"error": "bad gateway", "detail": why})
        return
    page = svc.page(
        "message.html", title="Application unavailable", app_name=app.name, message=why, error=True
    )
    await http.respond_html(send, 502, page)


#: selectors about where a request comes from, not who sends it
NETWORK_SELECTORS = frozenset({"ip", "country"})


def network_only(app: CompiledApp, policy: str | None) -> bool:
    """Whether the block policy that matched looks only at the network (so the page may say
    "from this network"); a default deny or an identity rule is not the network's fault."""
    found = next((p for p in app.model.policies if p.name == policy), None)
    if found is None:
        return False
    selectors = {rule.selector for _, _, rule in found.rules()}
    return bool(selectors) and selectors <= NETWORK_SELECTORS


async def blocked(
    scope: Scope,
    send: Send,
    svc: Services,
    app: CompiledApp,
    email: str | None,
    network: bool = False,
) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    if http.wants_json(scope):
        await http.respond_json(send, 403, {"error": "forbidden", "application": app.name})
        return
    who = f"You are signed in as {email}, which " if email else "Your request "
    where = " from this network" if network else ""
    page = svc.page(
        "message.html",
        title="Access denied",
        app_name=app.name,
        message=f"{who}may not use this application{where}.",
        detail="If you think you should have access, contact your administrator.",
        link="/.zerogate/logout" if email else None,
        link_text="Sign in as someone else",
        error=True,
    )
    await http.respond_html(send, 403, page)


def login_url(svc: Services, req: Request, app: CompiledApp, state: str, rd: str) -> str:
    rt = svc.runtime
    flow = Flow(
        app=app.name, rd=rd, state_hash=state_hash(state), expires=int(time.time()) + FLOW_SECONDS
    )
    return f"{rt.portal_origin(req.scheme, req.port)}/.zerogate/login?" + urlencode(
        {"flow": sign_flow(rt.secret, flow)}
    )


def state_cookie(scope: Scope, svc: Services, state: str) -> tuple[bytes, bytes]:
    return cookies.set_cookie(
        STATE_COOKIE,
        state,
        max_age=FLOW_SECONDS,
        path="/.zerogate/",
        secure=secure_cookies(svc.runtime, scope),
    )


def _presents_service_token(scope: Scope) -> bool:
    return any(name in _TOKEN_HEADERS for name, _ in scope["headers"])


_TOKEN_HEADERS = frozenset({b"zerogate-client-id", b"zerogate-client-secret"})


async def token_refused(
    scope: Scope, send: Send, svc: Services, req: Request, app: CompiledApp, country: str | None
) -> None:
    """Service-token headers that prove nothing (wrong, unknown, expired, repeated): a
    machine is calling, so 401 JSON whatever it accepts (never a login page), recorded."""
    try:
        raw_id = http.header(scope, b"zerogate-client-id")
    except http.BadRequest:
        raw_id = None  # repeated
    client_id = raw_id.decode("latin-1")[:64] if raw_id is not None else None
    svc.log(
        "request",
        app=app.name,
        email=None,
        idp="service_token",
        ip=req.client.ip,
        country=country,
        decision="block",
        policy=None,
        method=scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET",
        host=req.host,
        path=req.raw_path,
        detail=f"service token refused (client id {client_id!r}): wrong, unknown or expired",
    )
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    await http.respond_json(
        send,
        401,
        {
            "error": "invalid service token",
            "application": app.name,
            "detail": "the Zerogate-Client-Id / Zerogate-Client-Secret pair is wrong, unknown "
            "or expired",
        },
        [(b"www-authenticate", b'Zerogate realm="zerogate"')],
    )


async def login_required(
    scope: Scope,
    send: Send,
    svc: Services,
    req: Request,
    app: CompiledApp,
    country: str | None = None,
) -> None:
    """302 to the portal for a browser navigation; 401 JSON with a login URL otherwise.
    Recorded as ``authenticate``, aggregated per application, client address and minute (a
    scan must not flood the log)."""
    websocket = scope["type"] == "websocket"
    navigation = not websocket and http.is_navigation(scope)
    svc.log(
        "request",
        app=app.name,
        email=None,
        idp=None,
        ip=req.client.ip,
        country=country,
        decision="authenticate",
        method="WEBSOCKET" if websocket else scope.get("method", "GET"),
        host=req.host,
        path=req.raw_path,
        detail="sent to login" if navigation else "login required",
        status=None if websocket else 302 if navigation else 401,
        repeat_key=(app.name, req.client.ip),
    )
    if websocket:
        await send({"type": "websocket.close", "code": 1008})
        return
    if navigation:
        state = new_state()
        rd = safe_return(req, app, svc.runtime.snapshot, request_path(req), svc.runtime)
        await http.redirect(
            send, login_url(svc, req, app, state, rd), [state_cookie(scope, svc, state)]
        )
        return
    start = f"{public_origin(svc.runtime, req)}/.zerogate/login?" + urlencode(
        {"rd": req.raw_path + (f"?{req.query}" if req.query else "")}
    )
    await http.respond_json(
        send,
        401,
        {"error": "login required", "application": app.name, "login_url": start},
        [(b"www-authenticate", b'Zerogate realm="zerogate"')],
    )


def request_path(req: Request) -> str:
    """The path and query the client asked for (what a login returns to)."""
    return req.raw_path + (f"?{req.query}" if req.query else "")


def public_origin(rt: Runtime, req: Request) -> str:
    """``scheme://host[:port]`` of the host this request named, as the public sees it.

    The port is the configured public one (the port of ``portal``, which every application
    host shares), never the one the Host header carries: a Host header is the client's to
    choose, and a URL the edge builds from it must not send a browser to another port (another
    service on the same name) after a login or logout."""
    return public_origin_of(req.scheme, req.host, rt.settings.portal_address, req.port)


def root_url(req: Request, app: CompiledApp, rt: Runtime) -> str:
    return f"{public_origin(rt, req)}{app.path or '/'}"


def reserved_target(path: str) -> bool:
    """``path`` (raw) normalises into zerogate's own ``/.zerogate/`` (any letter case), or
    cannot be normalised at all: never a place to return a browser to."""
    try:
        return is_reserved(normalise_path(path))
    except PathError:
        return True


def safe_return(
    req: Request, app: CompiledApp, snapshot: Snapshot, target: str, rt: Runtime
) -> str:
    """``target`` (absolute or a path) when it lies on this application's own public origin
    (scheme, host and the configured port), is not one of zerogate's ``/.zerogate/`` paths and
    routes to this very application; otherwise the application's root. Never another host or
    port (no open redirect), never a logout or login page (no loop, no forced logout)."""
    fallback = root_url(req, app, rt)
    if not target or len(target) > MAX_RETURN_URL:
        return fallback
    if "\\" in target or any(ord(c) < 0x21 or ord(c) == 0x7F for c in target):
        return fallback
    origin = public_origin(rt, req)
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        if f"{parts.scheme.lower()}://{parts.netloc.lower()}" != origin.lower():
            return fallback
    elif not target.startswith("/") or target.startswith("//"):
        return fallback
    path = parts.path or "/"
    if reserved_target(path):
        return fallback
    try:
        if snapshot.route(req.host, path) is not app:
            return fallback
    except PathError:
        return fallback
    return f"{origin}{path}" + (f"?{parts.query}" if parts.query else "")


async def reserved_path(
    scope: Scope, receive: Receive, send: Send, svc: Services, req: Request, app: CompiledApp
) -> None:
    """``/.zerogate/*`` on an application host: never forwarded to the origin."""
    rt = svc.runtime
    path = fold(normalise_path(req.raw_path))
    if path == "/.zerogate/certs":
        await http.respond_json(send, 200, rt.keyset.jwks(time.time()))
    elif path == "/.zerogate/identity":
        claims = session_claims(scope, rt, app)
        if claims is None:
            await http.respond_json(send, 401, {"error": "not signed in"})
        else:
            await http.respond_json(send, 200, {**claims.to_dict(), "application": app.name})
    elif path == "/.zerogate/login":
        state = new_state()
        rd = safe_return(req, app, rt.snapshot, http.query(scope).get("rd", ""), rt)
        await http.redirect(
            send, login_url(svc, req, app, state, rd), [state_cookie(scope, svc, state)]
        )
    elif path == "/.zerogate/authorized":
        await authorized(scope, send, svc, req, app)
    elif path == "/.zerogate/logout":
        await app_logout(scope, receive, send, svc, req)
    else:
        await not_found(send, svc, scope)


async def app_logout(
    scope: Scope, receive: Receive, send: Send, svc: Services, req: Request
) -> None:
    """``/.zerogate/logout`` on an application host. GET shows a button; the POST (with the
    token of that page) revokes the identity of every session of this host's applications
    (path-scoped ones share the host), clears their cookies and goes on to the portal's
    logout, which ends the portal session the same way."""
    rt = svc.runtime
    secure = secure_cookies(rt, scope)
    apps = host_apps(rt.snapshot, req.host)
    jar = http.cookies(scope)
    names = [cookies.cookie_name(app_cookie(a), secure=secure) for a in apps]
    sessions = [jar[name] for name in names if name in jar]
    token = logout_token(rt.secret, req.host, sessions)
    method = scope.get("method", "GET")
    if method in ("GET", "HEAD"):
        who = {c.email for a in apps if (c := session_claims(scope, rt, a)) is not None}
        await logout_page(send, svc, token, who=", ".join(sorted(who)) or None)
        return
    if method != "POST":
        await http.respond(
            send,
            405,
            b"method not allowed\n",
            content_type=b"text/plain",
            headers=[(b"allow", b"GET, HEAD, POST")],
        )
        return
    try:
        form = await http.read_form(scope, receive)
    except http.BadRequest as exc:
        await bad_request(send, svc, scope, str(exc))
        return
    if not logout_token_ok(rt.secret, req.host, sessions, form.get(LOGOUT_FIELD, "")):
        page = svc.page(
            "message.html",
            title="Sign out",
            message="This sign-out form has expired or came from another site.",
            link="/.zerogate/logout",
            link_text="Sign out",
            error=True,
        )
        await http.respond_html(send, 403, page)
        return
    clear = []
    revoked: set[str] = set()
    for other in apps:
        claims = session_claims(scope, rt, other)
        if claims is not None and claims.email not in revoked:
            await rt.revoke(claims.email)
            revoked.add(claims.email)
            svc.log(
                "login",
                app=other.name,
                email=claims.email,
                idp=claims.idp,
                ip=req.client.ip,
                country=None,
                decision="logout",
            )
        clear.append(cookies.clear_cookie(app_cookie(other), secure=secure))
    # 303: the browser follows with a GET; the portal's logout page ends (or shows the
    # button for) the portal session
    logout = f"{rt.portal_origin(req.scheme, req.port)}/.zerogate/logout"
    await http.redirect(send, logout, clear, status=303)


def host_apps(snapshot: Snapshot, host: str) -> list[CompiledApp]:
    """The applications served on ``host`` (exact host or the matching ``*.`` wildcard)."""
    first, _, parent = host.partition(".")
    wildcard = f"*.{parent}" if first and parent else None
    return [a for a in snapshot.apps.values() if a.host in (host, wildcard)]


async def authorized(
    scope: Scope, send: Send, svc: Services, req: Request, app: CompiledApp
) -> None:
    """The portal hands this application a session: a one-time code, bound to this app and
    to the state cookie this host set before the login began (so no login CSRF)."""
    rt = svc.runtime
    secure = secure_cookies(rt, scope)
    code = http.query(scope).get("code", "")
    data = None
    if code and len(code) < 200:
        data = await rt.store.take_code(code_hash(code), now=datetime.now(UTC))
    state = cookies.cookie(scope, STATE_COOKIE, secure=secure) or ""
    problem = None
    # the code names its application: one served on this very host (a path-scoped app shares
    # its host's /.zerogate/), and the return URL is checked to route to it below
    target = rt.snapshot.apps.get(str(data.get("app"))) if data is not None else None
    if data is None:
        problem = "This sign-in link is not valid any more."
    elif target is None or target not in host_apps(rt.snapshot, req.host):
        problem = "This sign-in link belongs to another application."
    elif not state or state_hash(state) != data.get("state"):
        problem = "This sign-in did not start in this browser."
    if problem is not None or data is None:
        svc.log(
            "login",
            app=app.name,
            email=data.get("email") if data else None,
            idp=None,
            ip=req.client.ip,
            country=None,
            decision="block",
            detail=f"handover: {problem}",
        )
        page = svc.page(
            "message.html",
            title="Sign-in failed",
            app_name=app.name,
            message=problem,
            link=f"{app.path or '/'}",
            link_text="Try again",
            error=True,
        )
        await http.respond_html(
            send, 400, page, [cookies.clear_cookie(STATE_COOKIE, path="/.zerogate/", secure=secure)]
        )
        return
    assert target is not None
    app = target
    email = str(data["email"])
    idp = str(data["idp"])
    groups = list(data.get("groups") or [])
    amr = list(data.get("amr") or [])
    identity = Identity.of(email, idp, groups, amr)
    verdict = rt.snapshot.decide(
        app, identity, Context(ip=req.client.ip, country=rt.country(req.client.ip))
    )
    ttl = rt.session_seconds(app, verdict.policy)
    token = issue_app_token(
        rt.keyset,
        issuer=rt.issuer,
        audience=app.audience,
        email=email,
        sub=email,
        idp=idp,
        groups=groups or None,
        amr=amr or None,
        ttl_seconds=ttl,
        now=time.time(),
        # the portal session it came from: ending that session ends this token too
        extra={"sid": data["sid"]} if isinstance(data.get("sid"), str) else None,
    )
    back = safe_return(req, app, rt.snapshot, str(data.get("rd", "")), rt)
    await http.redirect(
        send,
        back,
        [
            cookies.set_cookie(app_cookie(app), token, max_age=ttl, secure=secure),
            cookies.clear_cookie(STATE_COOKIE, path="/.zerogate/", secure=secure),
        ],
    )
