"""The artifacts routes (CONTRACT.md), thin: parse, one service call, one conversion."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from app.artifacts import schemas
from app.artifacts.body import (
    content_digest,
    declared_length,
    hex_digest,
    one_digest,
    parse_json,
    read_limited,
    stream_with_idle_timeout,
    too_large,
    validate,
)
from app.artifacts.deps import Config, Service
from app.artifacts.multipart import FormStream, safe_filename
from app.auth import require
from app.errors import ApiError, invalid_cursor, responses, validation_error
from app.idempotency import (
    Idempotency,
    IdempotencyKey,
    canonical,
    content_sha256,
    fingerprint,
    idempotent,
)
from app.settings import ARTIFACT_TYPES, Settings
from storage.artifacts import ArtifactService
from storage.errors import BlobTooLarge
from storage.records import (
    Artifact,
    ArtifactChanges,
    Cursor,
    ListQuery,
    NewArtifact,
    NewContent,
    datetime_to_us,
    is_textual,
    us_to_iso,
)

router = APIRouter(tags=["artifacts"])


PageLimit = Annotated[int, Query(ge=1, le=200, description="page size")]


def _iso_only(value: Any) -> Any:
    """A datetime filter is ISO 8601, as documented: pydantic alone would also read a number as
    Unix time, so that `created_before=0.5` meant 1970-01-01T00:00:00.5Z."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise PydanticCustomError(
            "datetime_parsing", "Input should be an ISO 8601 datetime, not a number"
        )
    return value


IsoDatetime = Annotated[datetime, BeforeValidator(_iso_only)]

# type/subtype and parameters, no control characters: a stored content type goes out as the
# download's Content-Type header, where "0" is malformed and a CR/LF cannot be sent at all.
# Parameters in visible ASCII: the value goes out as a Content-Type header, which must encode.
MEDIA_TYPE = r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+([ \t]*;[\t\x20-\x7e]*)?$"
_MEDIA_TYPE = re.compile(MEDIA_TYPE)


def check_media_type(value: str, loc: tuple[str, ...]) -> str:
    if _MEDIA_TYPE.fullmatch(value) is None:
        raise validation_error(
            loc, "media_type", "Input should be a media type such as text/markdown", value
        )
    return value


# Documented as the built-in types; the server also takes any case of them, and the types a
# deployment adds with ARTIFACTS_EXTRA_ARTIFACT_TYPES.
TYPE_ENUM = {"enum": list(ARTIFACT_TYPES)}


def api_base(request: Request, settings: Settings) -> str:
    """Absolute base of the artifacts API as this client reached it (with /api/v1 if used)."""
    base = (settings.public_url or _base_url(request)).rstrip("/")
    return base + "/api/v1" if request.scope["path"].startswith("/api/v1/") else base


_BASE_URLS: dict[tuple[Any, ...], str] = {}


def _base_url(request: Request) -> str:
    """str(request.base_url), remembered for each (scheme, Host, server, root path) it depends
    on: building its URL objects anew was a twentieth of a get's CPU. (Host is the client's to
    choose, so the memory is bounded.)"""
    scope = request.scope
    root = scope.get("app_root_path", scope.get("root_path", ""))
    server = scope.get("server")
    key = (scope.get("scheme"), request.headers.get("host"), server and tuple(server), root)
    base = _BASE_URLS.get(key)
    if base is None:
        if len(_BASE_URLS) >= 256:
            _BASE_URLS.clear()
        base = _BASE_URLS[key] = str(request.base_url)
    return base


def download_url(request: Request, settings: Settings, artifact: Artifact) -> str:
    return f"{api_base(request, settings)}/artifacts/{artifact.id}/download"


def validation_context(settings: Settings) -> dict[str, Any]:
    return {
        "artifact_types": settings.artifact_types,
        "max_metadata_bytes": settings.max_metadata_bytes,
        **schemas.input_limits(settings),
    }


async def inline_text(
    service: ArtifactService, settings: Settings, artifact: Artifact
) -> str | None:
    """The content as text when its bytes are text and small enough to inline; else None."""
    if not artifact.is_text or artifact.size_bytes > settings.max_inline_content_bytes:
        return None
    try:
        return (await service.read_bytes(artifact)).decode("utf-8")
    except UnicodeDecodeError:
        return None


