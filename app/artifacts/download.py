"""GET/HEAD /artifacts/{id}/download: exact bytes, the way the best blob servers serve them.

Strong ETag (the sha256), Repr-Digest (RFC 9530), If-None-Match -> 304, one Range -> 206 (416
when unsatisfiable; several ranges are answered with the whole body, as RFC 9110 allows),
If-Range, and headers that keep uploaded HTML/SVG from running script on our origin.
"""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import quote

from litestar import Request

from app.auth import linked_content_hash
from app.errors import ApiError
from app.http import Answer, StreamAnswer, header
from storage.artifacts import ArtifactService
from storage.errors import BlobNotFound
from storage.records import Artifact

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


async def serve_download(
    request: Request[Any, Any, Any], service: ArtifactService, artifact_id: str
) -> Answer | StreamAnswer:
    """GET or HEAD of an artifact's current bytes (a signed link was checked by the guard)."""
    return await serve_bytes(request, service, await service.get(artifact_id))


async def serve_bytes(
    request: Request[Any, Any, Any], service: ArtifactService, artifact: Artifact
) -> Answer | StreamAnswer:
    """GET or HEAD of the bytes `artifact` describes: its current content, or one version's
    (records.at_version), with the same headers, conditions and ranges either way."""
    linked = linked_content_hash(request)
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
    if_none_match = header(request, "if-none-match")
    if if_none_match is not None and _etag_matches(if_none_match, etag):
        return Answer(b"", 304, headers, media_type=None)

    start, end, status = 0, size, 200
    range_header = header(request, "range")
    if_range = header(request, "if-range")
    if range_header is not None and (if_range is None or if_range.strip() == etag):
        wanted = parse_range(range_header, size)
        if wanted is False:
            headers["Content-Range"] = f"bytes */{size}"
            return Answer(b"", 416, headers, media_type=None)
        if isinstance(wanted, tuple):
            start, end = wanted
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"

    headers["Content-Length"] = str(end - start)
    headers["Content-Type"] = artifact.content_type  # exactly as stored: no charset added
    if request.scope["method"] == "HEAD":
        return Answer(b"", status, headers, media_type=None)
    if artifact.size_bytes <= VERIFY_BEFORE_SENDING:
        # Small: verified whole before the first byte goes out (corrupt -> 500, no body).
        data = await service.read_bytes(artifact)
        return Answer(data[start:end], status, headers, media_type=None)
    if not await service.blobs.exists(artifact.content_hash):  # a clean 500, not a cut stream
        raise BlobNotFound(artifact.content_hash)
    return StreamAnswer(service.stream(artifact, start, end), status, headers)
