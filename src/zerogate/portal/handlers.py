"""The portal host: login pages, the one-time PIN flow, the global session, logout.

Flow (ARCHITECTURE.md, "Flow of a request"):

1. the edge sends a browser to ``/.zerogate/login?flow=…`` (a signed flow: app, return URL,
   hash of the state cookie it set on the app's host);
2. with a valid portal session whose login method the app accepts → single sign-on, else the
   login page; the email form posts to ``/.zerogate/login/otp``;
3. a PIN is sent only when that address could pass an Allow policy of the app from this
   network; the page says the same either way;
4. ``/.zerogate/login/otp/verify`` checks the PIN (compare-and-set on the stored record, so
   parallel guesses cannot exceed five tries), sets the portal session and hands the app a
   one-time code at ``https://<app>/.zerogate/authorized``.

Forms carry a CSRF token equal to a cookie set when the form was shown (double submit).
OpenID Connect login (the provider buttons, ``/.zerogate/oidc/NAME/start`` and ``/callback``)
lives in ``portal/oidc.py``; this module routes to it and offers its buttons. The session both
set, and the hand-over that ends both, live in ``portal/session.py``.

The admin panel and API log in here too, as the built-in application ``zerogate-admin``
(``Snapshot.application`` finds it by the flow's name): the same pages, methods and PIN rule;
only the end differs (``runtime/admin_login.py``: back to a local ``/admin`` path, no code).
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Callable
from email.message import EmailMessage
from functools import partial
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlencode

from zerogate.identity import (
    Claims,
    PinOutcome,
    PinRecord,
    browser_binding,
    check_pin,
    decoy,
    issue_pin,
)
from zerogate.identity.flow import (
    Flow,
    FlowError,
    logout_token,
    logout_token_ok,
    open_flow,
    sessions_token,
    sessions_token_ok,
)
from zerogate.mail import MailError, PinEmail, render_pin_email
from zerogate.model.objects import ADMIN_APPLICATION
from zerogate.model.paths import PathError, normalise_path
from zerogate.model.values import EmailRefused, check_email
from zerogate.net import http
from zerogate.net.asgi import Receive, Scope, Send
from zerogate.policy import Context, Identity
from zerogate.policy.engine import CompiledApp, Verdict
from zerogate.portal import oidc as oidc_login
from zerogate.portal.session import (
    PORTAL_COOKIE,
    hand_over,
    portal_session,
    session_cookie,
    session_id,
    start_session,
)
from zerogate.runtime import Runtime, cookies
from zerogate.runtime.cookies import secure_cookies
from zerogate.runtime.devices import device_of
from zerogate.runtime.pages import logout_page
from zerogate.runtime.request import Request, portal_origin, public_origin_of
from zerogate.runtime.services import Services
from zerogate.store import Session

log = logging.getLogger("zerogate.portal")

CSRF_COOKIE = "__zg_csrf"
#: a random value per browser, set when it asks for a PIN; the PIN record keeps its HMAC, and
#: only that browser can use the PIN (typed or through the emailed link)
PIN_COOKIE = "__zg_pin"
PIN_COOKIE_SECONDS = 24 * 3600


def _login_recorder(
    svc: Services, app: str, email: str, idp: str, ip: str, country: str | None
) -> Callable[..., None]:
    """An access-log writer for one login attempt: only the outcome varies between calls."""

    def record(decision: str, detail: str | None = None, policy: str | None = None) -> None:
        svc.log(
            "login",
            app=app,
            email=email,
            idp=idp,
            ip=ip,
            country=country,
            decision=decision,
            detail=detail,
            policy=policy,
        )

    return record


#: how the built-in admin application is named to people (pages and the PIN email's subject)
ADMIN_SHOWN = "the zerogate admin panel"


def shown_name(app: str) -> str:
    """An application's name as the login pages and emails show it."""
    return ADMIN_SHOWN if app == ADMIN_APPLICATION else app


def pin_store_key(email: str, app: str) -> str:
    """The store key of the one PIN record of (canonical address, application)."""
    return f"{email}\x1f{app}"


