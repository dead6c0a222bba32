"""The cluster's nodes (issue #14): the edge processes, their relay address, heartbeat and the
tunnel connections each holds."""

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from zerogate.admin.api.common import PREFIX
from zerogate.admin.nodes import read_nodes
from zerogate.admin.service import AdminService


class NodeOut(BaseModel):
    node: str = Field(description="the node's random id (one per server process)")
    host: str
    pid: int
    relay_address: str = Field(description="where the other edges relay requests to it")
    started_at: datetime
    heartbeat_at: datetime
    live: bool = Field(description="its heartbeat is recent: what it holds counts")
    tunnels: dict[str, int] = Field(description="connections held, by tunnel")
    connections: int


class NodesOut(BaseModel):
    nodes: list[NodeOut]


def router(service: AdminService) -> APIRouter:
    nodes = APIRouter()

    @nodes.get(
        f"{PREFIX}/nodes",
        response_model=NodesOut,
        operation_id="list_nodes",
        tags=["nodes"],
        summary="The cluster's edge processes and the tunnel connections each holds",
    )
    async def list_nodes() -> NodesOut:
        return NodesOut(nodes=[NodeOut(**row) for row in await read_nodes(service.store)])

    return nodes
