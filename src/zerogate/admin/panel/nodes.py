"""The cluster's nodes (issue #14): each edge process, its relay address, heartbeat and the
tunnel connections it holds (the same rows as ``zerogate nodes list`` and the API)."""

from __future__ import annotations

from datetime import datetime

from starlette.requests import Request
from starlette.responses import Response

from zerogate.admin.nodes import read_nodes
from zerogate.admin.panel.base import PanelBase


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class NodeViews(PanelBase):
    async def nodes(self, request: Request) -> Response:
        rows = await read_nodes(self.service.store)
        for row in rows:
            row["started"] = _at(row["started_at"])
            row["heartbeat"] = _at(row["heartbeat_at"])
        return self.render(request, "nodes.html", title="Nodes", nodes=rows)