@router.get(
    "",
    dependencies=[require("artifact:read")],
    response_model=list[schemas.ArtifactSummary],
    summary="List artifacts",
)
async def list_artifacts(
    request: Request,
    service: Service,
    settings: Config,
    workflow_id: schemas.Text | None = None,
    phase_id: schemas.Text | None = None,
    artifact_type: str | None = Query(None, json_schema_extra=TYPE_ENUM),
    session_id: schemas.Text | None = None,
    content_type: schemas.Text | None = None,
    is_primary_deliverable: bool | None = None,
    created_after: IsoDatetime | None = Query(None, description="exclusive, ISO 8601"),
    created_before: IsoDatetime | None = Query(None, description="exclusive, ISO 8601"),
    derived_from: schemas.Text | None = Query(None, description="direct children of this id"),
    limit: PageLimit = 50,
    cursor: str | None = Query(None, description="from the previous page's X-Next-Cursor"),
) -> Response:
    """Newest first (created_at, id descending). When more rows exist, `Link: <…>; rel="next"`
    and `X-Next-Cursor` give the next page."""
    if artifact_type is not None:
        try:
            artifact_type = schemas.check_artifact_type(artifact_type, settings.artifact_types)
        except PydanticCustomError as exc:
            raise validation_error(
                ("query", "artifact_type"), "enum", exc.message(), artifact_type, exc.context
            ) from None
    after = None
    if cursor is not None:
        try:
            after = Cursor.decode(cursor)
        except ValueError:
            raise invalid_cursor(cursor) from None
    query = ListQuery(
        workflow_id=workflow_id,
        phase_id=phase_id,
        session_id=session_id,
        artifact_type=artifact_type,
        content_type=content_type,
        is_primary_deliverable=is_primary_deliverable,
        created_after=None if created_after is None else datetime_to_us(created_after),
        created_before=None if created_before is None else datetime_to_us(created_before),
        derived_from=derived_from,
    )
    return await list_response(request, service, query, limit, after)


async def list_response(
    request: Request, service: ArtifactService, query: ListQuery, limit: int, after: Cursor | None
) -> Response:
    """One page of a list, as GET /artifacts answers it (also app/artifacts/hot.py's)."""
    page = await service.page(query, limit=limit, after=after)
    token = page.next_cursor.encode() if page.next_cursor else None
    items = [schemas.summary(a) for a in page.items]
    return JSONResponse(items, headers=next_page_headers(request, token))


def next_page_headers(request: Request, token: str | None) -> dict[str, str]:
    """`Link: <this URL with cursor=token>; rel="next"` and `X-Next-Cursor`, when there is more."""
    if token is None:
        return {}
    next_url = request.url.include_query_params(cursor=token)
    return {"Link": f'<{next_url}>; rel="next"', "X-Next-Cursor": token}


JSON_SCHEMA = schemas.CreateArtifact.model_json_schema()
JSON_SCHEMA["properties"]["artifact_type"].update(TYPE_ENUM)
JSON_SCHEMA["properties"]["content_type"]["pattern"] = MEDIA_TYPE


def _form_field(schema: dict[str, Any]) -> None:
    """A form field is text or absent, never null: drop the `null` branch and default."""
    branches = [b for b in schema.pop("anyOf", []) if b != {"type": "null"}]
    if branches:
        schema.update(branches[0])
    if "default" in schema and schema["default"] is None:
        del schema["default"]


FORM_SCHEMA = schemas.CreateForm.model_json_schema()
FORM_SCHEMA["properties"]["artifact_type"].update(TYPE_ENUM)
for _field in FORM_SCHEMA["properties"].values():
    _form_field(_field)
FORM_SCHEMA["properties"]["sha256"]["pattern"] = "^[0-9a-fA-F]{64}$"
FORM_SCHEMA["properties"]["content_type"]["pattern"] = MEDIA_TYPE
FORM_SCHEMA["properties"]["file"] = {"type": "string", "format": "binary"}
FORM_SCHEMA["required"] = [*FORM_SCHEMA.get("required", []), "file"]
CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": JSON_SCHEMA},
            "multipart/form-data": {
                "schema": FORM_SCHEMA,
                # fields first, then the file part (fields after it are a 422 field_after_file)
                "encoding": {
                    "derived_from": {"contentType": "application/json"},
                    "metadata": {"contentType": "application/json"},
                },
            },
        },
    }
}


