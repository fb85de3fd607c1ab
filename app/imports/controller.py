"""POST /imports/crownest (a job that runs in the server), GET /imports/{id}, and
POST /imports/{id}/resume."""

from __future__ import annotations

import email.message
import json
import logging
from collections.abc import Callable
from typing import Any

from litestar import Controller, Request, get, post
from litestar.params import FromPath
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from app import params
from app.artifacts import schemas
from app.artifacts.body import read_limited, validate
from app.auth import caller_of
from app.deps import settings_of
from app.errors import ApiError, InvalidInput, validation_error
from app.http import Answer, encode, encode_user_json, header, json_answer
from app.idempotency import Idempotency, KeyedParams, canonical, fingerprint, idempotent
from app.imports.crownest import check_base_url
from app.imports.importer import SOURCE, ImportOptions
from app.imports.runner import ImportRunner
from app.settings import ARTIFACT_TYPES, Settings
from app.urls import base_url
from storage.imports import ImportJobs, Job, JobHook
from storage.records import us_to_iso

log = logging.getLogger("artifacts.imports")
AnyRequest = Request[Any, Any, Any]
RUN = "import:run"
READ = "artifact:read"


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


def runner_of(request: AnyRequest) -> ImportRunner:
    runner: ImportRunner = request.app.state.imports
    return runner


def import_url(request: AnyRequest, job_id: str) -> str:
    """What the reference wrote as `url_for("get_import", import_id=job_id)`: the route without
    /api/v1 (the first of that name), on the request's base URL, the id as it is."""
    return base_url(request.scope).rstrip("/") + f"/imports/{job_id}"  # type: ignore[arg-type]


async def state_body(jobs: ImportJobs, job: Job) -> dict[str, Any]:
    failures = await jobs.items(job.id, "failed")
    return {
        "id": job.id,
        "source": job.source,
        "status": job.status,
        "options": encode_user_json(job.options),
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


# -- the JSON body, read and decoded as the reference (FastAPI) read a body parameter -----------

_UNDEFINED: Any = object()


def _is_json(content_type: str | None) -> bool:
    """A body is decoded as JSON only under application/json or application/*+json; without
    a Content-Type it stays bytes (and fails validation as not an object)."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


async def _read_body(request: AnyRequest) -> Any:
    """The body as the model is validated from: _UNDEFINED when empty, the decoded JSON, or
    the raw bytes under any other media type. Malformed JSON is a 422 json_invalid at the
    error's position; a body json.loads cannot even read (not UTF-8/16/32, nested past the
    recursion limit), a 400."""
    body = await read_limited(request, settings_of(request).max_json_body_bytes)
    if not body:
        return _UNDEFINED
    if not _is_json(header(request, "content-type")):
        return body
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            [
                {
                    "type": "json_invalid",
                    "loc": ["body", exc.pos],
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ]
        ) from None
    except Exception:
        raise ApiError(400, "bad_request", "There was an error parsing the body") from None


async def _crownest_input(request: AnyRequest) -> tuple[CrowNestImportRequest, str | None]:
    """The body and the Idempotency-Key; a 422 lists the header's errors, then the body's."""
    data = await _read_body(request)
    errors: list[dict[str, Any]] = []
    key: str | None = None
    try:
        key = params.parse(request, KeyedParams).idempotency_key
    except InvalidInput as exc:
        errors += exc.errors
    body: CrowNestImportRequest | None = None
    if data is _UNDEFINED:
        errors.append({"type": "missing", "loc": ["body"], "msg": "Field required", "input": None})
    else:
        try:
            body = validate(CrowNestImportRequest, data, {})  # the schema's default limits
        except InvalidInput as exc:
            errors += exc.errors
    if errors:
        raise InvalidInput(errors)
    assert body is not None
    return body, key


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


def _check_configured(settings: Settings) -> None:
    """A 503 before any job exists when the server cannot import: no key, or a base URL that
    cannot be CrowNest's."""
    if settings.crownest_api_key is None:
        raise ApiError(
            503, "crownest_not_configured", "Imports need CROWNEST_API_KEY set on the server."
        )
    problem = check_base_url(settings.crownest_base_url)
    if problem is not None:
        raise ApiError(503, "crownest_not_configured", f"Imports cannot run: {problem}")


