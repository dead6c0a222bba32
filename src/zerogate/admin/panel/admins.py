"""The admins list."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from starlette.requests import Request
from starlette.responses import Response

from zerogate.admin import panel_forms as forms
from zerogate.admin.panel.base import PanelBase
from zerogate.admin.principal import Principal
from zerogate.model.loader import Problem


class AdminViews(PanelBase):
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
        owned = await self.service.admins_ownership()
        owner = {"origin": owned[0], "managed": owned[1]} if owned else None
        return self.render(
            request,
            "admins.html",
            status,
            title="Admins",
            admins=admins,
            current=current,
            owner=owner,
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
