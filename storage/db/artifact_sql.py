"""The artifact reads' SQL, per backend, built once.

A get is one statement with its lineage parents aggregated beside the row (SQLite:
json_group_array of (position, parent) pairs, sorted here, since SQLite 3.40 has no ORDER BY
inside an aggregate; PostgreSQL: array_agg ordered by position). On SQLite the two hottest
reads, a get by full id and a page of a list without `derived_from`, also exist as plain SQL
for Database.loop_rows (bounded reads on the event loop, no thread hop, no SQLAlchemy).
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import aggregate_order_by

from storage.db.tables import artifacts, lineage
from storage.records import SUMMARY_FIELDS, Artifact, Cursor, ListQuery

LIVE = artifacts.c.deleted_at.is_(None)

# Every column an Artifact is made of, in this order, then the parents.
COLUMNS = (
    "id", "workflow_id", "phase_id", "session_id", "artifact_type", "title", "content_type",
    "filename", "content_hash", "size_bytes", "is_text", "is_primary_deliverable", "created_by",
    "metadata", "created_at", "updated_at", "source", "source_ref", "version",
)  # fmt: skip

_SQLITE_PARENTS = (
    sa.select(sa.func.json_group_array(sa.func.json_array(lineage.c.position, lineage.c.parent_id)))
    .where(lineage.c.child_id == artifacts.c.id)
    .scalar_subquery()
)
_PG_PARENTS = (
    sa.select(sa.func.array_agg(aggregate_order_by(lineage.c.parent_id, lineage.c.position)))
    .where(lineage.c.child_id == artifacts.c.id)
    .scalar_subquery()
)


def one_by_id(dialect: str) -> sa.Select[Any]:
    """A live artifact of a tenant by full id, with its parents (bind `id` and `tenant`)."""
    parents = _PG_PARENTS if dialect == "postgresql" else _SQLITE_PARENTS
    return sa.select(*(artifacts.c[name] for name in COLUMNS), parents.label("parents")).where(
        artifacts.c.id == sa.bindparam("id"), artifacts.c.tenant == sa.bindparam("tenant"), LIVE
    )


def parents_of(value: Any) -> tuple[str, ...]:
    """The `parents` column of one_by_id, on either backend, in position order."""
    if value is None:
        return ()
    if isinstance(value, str):  # SQLite: '[[0,"id"],[1,"id"]]'
        pairs = json.loads(value)
        if len(pairs) > 1:
            pairs.sort()
        return tuple(parent for _, parent in pairs)
    return tuple(value)


def artifact_from_row(row: Any) -> Artifact:
    """A row of one_by_id (or of GET_SQLITE: metadata is then JSON text)."""
    metadata = row[13]
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    return Artifact(
        id=row[0],
        workflow_id=row[1],
        phase_id=row[2],
        session_id=row[3],
        artifact_type=row[4],
        title=row[5],
        content_type=row[6],
        filename=row[7],
        content_hash=row[8],
        size_bytes=row[9],
        is_text=bool(row[10]),
        is_primary_deliverable=bool(row[11]),
        created_by=row[12],
        metadata=metadata,
        created_at=row[14],
        updated_at=row[15],
        source=row[16],
        source_ref=row[17],
        version=row[18],
        derived_from=parents_of(row[19]),
    )


# -- plain SQLite, for Database.loop_rows ------------------------------------------------------

GET_SQLITE = (
    f"SELECT {', '.join('a.' + c for c in COLUMNS)}, "  # noqa: S608 (column names, no input)
    "(SELECT json_group_array(json_array(l.position, l.parent_id)) FROM lineage AS l "
    "WHERE l.child_id = a.id) "
    "FROM artifacts AS a WHERE a.id = ? AND a.tenant = ? AND a.deleted_at IS NULL"
)

_SUMMARY_SELECT = (
    f"SELECT {', '.join(SUMMARY_FIELDS)} FROM artifacts WHERE tenant = ? AND deleted_at IS NULL"  # noqa: S608
)
_EQUALS = ("workflow_id", "phase_id", "session_id", "artifact_type", "content_type")


def page_sqlite(
    tenant: str, query: ListQuery, limit: int, after: Cursor | None
) -> tuple[str, list[Any]]:
    """A page of a list without `derived_from` (the same filters and order as
    ArtifactService._filters and ORDER): SQL and its parameters."""
    assert query.derived_from is None
    sql = [_SUMMARY_SELECT]
    params: list[Any] = [tenant]
    for name in _EQUALS:
        value = getattr(query, name)
        if value is not None:
            sql.append(f"AND {name} = ?")
            params.append(value)
    if query.no_phase:
        sql.append("AND phase_id IS NULL")
    if query.is_primary_deliverable is not None:
        sql.append("AND is_primary_deliverable = ?")
        params.append(1 if query.is_primary_deliverable else 0)
    if query.created_after is not None:
        sql.append("AND created_at > ?")
        params.append(query.created_after)
    if query.created_before is not None:
        sql.append("AND created_at < ?")
        params.append(query.created_before)
    if after is not None:
        sql.append("AND (created_at, id) < (?, ?)")
        params += [after.created_at, after.id]
    sql.append("ORDER BY created_at DESC, id DESC LIMIT ?")
    params.append(limit)
    return " ".join(sql), params
