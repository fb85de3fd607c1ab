"""GET /artifacts/{id}/lineage: one subgraph of ancestors and/or descendants in one call."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.artifacts import schemas
from app.artifacts.deps import Service
from app.auth import require
from app.errors import responses
from storage.lineage import Node, subgraph

router = APIRouter(tags=["lineage"])


class LineageEdge(BaseModel):
    parent: str
    child: str
    parent_hash: str


class LineageGraph(BaseModel):
    root: str
    nodes: list[dict[str, Any]]
    edges: list[LineageEdge]
    truncated: bool


def node_body(node: Node) -> dict[str, Any]:
    if node.artifact is None:
        return {"id": node.id, "deleted": True, "depth": node.depth}
    return {**schemas.summary(node.artifact), "deleted": False, "depth": node.depth}


@router.get(
    "/{artifact_id}/lineage",
    dependencies=[require("artifact:read")],
    response_model=LineageGraph,
    summary="Ancestors and descendants (derived_from edges) of an artifact",
    responses=responses(404, 409),
)
async def get_lineage(
    artifact_id: str,
    service: Service,
    direction: Literal["up", "down", "both"] = "both",
    depth: Annotated[int, Query(ge=1, le=50)] = 1,
) -> JSONResponse:
    """Nodes are summaries with their `depth` from the root; deleted artifacts appear as
    tombstones `{id, deleted: true}` so a chain never breaks silently. Each edge carries the
    parent's content hash at link time. `truncated` says more edges lie beyond `depth`."""
    root = await service.get(artifact_id)
    graph = await subgraph(service.db, root.id, direction, depth, tenant=service.tenant)
    return JSONResponse(
        {
            "root": graph.root,
            "nodes": [node_body(n) for n in graph.nodes],
            "edges": [
                {"parent": e.parent, "child": e.child, "parent_hash": e.parent_hash}
                for e in graph.edges
            ],
            "truncated": graph.truncated,
        }
    )
