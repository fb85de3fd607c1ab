"""The artifacts routes (CONTRACT.md), thin: parameters, one service call, one answer.

Every handler declares its scope, the statuses the contract lists for it and its parameter
model in `opt`; tests/test_openapi.py holds them to openapi/openapi.json both ways.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import msgspec
from litestar import Controller, HttpMethod, Request, delete, get, post, put, route
from litestar.params import FromPath
from litestar.types import ASGIApp
from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

from app import params, wire
from app.artifacts import schemas
from app.artifacts.body import (
    content_digest,
    declared_length,
    hex_digest,
    one_digest,
    parse_json,
    read_limited,
    too_large,
    validate,
)
from app.artifacts.download import serve_download
from app.artifacts.multipart import FormStream, safe_filename
from app.auth import caller_of
from app.deps import Config, Service, settings_of
from app.errors import ApiError, invalid_cursor, validation_error
from app.http import Answer, encode, header, json_answer, stream_with_idle_timeout
from app.idempotency import (
    Idempotency,
    KeyedParams,
    canonical,
    content_sha256,
    fingerprint,
    idempotent,
)
from app.settings import Settings
from app.signing import LinkSigner, lifetime
from app.urls import base_url, with_query_param
from storage.artifacts import MAX_VERSION, artifact_ref, names
from storage.errors import BlobTooLarge, PreconditionFailed
from storage.lineage import subgraph
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

AnyRequest = Request[Any, Any, Any]

READ = "artifact:read"
CREATE = "artifact:create"
# Every secured route can answer these: who is calling, how fast, and whether the database is up.
SECURED = (401, 403, 422, 429, 503)
WRITE = (*SECURED, 507)


def opt(scope: str, statuses: tuple[int, ...], model: type[params.Params] | None = None) -> Any:
    return {"scope": scope, "statuses": statuses, "params": model}


# -- parameters ---------------------------------------------------------------------------------


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
PageLimit = Annotated[int, Field(ge=1, le=200)]
VersionNumber = Annotated[int, Field(ge=1, le=MAX_VERSION)]


class ListParams(params.Params):
    workflow_id: schemas.Text | None = None
    phase_id: schemas.Text | None = None
    artifact_type: schemas.Text | None = None  # matched exactly; empty: no filter
    session_id: schemas.Text | None = None
    content_type: schemas.Text | None = None
    is_primary_deliverable: bool | None = None
    created_after: IsoDatetime | None = None
    created_before: IsoDatetime | None = None
    derived_from: schemas.Text | None = None
    limit: PageLimit = 50
    cursor: str | None = None


class GetParams(params.Params):
    include_content: bool = True


class UploadParams(KeyedParams):
    HEADERS = KeyedParams.HEADERS | {"if_match"}
    filename: str | None = None
    # who wrote the version this upload makes (the create's body says it for version 1)
    created_by: schemas.Id | None = Field(
        None, description=f"who wrote this version; {schemas.IDS}"
    )
    # `*` or entity tags: write only if the current version's ETag ("<sha256>") is one of them
    if_match: str | None = Field(None, alias="if-match")


class DownloadUrlParams(params.Params):
    expires_in: Annotated[int, Field(ge=1, le=10**9)] | None = None
    version: VersionNumber | None = None  # a link to that version, not to the current bytes


class LineageParams(params.Params):
    direction: Literal["up", "down", "both"] = "both"
    depth: Annotated[int, Field(ge=1, le=50)] = 1


# -- shared helpers -----------------------------------------------------------------------------

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


def api_base(request: AnyRequest, settings: Settings) -> str:
    """Absolute base of the artifacts API as this client reached it (with /api/v1 if used)."""
    scope: Any = request.scope
    base = (settings.public_url or base_url(scope)).rstrip("/")
    return base + "/api/v1" if scope["path"].startswith("/api/v1/") else base


def download_url(request: AnyRequest, settings: Settings, artifact: Artifact) -> str:
    return f"{api_base(request, settings)}/artifacts/{artifact.id}/download"


def next_page_headers(request: AnyRequest, token: str | None) -> dict[str, str]:
    """`Link: <this URL with cursor=token>; rel="next"` and `X-Next-Cursor`, when there is more."""
    if token is None:
        return {}
    next_url = with_query_param(request.scope, "cursor", token)  # type: ignore[arg-type]
    return {"Link": f'<{next_url}>; rel="next"', "X-Next-Cursor": token}


def validation_context(settings: Settings) -> dict[str, Any]:
    return {
        "artifact_types": settings.artifact_types,
        "max_metadata_bytes": settings.max_metadata_bytes,
        **schemas.input_limits(settings),
    }


async def inline_text(service: Service, settings: Config, artifact: Artifact) -> str | None:
    """The content as text when its bytes are text and small enough to inline; else None."""
    if not artifact.is_text or artifact.size_bytes > settings.max_inline_content_bytes:
        return None
    try:
        return (await service.read_bytes(artifact)).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _new_artifact(
    data: schemas.CreateFields | schemas.CreateArtifactIn, content_type: str, **extra: Any
) -> NewArtifact:
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


def acting_on(artifact_id: str, suffix: str = "") -> str:
    """The path a keyed write on an artifact is fingerprinted by: its full id, however the
    request named it (see app.idempotency.fingerprint)."""
    return f"/artifacts/{artifact_id}{suffix}"


def replayed_id(idem: Idempotency, ref: str) -> str:
    """The full id a keyed retry of a write on `ref` acts on: that of the artifact its stored
    response names, when `ref` names it too (its full id or a prefix of it, even one that
    has matched other artifacts since, or whose artifact is deleted since); else `ref` as
    sent, a different request whose fingerprint cannot match."""
    assert idem.stored is not None
    ref = artifact_ref(ref)  # too short: the 404 it would be without a key
    try:
        stored = msgspec.json.decode(idem.stored.body).get("artifact_id")
    except (msgspec.DecodeError, AttributeError):
        return ref
    return stored if isinstance(stored, str) and names(ref, stored) else ref


def _created(request: AnyRequest, settings: Settings, artifact: Artifact) -> Answer:
    location = f"{api_base(request, settings)}/artifacts/{artifact.id}"
    return Answer(encode(wire.created(artifact)), 201, {"Location": location})


async def _hash_only(chunks: Any, limit: int) -> str:
    """The sha256 of a retried body that will be replayed (nothing is stored)."""
    try:
        return await content_sha256(chunks, limit)
    except BlobTooLarge:
        raise too_large(limit, "upload") from None


_ENTITY_TAG = r'(W/)?"([\x21\x23-\x7e]*)"'  # RFC 9110 8.8.3, ASCII tag characters
# `*`, or a comma-separated list of entity tags, whose empty elements a recipient must accept
# and ignore (RFC 9110 5.6.1): the OpenAPI document states this pattern.
IF_MATCH = rf"^[ \t]*(\*|({_ENTITY_TAG})?([ \t]*,[ \t]*({_ENTITY_TAG})?)*)[ \t]*$"
_IF_MATCH = re.compile(IF_MATCH)


def if_match_of(value: str | None) -> list[str] | None:
    """An If-Match header as replace_content takes it: None (absent), ["*"], or the values of
    its strong entity tags. RFC 9110 13.1.1 compares If-Match strongly, so a weak tag never
    matches (it is dropped), and a list of only weak tags, or of none (an empty header), matches
    nothing: 412. 422 when it is neither `*` nor a list of tags."""
    if value is None:
        return None
    if _IF_MATCH.fullmatch(value) is None:
        raise validation_error(
            ("header", "if-match"),
            "entity_tag",
            'Input should be * or a list of entity tags such as "<sha256>"',
            value,
        )
    if value.strip(" \t") == "*":
        return ["*"]
    return [m.group(2) for m in re.finditer(_ENTITY_TAG, value) if m.group(1) is None]


def _refuse_oversized(request: AnyRequest, limit: int) -> None:
    """413 at once when Content-Length already says the body passes the limit (the multipart
    envelope may add a little, so allow for it)."""
    length = declared_length(request)
    if length is not None and length > limit + 64 * 1024:
        raise too_large(limit, "upload")


class ArtifactController(Controller):
    path = "/artifacts"

    @get("/", opt=opt(READ, (200, *SECURED), ListParams))
    async def list_artifacts(self, request: AnyRequest, service: Service) -> Answer:
        """Newest first (created_at, id descending). When more rows exist, `Link: <…>;
        rel="next"` and `X-Next-Cursor` give the next page."""
        p = params.parse(request, ListParams)
        # CONTRACT.md: a free string (an unknown type matches nothing, as Syntropic's
        # dashboard expects of its type filter); an empty value is no filter. Matched in any
        # case, as a create takes the type.
        artifact_type = p.artifact_type.lower() if p.artifact_type else None
        after = None
        if p.cursor is not None:
            try:
                after = Cursor.decode(p.cursor)
            except ValueError:
                raise invalid_cursor(p.cursor) from None
        query = ListQuery(
            workflow_id=p.workflow_id,
            phase_id=p.phase_id,
            session_id=p.session_id,
            artifact_type=artifact_type,
            content_type=p.content_type,
            is_primary_deliverable=p.is_primary_deliverable,
            created_after=None if p.created_after is None else datetime_to_us(p.created_after),
            created_before=None if p.created_before is None else datetime_to_us(p.created_before),
            derived_from=p.derived_from,
        )
        page = await service.page(query, limit=p.limit, after=after)
        token = page.next_cursor.encode() if page.next_cursor else None
        body = encode([wire.summary(a) for a in page.items])
        return Answer(body, 200, next_page_headers(request, token))

    @post("/", opt=opt(CREATE, (201, 400, 409, 413, 415, *WRITE), KeyedParams))
    async def create_artifact(
        self, request: AnyRequest, service: Service, settings: Config
    ) -> Answer:
        """JSON: the content is stored as its UTF-8 bytes, so content_hash = sha256(content).
        multipart/form-data: the same fields as form fields, then one `file` part with the
        bytes. With an `Idempotency-Key`, a retry answers the first create's response."""
        key = params.parse(request, KeyedParams).idempotency_key
        declared = header(request, "content-type")
        media = ("application/json" if declared is None else declared).split(";")[0]
        media = media.strip().lower()
        if media not in ("multipart/form-data", "application/json") and not media.endswith("+json"):
            raise ApiError(
                415,
                "unsupported_media_type",
                f"POST /artifacts takes application/json or multipart/form-data, not {media!r}.",
            )
        async with idempotent(request, key) as idem:
            if media == "multipart/form-data":
                return await _create_from_form(request, service, settings, idem)
            raw = await read_limited(request, settings.max_json_body_bytes)
            fast = schemas.fast_create(raw, settings) if idem.key is None else None
            data: schemas.CreateArtifact | schemas.CreateArtifactIn
            if fast is not None:
                data, fp = fast, ""  # an unkeyed create is never compared
            else:  # keyed (its fingerprint needs the parsed body), or not plain: the model
                body = parse_json(raw)
                # only a keyed request is ever compared (canonical JSON + sha256 of the body)
                fp = fingerprint(request, "json", canonical(body)) if idem.key is not None else ""
                if idem.replaying:
                    return idem.replay(fp)
                data = validate(schemas.CreateArtifact, body, validation_context(settings))
            content_type = check_media_type(data.content_type, ("body", "content_type"))
            new = _new_artifact(data, content_type, is_text=True)

            def render(a: Artifact) -> Answer:
                return _created(request, settings, a)

            content = data.content.encode("utf-8")
            artifact = await service.create(new, content, hook=idem.recorder(fp, render))
            return idem.respond(artifact, render)

    @get("/{artifact_id:str}", opt=opt(READ, (200, 404, 409, *SECURED), GetParams))
    async def get_artifact(
        self, artifact_id: FromPath[str], request: AnyRequest, service: Service
    ) -> Answer:
        """By id or a unique id prefix of at least 8 characters (409 when ambiguous)."""
        include_content = params.parse(request, GetParams).include_content
        settings = settings_of(request)
        artifact = await service.get(artifact_id)
        content = await inline_text(service, settings, artifact) if include_content else None
        body = encode(wire.record(artifact, content, download_url(request, settings, artifact)))
        return Answer(body, 200, {"ETag": f'"{artifact.content_hash}"'})

    @get("/{artifact_id:str}/content", opt=opt(READ, (200, 404, 409, *SECURED)))
    async def get_content(
        self, artifact_id: FromPath[str], request: AnyRequest, service: Service
    ) -> Answer:
        settings = settings_of(request)
        artifact = await service.get(artifact_id)
        text = await inline_text(service, settings, artifact)
        url = download_url(request, settings, artifact)
        return Answer(encode(wire.content_body(artifact, text, url)))

    @put("/{artifact_id:str}", opt=opt(CREATE, (200, 404, 409, 413, *WRITE), KeyedParams))
    async def update_artifact(
        self, artifact_id: FromPath[str], request: AnyRequest, service: Service, settings: Config
    ) -> Answer:
        """By full id or a unique id prefix (409 when ambiguous). With an `Idempotency-Key`,
        a retry (by prefix or full id) answers the first update's response."""
        key = params.parse(request, KeyedParams).idempotency_key
        async with idempotent(request, key) as idem:
            body = parse_json(await read_limited(request, settings.max_json_body_bytes))

            def fp(full_id: str) -> str:
                return fingerprint(request, "json", canonical(body), path=acting_on(full_id))

            if idem.replaying:
                return idem.replay(fp(replayed_id(idem, artifact_id)))
            data = validate(schemas.UpdateArtifact, body, validation_context(settings))
            changes = ArtifactChanges(
                title=data.title,
                metadata=data.metadata,
                is_primary_deliverable=data.is_primary_deliverable,
            )

            def render(a: Artifact) -> Answer:
                return json_answer({"artifact_id": a.id, "status": "updated"})

            hook = idem.recorder(lambda a: fp(a.id), render)
            artifact = await service.update(artifact_id, changes, hook=hook)
            return idem.respond(artifact, render)

    @delete(
        "/{artifact_id:str}",
        status_code=200,
        opt=opt("artifact:delete", (200, 404, 409, *WRITE), KeyedParams),
    )
    async def delete_artifact(
        self, artifact_id: FromPath[str], request: AnyRequest, service: Service
    ) -> Answer:
        """Soft delete: afterwards GET answers 404; the bytes are reclaimed by garbage
        collection. By full id or a unique id prefix (409 when ambiguous). With an
        `Idempotency-Key`, a retry answers 200 again instead of 404."""
        key = params.parse(request, KeyedParams).idempotency_key
        async with idempotent(request, key) as idem:
            if idem.replaying:
                full_id = replayed_id(idem, artifact_id)
                return idem.replay(fingerprint(request, path=acting_on(full_id)))

            def render(a: Artifact) -> Answer:
                return json_answer({"artifact_id": a.id, "status": "deleted"})

            hook = idem.recorder(lambda a: fingerprint(request, path=acting_on(a.id)), render)
            deleted = await service.delete(artifact_id, hook=hook)
            return idem.respond(deleted, render)

    @post(
        "/{artifact_id:str}/upload",
        status_code=200,
        opt=opt(CREATE, (200, 400, 404, 409, 412, 413, 415, *WRITE), UploadParams),
    )
    async def upload_content(
        self, artifact_id: FromPath[str], request: AnyRequest, service: Service, settings: Config
    ) -> Answer:
        """Multipart with one part named `file`, or a raw body (its Content-Type becomes the
        artifact's). Streams into the blob store; 413 as soon as the body passes the limit.
        By full id or a unique id prefix (409 when ambiguous), resolved before the body is
        read. With an `Idempotency-Key`, a retry answers the first upload's response.
        Every upload makes a new version. With `If-Match` (the download's ETag `"<sha256>"`,
        or `*`), 412 `precondition_failed` when another version is current, or landed while
        the body streamed: nothing is written."""
        p = params.parse(request, UploadParams, schemas.input_limits(settings))
        if_match = if_match_of(p.if_match)
        # a conditional upload is another request than an unconditional one (keys compare it)
        condition = () if p.if_match is None else (f"if-match:{p.if_match}",)
        limit = settings.max_upload_bytes
        _refuse_oversized(request, limit)
        declared_content = content_digest(request)
        declared_header = hex_digest(
            header(request, "x-content-sha256"), ("header", "x-content-sha256")
        )
        raw_type = header(request, "content-type")
        media = (raw_type or "").split(";")[0].strip().lower()
        async with idempotent(request, p.idempotency_key) as idem:
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
                ctype = raw_type or "application/octet-stream"
                if _MEDIA_TYPE.fullmatch(ctype) is None:
                    raise ApiError(
                        415,
                        "unsupported_media_type",
                        f"{ctype!r} is not a media type (type/subtype).",
                    )
                name = safe_filename(p.filename) if p.filename else None
                chunks = stream_with_idle_timeout(request, settings.body_idle_timeout)
                head = canonical(["raw", ctype])
            if idem.replaying:
                target = acting_on(replayed_id(idem, artifact_id), "/upload")
                digest = await _hash_only(chunks, limit)
                return idem.replay(fingerprint(request, head, digest, *condition, path=target))
            described = NewContent(
                content_type=ctype,
                filename=name,
                is_text=is_textual(ctype),
                created_by=p.created_by,
            )

            def render(a: Artifact) -> Answer:
                body = encode(wire.uploaded(a, download_url(request, settings, a)))
                return Answer(body, 200, {"ETag": f'"{a.content_hash}"'})  # for the next If-Match

            try:
                artifact = await service.replace_content(
                    artifact_id,
                    chunks,
                    described,
                    max_bytes=limit,
                    expected_digest=expected,
                    if_match=if_match,
                    hook=idem.recorder(
                        lambda a: fingerprint(
                            request,
                            head,
                            a.content_hash,
                            *condition,
                            path=acting_on(a.id, "/upload"),
                        ),
                        render,
                    ),
                )
            except BlobTooLarge:
                raise too_large(limit, "upload") from None
            except PreconditionFailed as exc:
                etag = {"ETag": f'"{exc.current_hash}"'}
                raise ApiError(412, "precondition_failed", str(exc), headers=etag) from None
            return idem.respond(artifact, render)

    @route(
        "/{artifact_id:str}/download",
        http_method=[HttpMethod.GET, HttpMethod.HEAD],
        opt={**opt(READ, (200, 206, 304, 404, 409, 416, *SECURED)), "signed_links": True},
    )
    async def download(
        self, artifact_id: FromPath[str], request: AnyRequest, service: Service
    ) -> ASGIApp:
        """Exact bytes: ETag, Repr-Digest, If-None-Match, one Range, If-Range (app/artifacts/
        download.py). A signed link (`expires` and `sig`) stands in for a key."""
        return await serve_download(request, service, artifact_id)

    @post(
        "/{artifact_id:str}/download-url",
        status_code=200,
        opt=opt(READ, (200, 404, 409, *SECURED), DownloadUrlParams),
    )
    async def download_url(
        self, artifact_id: FromPath[str], request: AnyRequest, service: Service, settings: Config
    ) -> Answer:
        """A signed, expiring link to exactly the bytes the artifact has now, as GET or HEAD,
        until `expires_at`: replacing or deleting the artifact, or any change to the link,
        voids it. With `version=n`, a link to that version's download instead, which later
        uploads do not void (deleting the artifact, or retention purging the version, does)."""
        p = params.parse(request, DownloadUrlParams)
        if p.version is None:
            artifact = await service.get(artifact_id)
            path = f"/artifacts/{artifact.id}/download"
        else:
            artifact, _ = await service.get_version(artifact_id, p.version)
            path = f"/artifacts/{artifact.id}/versions/{p.version}/download"
        signer: LinkSigner = request.app.state.signer
        seconds = lifetime(
            p.expires_in, int(settings.download_url_ttl), int(settings.download_url_max_ttl)
        )
        expires_at = int(time.time()) + seconds
        query = signer.sign(
            artifact_id=artifact.id,
            tenant=caller_of(request).tenant,
            content_hash=artifact.content_hash,
            expires_at=expires_at,
            version=p.version,
        )
        url = f"{api_base(request, settings)}{path}?{urlencode(query)}"
        body: dict[str, Any] = {
            "url": url,
            "method": "GET",
            "expires_at": us_to_iso(expires_at * 1_000_000),
        }
        if p.version is not None:
            body["version"] = p.version
        return json_answer(body, headers={"Cache-Control": "no-store"})

    @get("/{artifact_id:str}/lineage", opt=opt(READ, (200, 404, 409, *SECURED), LineageParams))
    async def get_lineage(
        self, artifact_id: FromPath[str], request: AnyRequest, service: Service
    ) -> Answer:
        """Nodes are summaries with their `depth` from the root; deleted artifacts appear as
        tombstones `{id, deleted: true}` so a chain never breaks silently. Each edge carries
        the parent's content hash and version at link time (those bytes stay fetchable at
        /artifacts/{parent}/versions/{parent_version}/download). `truncated` says more edges
        lie beyond `depth`."""
        p = params.parse(request, LineageParams)
        root = await service.get(artifact_id)
        graph = await subgraph(service.db, root.id, p.direction, p.depth, tenant=service.tenant)
        body = {
            "root": graph.root,
            "nodes": [wire.lineage_node(n.artifact, n.id, n.depth) for n in graph.nodes],
            "edges": [
                {
                    "parent": e.parent,
                    "child": e.child,
                    "parent_hash": e.parent_hash,
                    "parent_version": e.parent_version,
                }
                for e in graph.edges
            ],
            "truncated": graph.truncated,
        }
        return json_answer(body)


async def _create_from_form(
    request: AnyRequest, service: Service, settings: Config, idem: Idempotency
) -> Answer:
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
        hex_digest(header(request, "x-content-sha256"), ("header", "x-content-sha256")),
        hex_digest(data.sha256, ("body", "sha256")),
    )
    if data.content_type is not None:
        content_type = check_media_type(data.content_type, ("body", "content_type"))
    else:
        content_type = check_media_type(part.content_type, ("body", "file"))
    new = _new_artifact(
        data, content_type, filename=safe_filename(part.filename), is_text=is_textual(content_type)
    )

    def render(a: Artifact) -> Answer:
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
