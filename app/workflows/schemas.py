"""Workflow views on the wire, as msgspec Structs: their field order is the order the contract
writes the members in."""

from __future__ import annotations

import msgspec

from app import wire
from storage import workflows
from storage.records import us_to_iso


class WorkflowSummary(msgspec.Struct):
    """A row of GET /store/workflows."""

    workflow_id: str
    artifact_count: int
    total_bytes: int
    phases: list[str | None]
    sessions: list[str]
    first_activity_at: str
    last_activity_at: str
    primary_deliverables: int


class Phase(msgspec.Struct):
    phase_id: str | None
    artifact_count: int
    total_bytes: int
    sessions: list[str]
    first_activity_at: str
    last_activity_at: str
    primary_deliverable: wire.ArtifactSummary | None


class Workflow(msgspec.Struct):
    """GET /store/workflows/{workflow_id}: the workflow, phase by phase."""

    workflow_id: str
    artifact_count: int
    total_bytes: int
    first_activity_at: str
    last_activity_at: str
    phases: list[Phase]


def summary(w: workflows.WorkflowSummary) -> WorkflowSummary:
    return WorkflowSummary(
        w.workflow_id,
        w.artifact_count,
        w.total_bytes,
        w.phases,
        w.sessions,
        us_to_iso(w.first_activity),
        us_to_iso(w.last_activity),
        w.primary_deliverables,
    )


def phase(p: workflows.PhaseView) -> Phase:
    return Phase(
        p.phase_id,
        p.artifact_count,
        p.total_bytes,
        p.sessions,
        us_to_iso(p.first_activity),
        us_to_iso(p.last_activity),
        wire.summary(p.primary) if p.primary else None,
    )


def workflow(workflow_id: str, phases: list[workflows.PhaseView]) -> Workflow:
    return Workflow(
        workflow_id,
        sum(p.artifact_count for p in phases),
        sum(p.total_bytes for p in phases),
        us_to_iso(min(p.first_activity for p in phases)),
        us_to_iso(max(p.last_activity for p in phases)),
        [phase(p) for p in phases],
    )