def _created(request: Request, settings: Settings, artifact: Artifact) -> JSONResponse:
    body = {
        "id": artifact.id,
        "title": artifact.title,
        "artifact_type": artifact.artifact_type,
        "status": "created",
        "content_hash": artifact.content_hash,
        "size_bytes": artifact.size_bytes,
        "created_at": us_to_iso(artifact.created_at),
    }
    location = f"{api_base(request, settings)}/artifacts/{artifact.id}"
    return JSONResponse(body, status_code=201, headers={"Location": location})


def _new_artifact(data: schemas.CreateFields, content_type: str, **extra: Any) -> NewArtifact:
    return NewArtifact(
        workflow_id=data.workflow_id,
        artifact_type=data.artifact_type,
        title=data.title,
        content_type=content_type,
        phase_id=data.phase_id,
        session_id=data.session_id,
        is_primary_deliverable=data.is_primary_deliverable,
        created_by=data.created_by,
        metadata=data.metadata,
        derived_from=tuple(data.derived_from),
        **extra,
    )


@router.post(
    "",
    dependencies=[require("artifact:create")],
    status_code=201,
    response_model=schemas.Created,
    summary="Create an artifact",
    openapi_extra=CREATE_BODY,
    responses=responses(400, 409, 413, 415, write=True),
)
async def create_artifact(
    request: Request, service: Service, settings: Config, idempotency_key: IdempotencyKey = None
) -> Response:
    """JSON: the content is stored as its UTF-8 bytes, so content_hash = sha256(content).
    multipart/form-data: the same fields as form fields, then one `file` part with the bytes.
    With an `Idempotency-Key`, a retry answers the first create's response (no second artifact)."""
    media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if media != "multipart/form-data" and media != "application/json":
        if not media.endswith("+json"):
            raise ApiError(
                415,
                "unsupported_media_type",
                f"POST /artifacts takes application/json or multipart/form-data, not {media!r}.",
            )
    async with idempotent(request, idempotency_key) as idem:
        if media == "multipart/form-data":
            return await _create_from_form(request, service, settings, idem)
        body = parse_json(await read_limited(request, settings.max_json_body_bytes))
        # only a keyed request is ever compared (canonical JSON + sha256 of the whole body)
        fp = fingerprint(request, "json", canonical(body)) if idem.key is not None else ""
        if idem.replaying:
            return idem.replay(fp)
        data = validate(schemas.CreateArtifact, body, validation_context(settings))
        content_type = check_media_type(data.content_type, ("body", "content_type"))
        new = _new_artifact(data, content_type, is_text=True)

        def render(a: Artifact) -> Response:
            return _created(request, settings, a)

        content = data.content.encode("utf-8")
        artifact = await service.create(new, content, hook=idem.recorder(fp, render))
        return idem.respond(artifact, render)


async def _create_from_form(
    request: Request, service: Service, settings: Settings, idem: Idempotency
) -> Response:
    limit = settings.max_upload_bytes
    _refuse_oversized(request, limit)
    form = FormStream(request, content_digest=content_digest(request))
    part = await form.open_file()

    def fp(digest: str) -> str:
        head = canonical(sorted(form.fields.items()))
        return fingerprint(request, "form", head, part.filename, part.content_type, digest)

    if idem.replaying:
        return idem.replay(fp(await _hash_only(form.file_chunks(), limit)))
    fields = schemas.CreateForm.from_fields(form.fields)
    data = validate(schemas.CreateForm, fields, validation_context(settings))
    expected = one_digest(
        hex_digest(request.headers.get("x-content-sha256"), ("header", "x-content-sha256")),
        hex_digest(data.sha256, ("body", "sha256")),
    )
    if data.content_type is not None:
        content_type = check_media_type(data.content_type, ("body", "content_type"))
    else:
        content_type = check_media_type(part.content_type, ("body", "file"))
    new = _new_artifact(
        data, content_type, filename=safe_filename(part.filename), is_text=is_textual(content_type)
    )

    def render(a: Artifact) -> Response:
        return _created(request, settings, a)

    try:
        artifact = await service.create(
            new,
            form.file_chunks(),
            max_bytes=limit,
            expected_digest=expected,
            hook=idem.recorder(lambda a: fp(a.content_hash), render),
        )
    except BlobTooLarge:
        raise too_large(limit, "upload") from None
    return idem.respond(artifact, render)


