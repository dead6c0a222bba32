"""What every panel page shares: the templates and rendering (flash message, CSRF token,
security headers), error and lock-out pages, the read and write wrappers every route goes
through (principal, read-only, CSRF on every POST), and the steps of a versioned write (422 /
409 shown on the form again, delete with its messages)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any, TypeVar

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from zerogate.admin import panel_forms as forms
from zerogate.admin.principal import Principal, principal_of
from zerogate.admin.service import (
    Actor,
    AdminService,
    Conflict,
    Invalid,
    Item,
    LockOut,
    NotFound,
)
from zerogate.identity.oidc import Fetch
from zerogate.model.loader import Problem
from zerogate.model.objects import OIDC_PRESETS, Settings

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
#: the largest form the panel reads (its forms are a few kilobytes)
MAX_FORM_BYTES = 1024 * 1024
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


class PanelBase:
    """The plumbing the views of every area use (``panel/app.py`` puts the areas together)."""

    #: the GET paths (a lock-out page links back to one of them); set with the routes
    pages: frozenset[str] = frozenset()

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

    @property
    def issuer(self) -> str | None:
        """``iss`` of the tokens origins receive (None without the server's settings)."""
        return self.settings.issuer if self.settings is not None else None

    # -- reading, writing, rendering ---------------------------------------------------------

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

    # -- the steps of a write ----------------------------------------------------------------

    @staticmethod
    def actor(principal: Principal, fields: Mapping[str, Sequence[str]] | None = None) -> Actor:
        """The service's actor; a session is guarded against locking itself out unless the
        form's "save anyway" box (``force``) is ticked."""
        force = fields is not None and forms.first(fields, forms.FORCE_FIELD) == "1"
        return Actor.of(principal, force=force, origin="panel")

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
            if "in use" in exc.message:  # names every place that uses it
                return self.redirect(back, f"Cannot delete {what} {name}: {exc.message}", "error")
            problems = "; ".join(str(p) for p in exc.problems)
            return self.redirect(back, f"Cannot delete {what} {name}: {problems}", "error")
        return self.redirect(back, f"The {what} {name} is deleted.")

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
