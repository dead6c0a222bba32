"""Who may use the admin API and panel: the checks the front door (``admin.app``) makes.

- **API tokens** (``Authorization: Bearer zga_…``): verified by ``AdminService.verify_api_token``
  (SHA-256 of the secret compared in constant time, expiry, revocation = the row is gone).
- **Admin sessions**: the portal's global session cookie (``__zg_portal``, the one
  ``/.zerogate/login`` sets), verified like the portal does (signature, type, expiry,
  revocation), whose email passes the ``admins`` list. The list is evaluated as the one allow
  policy of a built-in application (``ADMIN_APP``): emails, and ``group:NAME`` entries decided
  by the policy engine with the request's context, so a group's IP, country or IdP-group
  selectors apply to the admin as they would to any application. No admins → nobody.
- **CSRF** for API writes made with the cookie: the ``X-Zerogate-CSRF`` header must hold
  ``csrf_token(secret, session)`` (given by ``GET /api/v1/session``); Bearer requests need none.
- **Admin sign-in** at ``/admin/login``: the one-time PIN flow for the admin "application"
  (a PIN is only sent to an address on the admins list; the page is the same either way), which
  ends by setting the same portal session cookie and returning to a *local* ``/admin`` or
  ``/api/v1`` path (``safe_return``: never another host, so no open redirect).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from zerogate.edge import http
from zerogate.edge.asgi_types import Receive, Scope, Send
from zerogate.identity import (
    Claims,
    PinOutcome,
    PinRecord,
    check_pin,
    issue_pin,
    issue_portal_token,
)
from zerogate.mail import MailError, PinEmail, render_pin_email
from zerogate.model.objects import Application, Objects, OneTimePinProvider
from zerogate.model.paths import PathError, normalise_path, under
from zerogate.model.values import check_email, parse_duration
from zerogate.policy import Context, Identity, Snapshot, compile_snapshot
from zerogate.policy.engine import CompiledApp
from zerogate.portal.handlers import PORTAL_COOKIE, pin_store_key, portal_session
from zerogate.runtime import PORTAL_AUDIENCE
from zerogate.services import Services

log = logging.getLogger("zerogate.admin")

#: the built-in application whose one allow policy is the ``admins`` list (access-log name)
ADMIN_APP = "zerogate-admin"
CSRF_HEADER = "x-zerogate-csrf"
LOGIN_PATH = "/admin/login"
#: the double-submit cookie of the admin sign-in forms (scoped to the sign-in pages)
LOGIN_CSRF_COOKIE = "__zg_admin_csrf"
DEFAULT_RETURN = "/admin/"
MAX_RETURN = 2000


# ---------------------------------------------------------------- admins list


class AdminCheck:
    """Decides "is this identity an admin from here", compiled once per configuration."""

    def __init__(self) -> None:
        self._for: Snapshot | None = None
        self._compiled: tuple[Snapshot, CompiledApp] | None = None

    def _admin_app(self, snapshot: Snapshot) -> tuple[Snapshot, CompiledApp] | None:
        if self._for is not snapshot:
            self._for = snapshot
            self._compiled = build_admin_app(snapshot.objects)
        return self._compiled

    def allows(self, snapshot: Snapshot, identity: Identity, ctx: Context) -> bool:
        compiled = self._admin_app(snapshot)
        if compiled is None:
            return False
        admin_snapshot, app = compiled
        return admin_snapshot.decide(app, identity, ctx).decision == "allow"


def build_admin_app(objects: Objects) -> tuple[Snapshot, CompiledApp] | None:
    """The admin "application": one allow policy including the listed emails and groups;
    ``None`` when the list is empty (then nobody is an admin)."""
    emails = [a for a in objects.admins if not a.startswith("group:")]
    groups = [a[len("group:") :] for a in objects.admins if a.startswith("group:")]
    include: list[dict[str, Any]] = []
    if emails:
        include.append({"email": emails})
    if groups:
        include.append({"group": groups})
    if not include:
        return None
    app = Application.model_validate(
        {
            "name": ADMIN_APP,
            "domain": "zerogate-admin.invalid",
            "origin": "http://127.0.0.1:9",
            "policies": [{"name": "admins", "decision": "allow", "include": include}],
        }
    )
    snapshot = compile_snapshot(Objects(groups=list(objects.groups), applications=[app]))
    return snapshot, snapshot.apps[ADMIN_APP]


def identity_of(claims: Claims) -> Identity:
    return Identity.of(claims.email, claims.idp, claims.groups or (), claims.amr or ())


# ---------------------------------------------------------------- tokens and CSRF


def bearer(scope: Scope) -> str | None:
    """The Bearer token of the request, ``""`` for a malformed Authorization header, ``None``
    when there is none."""
    value = http.header_text(scope, b"authorization")
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return ""
    return token.strip()


def csrf_token(secret: bytes, session_id: str) -> str:
    """The CSRF token of one admin session: bound to the session and the server secret."""
    mac = hmac.new(secret, b"zerogate-admin-csrf\x00" + session_id.encode(), hashlib.sha256)
    return mac.hexdigest()


def csrf_ok(scope: Scope, secret: bytes, session_id: str) -> bool:
    sent = http.header_text(scope, CSRF_HEADER.encode())
    return bool(sent) and hmac.compare_digest(
        sent.encode("latin-1"), csrf_token(secret, session_id).encode()
    )


def session_claims(scope: Scope, svc: Services) -> Claims | None:
    """The portal session (verified: signature, type, expiry, revocation), or ``None``."""
    return portal_session(scope, svc)


# ---------------------------------------------------------------- return URLs


def safe_return(target: str) -> str:
    """``target`` when it is a path on this host under ``/admin`` or ``/api/v1``; otherwise
    ``/admin/``. Never a scheme, host, ``//``, backslash or control character (no open
    redirect), and the path must stay inside after normalisation (no ``/admin/../x``)."""
    if not target or len(target) > MAX_RETURN:
        return DEFAULT_RETURN
    if "\\" in target or any(ord(c) < 0x21 or ord(c) == 0x7F for c in target):
        return DEFAULT_RETURN
    if not target.startswith("/") or target.startswith("//"):
        return DEFAULT_RETURN
    try:
        parts = urlsplit(target)
    except ValueError:
        return DEFAULT_RETURN
    if parts.scheme or parts.netloc:
        return DEFAULT_RETURN
    try:
        path = normalise_path(parts.path)
    except PathError:
        return DEFAULT_RETURN
    if not (under(path, "/admin") or under(path, "/api/v1")) or path.startswith(LOGIN_PATH):
        return DEFAULT_RETURN
    return path + (f"?{parts.query}" if parts.query else "")


def login_url(svc: Services, target: str) -> str:
    """Where a signed-out browser signs in, coming back to ``target`` afterwards."""
    return f"{svc.runtime.portal_origin}{LOGIN_PATH}?" + urlencode({"rd": safe_return(target)})


# ---------------------------------------------------------------- the admin sign-in


@dataclass(frozen=True)
class _Client:
    ip: str
    country: str | None


_FORM = """{% extends "base.html" %}{% block body %}
<h1>{{ heading }}</h1>
<p class="app">to continue to <strong>zerogate administration</strong></p>
{% if error %}<p class="error" role="alert">{{ error }}</p>{% endif %}
{% if info %}<p class="info">{{ info }}</p>{% endif %}
{% if step == "email" %}
<form method="post" action="/admin/login/otp">
  <input type="hidden" name="rd" value="{{ rd }}">
  <input type="hidden" name="csrf" value="{{ csrf }}">
  <label for="email">Email address</label>
  <input type="email" id="email" name="email" autocomplete="email" required value="{{ email }}">
  <button type="submit">Send me a sign-in code</button>
