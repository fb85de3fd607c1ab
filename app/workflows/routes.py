"""Workflow views for dashboards: list, one workflow's phases, its deliverables, its export."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.artifacts import schemas
from app.artifacts.deps import Config, Service
from app.artifacts.routes import (
    IsoDatetime,
    PageLimit,
    download_url,
    inline_text,
    next_page_headers,
)
from app.auth import require
from app.errors import invalid_cursor, responses
from app.workflows.export import ArchiveResponse, manifest, plan, safe_segment
from storage import workflows
from storage.records import datetime_to_us, us_to_iso

router = APIRouter(prefix="/workflows", tags=["workflows"])


class WorkflowSummaryBody(BaseModel):
    workflow_id: str
    artifact_count: int
    total_bytes: int
    phases: list[str | None]
    sessions: list[str]
    first_activity_at: str
    last_activity_at: str
    primary_deliverables: int


class PhaseBody(BaseModel):
    phase_id: str | None
    artifact_count: int
    total_bytes: int
    sessions: list[str]
    first_activity_at: str
    last_activity_at: str
    primary_deliverable: schemas.ArtifactSummary | None


class WorkflowBody(BaseModel):
    workflow_id: str
    artifact_count: int
    total_bytes: int
    first_activity_at: str
    last_activity_at: str
    phases: list[PhaseBody]


def _summary_body(w: workflows.WorkflowSummary) -> dict[str, Any]:
    return {
        "workflow_id": w.workflow_id,
        "artifact_count": w.artifact_count,
        "total_bytes": w.total_bytes,
        "phases": w.phases,
        "sessions": w.sessions,
        "first_activity_at": us_to_iso(w.first_activity),
        "last_activity_at": us_to_iso(w.last_activity),
        "primary_deliverables": w.primary_deliverables,
    }


@router.get(
    "",
    dependencies=[require("artifact:read")],
    response_model=list[WorkflowSummaryBody],
    summary="List workflows",
)
async def list_workflows(
    request: Request,
    service: Service,
    active_after: IsoDatetime | None = Query(None, description="last activity after (exclusive)"),
    active_before: IsoDatetime | None = Query(None, description="last activity before (exclusive)"),
    limit: PageLimit = 50,
    cursor: str | None = Query(None, description="from the previous page's X-Next-Cursor"),
) -> Response:
    """Most recently active first; a bare array, paginated like GET /artifacts."""
    after = None
    if cursor is not None:
        try:
            after = workflows.WorkflowCursor.decode(cursor)
        except ValueError:
            raise invalid_cursor(cursor) from None
    items, next_cursor = await workflows.list_workflows(
        service.db,
        tenant=service.tenant,
        limit=limit,
        after=after,
        active_after=None if active_after is None else datetime_to_us(active_after),
        active_before=None if active_before is None else datetime_to_us(active_before),
    )
    token = next_cursor.encode() if next_cursor else None
    return JSONResponse(
        [_summary_body(w) for w in items], headers=next_page_headers(request, token)
    )


@router.get(
    "/{workflow_id}",
    dependencies=[require("artifact:read")],
    response_model=WorkflowBody,
    summary="One workflow, by phase",
    responses=responses(404),
)
async def get_workflow(workflow_id: str, service: Service) -> Response:
    """Phases in order of first activity, each with its artifact count, sessions and primary
    deliverable (or null)."""
    phases = await workflows.phases(service.db, workflow_id, tenant=service.tenant)
    return JSONResponse(
        {
            "workflow_id": workflow_id,
            "artifact_count": sum(p.artifact_count for p in phases),
            "total_bytes": sum(p.total_bytes for p in phases),
            "first_activity_at": us_to_iso(min(p.first_activity for p in phases)),
            "last_activity_at": us_to_iso(max(p.last_activity for p in phases)),
            "phases": [
                {
                    "phase_id": p.phase_id,
                    "artifact_count": p.artifact_count,
                    "total_bytes": p.total_bytes,
                    "sessions": p.sessions,
                    "first_activity_at": us_to_iso(p.first_activity),
                    "last_activity_at": us_to_iso(p.last_activity),
                    "primary_deliverable": schemas.summary(p.primary) if p.primary else None,
                }
                for p in phases
            ],
        }
    )


@router.get(
    "/{workflow_id}/deliverables",
    dependencies=[require("artifact:read")],
    response_model=list[schemas.ArtifactRecord],
    summary="The primary deliverable of each phase",
    responses=responses(404),
)
async def get_deliverables(
    workflow_id: str,
    request: Request,
    service: Service,
    settings: Config,
    include_content: bool = False,
) -> Response:
    """In phase order (first activity); text content inlined when `include_content=true`."""
    phases = await workflows.phases(service.db, workflow_id, tenant=service.tenant)
    body = []
    for phase in phases:
        if phase.primary is None:
            continue
        artifact = await service.get(phase.primary.id)
        text = await inline_text(service, settings, artifact) if include_content else None
        body.append(schemas.record(artifact, text, download_url(request, settings, artifact)))
    return JSONResponse(body)


@router.get(
    "/{workflow_id}/export",
    dependencies=[require("artifact:read")],
    summary="The workflow as one streamed zip or tar archive with a manifest",
    responses={
        200: {"content": {"application/zip": {}, "application/x-tar": {}}},
        **responses(404),
    },
    response_class=Response,
)
async def export_workflow(
    workflow_id: str,
    service: Service,
    format: Literal["zip", "tar"] = "zip",
    scope: Literal["all", "deliverables"] = "all",
) -> ArchiveResponse:
    """Each artifact's bytes under `<phase>/<safe filename or title>`, after a
    `manifest.json` listing every file's id, path, sha256, size, content type, session, primary
    flag and lineage. Streamed as it is built."""
    items = await workflows.contents(
        service.db,
        workflow_id,
        deliverables_only=scope == "deliverables",
        tenant=service.tenant,
    )
    entries = plan(items)
    filename = f"{safe_segment(workflow_id, 'workflow')}.{format}"
    head = manifest(workflow_id, scope, entries)
    return ArchiveResponse(format, filename, head, entries, service.stream)
