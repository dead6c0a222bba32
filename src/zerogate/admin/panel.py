"""The web admin panel at ``https://<portal>/admin``: server-rendered pages over ``AdminService``.

The admin front door authenticates every request and puts a ``Principal`` into the scope; this
app never authenticates anyone, and refuses to run without a principal (``principal_of``).

- Pages are plain HTML forms (Jinja2, autoescaped) that work without JavaScript;
  ``static/panel.js`` only adds conveniences (add a rule row in place, confirm deletes, show the
  fields of the chosen origin / provider type). No inline script, and a Content-Security-Policy
  that forbids one.
- Every POST carries a CSRF token (``panel_forms.csrf_token``: an HMAC over the principal's
  session id and a time, keyed with ``secret``) and is refused with 403 without a valid one, or
  when the principal is read-only (who then sees the pages without their write buttons).
- Writes go through ``AdminService`` as ``Actor.of(principal)``, so the admin log records them;
  forms carry the object's version, so a stale form gets 409 ("changed by someone else —
  reload", the input kept) and an invalid one 422 with the problems next to the fields. Success
  redirects (POST → redirect → GET) with a signed flash message; the pages that show a secret
  once (service token, connector token, API token) are the POST's own answer, never cached.
- A write the service's lock-out guard refuses (it would remove the signed-in admin's own
  access) gets, whatever the form, one 422 page (``lockout.html``) that explains why and re-posts
  the same fields with a "save anyway" checkbox (``force``) and a fresh CSRF token.

Routes take object names as query or form fields, never as path segments, so any name works.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlencode

import aiohttp
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from zerogate.admin import panel_forms as forms
from zerogate.admin.principal import Principal, principal_of
from zerogate.admin.service import (
    Actor,
    AdminError,
    AdminService,
    Conflict,
    Invalid,
    Item,
    LockOut,
    NotFound,
)
from zerogate.identity.oidc import (
    Fetch,
    FetchError,
    HttpRequest,
    HttpResponse,
    OidcError,
    discovery_url,
    parse_discovery,
)
from zerogate.model.loader import Problem
from zerogate.model.objects import OIDC_PRESETS, Settings
from zerogate.model.values import parse_duration
from zerogate.store import ServiceCredential

#: response headers of every panel page
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}
#: how long "test connection" waits for the provider
TEST_TIMEOUT_SECONDS = 5.0
TEST_MAX_BYTES = 1024 * 1024
RECENT_BLOCKS = 20
#: the largest form the panel reads (its forms are a few kilobytes)
MAX_FORM_BYTES = 1024 * 1024
LOG_LIMIT = 200
DECISIONS = ("allow", "block", "bypass", "service_auth")
LOG_DECISIONS = ("allow", "block", "pin sent", "logout")
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}

Handler = Callable[[Request], Awaitable[Response]]
FormHandler = Callable[[Request, dict[str, list[str]], Principal], Awaitable[Response]]
#: a form's page shown again: ``again(status=..., error=..., problems=...)``
PageAgain = Callable[..., Awaitable[Response]]
T = TypeVar("T")


class Refused(Exception):
    """A request the panel answers with an error page (``status``, ``message``)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def aiohttp_fetch(request: HttpRequest) -> HttpResponse:
    """One GET for "test connection": short timeout, bounded size, no cookies."""
    timeout = aiohttp.ClientTimeout(total=TEST_TIMEOUT_SECONDS)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()) as s,
            s.get(request.url, headers=dict(request.headers), max_redirects=3) as response,
        ):
            body = await response.content.read(TEST_MAX_BYTES + 1)
            if len(body) > TEST_MAX_BYTES:
                raise FetchError(f"{request.url}: answer larger than {TEST_MAX_BYTES} bytes")
            return HttpResponse(response.status, body, response.headers.get("Content-Type", ""))
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        raise FetchError(f"{request.url}: {type(exc).__name__} {exc}".strip()) from None