</form>
<p class="note">Only addresses on the admins list receive a code.</p>
{% elif step == "pin" %}
<form method="post" action="/admin/login/verify">
  <input type="hidden" name="rd" value="{{ rd }}">
  <input type="hidden" name="csrf" value="{{ csrf }}">
  <input type="hidden" name="email" value="{{ email }}">
  <label for="pin">Sign-in code</label>
  <input type="text" id="pin" name="pin" class="pin" inputmode="numeric" pattern="[0-9 ]*"
         maxlength="7" autocomplete="one-time-code" required value="{{ pin }}">
  <button type="submit">Sign in</button>
</form>
<p class="note"><a href="/admin/login?{{ again }}">Request a new code</a></p>
{% endif %}
{% endblock %}"""


class AdminLogin:
    """``/admin/login`` (GET: the email form), ``/admin/login/otp`` (POST: send a PIN),
    ``/admin/login/confirm`` (GET: the email's link, a form with a POST button),
    ``/admin/login/verify`` (POST: check it, set the portal session, go back)."""

    def __init__(self, svc: Services, check: AdminCheck) -> None:
        self.svc = svc
        self.check = check
        self.template = svc.pages.from_string(_FORM)

    async def handle(self, scope: Scope, receive: Receive, send: Send, client: _Client) -> None:
        path = scope.get("path", "")
        method = scope.get("method", "GET")
        if path == LOGIN_PATH and method in ("GET", "HEAD"):
            await self.start(scope, send, client)
        elif path == LOGIN_PATH + "/otp" and method == "POST":
            await self.send_pin(scope, receive, send, client)
        elif path == LOGIN_PATH + "/confirm" and method in ("GET", "HEAD"):
            q = http.query(scope)
            pin = "".join(ch for ch in q.get("pin", "") if ch.isdigit())[:6]
            await self._page(scope, send, "pin", rd=q.get("rd", ""), email=q.get("email"), pin=pin)
        elif path == LOGIN_PATH + "/verify" and method == "POST":
            await self.verify(scope, receive, send, client)
        else:
            await http.respond_html(
                send,
                405 if path.startswith(LOGIN_PATH + "/") else 404,
                self.svc.page(
                    "message.html", title="Not found", message="There is nothing here.", error=True
                ),
            )

    # -- pages ---------------------------------------------------------------------------

    def _csrf(self, scope: Scope) -> tuple[str, list[tuple[bytes, bytes]]]:
        token = http.cookies(scope).get(LOGIN_CSRF_COOKIE, "")
        if len(token) >= 20:
            return token, []
        token = secrets.token_urlsafe(24)
        cookie = http.set_cookie(
            LOGIN_CSRF_COOKIE,
            token,
            path=LOGIN_PATH,
            secure=self.svc.runtime.scheme == "https",
            same_site="Strict",
        )
        return token, [cookie]

    async def _page(
        self,
        scope: Scope,
        send: Send,
        step: str,
        *,
        status: int = 200,
        rd: str = "",
        email: str | None = None,
        pin: str = "",
        error: str | None = None,
        info: str | None = None,
    ) -> None:
        csrf, cookies = self._csrf(scope)
        rd = safe_return(rd)
        html = self.template.render(
            title="Sign in",
            heading="Check your email" if step == "pin" else "Administrator sign-in",
            step=step,
            rd=rd,
            csrf=csrf,
            email=(email or "")[:200],
            pin=pin,
            error=error,
            info=info,
            again=urlencode({"rd": rd}),
        )
        await http.respond_html(send, status, html, cookies)

    def _otp(self) -> OneTimePinProvider | None:
        for idp in self.svc.runtime.snapshot.objects.identity_providers:
            if isinstance(idp, OneTimePinProvider):
                return idp
        return None

    def _is_admin(self, email: str, idp: str, client: _Client) -> bool:
        rt = self.svc.runtime
        return self.check.allows(
            rt.snapshot, Identity.of(email, idp), Context(ip=client.ip, country=client.country)
        )

    def _check_form_csrf(self, scope: Scope, form: dict[str, str]) -> bool:
        cookie = http.cookies(scope).get(LOGIN_CSRF_COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), form.get("csrf", "").encode())

    def _record(
        self, client: _Client, email: str, idp: str | None, decision: str, detail: str
    ) -> None:
        self.svc.log(
            "login",
            app=ADMIN_APP,
            email=email,
            idp=idp,
            ip=client.ip,
            country=client.country,
            decision=decision,
            detail=detail,
        )

    # -- steps ---------------------------------------------------------------------------

    async def start(self, scope: Scope, send: Send, client: _Client) -> None:
        rd = http.query(scope).get("rd", "")
        claims = session_claims(scope, self.svc)
        rt = self.svc.runtime
        ctx = Context(ip=client.ip, country=client.country)
        if claims is not None and self.check.allows(rt.snapshot, identity_of(claims), ctx):
            await http.redirect(send, safe_return(rd))
            return
        if self._otp() is None:
            message = (
                "No one-time PIN login is configured. Sign in to any application protected by "
                "this gateway with your identity provider, then open this page again; or use "
                "`zerogate api-token create` on the server for API access."
            )
            await http.respond_html(
                send,
                503,
                self.svc.page("message.html", title="Sign in", message=message, error=True),
            )
            return
        info = None
        if claims is not None:
            info = f"You are signed in as {claims.email}, who is not an administrator."
        await self._page(scope, send, "email", rd=rd, info=info)

    async def send_pin(self, scope: Scope, receive: Receive, send: Send, client: _Client) -> None:
        svc = self.svc
        rt = svc.runtime
        form = await http.read_form(scope, receive)
        rd = form.get("rd", "")
        if not self._check_form_csrf(scope, form):
            await self._page(scope, send, "email", status=403, rd=rd, error=_EXPIRED)
            return
        otp = self._otp()
        if otp is None:
            await self._page(scope, send, "email", status=400, rd=rd, error="No PIN login.")
            return
        try:
            email = check_email(form.get("email", ""))
        except ValueError:
            await self._page(
                scope,
                send,
                "email",
                status=400,
                rd=rd,
                email=form.get("email"),
                error="Enter a valid email address.",
            )
            return
        now = time.time()
        limit = svc.pins.hit(email, client.ip, now)
        if not limit.allowed:
            self._record(client, email, otp.name, "block", "pin rate limited")
            minutes = max(1, int(limit.retry_after // 60) + 1)
            await self._page(
                scope,
                send,
                "email",
                status=429,
                rd=rd,
                email=email,
                error=f"Too many codes requested. Try again in {minutes} minutes.",
            )
            return
        if self._is_admin(email, otp.name, client):
            pin, record = issue_pin(email, ADMIN_APP, secret=rt.secret, now=now)
            confirm = f"{rt.portal_origin}{LOGIN_PATH}/confirm?" + urlencode(
                {"rd": safe_return(rd), "email": email, "pin": pin}
            )
            message = render_pin_email(
                PinEmail(
                    to=email, pin=pin, app_name="zerogate administration", confirm_url=confirm
                ),
                sender=rt.settings.email.from_,
            )
            key = pin_store_key(email, ADMIN_APP)

            async def deliver() -> None:
                await rt.store.put_pin(key, record.to_dict())
                try:
                    await svc.mailer.send(message)
                except MailError as exc:
                    log.warning("could not send the admin PIN email to %s: %s", email, exc)
                    self._record(client, email, otp.name, "block", f"pin email failed: {exc}")
                    return
                self._record(client, email, otp.name, "pin sent", "admin sign-in")

            svc.spawn(deliver())
        else:
            self._record(client, email, otp.name, "block", "no pin sent: not an admin")
        await self._page(
            scope,
            send,
            "pin",
            rd=rd,
            email=email,
            info=f"If {email} is an administrator, we have sent a 6-digit code to it. "
            "It is valid for 10 minutes.",
        )

    async def verify(self, scope: Scope, receive: Receive, send: Send, client: _Client) -> None:
        svc = self.svc
        rt = svc.runtime
        form = await http.read_form(scope, receive)
        rd = form.get("rd", "")
        email = form.get("email", "").strip().lower()[:200]
        if not self._check_form_csrf(scope, form):
            await self._page(scope, send, "email", status=403, rd=rd, error=_EXPIRED)
            return
        otp = self._otp()
        key = pin_store_key(email, ADMIN_APP)
        now = time.time()
        outcome = PinOutcome.WRONG
        for _ in range(5):
            got = await rt.store.get_pin(key)
            if got is None:
                break
            stored, revision = got
            outcome, updated = check_pin(
                PinRecord.from_dict(stored), form.get("pin", "")[:20], rt.secret, now
            )
            if await rt.store.update_pin(key, updated.to_dict(), revision=revision):
                break
            outcome = PinOutcome.WRONG
        idp = otp.name if otp is not None else "onetimepin"
        # the list may have changed since the PIN was sent: check again
        if outcome == PinOutcome.OK and not self._is_admin(email, idp, client):
            outcome = PinOutcome.WRONG
        if outcome != PinOutcome.OK:
            self._record(client, email, idp, "block", f"admin pin {outcome.value}")
            error = {
                PinOutcome.EXPIRED: "That code has expired. Request a new one.",
                PinOutcome.EXHAUSTED: "Too many wrong codes. Request a new one.",
                PinOutcome.USED: "That code has already been used. Request a new one.",
            }.get(outcome, "That code is not right. Check the email and try again.")
            await self._page(scope, send, "pin", status=401, rd=rd, email=email, error=error)
            return
        await rt.store.delete_pin(key)
        self._record(client, email, idp, "allow", "admin pin accepted")
        ttl = int(parse_duration(rt.settings.session_duration).total_seconds())
        token = issue_portal_token(
            rt.keyset,
            issuer=rt.issuer,
            audience=PORTAL_AUDIENCE,
            email=email,
            sub=email,
            idp=idp,
            ttl_seconds=ttl,
            now=now,
        )
        cookie = http.set_cookie(PORTAL_COOKIE, token, max_age=ttl, secure=rt.scheme == "https")
        await http.redirect(send, safe_return(rd), [cookie])


_EXPIRED = "This form has expired. Please try again."
