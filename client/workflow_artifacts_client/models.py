"""Typed records of the server's answers: plain frozen dataclasses (no dependency).

Each keeps the members it names; anything else the server adds lands in `extra`, so a newer
server never breaks an older client.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

R = TypeVar("R", bound="Record")


@dataclass(frozen=True)
class Record:
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, kw_only=True)

    @classmethod
    def from_json(cls: type[R], data: dict[str, Any]) -> R:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        for f in dataclasses.fields(cls):
            if f.name in known or f.name == "extra":
                continue
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                known[f.name] = None  # a member this server version does not send
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})


@dataclass(frozen=True)
class ArtifactSummary(Record):
    """A row of `list()` (GET /artifacts)."""

    id: str
    workflow_id: str
    phase_id: str | None
    artifact_type: str
    title: str
    size_bytes: int
    created_at: str
    session_id: str | None = None
    content_type: str | None = None
    content_hash: str | None = None
    is_primary_deliverable: bool = False


@dataclass(frozen=True)
class Artifact(Record):
    """The whole record (GET /artifacts/{id}); `content` is text when the bytes are text and
    small enough to inline, else None (download the bytes)."""

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
    created_by: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    filename: str | None = None
    updated_at: str | None = None
    download_url: str | None = None
    version: int | None = None


@dataclass(frozen=True)
class Created(Record):
    """The 201 of a create."""

    id: str
    title: str
    artifact_type: str
    status: str
    content_hash: str
    size_bytes: int
    created_at: str
    version: int | None = None


@dataclass(frozen=True)
class Uploaded(Record):
    """The answer of an upload (a new version); `etag` is what a later `if_match=` takes."""

    artifact_id: str
    storage_url: str
    status: str
    content_hash: str
    size_bytes: int
    content_type: str
    version: int | None = None

    @property
    def etag(self) -> str:
        return f'"{self.content_hash}"'


@dataclass(frozen=True)
class Changed(Record):
    """`{artifact_id, status}` of an update ("updated") or a delete ("deleted")."""

    artifact_id: str
    status: str


@dataclass(frozen=True)
class Content(Record):
    """GET /artifacts/{id}/content."""

    artifact_id: str
    content: str | None
    content_type: str
    size_bytes: int
    content_hash: str | None = None
    download_url: str | None = None


@dataclass(frozen=True)
class DownloadLink(Record):
    """A signed link that needs no key, until `expires_at`."""

    url: str
    method: str
    expires_at: str
    version: int | None = None


@dataclass(frozen=True)
class LineageNode(Record):
    """A node of a lineage graph: a summary and its depth, or a tombstone (`deleted`)."""

    id: str
    depth: int
    deleted: bool = False
    workflow_id: str | None = None
    phase_id: str | None = None
    artifact_type: str | None = None
    title: str | None = None
    size_bytes: int | None = None
    created_at: str | None = None
    content_hash: str | None = None
    is_primary_deliverable: bool = False


@dataclass(frozen=True)
class LineageEdge(Record):
    parent: str
    child: str
    parent_hash: str | None = None
    parent_version: int | None = None


@dataclass(frozen=True)
class Lineage(Record):
    root: str
    nodes: list[LineageNode]
    edges: list[LineageEdge]
    truncated: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lineage:
        return cls(
            root=data["root"],
            nodes=[LineageNode.from_json(n) for n in data.get("nodes", [])],
            edges=[LineageEdge.from_json(e) for e in data.get("edges", [])],
            truncated=bool(data.get("truncated")),
            extra={
                k: v for k, v in data.items() if k not in {"root", "nodes", "edges", "truncated"}
            },
        )


@dataclass(frozen=True)
class Version(Record):
    """One immutable content of an artifact; `content` only from `get_version`."""

    artifact_id: str
    version: int
    is_current: bool
    content_type: str
    content_hash: str
    size_bytes: int
    filename: str | None = None
    created_by: str | None = None
    created_at: str | None = None
    superseded_at: str | None = None
    download_url: str | None = None
    content: str | None = None


@dataclass(frozen=True)
class WorkflowSummary(Record):
    workflow_id: str
    artifact_count: int
    total_bytes: int
    phases: list[str | None]
    sessions: list[str]
    first_activity_at: str
    last_activity_at: str
    primary_deliverables: int


@dataclass(frozen=True)
class Phase(Record):
    phase_id: str | None
    artifact_count: int
    total_bytes: int
    sessions: list[str]
    first_activity_at: str
    last_activity_at: str
    primary_deliverable: ArtifactSummary | None = None


@dataclass(frozen=True)
class Workflow(Record):
    workflow_id: str
    artifact_count: int
    total_bytes: int
    first_activity_at: str
    last_activity_at: str
    phases: list[Phase]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Workflow:
        phases = []
        for p in data.get("phases", []):
            primary = p.get("primary_deliverable")
            phases.append(
                Phase.from_json(
                    {**p, "primary_deliverable": primary and ArtifactSummary.from_json(primary)}
                )
            )
        return super().from_json({**data, "phases": phases})


@dataclass(frozen=True)
class Event(Record):
    """One change of the feed; `id` is the cursor to resume after."""

    id: str
    type: str
    artifact_id: str
    workflow_id: str
    phase_id: str | None
    created_at: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ImportJob(Record):
    """A CrowNest import job: POST answers `{import_id, status, url}`, GET the whole state."""

    status: str
    import_id: str | None = None
    id: str | None = None
    url: str | None = None
    source: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    bytes: int | None = None
    error: str | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    created_at: str | None = None
    updated_at: str | None = None
    finished_at: str | None = None

    @property
    def job_id(self) -> str:
        return self.import_id or self.id or ""


@dataclass(frozen=True)
class Downloaded:
    """Where the bytes went, and what they were checked against."""

    path: Path | None
    sha256: str
    size_bytes: int
    resumed_from: int = 0  # bytes already there (a .part file of an earlier run)
    reconnects: int = 0  # connections that dropped and were resumed with Range