class _Problem(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


async def handle(scope: Scope, receive: Receive, send: Send, svc: Services, req: Request) -> None:
    if scope["type"] != "http":
        await send({"type": "websocket.close", "code": 1008})
        return
    try:
        path = normalise_path(req.raw_path)
    except PathError as exc:
        await _message(send, svc, 400, "Bad request", str(exc))
        return
    method = scope.get("method", "GET")
    try:
        if path == "/.zerogate/certs":
            await http.respond_json(send, 200, svc.runtime.keyset.jwks(time.time()))
        elif path == "/.zerogate/identity":
            claims = portal_session(scope, svc)
            if claims is None:
                await http.respond_json(send, 401, {"error": "not signed in"})
            else:
                await http.respond_json(send, 200, claims.to_dict())
        elif path == "/.zerogate/login" and method in ("GET", "HEAD"):
            await login_page(scope, send, svc, req)
        elif path == "/.zerogate/login/otp" and method == "POST":
            await otp_start(scope, receive, send, svc, req)
        elif path == "/.zerogate/login/otp/verify" and method == "POST":
            await otp_verify(scope, receive, send, svc, req)
        elif path == "/.zerogate/login/otp/confirm" and method in ("GET", "HEAD"):
            await otp_confirm(scope, send, svc)
        elif path == "/.zerogate/logout":
            await logout(scope, receive, send, svc, req)
        elif path == "/.zerogate/metrics":
            await metrics(scope, send, svc, req)
        elif (route := oidc_login.route(path)) is not None and method in ("GET", "HEAD"):
            await oidc_login.handle(scope, send, svc, req, *route)
        elif path == "/.zerogate/outbox" and svc.show_outbox and svc.outbox is not None:
            # the PINs of everybody: only for this machine (email.outbox is for local trials)
            if ip_address(req.client.ip).is_loopback:
                await http.respond_html(send, 200, svc.outbox.render_html())
            else:
                await _message(send, svc, 404, "Not found", "There is nothing here.")
        elif path == "/":
            await home(scope, send, svc, req)
        elif path == "/.zerogate/sessions" and method in ("GET", "HEAD"):
            await sessions_page(scope, send, svc, req)
        elif path == "/.zerogate/sessions/end" and method == "POST":
            await end_session(scope, receive, send, svc, req)
        else:
            await _message(send, svc, 404, "Not found", "There is nothing here.")
    except _Problem as problem:
        await _message(send, svc, problem.status, "Sign-in problem", problem.message)
    except http.BadRequest as exc:
        await _message(send, svc, 400, "Bad request", str(exc))


async def home(scope: Scope, send: Send, svc: Services, req: Request) -> None:
    """The portal's home, an app launcher: the applications this person may open now (each
    application's policies judged with their identity and network, as a request would be),
    administration when they are an administrator, and sign-out."""
    claims = _signed_in(scope, svc, req)
    if claims is None:
        await _message(
            send,
            svc,
            200,
            "zerogate",
            "You are not signed in. Open one of your applications to sign in.",
            error=False,
        )
        return
    rt = svc.runtime
    snapshot = rt.snapshot
    identity = Identity.of(claims.email, claims.idp, claims.groups or (), claims.amr or ())
    ctx = Context(ip=req.client.ip, country=rt.country(req.client.ip))
    apps: list[tuple[str, str]] = []
    for app in sorted(snapshot.apps.values(), key=lambda a: a.name.lower()):
        if app.host.startswith("*.") or app is snapshot.admin:
            continue  # a wildcard names no one host to link to
        if snapshot.decide(app, identity, ctx).decision in ("allow", "bypass"):
            origin = public_origin_of(req.scheme, app.host, rt.settings.portal_address, req.port)
            apps.append((app.name, origin + (app.path or "/")))
    admin = snapshot.decide(snapshot.admin, identity, ctx).decision == "allow"
    page = svc.page(
        "home.html", title="Your applications", email=claims.email, apps=apps, admin=admin
    )
    await http.respond_html(send, 200, page)


def _signed_in(scope: Scope, svc: Services, req: Request) -> Claims | None:
    """The portal session, its use noted (last seen: a mark the watcher writes later)."""
    claims = portal_session(scope, svc)
    if claims is not None:
        svc.runtime.seen(claims, req.client.ip, time.time())
    return claims


def session_rows(found: list[Session], current: str | None) -> list[dict[str, Any]]:
    """What the sessions lists show of each session (portal and admin panel)."""
    return [
        {
            "id": s.id,
            "email": s.email,
            "idp": s.idp,
            "device": device_of(s.user_agent),
            "user_agent": s.user_agent or "",
            "ip": s.ip or "—",
            "since": s.created_at,
            "seen": s.seen_at,
            "expires": s.expires_at,
            "current": s.id == current,
        }
        for s in found
    ]


async def sessions_page(
    scope: Scope,
    send: Send,
    svc: Services,
    req: Request,
    *,
    status: int = 200,
    notice: str | None = None,
) -> None:
    """``/.zerogate/sessions``: this person's active sessions (device, address, since, last
    seen; the one of this browser marked), each with a button that ends it."""
    claims = _signed_in(scope, svc, req)
    if claims is None:
        await _message(send, svc, 401, "Your sessions", "You are not signed in.", error=False)
        return
    mine = claims.email.lower()
    found = [s for s in await svc.runtime.store.sessions(email=mine) if s.email == mine]
    rt = svc.runtime
    cookie = cookies.cookie(scope, PORTAL_COOKIE, secure=secure_cookies(rt, scope)) or ""
    page = svc.page(
        "sessions.html",
        csrf=sessions_token(rt.secret, rt.portal_host, cookie),
        title="Your sessions",
        email=claims.email,
        sessions=session_rows(found, session_id(claims)),
        notice=notice or ("The session is ended." if http.query(scope).get("ended") else None),
        known=session_id(claims) is not None,
    )
    await http.respond_html(send, status, page)


async def end_session(
    scope: Scope, receive: Receive, send: Send, svc: Services, req: Request
) -> None:
    """The POST of a sessions page's "End" button (with the page's CSRF token): ends one of
    this person's own sessions; a session of anyone else is refused as if it did not exist."""
    form = await http.read_form(scope, receive)
    claims = _signed_in(scope, svc, req)
    if claims is None:
        await _message(send, svc, 401, "Your sessions", "You are not signed in.")
        return
    rt = svc.runtime
    cookie = cookies.cookie(scope, PORTAL_COOKIE, secure=secure_cookies(rt, scope)) or ""
    if not sessions_token_ok(rt.secret, rt.portal_host, cookie, form.get("csrf", "")):
        await _message(
            send, svc, 403, "Your sessions", "This form has expired: reload the sessions page."
        )
        return
    target = form.get("session", "")[:100]
    found = await svc.runtime.store.session(target) if target else None
    if found is None or found.email != claims.email.lower() or found.ended_at is not None:
        await _message(send, svc, 404, "Your sessions", "You have no such active session.")
        return
    await svc.runtime.end_session(found.id)
    svc.log(
        "login",
        app=None,
        email=claims.email,
        idp=claims.idp,
        ip=req.client.ip,
        country=None,
        decision="logout",
        detail=f"session ended ({device_of(found.user_agent)})",
    )
    if found.id == session_id(claims):
        page = svc.page(
            "message.html",
            title="Signed out",
            message="This session is ended: you are signed out on this device.",
            error=False,
        )
        clear = cookies.clear_cookie(PORTAL_COOKIE, secure=secure_cookies(svc.runtime, scope))
        await http.respond_html(send, 200, page, [clear])
        return
    await http.redirect(send, "/.zerogate/sessions?ended=1")


async def _message(
    send: Send, svc: Services, status: int, title: str, message: str, *, error: bool = True
) -> None:
    await http.respond_html(
        send, status, svc.page("message.html", title=title, message=message, error=error)
    )


async def metrics(scope: Scope, send: Send, svc: Services, req: Request) -> None:
    """Prometheus metrics, only for clients in ``metrics_allow`` (default: this machine)."""
    address = ip_address(req.client.ip)
    if not any(address in net for net in svc.runtime.metrics_allow):
        await _message(send, svc, 404, "Not found", "There is nothing here.")
        return
    svc.metrics.observe_runtime(svc.runtime.version.config_version, svc.runtime.swaps)
    body, content_type = svc.metrics.render(http.header_text(scope, b"accept") or None)
    await http.respond(send, 200, body, content_type=content_type.encode())


def _flow(svc: Services, blob: str) -> tuple[Flow, CompiledApp]:
    try:
        flow = open_flow(svc.runtime.secret, blob, time.time())
    except FlowError as exc:
        raise _Problem(400, f"{exc}. Go back to the application and try again.") from None
    app = svc.runtime.snapshot.application(flow.app)
    if app is None:
        raise _Problem(400, "This application no longer exists.")
    return flow, app


def _csrf(scope: Scope, svc: Services) -> tuple[str, list[tuple[bytes, bytes]]]:
    """The CSRF token for a form; a new cookie when the browser has none."""
    secure = secure_cookies(svc.runtime, scope)
    token = cookies.cookie(scope, CSRF_COOKIE, secure=secure) or ""
    if len(token) >= 20:
        return token, []
    token = secrets.token_urlsafe(24)
    return token, [
        cookies.set_cookie(
            CSRF_COOKIE, token, path="/.zerogate/", secure=secure, same_site="Strict"
        )
    ]


def _check_csrf(scope: Scope, svc: Services, form: dict[str, str]) -> None:
    cookie = cookies.cookie(scope, CSRF_COOKIE, secure=secure_cookies(svc.runtime, scope)) or ""
    sent = form.get("csrf", "")
    if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise _Problem(403, "This form has expired. Go back to the application and try again.")


async def _render(
    send: Send,
    svc: Services,
    scope: Scope,
    template: str,
    status: int = 200,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    **values: object,
) -> None:
    csrf, cookie = _csrf(scope, svc)
    await http.respond_html(
        send, status, svc.page(template, csrf=csrf, **values), [*cookie, *(headers or [])]
    )


async def login_page(scope: Scope, send: Send, svc: Services, req: Request) -> None:
    flow_blob = http.query(scope).get("flow", "")
    flow, app = _flow(svc, flow_blob)
    claims = portal_session(scope, svc)
    allowed = app.model.identity_providers
    if claims is not None and (allowed is None or claims.idp in allowed):
        await hand_over(
            send,
            svc,
            flow,
            app,
            claims.email,
            claims.idp,
            list(claims.groups or ()),
            list(claims.amr or ()),
            sid=session_id(claims),
        )
        return
    methods = login_methods(scope, svc, app, flow_blob)
    oidc = oidc_login.providers_for(svc, app)
    if len(oidc) == 1 and not methods["otp"]:
        # the application's only login method: straight to the provider (auto redirect)
        await oidc_login.auto_redirect(scope, send, svc, req, oidc[0].name, flow_blob, flow, app)
        return
    # the PIN cookie now, so the PIN form's answer carries no cookie of its own
    _, browser_cookie = _browser(scope, svc) if methods["otp"] else ("", [])
    await _render(
        send,
        svc,
        scope,
        "login.html",
        headers=browser_cookie,
        title="Sign in",
        app_name=shown_name(app.name),
        flow=flow_blob,
        email=None,
        error=None,
        **methods,
    )


def login_methods(scope: Scope, svc: Services, app: CompiledApp, flow_blob: str) -> dict[str, Any]:
    """What the login page offers: a button per OIDC provider of the application and the PIN
    form; the method this browser used last comes first."""
    last = oidc_login.last_method(scope, svc)
    otp = svc.runtime.otp_provider(app)
    buttons = [
        {
            "name": idp.name,
            "label": idp.label,
            "url": oidc_login.start_url(idp, flow_blob),
            "last": idp.name == last,
        }
        for idp in oidc_login.providers_for(svc, app)
    ]
    buttons.sort(key=lambda b: not b["last"])
    return {
        "otp": otp is not None,
        "otp_last": otp is not None and otp.name == last,
        "oidc": buttons,
    }


def typed_email(text: str) -> str:
    """The canonical address of what was typed into a form: surrounding ASCII spaces (which a
    browser's email field drops too) are ignored, then ``check_email``, which refuses anything
    outside the grammar (``EmailRefused``)."""
    return check_email(text.strip(" \t\r\n"))


def _pin_cookie(scope: Scope, rt: Runtime) -> str:
    return cookies.cookie(scope, PIN_COOKIE, secure=secure_cookies(rt, scope)) or ""


def _browser(scope: Scope, svc: Services) -> tuple[str, list[tuple[bytes, bytes]]]:
    """The ``browser_binding`` of this browser's PIN cookie, and the ``Set-Cookie`` that gives
    it one when it has none (a random value; only its HMAC goes into PIN records)."""
    token = _pin_cookie(scope, svc.runtime)
    binding = browser_binding(svc.runtime.secret, token)
    if binding:
        return binding, []
    token = secrets.token_urlsafe(32)
    cookie = cookies.set_cookie(
        PIN_COOKIE,
        token,
        path="/.zerogate/login",
        max_age=PIN_COOKIE_SECONDS,
        secure=secure_cookies(svc.runtime, scope),
        # Lax: sent when the emailed link is opened in this browser (a top-level GET)
        same_site="Lax",
    )
    return browser_binding(svc.runtime.secret, token), [cookie]


async def otp_start(
    scope: Scope, receive: Receive, send: Send, svc: Services, req: Request
) -> None:
    """The email form's answer: a PIN for this browser, mailed after the page was sent, when
    the address may log in; the same page and timing when it may not."""
    form = await http.read_form(scope, receive)
    _check_csrf(scope, svc, form)
    flow_blob = form.get("flow", "")
    _, app = _flow(svc, flow_blob)
    rt = svc.runtime
    otp = rt.otp_provider(app)
    if otp is None:
        raise _Problem(400, "One-time PINs are not a login method of this application.")
    again = partial(_login_again, send, svc, scope, app, flow_blob)
    try:
        email = typed_email(form.get("email", ""))
    except EmailRefused as exc:
        # depends only on the text typed: the same for every address, allowed or not
        error = f"Enter one email address, such as name@example.com: {exc.reason}."
        await again(400, form.get("email", "")[:200], error)
        return
    now = time.time()
    ip = req.client.ip
    country = rt.country(ip)
    record_login = _login_recorder(svc, app.name, email, otp.name, ip, country)
    if svc.mail_unhealthy(now):
        # the SMTP server could not be used a moment ago: say so to whoever asks now (it is
        # the same for every address, so it reveals none)
        await again(503, email, "We cannot send email just now. Please try again in a minute.")
        return
    limit = await svc.limits.pin_send(email, ip, now)
    if not limit.allowed:
        record_login(decision="block", detail="pin rate limited")
        minutes = max(1, int(limit.retry_after // 60) + 1)
        error = f"Too many codes requested. Try again in {minutes} minutes."
        await again(429, email, error, [(b"retry-after", limit.retry_after_header.encode())])
        return
    browser, browser_cookie = _browser(scope, svc)
    verdict = rt.snapshot.decide(app, Identity.of(email, otp.name), Context(ip=ip, country=country))
    allowed = verdict.decision == "allow"
    # The same work whether or not the address may log in: a PIN and its email are made
    # either way; a refused address gets a decoy record (no PIN matches it, same tries) and
    # no mail, so every later answer and its timing are the same too.
    pin, record = issue_pin(email, app.name, secret=rt.secret, now=now, browser=browser)
    confirm = f"{portal_origin(scope, rt)}/.zerogate/login/otp/confirm?" + urlencode(
        {"flow": flow_blob, "email": email, "pin": pin}
    )
    message = render_pin_email(
        PinEmail(to=email, pin=pin, app_name=shown_name(app.name), confirm_url=confirm),
        sender=rt.settings.email.from_,
    )
    if not allowed:
        record = decoy(record)
        record_login(decision="block", detail="no pin sent: no allow policy matches")
    svc.spawn(
        _deliver_pin(
            svc, pin_store_key(email, app.name), record, message, email, verdict, record_login
        )
    )
    await _render(
        send,
        svc,
        scope,
        "pin.html",
        headers=browser_cookie,
        title="Check your email",
        app_name=shown_name(app.name),
        flow=flow_blob,
        email=email,
        error=None,
    )


async def _login_again(
    send: Send,
    svc: Services,
    scope: Scope,
    app: CompiledApp,
    flow_blob: str,
    status: int,
    email: str,
    error: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """The login page again, with the address typed and why no PIN was sent."""
    await _render(
        send,
        svc,
        scope,
        "login.html",
        status,
        headers=headers,
        title="Sign in",
        app_name=shown_name(app.name),
        flow=flow_blob,
        email=email,
        error=error,
        **login_methods(scope, svc, app, flow_blob),
    )


async def _deliver_pin(
    svc: Services,
    key: str,
    record: PinRecord,
    message: EmailMessage,
    email: str,
    verdict: Verdict,
    record_login: Callable[..., None],
) -> None:
    """Store the record, then mail the PIN: after the page was sent, so the page and its
    timing are the same whether or not this address may log in (``verdict``)."""
    await svc.runtime.store.put_pin(key, record.to_dict())
    if verdict.decision != "allow":
        # no mail for this address, but the same look at the mail server: whether the next
        # page says "email is not working" must not depend on who asked before
        try:
            await svc.mailer.probe()
        except MailError as exc:
            svc.mail_failed_at = time.time()
            _mail_health(svc, "failed", None, str(exc))
            log.warning("the mail server cannot be used: %s", exc)
        else:
            if svc.mail_failed_at is not None:  # the dashboard learns that it is back
                _mail_health(svc, "reachable", None, "the mail server answers again")
            svc.mail_failed_at = None
        return
    try:
        delivery = await svc.mailer.send(message, email)
    except MailError as exc:
        if exc.server_down:
            # nobody gets mail now: PIN requests say so for a minute
            svc.mail_failed_at = time.time()
        else:
            # this address's own problem (refused, bounced): nobody else is affected
            svc.mail_failed_at = None
        _mail_health(svc, "failed", email, str(exc))
        log.warning("could not send the PIN email to %s: %s", email, exc)
        record_login(decision="block", detail=f"pin email failed: {exc}")
        return
    svc.mail_failed_at = None
    _mail_health(svc, "sent", email, delivery.reply)
    svc.metrics.pins_sent.inc()
    record_login(decision="pin sent", policy=verdict.policy)


def _mail_health(svc: Services, outcome: str, email: str | None, detail: str) -> None:
    """One ``mail`` row in the access log: the dashboard's and the API's mail health
    (``AdminService.mail_health``) across every process and node."""
    svc.log(
        "mail",
        app=None,
        email=email,
        idp=None,
        ip=None,
        country=None,
        decision=outcome,
        detail=detail,
    )


_ELSEWHERE = (
    "This code was requested in another browser. Type the code in the browser where you "
    "asked for it, or request a new code here."
)


async def _pin_record(svc: Services, email: str | None, app: str) -> PinRecord | None:
    if email is None:
        return None
    got = await svc.runtime.store.get_pin(pin_store_key(email, app))
    return None if got is None else PinRecord.from_dict(got[0])


def _maybe_email(text: str) -> str | None:
    try:
        return typed_email(text)
    except EmailRefused:
        return None


async def otp_confirm(scope: Scope, send: Send, svc: Services) -> None:
    """The email's link: a page with a POST button, so link scanners cannot use the PIN, shown
    only in the browser that asked for the PIN; anywhere else it sets nothing and says to type
    the code where it was requested (no login CSRF through a forwarded link)."""
    q = http.query(scope)
    flow_blob = q.get("flow", "")
    _, app = _flow(svc, flow_blob)
    email = _maybe_email(q.get("email", ""))
    record = await _pin_record(svc, email, app.name)
    token = _pin_cookie(scope, svc.runtime)
    binding = browser_binding(svc.runtime.secret, token)
    if (
        email is None
        or record is None
        or check_pin(record, "", svc.runtime.secret, time.time(), browser=binding)[0]
        == PinOutcome.ELSEWHERE
    ):
        await _message(send, svc, 403, "Open this link where you asked for the code", _ELSEWHERE)
        return
    pin = "".join(ch for ch in q.get("pin", "") if ch.isdigit())[:6]
    await _render(
        send,
        svc,
        scope,
        "confirm.html",
        title="Confirm sign-in",
        app_name=shown_name(app.name),
        flow=flow_blob,
        email=email,
        pin=pin,
    )


async def otp_verify(
    scope: Scope, receive: Receive, send: Send, svc: Services, req: Request
) -> None:
    form = await http.read_form(scope, receive)
    _check_csrf(scope, svc, form)
    flow_blob = form.get("flow", "")
    flow, app = _flow(svc, flow_blob)
    rt = svc.runtime
    otp = rt.otp_provider(app)
    if otp is None:
        raise _Problem(400, "One-time PINs are not a login method of this application.")
    email = _maybe_email(form.get("email", ""))
    candidate = form.get("pin", "")[:20]
    browser = browser_binding(rt.secret, _pin_cookie(scope, svc.runtime))
    now = time.time()
    outcome = PinOutcome.WRONG
    if email is not None:
        key = pin_store_key(email, app.name)
        for _ in range(5):
            got = await rt.store.get_pin(key)
            if got is None:
                break
            record, revision = got
            outcome, updated = check_pin(
                PinRecord.from_dict(record), candidate, rt.secret, now, browser=browser
            )
            if outcome == PinOutcome.ELSEWHERE:
                break  # nothing changed
            if await rt.store.update_pin(key, updated.to_dict(), revision=revision):
                break
            outcome = PinOutcome.WRONG  # someone else changed it meanwhile: read again
    ip = req.client.ip
    country = rt.country(ip)
    shown = email if email is not None else form.get("email", "")[:200]
    record_login = _login_recorder(svc, app.name, email or "", otp.name, ip, country)
    svc.metrics.logins.labels("otp", outcome.value).inc()
    if outcome != PinOutcome.OK or email is None:
        record_login(decision="block", detail=f"pin {outcome.value}")
        error = {
            PinOutcome.EXPIRED: "That code has expired. Request a new one.",
            PinOutcome.EXHAUSTED: "Too many wrong codes. Request a new one.",
            PinOutcome.USED: "That code has already been used. Request a new one.",
            PinOutcome.ELSEWHERE: _ELSEWHERE,
        }.get(outcome, "That code is not right. Check the email and try again.")
        if svc.mail_unhealthy(now):
            error += " (We could not send email a moment ago, so your code may not have arrived.)"
        await _render(
            send,
            svc,
            scope,
            "pin.html",
            401,
            title="Check your email",
            app_name=shown_name(app.name),
            flow=flow_blob,
            email=shown,
            error=error,
            # no code can work any more: offer a new one to the same address
            code_spent=outcome in (PinOutcome.EXPIRED, PinOutcome.EXHAUSTED, PinOutcome.USED),
        )
        return
    await rt.store.delete_pin(pin_store_key(email, app.name))
    record_login(decision="allow", detail="pin accepted")
    sid, portal_token = await start_session(scope, svc, ip, email=email, idp=otp.name, now=now)
    cookie = session_cookie(scope, svc, portal_token)
    last = oidc_login.last_method_cookie(scope, svc, otp.name)
    await hand_over(send, svc, flow, app, email, otp.name, [], [], [cookie, last], sid=sid)


async def logout(scope: Scope, receive: Receive, send: Send, svc: Services, req: Request) -> None:
    """``/.zerogate/logout`` on the portal: GET shows the button (or says you are signed out
    when there is no session), the POST with that page's token revokes the identity
    everywhere (SPEC "HTTP contract": logout is a POST with a CSRF token)."""
    rt = svc.runtime
    secure = secure_cookies(rt, scope)
    token_cookie = cookies.cookie(scope, PORTAL_COOKIE, secure=secure)
    sessions = [token_cookie] if token_cookie else []
    token = logout_token(rt.secret, rt.portal_host, sessions)
    claims = portal_session(scope, svc)
    method = scope.get("method", "GET")
    if method not in ("GET", "HEAD", "POST"):
        await _message(send, svc, 405, "Sign out", "Use the sign-out button.")
        return
    if method == "POST":
        form = await http.read_form(scope, receive)
        if not logout_token_ok(rt.secret, rt.portal_host, sessions, form.get("csrf", "")):
            raise _Problem(403, "This sign-out form has expired or came from another site.")
    elif claims is not None:
        await logout_page(send, svc, token, who=claims.email)
        return
    if claims is not None:
        await rt.revoke(claims.email)
        svc.log(
            "login",
            app=None,
            email=claims.email,
            idp=claims.idp,
            ip=req.client.ip,
            country=None,
            decision="logout",
        )
    page = svc.page(
        "message.html",
        title="Signed out",
        message="You are signed out of every application.",
        error=False,
    )
    await http.respond_html(
        send,
        200,
        page,
        [cookies.clear_cookie(PORTAL_COOKIE, secure=secure_cookies(svc.runtime, scope))],
    )
