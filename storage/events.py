"""The change feed: what changed, in commit order, resumable by sequence number.

Each write transaction of ArtifactService appends its events before it commits, so an event
exists exactly when its change does: none lost, none invented. Sequence numbers must also be
handed out in commit order, or a reader that has seen seq 7 could miss a seq 6 committed later:
SQLite writers are serialised already (BEGIN IMMEDIATE); on PostgreSQL the appending
transaction takes a transaction-scoped advisory lock first, held until it commits.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from storage.db.engine import Database
from storage.db.tables import DEFAULT_TENANT, events

EVENT_TYPES = (
    "artifact.created",
    "artifact.updated",
    "artifact.content_replaced",
    "artifact.deleted",
    "deliverable.changed",
)
EVENTS_LOCK = (0x41525446, 0x45564E54)  # 'ARTF', 'EVNT'


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    type: str
    artifact_id: str
    workflow_id: str
    phase_id: str | None
    created_at: int
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class NewEvent:
    type: str
    artifact_id: str
    workflow_id: str
    phase_id: str | None
    data: dict[str, Any]


def append(
    conn: sa.Connection, new: list[NewEvent], now: int, *, tenant: str = DEFAULT_TENANT
) -> None:
    """Add events inside the caller's write transaction (commit-ordered, see module doc)."""
    if not new:
        return
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(*EVENTS_LOCK)))
    conn.execute(
        events.insert(),
        [
            {
                "type": e.type,
                "artifact_id": e.artifact_id,
                "workflow_id": e.workflow_id,
                "phase_id": e.phase_id,
                "created_at": now,
                "data": e.data,
                "tenant": tenant,
            }
            for e in new
        ],
    )


async def read_after(
    db: Database,
    after: int,
    *,
    limit: int,
    workflow_id: str | None = None,
    tenant: str = DEFAULT_TENANT,
) -> list[Event]:
    """The tenant's events after `after` (sequence numbers are global: a tenant sees gaps)."""
    stmt = sa.select(events).where(events.c.tenant == tenant, events.c.seq > after)
    if workflow_id is not None:
        stmt = stmt.where(events.c.workflow_id == workflow_id)
    stmt = stmt.order_by(events.c.seq).limit(limit)
    rows = await db.run_read(lambda conn: conn.execute(stmt).all())
    return [
        Event(r.seq, r.type, r.artifact_id, r.workflow_id, r.phase_id, r.created_at, r.data)
        for r in rows
    ]


async def head(
    db: Database, *, workflow_id: str | None = None, tenant: str = DEFAULT_TENANT
) -> int:
    """The tenant's last event's sequence number (of one workflow's events, if given), 0 when
    there is none: where a reader that wants only what happens from now on starts."""
    stmt = sa.select(sa.func.max(events.c.seq)).where(events.c.tenant == tenant)
    if workflow_id is not None:
        stmt = stmt.where(events.c.workflow_id == workflow_id)
    value = await db.run_read(lambda conn: conn.execute(stmt).scalar())
    return int(value or 0)


class Notifier:
    """Wakes this process's feed readers after a commit; readers also poll, for other
    processes' writes (several replicas, the CLI)."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait(self, at_most: float) -> None:
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), at_most)
        except TimeoutError:
            pass
