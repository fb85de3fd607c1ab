"""The versions of an artifact (issue 17): every content it has had, immutable, by number.

    GET       /artifacts/{id}/versions                 newest first, paginated as GET /artifacts
    GET       /artifacts/{id}/versions/{n}             that version's record (include_content)
    GET, HEAD /artifacts/{id}/versions/{n}/download    its bytes, served as the current download

`{id}` is a full id or a unique prefix, as on every /artifacts/{id} route; `{n}` a positive
integer (else 422 in the contract's shape); an unknown version is 404 `version_not_found`.
A signed link made with POST /artifacts/{id}/download-url?version=n opens the download.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, HttpMethod, Request, get, route
from litestar.params import FromPath
from litestar.types import ASGIApp
from pydantic import TypeAdapter, ValidationError

from app import params, wire
from app.artifacts.controller import (
    MAX_VERSION,
    READ,
    SECURED,
    GetParams,
    PageLimit,
    VersionNumber,
    api_base,
    inline_text,
    next_page_headers,
    opt,
)
from app.artifacts.download import serve_bytes
from app.deps import Service, settings_of
from app.errors import InvalidInput, invalid_cursor
from app.http import Answer, encode
from app.settings import Settings
from storage.records import decode_version_cursor, encode_version_cursor

AnyRequest = Request[Any, Any, Any]
_VERSION = TypeAdapter(VersionNumber)


class VersionListParams(params.Params):
    limit: PageLimit = 50
    cursor: str | None = None  # from the previous page's X-Next-Cursor


def version_number(raw: str) -> int:
    """The `{version}` path segment as a number, or 422 with pydantic's own item (int_parsing,
    greater_than_equal, less_than_equal) at ["path", "version"]."""
    if raw.isascii() and raw.isdigit() and len(raw) <= 10 and 1 <= int(raw) <= MAX_VERSION:
        return int(raw)
    try:
        return _VERSION.validate_python(raw)
    except ValidationError as exc:
        items = []
        for err in exc.errors(include_url=False):
            item: dict[str, Any] = {
                "type": err["type"],
                "loc": ["path", "version"],
                "msg": err["msg"],
                "input": raw,
            }
            if "ctx" in err:
                item["ctx"] = err["ctx"]
            items.append(item)
        raise InvalidInput(items) from None


def version_url(request: AnyRequest, settings: Settings, artifact_id: str, number: int) -> str:
    return f"{api_base(request, settings)}/artifacts/{artifact_id}/versions/{number}/download"


class VersionController(Controller):
    path = "/artifacts"

    @get(
        "/{artifact_id:str}/versions",
        opt=opt(READ, (200, 404, 409, *SECURED), VersionListParams),
    )
    async def list_versions(
        self, artifact_id: FromPath[str], request: AnyRequest, service: Service
    ) -> Answer:
        """Newest first. When more exist, `Link: <…>; rel="next"` and `X-Next-Cursor` give the
        next page. Versions that retention purged are absent."""
        p = params.parse(request, VersionListParams)
        before = None
        if p.cursor is not None:
            try:
                before = decode_version_cursor(p.cursor)
            except ValueError:
                raise invalid_cursor(p.cursor) from None
        page = await service.versions(artifact_id, limit=p.limit, before=before)
        settings = settings_of(request)
        body = encode(
            [
                wire.version_summary(v, version_url(request, settings, v.artifact_id, v.version))
                for v in page.items
            ]
        )
        token = None if page.next_before is None else encode_version_cursor(page.next_before)
        return Answer(body, 200, next_page_headers(request, token))

    @get(
        "/{artifact_id:str}/versions/{version:str}",
        opt=opt(READ, (200, 404, 409, *SECURED), GetParams),
    )
    async def get_version(
        self,
        artifact_id: FromPath[str],
        version: FromPath[str],
        request: AnyRequest,
        service: Service,
    ) -> Answer:
        """One version's record; `include_content` (default true) inlines its text as GET
        /artifacts/{id} does. Its ETag is that version's content hash."""
        include_content = params.parse(request, GetParams).include_content
        number = version_number(version)
        settings = settings_of(request)
        view, found = await service.get_version(artifact_id, number)
        content = await inline_text(service, settings, view) if include_content else None
        url = version_url(request, settings, view.id, number)
        body = encode(wire.version_record(found, content, url))
        return Answer(body, 200, {"ETag": f'"{found.content_hash}"'})

    @route(
        "/{artifact_id:str}/versions/{version:str}/download",
        http_method=[HttpMethod.GET, HttpMethod.HEAD],
        opt={**opt(READ, (200, 206, 304, 404, 409, 416, *SECURED)), "signed_links": True},
    )
    async def download_version(
        self,
        artifact_id: FromPath[str],
        version: FromPath[str],
        request: AnyRequest,
        service: Service,
    ) -> ASGIApp:
        """That version's exact bytes, as GET /artifacts/{id}/download serves the current ones
        (ETag, Repr-Digest, If-None-Match, one Range, If-Range). A signed link made for this
        version stands in for a key, whatever was uploaded since."""
        number = version_number(version)
        view, _ = await service.get_version(artifact_id, number)
        return await serve_bytes(request, service, view)
