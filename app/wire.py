"""Storage records -> the artifact shapes on the wire, one place per shape.

msgspec Structs: their field order is the order the contract writes the members in, and they
encode without building a dict per row. User-written JSON (metadata) is encoded by the stdlib
(`encode_user_json`), so numbers come back exactly as the reference writes them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.http import encode_user_json
from storage.records import Artifact, Summary, Version, us_to_iso


class ArtifactSummary(msgspec.Struct):
    """A row of GET /artifacts (and every list of artifacts)."""

    id: str
    workflow_id: str
    phase_id: str | None
    artifact_type: str
    title: str
    size_bytes: int
    created_at: str
    session_id: str | None
    content_type: str
    content_hash: str
    is_primary_deliverable: bool


class ArtifactRecord(msgspec.Struct):
    """GET /artifacts/{id}: the whole record."""

    id: str
    workflow_id: str
    phase_id: str | None
    session_id: str | None
    artifact_type: str
    is_primary_deliverable: bool
    content: str | None
    content_type: str
    content_hash: str
    size_bytes: int
    title: str
    derived_from: list[str]
    created_at: str
    created_by: str | None
    metadata: msgspec.Raw
    filename: str | None
    updated_at: str
    download_url: str
    version: int  # the current version's number (GET /artifacts/{id}/versions lists them)


class Created(msgspec.Struct):
    id: str
    title: str
    artifact_type: str
    status: str
    content_hash: str
    size_bytes: int
    created_at: str
    version: int


class ContentBody(msgspec.Struct):
    artifact_id: str
    content: str | None
    content_type: str
    size_bytes: int
    content_hash: str
    download_url: str


class Uploaded(msgspec.Struct):
    artifact_id: str
    storage_url: str
    status: str
    content_hash: str
    size_bytes: int
    content_type: str
    version: int  # the version this upload made


class VersionSummary(msgspec.Struct):
    """A row of GET /artifacts/{id}/versions: one immutable content the artifact has had."""

    artifact_id: str
    version: int
    is_current: bool
    content_type: str
    content_hash: str
    size_bytes: int
    filename: str | None
    created_by: str | None
    created_at: str
    superseded_at: str | None
    download_url: str


class VersionRecord(VersionSummary):
    """GET /artifacts/{id}/versions/{n}: the row, then its text as GET /artifacts/{id} inlines."""

    content: str | None


class LineageNode(ArtifactSummary):
    """A live node of a lineage graph: its summary, then `deleted` and `depth`."""

    deleted: bool
    depth: int


class Tombstone(msgspec.Struct):
    """A deleted node of a lineage graph: a chain never breaks silently."""

    id: str
    deleted: bool
    depth: int


def summary(a: Artifact | Summary) -> ArtifactSummary:
    return ArtifactSummary(
        a.id,
        a.workflow_id,
        a.phase_id,
        a.artifact_type,
        a.title,
        a.size_bytes,
        us_to_iso(a.created_at),
        a.session_id,
        a.content_type,
        a.content_hash,
        a.is_primary_deliverable,
    )


def record(a: Artifact, content: str | None, download_url: str) -> ArtifactRecord:
    return ArtifactRecord(
        a.id,
        a.workflow_id,
        a.phase_id,
        a.session_id,
        a.artifact_type,
        a.is_primary_deliverable,
        content,
        a.content_type,
        a.content_hash,
        a.size_bytes,
        a.title,
        list(a.derived_from or ()),
        us_to_iso(a.created_at),
        a.created_by,
        encode_user_json(a.metadata),
        a.filename,
        us_to_iso(a.updated_at),
        download_url,
        a.version,
    )


def created(a: Artifact) -> Created:
    return Created(
        a.id, a.title, a.artifact_type, "created", a.content_hash, a.size_bytes,
        us_to_iso(a.created_at), a.version,
    )  # fmt: skip


def content_body(a: Artifact, content: str | None, download_url: str) -> ContentBody:
    return ContentBody(a.id, content, a.content_type, a.size_bytes, a.content_hash, download_url)


def uploaded(a: Artifact, download_url: str) -> Uploaded:
    return Uploaded(
        a.id, download_url, "uploaded", a.content_hash, a.size_bytes, a.content_type, a.version
    )


def _version_fields(v: Version, download_url: str) -> dict[str, Any]:
    return {
        "artifact_id": v.artifact_id,
        "version": v.version,
        "is_current": v.is_current,
        "content_type": v.content_type,
        "content_hash": v.content_hash,
        "size_bytes": v.size_bytes,
        "filename": v.filename,
        "created_by": v.created_by,
        "created_at": us_to_iso(v.created_at),
        "superseded_at": None if v.superseded_at is None else us_to_iso(v.superseded_at),
        "download_url": download_url,
    }


def version_summary(v: Version, download_url: str) -> VersionSummary:
    return VersionSummary(**_version_fields(v, download_url))


def version_record(v: Version, content: str | None, download_url: str) -> VersionRecord:
    return VersionRecord(**_version_fields(v, download_url), content=content)


def lineage_node(a: Artifact | None, node_id: str, depth: int) -> LineageNode | Tombstone:
    if a is None:
        return Tombstone(node_id, True, depth)
    return LineageNode(
        a.id, a.workflow_id, a.phase_id, a.artifact_type, a.title, a.size_bytes,
        us_to_iso(a.created_at), a.session_id, a.content_type, a.content_hash,
        a.is_primary_deliverable, False, depth,
    )  # fmt: skip
