"""Workflow views for dashboards: list, one workflow's phases, its deliverables, its export."""

from __future__ import annotations

from typing import Any, Literal

from litestar import Controller, Request, get
from litestar.params import FromPath

from app import params, wire
from app.artifacts.controller import (
    IsoDatetime,
    PageLimit,
    download_url,
    inline_text,
    next_page_headers,
)
from app.deps import Service, settings_of
from app.errors import invalid_cursor
from app.http import Answer, encode
from app.workflows import schemas
from app.workflows.export import ArchiveResponse, manifest, plan, safe_segment
from app.workflows.paths import workflow_id as workflow_of
from storage import workflows
from storage.records import datetime_to_us

AnyRequest = Request[Any, Any, Any]
READ = "artifact:read"


class ListParams(params.Params):
    active_after: IsoDatetime | None = None  # last activity after (exclusive)
    active_before: IsoDatetime | None = None  # last activity before (exclusive)
    limit: PageLimit = 50
    cursor: str | None = None  # from the previous page's X-Next-Cursor


class DeliverablesParams(params.Params):
    include_content: bool = False


class ExportParams(params.Params):
    format: Literal["zip", "tar"] = "zip"
    scope: Literal["all", "deliverables"] = "all"


def _opt(statuses: tuple[int, ...], model: type[params.Params] | None = None) -> Any:
    return {"scope": READ, "statuses": statuses, "params": model}


class WorkflowController(Controller):
    path = "/store/workflows"

    @get("/", opt=_opt((200, 401, 403, 422, 429, 503), ListParams))
    async def list_workflows(self, request: AnyRequest, service: Service) -> Answer:
        """Most recently active first; a bare array, paginated like GET /artifacts."""
        p = params.parse(request, ListParams)
        after = None
        if p.cursor is not None:
            try:
                after = workflows.WorkflowCursor.decode(p.cursor)
            except ValueError:
                raise invalid_cursor(p.cursor) from None
        items, next_cursor = await workflows.list_workflows(
            service.db,
            tenant=service.tenant,
            limit=p.limit,
            after=after,
            active_after=None if p.active_after is None else datetime_to_us(p.active_after),
            active_before=None if p.active_before is None else datetime_to_us(p.active_before),
        )
        token = next_cursor.encode() if next_cursor else None
        body = encode([schemas.summary(w) for w in items])
        return Answer(body, 200, next_page_headers(request, token))

    @get("/{workflow_id:str}", opt=_opt((200, 401, 403, 404, 422, 429, 503)))
    async def get_workflow(
        self, workflow_id: FromPath[str], request: AnyRequest, service: Service
    ) -> Answer:
        """Phases in order of first activity, each with its artifact count, sessions and
        primary deliverable (or null). A `/` in the id is sent as `%2F`."""
        workflow_id = workflow_of(request.scope, workflow_id)
        phases = await workflows.phases(service.db, workflow_id, tenant=service.tenant)
        return Answer(encode(schemas.workflow(workflow_id, phases)))

    @get(
        "/{workflow_id:str}/deliverables",
        opt=_opt((200, 401, 403, 404, 422, 429, 503), DeliverablesParams),
    )
    async def get_deliverables(
        self, workflow_id: FromPath[str], request: AnyRequest, service: Service
    ) -> Answer:
        """In phase order (first activity); text content inlined when `include_content=true`."""
        include_content = params.parse(request, DeliverablesParams).include_content
        workflow_id = workflow_of(request.scope, workflow_id)
        settings = settings_of(request)
        phases = await workflows.phases(service.db, workflow_id, tenant=service.tenant)
        body = []
        for phase in phases:
            if phase.primary is None:
                continue
            artifact = await service.get(phase.primary.id)
            text = await inline_text(service, settings, artifact) if include_content else None
            body.append(wire.record(artifact, text, download_url(request, settings, artifact)))
        return Answer(encode(body))

    @get(
        "/{workflow_id:str}/export",
        opt=_opt((200, 401, 403, 404, 422, 429, 503), ExportParams),
    )
    async def export_workflow(
        self, workflow_id: FromPath[str], request: AnyRequest, service: Service
    ) -> ArchiveResponse:
        """Each artifact's bytes under `<phase>/<safe filename or title>` (with an extension
        from its content type when neither has one: `discovery/Sources.json`), after a
        `manifest.json` listing every file's id, path, sha256, size, content type, session,
        primary flag and lineage. Streamed as it is built."""
        p = params.parse(request, ExportParams)
        workflow_id = workflow_of(request.scope, workflow_id)
        items = await workflows.contents(
            service.db,
            workflow_id,
            deliverables_only=p.scope == "deliverables",
            tenant=service.tenant,
        )
        entries = plan(items)
        filename = f"{safe_segment(workflow_id, 'workflow')}.{p.format}"
        head = manifest(workflow_id, p.scope, entries)
        return ArchiveResponse(p.format, filename, head, entries, service.stream)