async def _hash_only(chunks: Any, limit: int) -> str:
    """The sha256 of a retried body that will be replayed (nothing is stored)."""
    try:
        return await content_sha256(chunks, limit)
    except BlobTooLarge:
        raise too_large(limit, "upload") from None


def _refuse_oversized(request: Request, limit: int) -> None:
    """413 at once when Content-Length already says the body passes the limit (the multipart
    envelope may add a little, so allow for it)."""
    length = declared_length(request)
    if length is not None and length > limit + 64 * 1024:
        raise too_large(limit, "upload")


@router.get(
    "/{artifact_id}",
    dependencies=[require("artifact:read")],
    response_model=schemas.ArtifactRecord,
    summary="Get an artifact",
    responses=responses(404, 409),
)
async def get_artifact(
    artifact_id: str,
    request: Request,
    service: Service,
    settings: Config,
    include_content: bool = True,
) -> Response:
    """By id or a unique id prefix of at least 8 characters (409 when ambiguous)."""
    return await artifact_response(request, service, settings, artifact_id, include_content)


async def artifact_response(
    request: Request,
    service: ArtifactService,
    settings: Settings,
    artifact_id: str,
    include_content: bool,
) -> Response:
    """GET /artifacts/{id} (also app/artifacts/hot.py's)."""
    artifact = await service.get(artifact_id)
    content = await inline_text(service, settings, artifact) if include_content else None
    return JSONResponse(
        schemas.record(artifact, content, download_url(request, settings, artifact)),
        headers={"ETag": f'"{artifact.content_hash}"'},
    )


@router.get(
    "/{artifact_id}/content",
    dependencies=[require("artifact:read")],
    response_model=schemas.ContentBody,
    summary="Get an artifact's content",
    responses=responses(404, 409),
)
async def get_content(
    artifact_id: str, request: Request, service: Service, settings: Config
) -> Response:
    artifact = await service.get(artifact_id)
    return JSONResponse(
        {
            "artifact_id": artifact.id,
            "content": await inline_text(service, settings, artifact),
            "content_type": artifact.content_type,
            "size_bytes": artifact.size_bytes,
            "content_hash": artifact.content_hash,
            "download_url": download_url(request, settings, artifact),
        }
    )


UPDATE_SCHEMA = schemas.UpdateArtifact.model_json_schema()
UPDATE_SCHEMA["anyOf"] = [  # at least one field that is not null
    {"required": ["title"], "properties": {"title": {"type": "string"}}},
    {"required": ["metadata"], "properties": {"metadata": {"type": "object"}}},
    {
        "required": ["is_primary_deliverable"],
        "properties": {"is_primary_deliverable": {"type": "boolean"}},
    },
]
UPDATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": UPDATE_SCHEMA}},
    }
}


