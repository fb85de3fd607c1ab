"""Import jobs: their options, status and per-item outcomes, kept in the database so that a job
survives its process and an interrupted one can be resumed. Knows nothing of any upstream API:
an adapter (app/imports/) runs the job and records what happened here."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from storage.db.engine import Database
from storage.db.tables import DEFAULT_TENANT, import_items, imports
from storage.errors import ImportNotFound
from storage.records import now_us

JobStatus = Literal["queued", "running", "succeeded", "failed", "interrupted"]
ItemStatus = Literal["imported", "unchanged", "skipped", "failed"]
JobHook = Callable[[sa.Connection, str], None]  # (transaction, job id)
ITEM_STATUSES: tuple[ItemStatus, ...] = ("imported", "unchanged", "skipped", "failed")


@dataclass(frozen=True, slots=True)
class Item:
    upstream_id: str
    name: str | None
    status: ItemStatus
    reason: str | None
    artifact_id: str | None
    size_bytes: int | None


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    source: str
    options: dict[str, Any]
    status: JobStatus
    error: str | None
    created_at: int
    updated_at: int
    finished_at: int | None
    counts: dict[str, int]
    bytes: int  # of the items imported
    tenant: str = DEFAULT_TENANT


class ImportJobs:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(
        self,
        source: str,
        options: dict[str, Any],
        *,
        tenant: str = DEFAULT_TENANT,
        hook: JobHook | None = None,
    ) -> str:
        """A queued job; `hook` runs in the same transaction (an idempotency key's record)."""
        job_id, now = str(uuid.uuid4()), now_us()
        insert = imports.insert().values(
            id=job_id, source=source, options=options, status="queued", created_at=now,
            updated_at=now, tenant=tenant,
        )  # fmt: skip

        def create(conn: sa.Connection) -> None:
            conn.execute(insert)
            if hook is not None:
                hook(conn, job_id)

        await self.db.run_write(create)
        return job_id

    async def set_status(
        self,
        job_id: str,
        status: JobStatus,
        error: str | None = None,
        *,
        hook: JobHook | None = None,
    ) -> None:
        now = now_us()
        finished = now if status in ("succeeded", "failed") else None
        update = (
            imports.update()
            .where(imports.c.id == job_id)
            .values(status=status, error=error, updated_at=now, finished_at=finished)
        )

        def set_status(conn: sa.Connection) -> None:
            conn.execute(update)
            if hook is not None:
                hook(conn, job_id)

        await self.db.run_write(set_status)

    async def record(self, job_id: str, item: Item) -> None:
        """The outcome of one upstream object (a later outcome replaces an earlier one)."""
        dialect = postgresql if self.db.dialect == "postgresql" else sqlite
        values = {
            "import_id": job_id,
            "upstream_id": item.upstream_id,
            "name": item.name,
            "status": item.status,
            "reason": item.reason,
            "artifact_id": item.artifact_id,
            "size_bytes": item.size_bytes,
            "updated_at": now_us(),
        }
        stmt = dialect.insert(import_items).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["import_id", "upstream_id"],
            set_={k: stmt.excluded[k] for k in values if k not in ("import_id", "upstream_id")},
        )

        def record(conn: sa.Connection) -> None:
            conn.execute(stmt)
            conn.execute(imports.update().where(imports.c.id == job_id).values(updated_at=now_us()))

        await self.db.run_write(record)

    async def get(self, job_id: str, *, tenant: str | None = None) -> Job:
        """A job by id; with `tenant`, another tenant's job is ImportNotFound like an unknown."""
        stmt = sa.select(imports).where(imports.c.id == job_id)
        if tenant is not None:
            stmt = stmt.where(imports.c.tenant == tenant)
        tally = (
            sa.select(
                import_items.c.status,
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(import_items.c.size_bytes), 0),
            )
            .where(import_items.c.import_id == job_id)
            .group_by(import_items.c.status)
        )

        def read(conn: sa.Connection) -> tuple[Any, Sequence[Any]]:
            row = conn.execute(stmt).first()
            if row is None:
                raise ImportNotFound(job_id)
            return row, conn.execute(tally).all()

        row, tallied = await self.db.run_read(read)
        counts: dict[str, int] = dict.fromkeys(ITEM_STATUSES, 0)
        imported_bytes = 0
        for status, n, size in tallied:
            counts[status] = int(n)
            if status == "imported":
                imported_bytes = int(size)
        return Job(
            row.id, row.source, row.options, row.status, row.error, row.created_at,
            row.updated_at, row.finished_at, counts, imported_bytes, row.tenant,
        )  # fmt: skip

    async def items(self, job_id: str, status: ItemStatus | None = None) -> list[Item]:
        stmt = sa.select(import_items).where(import_items.c.import_id == job_id)
        if status is not None:
            stmt = stmt.where(import_items.c.status == status)
        stmt = stmt.order_by(import_items.c.upstream_id)
        rows = await self.db.run_read(lambda conn: conn.execute(stmt).all())
        return [
            Item(r.upstream_id, r.name, r.status, r.reason, r.artifact_id, r.size_bytes)
            for r in rows
        ]

    async def unfinished(self, source: str) -> list[str]:
        """Jobs a previous process left queued, running or interrupted: to be resumed."""
        stmt = sa.select(imports.c.id).where(
            imports.c.source == source,
            imports.c.status.in_(["queued", "running", "interrupted"]),
        )
        return await self.db.run_read(lambda conn: list(conn.execute(stmt).scalars()))
