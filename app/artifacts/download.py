"""GET/HEAD /artifacts/{id}/download: exact bytes, the way the best blob servers serve them.

Strong ETag (the sha256), Repr-Digest (RFC 9530), If-None-Match -> 304, one Range -> 206 (416
when unsatisfiable; several ranges are answered with the whole body, as RFC 9110 allows),
If-Range, and headers that keep uploaded HTML/SVG from running script on our origin.
"""

from __future__ import annotations

import base64
import re
import time
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from app.artifacts.deps import Config, Service
from app.artifacts.routes import api_base
from app.auth import caller_of, require
from app.errors import ApiError, responses
from app.signing import LinkSigner, lifetime
from storage.errors import BlobNotFound
from storage.records import Artifact, us_to_iso

router = APIRouter(tags=["artifacts"])
# Blobs up to this size are hashed before their first byte is sent; larger ones are hashed as
# they stream, their last chunk held back until the hash matches (see ArtifactService.stream).
VERIFY_BEFORE_SENDING = 4 << 20

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_FILENAME_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')


def content_disposition(artifact: Artifact) -> str:
    """`attachment` with an ASCII fallback name and the exact name as RFC 8187 `filename*`."""
    name = artifact.filename or artifact.id
    fallback = _FILENAME_UNSAFE.sub("_", name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def repr_digest(hex_digest: str) -> str:
    return f"sha-256=:{base64.b64encode(bytes.fromhex(hex_digest)).decode()}:"


def parse_range(header: str, size: int) -> tuple[int, int] | bool | None:
    """One `bytes=` range -> (start, end_exclusive); None: ignore the header (serve it all);
    False: unsatisfiable."""
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None  # several ranges or another unit: a full 200 is a valid answer
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        suffix = int(last)
        if suffix == 0:
            return False
        return (max(size - suffix, 0), size) if size else False
    start = int(first)
    if start >= size:
        return False
    end = size if not last else min(int(last) + 1, size)
    if end <= start:
        return None  # last < first: syntactically invalid, ignored
    return start, end


def _etag_matches(header: str, etag: str) -> bool:
    candidates = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in candidates or etag in candidates


BYTES_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"*/*": {}}, "description": "the stored bytes, as their own Content-Type"},
    206: {"content": {"*/*": {}}, "description": "the requested byte range"},
    304: {"description": "not modified (If-None-Match)"},
    416: {"description": "range not satisfiable"},
    **responses(404, 409),
}


@router.get(
    "/{artifact_id}/download",
    dependencies=[require("artifact:read", signed_links=True)],
    response_class=StreamingResponse,
    summary="Download an artifact's exact bytes",
    responses=BYTES_RESPONSE,
)
@router.head(
    "/{artifact_id}/download",
    dependencies=[require("artifact:read", signed_links=True)],
    response_class=StreamingResponse,
    summary="Headers of a download, without the bytes",
    operation_id="head_download",
    responses=BYTES_RESPONSE,
)
async def download(artifact_id: str, request: Request, service: Service) -> Response:
    artifact = await service.get(artifact_id)
    linked = getattr(request.state, "link_content_hash", None)
    if linked is not None and linked != artifact.content_hash:  # replaced since the check
        raise ApiError(403, "invalid_link", "The link's signature does not match.")
    size = artifact.size_bytes
    etag = f'"{artifact.content_hash}"'
    headers = {
        "ETag": etag,
        "Repr-Digest": repr_digest(artifact.content_hash),
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, max-age=0, must-revalidate",
        "Content-Disposition": content_disposition(artifact),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
    }
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)

    start, end, status = 0, size, 200
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if range_header is not None and (if_range is None or if_range.strip() == etag):
        wanted = parse_range(range_header, size)
        if wanted is False:
            headers["Content-Range"] = f"bytes */{size}"
            return Response(status_code=416, headers=headers)
        if isinstance(wanted, tuple):
            start, end = wanted
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"

    headers["Content-Length"] = str(end - start)
    headers["Content-Type"] = artifact.content_type  # exactly as stored: no charset added
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    if artifact.size_bytes <= VERIFY_BEFORE_SENDING:
        # Small: verified whole before the first byte goes out (corrupt -> 500, no body).
        data = await service.read_bytes(artifact)
        return Response(data[start:end], status_code=status, headers=headers)
    if not await service.blobs.exists(artifact.content_hash):  # a clean 500, not a cut stream
        raise BlobNotFound(artifact.content_hash)
    return StreamingResponse(
        service.stream(artifact, start, end), status_code=status, headers=headers
    )


class DownloadLink(BaseModel):
    url: str
    method: str
    expires_at: str


@router.post(
    "/{artifact_id}/download-url",
    dependencies=[require("artifact:read")],
    response_model=DownloadLink,
    responses=responses(404, 409),
    summary="A signed, expiring link to the artifact's bytes that needs no key",
)
async def download_url(
    artifact_id: str,
    request: Request,
    service: Service,
    settings: Config,
    expires_in: int | None = Query(
        None, ge=1, le=10**9, description="seconds; default and cap are server settings"
    ),
) -> JSONResponse:
    """The link serves exactly the bytes the artifact has now, as GET or HEAD, until
    `expires_at`: replacing or deleting the artifact, or any change to the link, voids it."""
    artifact = await service.get(artifact_id)
    signer: LinkSigner = request.app.state.signer
    seconds = lifetime(
        expires_in, int(settings.download_url_ttl), int(settings.download_url_max_ttl)
    )
    expires_at = int(time.time()) + seconds
    query = signer.sign(
        artifact_id=artifact.id,
        tenant=caller_of(request).tenant,
        content_hash=artifact.content_hash,
        expires_at=expires_at,
    )
    url = f"{api_base(request, settings)}/artifacts/{artifact.id}/download?{urlencode(query)}"
    return JSONResponse(
        {"url": url, "method": "GET", "expires_at": us_to_iso(expires_at * 1_000_000)},
        headers={"Cache-Control": "no-store"},
    )