@router.put(
    "/{artifact_id}",
    dependencies=[require("artifact:create")],
    response_model=schemas.Updated,
    summary="Update title, metadata or primary flag",
    openapi_extra=UPDATE_BODY,
    responses=responses(404, 409, 413, write=True),
)
async def update_artifact(
    artifact_id: str,
    request: Request,
    service: Service,
    settings: Config,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    async with idempotent(request, idempotency_key) as idem:
        body = parse_json(await read_limited(request, settings.max_json_body_bytes))
        fp = fingerprint(request, "json", canonical(body))
        if idem.replaying:
            return idem.replay(fp)
        data = validate(schemas.UpdateArtifact, body, validation_context(settings))
        changes = ArtifactChanges(
            title=data.title,
            metadata=data.metadata,
            is_primary_deliverable=data.is_primary_deliverable,
        )

        def render(a: Artifact) -> Response:
            return JSONResponse({"artifact_id": a.id, "status": "updated"})

        artifact = await service.update(artifact_id, changes, hook=idem.recorder(fp, render))
        return idem.respond(artifact, render)


@router.delete(
    "/{artifact_id}",
    dependencies=[require("artifact:delete")],
    response_model=schemas.Deleted,
    summary="Delete an artifact",
    responses=responses(404, 409, write=True),
)
async def delete_artifact(
    artifact_id: str, request: Request, service: Service, idempotency_key: IdempotencyKey = None
) -> Response:
    """Soft delete: afterwards GET answers 404; the bytes are reclaimed by garbage collection.
    With an `Idempotency-Key`, a retry answers 200 again instead of 404."""
    async with idempotent(request, idempotency_key) as idem:
        fp = fingerprint(request)
        if idem.replaying:
            return idem.replay(fp)

        def render(_: Artifact) -> Response:
            return JSONResponse({"artifact_id": artifact_id, "status": "deleted"})

        deleted = await service.delete(artifact_id, hook=idem.recorder(fp, render))
        return idem.respond(deleted, render)


UPLOAD_BODY = {
    "requestBody": {
        "required": False,  # no body is a raw upload of zero bytes (an empty file)
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary"}},
                    "required": ["file"],
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/{artifact_id}/upload",
    dependencies=[require("artifact:create")],
    response_model=schemas.Uploaded,
    summary="Replace an artifact's content with uploaded bytes",
    openapi_extra=UPLOAD_BODY,
    responses=responses(400, 404, 409, 413, 415, write=True),
)
async def upload_content(
    artifact_id: str,
    request: Request,
    service: Service,
    settings: Config,
    filename: str | None = Query(None, description="for a raw (non-multipart) body"),
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Multipart with one part named `file`, or a raw body (its Content-Type becomes the
    artifact's). Streams into the blob store; 413 as soon as the body passes the limit.
    With an `Idempotency-Key`, a retry answers the first upload's response."""
    limit = settings.max_upload_bytes
    _refuse_oversized(request, limit)
    declared_content = content_digest(request)
    declared_header = hex_digest(
        request.headers.get("x-content-sha256"), ("header", "x-content-sha256")
    )
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    async with idempotent(request, idempotency_key) as idem:
        if media == "multipart/form-data":
            # Content-Digest covers the whole multipart body (RFC 9530): FormStream checks it.
            form = FormStream(request, content_digest=declared_content)
            part = await form.open_file()
            form_digest = hex_digest(form.fields.get("sha256"), ("body", "sha256"))
            expected = one_digest(declared_header, form_digest)
            chunks = form.file_chunks()
            ctype = check_media_type(part.content_type, ("body", "file"))
            name = safe_filename(part.filename)
            head = canonical(["form", sorted(form.fields.items()), part.filename, ctype])
        else:
            expected = one_digest(declared_content, declared_header)
            ctype = request.headers.get("content-type") or "application/octet-stream"
            if _MEDIA_TYPE.fullmatch(ctype) is None:
                raise ApiError(
                    415, "unsupported_media_type", f"{ctype!r} is not a media type (type/subtype)."
                )
            name = safe_filename(filename) if filename else None
            chunks = stream_with_idle_timeout(request)
            head = canonical(["raw", ctype])
        if idem.replaying:
            return idem.replay(fingerprint(request, head, await _hash_only(chunks, limit)))
        described = NewContent(content_type=ctype, filename=name, is_text=is_textual(ctype))

        def render(a: Artifact) -> Response:
            return JSONResponse(
                {
                    "artifact_id": a.id,
                    "storage_url": download_url(request, settings, a),
                    "status": "uploaded",
                    "content_hash": a.content_hash,
                    "size_bytes": a.size_bytes,
                    "content_type": a.content_type,
                }
            )

        try:
            artifact = await service.replace_content(
                artifact_id,
                chunks,
                described,
                max_bytes=limit,
                expected_digest=expected,
                hook=idem.recorder(lambda a: fingerprint(request, head, a.content_hash), render),
            )
        except BlobTooLarge:
            raise too_large(limit, "upload") from None
        return idem.respond(artifact, render)