def _static_files() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("zerogate.admin") / "static"
    found: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in STATIC_TYPES:
            found[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return found


def _principal(request: Request) -> Principal:
    """The front door's principal."""
    return principal_of(request.scope)


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def parse_since(text: str, now: datetime) -> datetime:
    """``30m``/``24h``/``7d`` ago, or an ISO date or time (UTC unless it says otherwise)."""
    value = text.strip()
    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 24h, 7d) nor a time (2025-01-31T12:00)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class Panel:
    """The panel's handlers; ``app`` is the Starlette application."""

    def __init__(
        self,
        service: AdminService,
        secret: bytes,
        *,
        fetch: Fetch,
        settings: Settings | None,
    ) -> None:
        self.service = service
        self.secret = secret
        self.fetch = fetch
        self.settings = settings
        self.env = Environment(
            loader=PackageLoader("zerogate.admin", "templates"),
            autoescape=select_autoescape(["html"]),
            auto_reload=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["when"] = _when
        self.env.globals.update(
            selectors=forms.SELECTOR_LABELS,
            boolean_selectors=forms.BOOLEAN_SELECTORS,
            sections=forms.SECTIONS,
            presets=sorted(OIDC_PRESETS),
        )
        self.static = _static_files()
        self.app = Starlette(routes=self._routes(), max_body_size=MAX_FORM_BYTES)

    # -- plumbing ----------------------------------------------------------------------------

    def _routes(self) -> list[Route]:
        get: list[tuple[str, Handler]] = [
            ("/admin", self.dashboard),
            ("/admin/", self.dashboard),
            ("/admin/applications", self.applications),
            ("/admin/applications/edit", self.application_edit),
            ("/admin/policies/edit", self.policy_edit),
            ("/admin/groups", self.groups),
            ("/admin/groups/edit", self.group_edit),
            ("/admin/identity-providers", self.idps),
            ("/admin/identity-providers/edit", self.idp_edit),
            ("/admin/tunnels", self.tunnels),
            ("/admin/tunnels/edit", self.tunnel_edit),
            ("/admin/service-tokens", self.service_tokens),
            ("/admin/admins", self.admins),
            ("/admin/api-tokens", self.api_tokens),
            ("/admin/access-log", self.access_log),
            ("/admin/admin-log", self.admin_log),
            ("/admin/policy-test", self.policy_test),
            ("/admin/static/{name}", self.static_file),
        ]
        post: list[tuple[str, FormHandler]] = [
            ("/admin/applications/save", self.application_save),
            ("/admin/applications/delete", self.application_delete),
            ("/admin/policies/save", self.policy_save),
            ("/admin/policies/delete", self.policy_delete),
            ("/admin/policies/move", self.policy_move),
            ("/admin/groups/save", self.group_save),
            ("/admin/groups/delete", self.group_delete),
            ("/admin/identity-providers/save", self.idp_save),
            ("/admin/identity-providers/delete", self.idp_delete),
            ("/admin/identity-providers/test", self.idp_test),
            ("/admin/tunnels/save", self.tunnel_save),
            ("/admin/tunnels/delete", self.tunnel_delete),
            ("/admin/tunnels/token", self.tunnel_token),
            ("/admin/service-tokens/save", self.service_token_save),
            ("/admin/service-tokens/delete", self.service_token_delete),
            ("/admin/service-tokens/rotate", self.service_token_rotate),
            ("/admin/admins/save", self.admins_save),
            ("/admin/api-tokens/save", self.api_token_save),
            ("/admin/api-tokens/revoke", self.api_token_revoke),
        ]
        self.pages = frozenset(path for path, _ in get)
        routes = [Route(path, self._reading(h), methods=["GET", "HEAD"]) for path, h in get]
        routes += [Route(path, self._writing(h), methods=["POST"]) for path, h in post]
        return routes

    def _reading(self, handler: Handler) -> Handler:
        async def run(request: Request) -> Response:
            _principal(request)  # no principal: a wiring bug, fail loudly
            try:
                return await handler(request)
            except Refused as exc:
                return self.error_page(request, exc.status, exc.message)
            except NotFound as exc:
                return self.error_page(request, 404, exc.message)

        return run

    def _writing(self, handler: FormHandler) -> Handler:
        async def run(request: Request) -> Response:
            principal = _principal(request)
            if principal.read_only:
                return self.error_page(request, 403, "Your access to the admin panel is read-only.")
            data = await request.form()
            fields = {key: [v for v in data.getlist(key) if isinstance(v, str)] for key in data}
            token = forms.first(fields, forms.CSRF_FIELD)
            if not forms.csrf_valid(self.secret, principal.session_id, token):
                return self.error_page(
                    request,
                    403,
                    "This form has expired or did not come from this panel. "
                    "Go back, reload the page and try again.",
                )
            try:
                return await handler(request, fields, principal)
            except Refused as exc:
                return self.error_page(request, exc.status, exc.message)
            except NotFound as exc:
                return self.error_page(request, 404, exc.message)
            except LockOut as exc:
                return self.lockout_page(request, fields, exc)

        return run

    def lockout_page(
        self, request: Request, fields: Mapping[str, Sequence[str]], exc: LockOut
    ) -> HTMLResponse:
        """The lock-out guard refused a write (whichever form it was): say why, and offer to
        post the same fields again with "save anyway" ticked."""
        path = request.url.path
        back = path.rpartition("/")[0]  # /admin/groups/save → /admin/groups
        replay = [
            (name, value)
            for name, values in fields.items()
            if name not in (forms.CSRF_FIELD, forms.FORCE_FIELD)
            for value in values
        ]
        return self.render(
            request,
            "lockout.html",
            422,
            title="This change would lock you out",
            error=exc.message,
            problems=exc.problems,
            action=path,
            replay=replay,
            back=back if back in self.pages else "/admin",
        )

    def render(
        self, request: Request, template: str, status: int = 200, **values: Any
    ) -> HTMLResponse:
        principal = _principal(request)
        flash = None
        raw = request.cookies.get(forms.FLASH_COOKIE)
        if raw:
            flash = forms.open_flash(self.secret, raw)
        page = self.env.get_template(template).render(
            principal=principal,
            can_write=not principal.read_only,
            csrf=forms.csrf_token(self.secret, principal.session_id),
            flash=flash,
            path=request.url.path,
            **values,
        )
        response = HTMLResponse(page, status_code=status, headers=SECURITY_HEADERS)
        if raw:
            response.delete_cookie(forms.FLASH_COOKIE, path="/admin")
        return response

    def error_page(self, request: Request, status: int, message: str) -> HTMLResponse:
        titles = {403: "Not allowed", 404: "Not found", 409: "Conflict"}
        return self.render(
            request,
            "message.html",
            status,
            title=titles.get(status, "Problem"),
            message=message,
        )

    def redirect(self, target: str, message: str, kind: str = "ok") -> RedirectResponse:
        response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(
            forms.FLASH_COOKIE,
            forms.sign_flash(self.secret, kind, message),
            path="/admin",
            httponly=True,
            samesite="strict",
            secure=False,
        )
        return response

    @staticmethod
    def actor(principal: Principal, fields: Mapping[str, Sequence[str]] | None = None) -> Actor:
        """The service's actor; a session is guarded against locking itself out unless the
        form's "save anyway" box (``force``) is ticked."""
        force = fields is not None and forms.first(fields, forms.FORCE_FIELD) == "1"
        return Actor.of(principal, force=force)

    @staticmethod
    def version(fields: Mapping[str, Sequence[str]], name: str = "version") -> int:
        value = forms.parse_int(forms.first(fields, name))
        if value is None:
            raise Refused(400, "The form lacks the object's version; reload the page.")
        return value

    @staticmethod
    def conflict_message(exc: Conflict, *, update: bool, what: str) -> str:
        if update:
            return (
                f"This {what} was changed by someone else since you opened it — reload to "
                "see the current version (your input is kept below)."
            )
        return exc.message

    async def _attempt(
        self, write: Awaitable[T], again: PageAgain, *, what: str, update: bool
    ) -> T | Response:
        """Await a versioned write; when the object is invalid, ``again`` shows its form with
        422 and the problems, when someone else changed it first with 409 (``conflict_message``).
        """
        try:
            return await write
        except LockOut:
            raise  # one page for every form (``lockout_page``)
        except Invalid as exc:
            return await again(status=422, error=exc.message, problems=exc.problems)
        except Conflict as exc:
            return await again(
                status=409, error=self.conflict_message(exc, update=update, what=what)
            )

    async def _save(
        self,
        collection: str,
        what: str,
        item: Item | None,
        spec: dict[str, Any],
        fields: Mapping[str, Sequence[str]],
        principal: Principal,
        again: PageAgain,
    ) -> Item | Response:
        """Create ``spec`` (``item`` is None) or update the object the form names in
        ``original`` at the form's version: the saved item, or the form ``again`` with 422 /
        409 (``_attempt``)."""

        async def write() -> Item:
            if item is None:
                return await self.service.create(collection, spec, self.actor(principal, fields))
            return await self.service.update(
                collection,
                forms.first(fields, "original"),
                spec,
                version=self.version(fields),
                actor=self.actor(principal, fields),
            )

        return await self._attempt(write(), again, what=what, update=item is not None)

    @staticmethod
    def _rules_again(show: PageAgain, rules: forms.RuleForm) -> PageAgain:
        """``show`` (a page with the rule builder, given ``rules=``) as a ``PageAgain``: each
        problem that names a rule goes next to its row, the rest above the form."""

        async def again(*, status: int, error: str, problems: Sequence[Problem] = ()) -> Response:
            rest = forms.attach_problems(rules, problems)
            return await show(
                rules=rules.with_blank_rows(), status=status, error=error, problems=rest
            )

        return again

    async def names(self, collection: str) -> list[str]:
        return [item.name for item in await self.service.items(collection)]

    async def hints(self) -> dict[str, list[str]]:
        """Known names the rule builder can refer to."""
        return {
            "group": await self.names("groups"),
            "login_method": await self.names("identity_providers"),
            "service_token": await self.names("service_tokens"),
        }

    # -- dashboard ---------------------------------------------------------------------------

    async def dashboard(self, request: Request) -> Response:
        apps = await self.service.items("applications")
        tunnels = await self.tunnel_rows()
        counts = {
            "applications": len(apps),
            "groups": len(await self.service.items("groups")),
            "identity providers": len(await self.service.items("identity_providers")),
            "tunnels": len(tunnels),
            "service tokens": len(await self.service.items("service_tokens")),
            "admins": len((await self.service.admins())[0]),
        }
        blocks = await self.service.access_log(decision="block", limit=RECENT_BLOCKS)
        return self.render(
            request,
            "dashboard.html",
            title="Dashboard",
            apps=apps,
            tunnels=tunnels,
            counts=counts,
            blocks=blocks,
        )

    async def tunnel_rows(self) -> list[dict[str, Any]]:
        items = await self.service.items("tunnels")
        connections = await self.service.connections()
        credentials = {c.name for c in await self.service.store.tunnel_credentials()}
        rows = []
        for item in items:
            mine = [c for c in connections if c.tunnel == item.name]
            rows.append(
                {
                    "item": item,
                    "connections": mine,
                    "connectors": sorted({c.connector_id for c in mine}),
                    "edges": sorted({c.edge_id for c in mine}),
                    "healthy": bool(mine),
                    "has_token": item.name in credentials,
                }
            )
        return rows

    # -- applications and policies -----------------------------------------------------------

    async def applications(self, request: Request) -> Response:
        return self.render(
            request,
            "applications.html",
            title="Applications",
            apps=await self.service.items("applications"),
        )

    async def _application_page(
        self,
        request: Request,
        *,
        item: Item | None,
        form: dict[str, Any],
        status: int = 200,
        error: str | None = None,
        problems: Sequence[Problem] = (),
    ) -> Response:
        return self.render(
            request,
            "application.html",
            status,
            title=f"Application {item.name}" if item else "New application",
            item=item,
            form=form,
            error=error,
            problems=problems,
            idps=await self.names("identity_providers"),
            tunnels=await self.names("tunnels"),
        )

    @staticmethod
    def application_form(spec: Mapping[str, Any]) -> dict[str, Any]:
        target = "origin" if "origin" in spec else "tunnel" if "tunnel" in spec else "none"
        return {
            "name": spec.get("name", ""),
            "domain": spec.get("domain", ""),
            "target": target,
            "origin": spec.get("origin", ""),
            "tunnel": spec.get("tunnel", ""),
            "idp_mode": "some" if spec.get("identity_providers") is not None else "all",
            "identity_providers": list(spec.get("identity_providers") or []),
            "session_duration": spec.get("session_duration", ""),
        }

    async def application_edit(self, request: Request) -> Response:
        name = request.query_params.get("name")
        if name is None:
            return await self._application_page(
                request, item=None, form=self.application_form({"origin": ""})
            )
        item = await self.service.get("applications", name)
        return await self._application_page(
            request, item=item, form=self.application_form(item.spec)
        )

    async def application_save(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        original = forms.first(fields, "original")
        item = await self.service.get("applications", original) if original else None
        spec = forms.application_spec(fields, item.spec if item else None)
        form = self.application_form(spec)
        again = partial(self._application_page, request, item=item, form=form)
        saved = await self._save(
            "applications", "application", item, spec, fields, principal, again
        )
        if isinstance(saved, Response):
            return saved
        target = "/admin/applications/edit?" + urlencode({"name": saved.name})
        return self.redirect(target, f"Application {saved.name} saved.")

    async def application_delete(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        return await self._delete(request, fields, principal, "applications", "application")

    async def _delete(
        self,
        request: Request,
        fields: dict[str, list[str]],
        principal: Principal,
        collection: str,
        what: str,
    ) -> Response:
        name = forms.first(fields, "name")
        back = f"/admin/{collection.replace('_', '-')}"
        try:
            await self.service.delete(
                collection, name, version=self.version(fields), actor=self.actor(principal, fields)
            )
        except Conflict:
            return self.error_page(
                request,
                409,
                f"The {what} {name!r} was changed by someone else since you opened it — "
                "reload and check before deleting it.",
            )
        except LockOut:
            raise
        except Invalid as exc:
            problems = "; ".join(str(p) for p in exc.problems)
            return self.redirect(back, f"Cannot delete {what} {name}: {problems}", "error")
        return self.redirect(back, f"The {what} {name} is deleted.")

    async def _policy_page(
        self,
        request: Request,
        *,
        app: Item,
        original: str | None,
        form: dict[str, Any],
        rules: forms.RuleForm,
        status: int = 200,
        error: str | None = None,
        problems: Sequence[Problem] = (),
        app_version: int | None = None,
    ) -> Response:
        count = len(app.spec.get("policies", [])) + (0 if original else 1)
        return self.render(
            request,
            "policy.html",
            status,
            title=f"Policy {original}" if original else "New policy",
            app=app,
            app_version=app.version if app_version is None else app_version,
            original=original,
            form=form,
            rules=rules,
            positions=list(range(1, count + 1)),
            decisions=DECISIONS,
            error=error,
            problems=problems,
            hints=await self.hints(),
        )

    async def policy_edit(self, request: Request) -> Response:
        app = await self.service.get("applications", request.query_params.get("app", ""))
        name = request.query_params.get("name")
        policies = app.spec.get("policies", [])
        if name is None:
            form = {"name": "", "decision": "allow", "session_duration": "", "position": 0}
            form["position"] = len(policies) + 1
            return await self._policy_page(
                request,
                app=app,
                original=None,
                form=form,
                rules=forms.RuleForm().with_blank_rows(),
            )
        index = next((i for i, p in enumerate(policies) if p.get("name") == name), None)
        if index is None:
            raise NotFound(f"application {app.name!r} has no policy named {name!r}")
        spec = policies[index]
        form = {
            "name": spec["name"],
            "decision": spec.get("decision", "allow"),
            "session_duration": spec.get("session_duration", ""),
            "position": index + 1,
        }
        rules = forms.rules_from_spec(spec).with_blank_rows()
        return await self._policy_page(request, app=app, original=name, form=form, rules=rules)

    async def policy_save(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        app = await self.service.get("applications", forms.first(fields, "app"))
        original = forms.first(fields, "original") or None
        app_version = self.version(fields, "app_version")
        spec, rules = forms.policy_spec(fields)
        position = forms.parse_int(forms.first(fields, "position"))
        form = {
            "name": spec["name"],
            "decision": spec["decision"],
            "session_duration": spec.get("session_duration", ""),
            "position": position or len(app.spec.get("policies", [])) + 1,
        }
        page: dict[str, Any] = {
            "app": app,
            "original": original,
            "form": form,
            "app_version": app_version,
        }
        show = partial(self._policy_page, request, **page)
        again = self._rules_again(show, rules)
        adding = forms.first(fields, "add")
        if adding:  # "add a rule" without JavaScript: show the form again with one more row
            return await show(rules=rules.with_blank_rows(adding))
        local = forms.form_rule_errors(rules)
        if local:
            problems = [Problem("", message) for message in local]
            return await again(status=422, error="The policy is not complete.", problems=problems)
        saved = await self._attempt(
            self.service.put_policy(
                app.name,
                spec,
                app_version=app_version,
                actor=self.actor(principal, fields),
                replace=original,
                position=position - 1 if position else None,
            ),
            again,
            what="application",
            update=True,
        )
        if isinstance(saved, Response):
            return saved
        target = "/admin/applications/edit?" + urlencode({"name": app.name})
        return self.redirect(target, f"Policy {spec['name']} of {app.name} saved.")

    async def policy_delete(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        app, name = forms.first(fields, "app"), forms.first(fields, "name")
        target = "/admin/applications/edit?" + urlencode({"name": app})
        try:
            await self.service.delete_policy(
                app,
                name,
                app_version=self.version(fields, "app_version"),
                actor=self.actor(principal, fields),
            )
        except Conflict:
            return self.error_page(
                request,
                409,
                f"The application {app!r} was changed by someone else since you opened it — "
                "reload and check before deleting the policy.",
            )
        except LockOut:
            raise
        except Invalid as exc:
            problems = "; ".join(str(p) for p in exc.problems)
            return self.redirect(target, f"Cannot delete policy {name}: {problems}", "error")
        return self.redirect(target, f"Policy {name} of {app} deleted.")

    async def policy_move(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        app = await self.service.get("applications", forms.first(fields, "app"))
        name = forms.first(fields, "name")
        policies = app.spec.get("policies", [])
        index = next((i for i, p in enumerate(policies) if p.get("name") == name), None)
        if index is None:
            raise NotFound(f"application {app.name!r} has no policy named {name!r}")
        step = -1 if forms.first(fields, "direction") == "up" else 1
        position = min(max(index + step, 0), len(policies) - 1)
        target = "/admin/applications/edit?" + urlencode({"name": app.name})
        try:
            await self.service.put_policy(
                app.name,
                policies[index],
                app_version=self.version(fields, "app_version"),
                actor=self.actor(principal, fields),
                replace=name,
                position=position,
            )
        except Conflict:
            return self.error_page(
                request,
                409,
                f"The application {app.name!r} was changed by someone else since you opened "
                "it — reload and try again.",
            )
        return self.redirect(target, f"Policy {name} moved {'up' if step < 0 else 'down'}.")

    # -- groups ------------------------------------------------------------------------------

    async def groups(self, request: Request) -> Response:
        return self.render(
            request, "groups.html", title="Access groups", groups=await self.service.items("groups")
        )

    async def _group_page(
        self,
        request: Request,
        *,
        item: Item | None,
        name: str,
        rules: forms.RuleForm,
        version: int | None = None,
        status: int = 200,
        error: str | None = None,
        problems: Sequence[Problem] = (),
    ) -> Response:
        return self.render(
            request,
            "group.html",
            status,
            title=f"Group {item.name}" if item else "New group",
            item=item,
            version=item.version if version is None and item else version,
            name=name,
            rules=rules,
            error=error,
            problems=problems,
            hints=await self.hints(),
        )

    async def group_edit(self, request: Request) -> Response:
        name = request.query_params.get("name")
        if name is None:
            return await self._group_page(
                request, item=None, name="", rules=forms.RuleForm().with_blank_rows()
            )
        item = await self.service.get("groups", name)
        rules = forms.rules_from_spec(item.spec).with_blank_rows()
        return await self._group_page(request, item=item, name=item.name, rules=rules)

    async def group_save(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        original = forms.first(fields, "original")
        item = await self.service.get("groups", original) if original else None
        spec, rules = forms.group_spec(fields)
        version = self.version(fields) if item else None
        page: dict[str, Any] = {"item": item, "name": spec["name"], "version": version}
        show = partial(self._group_page, request, **page)
        again = self._rules_again(show, rules)
        adding = forms.first(fields, "add")
        if adding:
            return await show(rules=rules.with_blank_rows(adding))
        local = forms.form_rule_errors(rules)
        if local:
            problems = [Problem("", message) for message in local]
            return await again(status=422, error="The group is not complete.", problems=problems)
        saved = await self._save("groups", "group", item, spec, fields, principal, again)
        if isinstance(saved, Response):
            return saved
        return self.redirect("/admin/groups", f"Group {saved.name} saved.")

    async def group_delete(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        return await self._delete(request, fields, principal, "groups", "group")

    # -- identity providers ------------------------------------------------------------------

    async def idps(self, request: Request) -> Response:
        return self.render(
            request,
            "idps.html",
            title="Identity providers",
            idps=await self.service.items("identity_providers"),
        )

    async def _idp_page(
        self,
        request: Request,
        *,
        item: Item | None,
        form: dict[str, str],
        status: int = 200,
        error: str | None = None,
        problems: Sequence[Problem] = (),
        test: dict[str, Any] | None = None,
    ) -> Response:
        base = f"{request.url.scheme}://{request.url.netloc}"
        callback = f"{base}/.zerogate/oidc/{form['name'] or 'NAME'}/callback"
        return self.render(
            request,
            "idp.html",
            status,
            title=f"Identity provider {item.name}" if item else "New identity provider",
            item=item,
            form=form,
            error=error,
            problems=problems,
            test=test,
            callback=callback,
        )

    async def idp_edit(self, request: Request) -> Response:
        name = request.query_params.get("name")
        if name is None:
            form = forms.idp_form({"type": request.query_params.get("type", "oidc")})
            return await self._idp_page(request, item=None, form=form)
        item = await self.service.get("identity_providers", name)
        return await self._idp_page(request, item=item, form=forms.idp_form(item.spec))

    async def idp_save(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        original = forms.first(fields, "original")
        item = await self.service.get("identity_providers", original) if original else None
        spec = forms.idp_spec(fields)
        form = forms.idp_form(spec)
        again = partial(self._idp_page, request, item=item, form=form)
        saved = await self._save(
            "identity_providers", "identity provider", item, spec, fields, principal, again
        )
        if isinstance(saved, Response):
            return saved
        target = "/admin/identity-providers/edit?" + urlencode({"name": saved.name})
        return self.redirect(target, f"Identity provider {saved.name} saved.")

    async def idp_delete(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        return await self._delete(
            request, fields, principal, "identity_providers", "identity provider"
        )

    async def idp_test(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        """Fetch the stored provider's discovery document (and JWKS) and say what was found."""
        item = await self.service.get("identity_providers", forms.first(fields, "name"))
        if item.spec.get("type") != "oidc":
            raise Refused(400, "Only OpenID Connect providers have a connection to test.")
        result = await self.test_oidc(item.spec)
        return await self._idp_page(request, item=item, form=forms.idp_form(item.spec), test=result)

    async def test_oidc(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        issuer = str(spec["issuer"])
        url = discovery_url(issuer)
        result: dict[str, Any] = {"ok": False, "url": url, "checks": []}
        checks: list[tuple[bool, str]] = result["checks"]
        try:
            response = await self.fetch(HttpRequest("GET", url, {"Accept": "application/json"}))
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
            keys = await self.fetch(HttpRequest("GET", meta.jwks_uri))
            found = keys.json().get("keys") if keys.status == 200 else None
        except (FetchError, ValueError, UnicodeDecodeError, AttributeError):
            found = None
        if isinstance(found, list):
            checks.append((True, f"signing keys (JWKS): {len(found)}"))
        else:
            checks.append((False, f"could not read the signing keys at {meta.jwks_uri}"))
        env = spec.get("client_secret_env")
        if env and not self.service.secret_env_allowed(str(env)):
            checks.append(
                (
                    False,
                    f"client secret variable not checked: the panel looks only at variables "
                    f"starting with {self.service.secret_env_prefix}",
                )
            )
        elif env:
            present = bool(os.environ.get(str(env)))
            checks.append(
                (
                    present,
                    f"client secret variable {env} is {'set' if present else 'NOT set'} "
                    "on this server",
                )
            )
        result["ok"] = all(ok for ok, _ in checks)
        return result

    # -- tunnels -----------------------------------------------------------------------------

    async def tunnels(self, request: Request) -> Response:
        return self.render(
            request, "tunnels.html", title="Tunnels", tunnels=await self.tunnel_rows()
        )

    async def _tunnel_page(
        self,
        request: Request,
        *,
        item: Item | None,
        form: dict[str, str],
        status: int = 200,
        error: str | None = None,
        problems: Sequence[Problem] = (),
    ) -> Response:
        connections = await self.service.connections(tunnel=item.name) if item else []
        return self.render(
            request,
            "tunnel.html",
            status,
            title=f"Tunnel {item.name}" if item else "New tunnel",
            item=item,
            form=form,
            error=error,
            problems=problems,
            connections=connections,
        )

    async def tunnel_edit(self, request: Request) -> Response:
        name = request.query_params.get("name")
        if name is None:
            return await self._tunnel_page(request, item=None, form={"name": "", "routes": ""})
        item = await self.service.get("tunnels", name)
        form = {"name": item.name, "routes": ", ".join(item.spec.get("routes", []))}
        return await self._tunnel_page(request, item=item, form=form)

    async def tunnel_save(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        original = forms.first(fields, "original")
        item = await self.service.get("tunnels", original) if original else None
        spec = forms.tunnel_spec(fields)
        form = {"name": spec["name"], "routes": forms.first(fields, "routes")}
        again = partial(self._tunnel_page, request, item=item, form=form)
        saved = await self._save("tunnels", "tunnel", item, spec, fields, principal, again)
        if isinstance(saved, Response):
            return saved
        if item is not None:
            return self.redirect("/admin/tunnels", f"Tunnel {saved.name} saved.")
        return await self._show_connector_token(request, saved.name, principal, created=True)

    async def _show_connector_token(
        self, request: Request, name: str, principal: Principal, *, created: bool
    ) -> Response:
        """A new connector token (``AdminService.create_tunnel_token``), shown this once."""
        issued = await self.service.create_tunnel_token(
            name, actor=self.actor(principal), settings=self.settings
        )
        return self.render(
            request,
            "tunnel_token.html",
            title=f"Tunnel {name}",
            name=issued.name,
            created=created,
            token=issued.token,
            command=issued.command(),
            edges=issued.edges,
        )

    async def tunnel_token(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        """A new connector token for an existing tunnel (the old one stops working)."""
        item = await self.service.get("tunnels", forms.first(fields, "name"))
        return await self._show_connector_token(request, item.name, principal, created=False)

    async def tunnel_delete(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        return await self._delete(request, fields, principal, "tunnels", "tunnel")

    # -- service tokens ----------------------------------------------------------------------

    async def service_tokens(
        self,
        request: Request,
        *,
        form: dict[str, str] | None = None,
        status: int = 200,
        error: str | None = None,
        problems: Sequence[Problem] = (),
    ) -> Response:
        items = await self.service.items("service_tokens")
        creds = await self.service.service_credentials()
        now = datetime.now(UTC)
        rows = [
            {
                "item": item,
                "cred": creds.get(item.name),
                "expired": item.name in creds and creds[item.name].expires_at <= now,
            }
            for item in items
        ]
        return self.render(
            request,
            "service_tokens.html",
            status,
            title="Service tokens",
            rows=rows,
            form=form or {"name": "", "duration": "8760h"},
            error=error,
            problems=problems,
        )

    async def service_token_save(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        spec = forms.service_token_spec(fields)
        form = {"name": spec["name"], "duration": forms.first(fields, "duration")}
        created = await self._attempt(
            self.service.create_service_token(spec, self.actor(principal, fields)),
            partial(self.service_tokens, request, form=form),
            what="service token",
            update=False,
        )
        if isinstance(created, Response):
            return created
        item, cred, secret = created
        return self._service_secret_page(request, item.name, cred, secret, created=True)

    def _service_secret_page(
        self, request: Request, name: str, cred: ServiceCredential, secret: str, *, created: bool
    ) -> Response:
        return self.render(
            request,
            "service_token_secret.html",
            title=f"Service token {name}",
            name=name,
            created=created,
            cred=cred,
            secret=secret,
        )

    async def service_token_rotate(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        name = forms.first(fields, "name")
        cred, secret = await self.service.rotate_service_token(name, self.actor(principal, fields))
        return self._service_secret_page(request, name, cred, secret, created=False)

    async def service_token_delete(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        return await self._delete(request, fields, principal, "service_tokens", "service token")

    # -- the admins list ---------------------------------------------------------------------

    async def admins(
        self,
        request: Request,
        *,
        text: str | None = None,
        version: int | None = None,
        status: int = 200,
        error: str | None = None,
        problems: Sequence[Problem] = (),
    ) -> Response:
        """The admins list (one entry a line) and its version; the form keeps ``text`` and
        the ``version`` it was based on when shown again (409 / 422)."""
        admins, current = await self.service.admins()
        return self.render(
            request,
            "admins.html",
            status,
            title="Admins",
            admins=admins,
            current=current,
            text="\n".join(admins) if text is None else text,
            version=current if version is None else version,
            groups=await self.names("groups"),
            error=error,
            problems=problems,
        )

    async def admins_save(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        text = fields.get("admins", [""])[0]
        version = self.version(fields)
        saved = await self._attempt(
            self.service.set_admins(
                forms.admin_entries(text), version=version, actor=self.actor(principal, fields)
            ),
            partial(self.admins, request, text=text, version=version),
            what="admins list",
            update=True,
        )
        if isinstance(saved, Response):
            return saved
        return self.redirect("/admin/admins", "The admins list is saved.")

    # -- API tokens --------------------------------------------------------------------------

    async def api_tokens(
        self,
        request: Request,
        *,
        form: dict[str, Any] | None = None,
        status: int = 200,
        error: str | None = None,
        problems: Sequence[Problem] = (),
    ) -> Response:
        """The admin API's Bearer tokens (never a secret) and the form for a new one."""
        now = datetime.now(UTC)
        rows = [
            {"token": t, "expired": t.expires_at is not None and t.expires_at <= now}
            for t in await self.service.api_tokens()
        ]
        return self.render(
            request,
            "api_tokens.html",
            status,
            title="API tokens",
            rows=rows,
            form=form or {"name": "", "read_only": False, "expires": "30d"},
            error=error,
            problems=problems,
        )

    async def api_token_save(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        name = forms.first(fields, "name")
        read_only = forms.first(fields, "read_only") == "1"
        expires = forms.first(fields, "expires") or None
        form = {"name": name, "read_only": read_only, "expires": expires or ""}
        created = await self._attempt(
            self.service.create_api_token(
                name, read_only=read_only, expires=expires, actor=self.actor(principal, fields)
            ),
            partial(self.api_tokens, request, form=form),
            what="API token",
            update=False,
        )
        if isinstance(created, Response):
            return created
        token, text = created
        return self.render(
            request,
            "api_token_secret.html",
            title=f"API token {token.name}",
            token=token,
            text=text,
        )

    async def api_token_revoke(
        self, request: Request, fields: dict[str, list[str]], principal: Principal
    ) -> Response:
        name = forms.first(fields, "name")
        await self.service.revoke_api_token(name, self.actor(principal, fields))
        return self.redirect("/admin/api-tokens", f"API token {name} is revoked.")

    # -- logs and the tester -----------------------------------------------------------------

    async def access_log(self, request: Request) -> Response:
        q = request.query_params
        filters = {key: q.get(key, "").strip() for key in ("app", "email", "decision", "since")}
        error = None
        since = None
        if filters["since"]:
            try:
                since = parse_since(filters["since"], datetime.now(UTC))
            except ValueError as exc:
                error = f"since: {exc}"
        events = []
        if error is None:
            events = await self.service.access_log(
                app=filters["app"] or None,
                email=filters["email"] or None,
                decision=filters["decision"] or None,
                since=since,
                limit=LOG_LIMIT,
            )
        return self.render(
            request,
            "access_log.html",
            400 if error else 200,
            title="Access log",
            filters=filters,
            events=events,
            error=error,
            apps=await self.names("applications"),
            decisions=LOG_DECISIONS,
            limit=LOG_LIMIT,
        )

    async def admin_log(self, request: Request) -> Response:
        entries = await self.service.admin_log(LOG_LIMIT)
        rows = [{"entry": e, "diff": forms.spec_diff(e.before, e.after)} for e in entries]
        return self.render(
            request, "admin_log.html", title="Admin activity", rows=rows, limit=LOG_LIMIT
        )

    async def policy_test(self, request: Request) -> Response:
        q = request.query_params
        names = ("app", "url", "email", "ip", "country", "idp", "idp_groups", "service_token")
        form = {key: q.get(key, "").strip() for key in names}
        verdict = None
        error = None
        status = 200
        if q.get("run"):
            try:
                result = await self.service.policy_test(
                    app=None if form["url"] else (form["app"] or None),
                    url=form["url"] or None,
                    email=form["email"] or None,
                    idp=form["idp"] or None,
                    idp_groups=tuple(forms.split_values(form["idp_groups"])),
                    ip=form["ip"] or None,
                    country=form["country"] or None,
                    service_token=form["service_token"] or None,
                )
                verdict = result.as_dict()
            except AdminError as exc:
                error, status = exc.message, 400
            except ValueError as exc:  # an unsafe path in the URL, a bad address
                error, status = str(exc), 400
        return self.render(
            request,
            "policy_test.html",
            status,
            title="Policy tester",
            form=form,
            verdict=verdict,
            error=error,
            apps=await self.names("applications"),
            idps=await self.names("identity_providers"),
            tokens=await self.names("service_tokens"),
        )

    async def static_file(self, request: Request) -> Response:
        found = self.static.get(request.path_params["name"])
        if found is None:
            raise Refused(404, "There is no such file.")
        body, content_type = found
        return Response(
            body,
            media_type=content_type,
            headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
        )


def create_panel(
    service: AdminService,
    *,
    secret: bytes,
    settings: Settings | None = None,
    fetch: Fetch | None = None,
) -> Starlette:
    """The panel as an ASGI app for every ``/admin*`` request on the portal host.

    ``secret`` keys the CSRF tokens and flash cookies. ``settings`` (the server's) give
    connector tokens their edge addresses (``listen.tunnel``) and say whether the listener
    uses the generated certificate, whose fingerprint they pin; without them a token names no
    edge and the page says to add ``--edge``. ``fetch`` replaces the HTTP client of "test
    connection" (tests)."""
    panel = Panel(service, secret, fetch=fetch or aiohttp_fetch, settings=settings)
    return panel.app


__all__ = ["Panel", "create_panel"]
