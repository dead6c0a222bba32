"""Pages more than one surface shows (rendered with the process's templates)."""

from __future__ import annotations

from zerogate.net import http
from zerogate.net.asgi import Send
from zerogate.runtime.services import Services


async def logout_page(
    send: Send, svc: Services, token: str, *, who: str | None, app_name: str | None = None
) -> None:
    """GET of ``/.zerogate/logout``: a page with the button (the POST does the work)."""
    page = svc.page("logout.html", title="Sign out", app_name=app_name, csrf=token, email=who)
    await http.respond_html(send, 200, page)