def _accepted(request: AnyRequest) -> Callable[[str], Answer]:
    def render(job_id: str) -> Answer:
        url = import_url(request, job_id)
        body = {"import_id": job_id, "status": "queued", "url": url}
        return json_answer(body, 202, {"Location": url})

    return render


async def _start_crownest(
    body: CrowNestImportRequest, request: AnyRequest, settings: Settings, hook: JobHook | None
) -> Answer:
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
    _check_configured(settings)
    runner = runner_of(request)
    options = ImportOptions(**body.model_dump())
    tenant = caller_of(request).tenant
    job_id = await runner.importer.start(options, tenant=tenant, hook=hook)
    runner.start(job_id)
    return _accepted(request)(job_id)


async def _resume(
    import_id: str, request: AnyRequest, settings: Settings, idem: Idempotency, fp: str
) -> Answer:
    runner = runner_of(request)
    job = await runner.importer.jobs.get(import_id, tenant=caller_of(request).tenant)
    task = runner.tasks.get(job.id)
    if task is not None and not task.done():
        raise ApiError(409, "import_running", f"Import {import_id!r} is still running.")
    _check_configured(settings)
    # queued before answering, so a GET right after this 202 never shows the old final status

    def render(job_id: str) -> Answer:
        body = {"import_id": job_id, "status": "queued", "url": import_url(request, job_id)}
        return json_answer(body, 202)

    await runner.importer.jobs.set_status(import_id, "queued", hook=idem.recorder(fp, render))
    runner.start(import_id)
    return idem.respond(import_id, render)


GET_IMPORT_OPT = {
    "scope": READ,
    "statuses": (200, 401, 403, 404, 422, 429, 503),
    "params": None,
}


async def _import_state(import_id: str, request: AnyRequest) -> Answer:
    jobs = runner_of(request).importer.jobs
    job = await jobs.get(import_id, tenant=caller_of(request).tenant)
    if job.source != SOURCE:
        raise ApiError(404, "import_not_found", f"Import {import_id!r} was not found.")
    return Answer(encode(await state_body(jobs, job)))


class ImportController(Controller):
    path = "/imports"

    @post(
        "/crownest",
        opt={
            "scope": RUN,
            "statuses": (202, 400, 401, 403, 409, 413, 422, 429, 503, 507),
            "params": KeyedParams,
        },
    )
    async def import_crownest(self, request: AnyRequest) -> Answer:
        """Answers 202 with the job's id at once; GET /imports/{id} follows it. The server's own
        CROWNEST_API_KEY is used (never one sent by the client). With an `Idempotency-Key`, a
        retry answers the first job's 202 and starts nothing."""
        body, key = await _crownest_input(request)
        settings = settings_of(request)
        async with idempotent(request, key) as idem:
            fp = fingerprint(request, "json", canonical(body.model_dump(mode="json")))
            if idem.replaying:
                return idem.replay(fp)
            return await _start_crownest(
                body, request, settings, idem.recorder(fp, _accepted(request))
            )

    @get(
        "/{import_id:str}",
        opt=GET_IMPORT_OPT,
    )
    async def get_import(self, import_id: FromPath[str], request: AnyRequest) -> Answer:
        return await _import_state(import_id, request)

    @get(
        "/crownest",
        opt={**GET_IMPORT_OPT, "alias_of": "/imports/{import_id}"},
    )
    async def get_import_named_crownest(self, request: AnyRequest) -> Answer:
        """GET /imports/{import_id} with the id `crownest`: the contract's reference routes it
        there (404 import_not_found), where Litestar would answer the POST route's 405."""
        return await _import_state("crownest", request)

    @post(
        "/{import_id:str}/resume",
        opt={
            "scope": RUN,
            "statuses": (202, 401, 403, 404, 409, 422, 429, 503, 507),
            "params": KeyedParams,
        },
    )
    async def resume_import(self, import_id: FromPath[str], request: AnyRequest) -> Answer:
        key = params.parse(request, KeyedParams).idempotency_key
        settings = settings_of(request)
        async with idempotent(request, key) as idem:
            fp = fingerprint(request)
            if idem.replaying:
                return idem.replay(fp)
            return await _resume(import_id, request, settings, idem, fp)
