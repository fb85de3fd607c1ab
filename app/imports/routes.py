"""POST /imports/crownest (a job that runs in the server) and GET /imports/{id}."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from app.artifacts import schemas
from app.artifacts.deps import Config, Service
from app.auth import caller_of, require
from app.errors import ApiError, responses, validation_error
from app.idempotency import Idempotency, IdempotencyKey, canonical, fingerprint, idempotent
from app.imports.importer import SOURCE, ImportOptions
from app.imports.runner import ImportRunner
from app.settings import ARTIFACT_TYPES, Settings
from storage.imports import ImportJobs, Job, JobHook
from storage.records import us_to_iso

router = APIRouter(prefix="/imports", tags=["imports"])


class CrowNestImportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sandbox_id: schemas.NonEmptyId
    workflow_id: schemas.NonEmptyId
    phase_id: schemas.Id | None = None
    session_id: schemas.Id | None = None
    artifact_type: str | None = Field(
        None,
        max_length=64,
        description="default: inferred from the extension",
        json_schema_extra={"enum": [*ARTIFACT_TYPES, None]},
    )
    artifact_ids: list[schemas.NonEmptyId] = Field(default_factory=list, max_length=1000)
    source_path_prefix: schemas.Title | None = None
    dry_run: bool = False


class ImportAccepted(BaseModel):
    import_id: str
    status: str
    url: str


class ImportState(BaseModel):
    id: str
    source: str
    status: str
    options: dict[str, Any]
    counts: dict[str, int]
    bytes: int
    error: str | None
    failures: list[dict[str, Any]]
    created_at: str
    updated_at: str
    finished_at: str | None


def runner_of(request: Request) -> ImportRunner:
    runner: ImportRunner = request.app.state.imports
    return runner


async def state_body(jobs: ImportJobs, job: Job) -> dict[str, Any]:
    failures = await jobs.items(job.id, "failed")
    return {
        "id": job.id,
        "source": job.source,
        "status": job.status,
        "options": job.options,
        "counts": job.counts,
        "bytes": job.bytes,
        "error": job.error,
        "failures": [
            {"upstream_id": f.upstream_id, "name": f.name, "reason": f.reason} for f in failures
        ],
        "created_at": us_to_iso(job.created_at),
        "updated_at": us_to_iso(job.updated_at),
        "finished_at": None if job.finished_at is None else us_to_iso(job.finished_at),
    }


@router.post(
    "/crownest",
    dependencies=[require("import:run")],
    status_code=202,
    response_model=ImportAccepted,
    summary="Import a CrowNest sandbox's artifacts (a background job)",
    responses=responses(400, 409, write=True),  # 400: a body FastAPI cannot decode
)
async def import_crownest(
    body: CrowNestImportRequest,
    request: Request,
    settings: Config,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Answers 202 with the job's id at once; GET /imports/{id} follows it. The server's own
    CROWNEST_API_KEY is used (never one sent by the client). With an `Idempotency-Key`, a
    retry answers the first job's 202 and starts nothing."""
    async with idempotent(request, idempotency_key) as idem:
        fp = fingerprint(request, "json", canonical(body.model_dump(mode="json")))
        if idem.replaying:
            return idem.replay(fp)
        return await _start_crownest(body, request, settings, idem.recorder(fp, _accepted(request)))


def _accepted(request: Request) -> Callable[[str], JSONResponse]:
    def render(job_id: str) -> JSONResponse:
        url = str(request.url_for("get_import", import_id=job_id))
        return JSONResponse(
            {"import_id": job_id, "status": "queued", "url": url},
            status_code=202,
            headers={"Location": url},
        )

    return render


def _check_id_lengths(body: CrowNestImportRequest, limit: int) -> None:
    """ARTIFACTS_MAX_ID_CHARS when it is set below the default the schema already enforces."""
    values: list[tuple[tuple[str | int, ...], str | None]] = [
        (("body", name), getattr(body, name))
        for name in ("sandbox_id", "workflow_id", "phase_id", "session_id")
    ]
    values += [(("body", "artifact_ids", i), v) for i, v in enumerate(body.artifact_ids)]
    for loc, value in values:
        if value is not None and len(value) > limit:
            raise validation_error(
                loc,
                "string_too_long",
                f"String should have at most {limit} characters",
                value,
                {"max_length": limit},
            )


async def _start_crownest(
    body: CrowNestImportRequest, request: Request, settings: Settings, hook: JobHook | None
) -> JSONResponse:
    _check_id_lengths(body, settings.max_id_chars)
    if body.artifact_type is not None:
        try:
            body.artifact_type = schemas.check_artifact_type(
                body.artifact_type, settings.artifact_types
            )
        except PydanticCustomError as exc:
            raise validation_error(
                ("body", "artifact_type"), "enum", exc.message(), body.artifact_type, exc.context
            ) from None
    if settings.crownest_api_key is None:
        raise ApiError(
            503, "crownest_not_configured", "Imports need CROWNEST_API_KEY set on the server."
        )
    runner = runner_of(request)
    options = ImportOptions(**body.model_dump())
    tenant = caller_of(request).tenant
    job_id = await runner.importer.start(options, tenant=tenant, hook=hook)
    runner.start(job_id)
    return _accepted(request)(job_id)


@router.get(
    "/{import_id}",
    dependencies=[require("artifact:read")],
    response_model=ImportState,
    summary="An import job's state",
    responses=responses(404),
)
async def get_import(import_id: str, request: Request, service: Service) -> JSONResponse:
    jobs = runner_of(request).importer.jobs
    job = await jobs.get(import_id, tenant=service.tenant)
    if job.source != SOURCE:
        raise ApiError(404, "import_not_found", f"Import {import_id!r} was not found.")
    return JSONResponse(await state_body(jobs, job))


@router.post(
    "/{import_id}/resume",
    dependencies=[require("import:run")],
    status_code=202,
    response_model=ImportAccepted,
    summary="Run an interrupted or failed import again (nothing is duplicated)",
    responses=responses(404, 409, write=True),
)
async def resume_import(
    import_id: str, request: Request, settings: Config, idempotency_key: IdempotencyKey = None
) -> Response:
    async with idempotent(request, idempotency_key) as idem:
        fp = fingerprint(request)
        if idem.replaying:
            return idem.replay(fp)
        return await _resume(import_id, request, settings, idem, fp)


async def _resume(
    import_id: str, request: Request, settings: Settings, idem: Idempotency, fp: str
) -> Response:
    runner = runner_of(request)
    job = await runner.importer.jobs.get(import_id, tenant=caller_of(request).tenant)
    task = runner.tasks.get(job.id)
    if task is not None and not task.done():
        raise ApiError(409, "import_running", f"Import {import_id!r} is still running.")
    if settings.crownest_api_key is None:
        raise ApiError(
            503, "crownest_not_configured", "Imports need CROWNEST_API_KEY set on the server."
        )
    # queued before answering, so a GET right after this 202 never shows the old final status

    def render(job_id: str) -> Response:
        url = str(request.url_for("get_import", import_id=job_id))
        return JSONResponse({"import_id": job_id, "status": "queued", "url": url}, status_code=202)

    await runner.importer.jobs.set_status(import_id, "queued", hook=idem.recorder(fp, render))
    runner.start(import_id)
    return idem.respond(import_id, render)
