"""The Alembic history (storage/db/migrations) against real databases, both backends.

- `upgrade head` on an empty database creates exactly the schema; downgrade to base removes it
  and a second upgrade brings it back, usable.
- storage/db/tables.py matches what the migrations create: alembic's compare_metadata finds no
  difference, and a twin database built by `metadata.create_all` has the very same DDL (this also
  covers what compare_metadata cannot see: the expression and the WHERE of the partial index
  ux_artifacts_one_primary).
- That partial unique index really rejects a second live primary per (workflow, phase) in SQL.
- Data migrations on data written at the revision before: 0008 makes every artifact (deleted
  ones too) version 1 of itself and pins version 1 on edges to current content; and back.

The tests are synchronous: alembic's env.py runs its own event loop.
"""

from __future__ import annotations

import asyncio
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.artifacts import ArtifactService
from storage.blobs import FilesystemBlobStore
from storage.db.engine import Database
from storage.db.migrate import downgrade, upgrade
from storage.db.tables import artifacts, blobs, metadata
from storage.records import ArtifactChanges, NewArtifact
from tests.support.databases import BACKENDS, POSTGRES_URL, create_pg_database, drop_pg_database
from tests.support.migrations import SCHEMA_TABLES, fresh_database, head_revision, table_names
from tests.support.sql import query, run_async

PRIMARY_INDEX = "ux_artifacts_one_primary"
DIGEST = "ab" * 32


# -- helpers ---------------------------------------------------------------------------------


def schema_ddl(url: str) -> dict[str, Any]:
    """Everything that defines our three tables, as the database itself reports it."""
    if url.startswith("sqlite"):
        # Columns and keys as SQLite reports them (not CREATE TABLE text, which ALTER TABLE ADD
        # COLUMN rewrites with other spacing), and every index's SQL with spacing folded.
        names = query(
            url,
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name != 'alembic_version' ORDER BY name",
        )
        out: dict[str, Any] = {}
        for (table,) in names:
            out[table] = {
                "columns": query(
                    url,
                    'SELECT name, type, "notnull", dflt_value, pk FROM pragma_table_info(:t) '
                    "ORDER BY cid",
                    t=table,
                ),
                "foreign_keys": query(
                    url,
                    'SELECT "from", "table", "to" FROM pragma_foreign_key_list(:t) ORDER BY "from"',
                    t=table,
                ),
            }
        indexes = query(
            url,
            "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index' "
            "AND tbl_name != 'alembic_version' ORDER BY name",
        )
        out["indexes"] = [(n, t, sql and re.sub(r"\s+", " ", sql)) for n, t, sql in indexes]
        return out
    columns = query(
        url,
        "SELECT table_name, ordinal_position, column_name, data_type, character_maximum_length,"
        " is_nullable, column_default FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name != 'alembic_version'"
        " ORDER BY table_name, ordinal_position",
    )
    indexes = query(
        url,
        "SELECT tablename, indexname, indexdef FROM pg_indexes"
        " WHERE schemaname = 'public' AND tablename != 'alembic_version' ORDER BY indexname",
    )
    constraints = query(
        url,
        "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)"
        " FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace"
        " WHERE n.nspname = 'public' AND c.conrelid::regclass::text != 'alembic_version'"
        " ORDER BY c.conname",
    )
    return {"columns": columns, "indexes": indexes, "constraints": constraints}


def index_names(url: str, table: str) -> set[str]:
    """Named (non-automatic) indexes; unlike the inspector, includes expression indexes."""
    if url.startswith("sqlite"):
        sql = (
            "SELECT name FROM sqlite_master"
            " WHERE type = 'index' AND tbl_name = :t AND sql IS NOT NULL"
        )
    else:
        sql = (
            "SELECT indexname FROM pg_indexes WHERE tablename = :t"
            " AND indexname NOT LIKE '%\\_pkey'"
        )
    return {r[0] for r in query(url, sql, t=table)}


def diff_against(url: str, target: sa.MetaData) -> list[Any]:
    """compare_metadata through a sync run inside an async connection."""

    def compare(sync_conn: sa.Connection) -> list[Any]:
        context = MigrationContext.configure(
            sync_conn, opts={"compare_type": True, "compare_server_default": True}
        )
        with warnings.catch_warnings():
            # SQLite cannot reflect expression indexes; alembic skips them with a warning (the
            # twin-database test compares that index's DDL instead).
            warnings.filterwarnings("ignore", message=".*expression-based index")
            return list(compare_metadata(context, target))

    async def work(conn: AsyncConnection) -> list[Any]:
        return await conn.run_sync(compare)

    return run_async(url, work)


@pytest.fixture(params=BACKENDS)
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


# -- upgrade / downgrade ---------------------------------------------------------------------


def test_upgrade_head_on_empty_database_creates_the_schema(empty_url: str) -> None:
    assert table_names(empty_url) == set()
    upgrade(empty_url)
    assert table_names(empty_url) == SCHEMA_TABLES | {"alembic_version"}
    assert query(empty_url, "SELECT version_num FROM alembic_version") == [
        (head_revision(empty_url),)
    ]
    for table in metadata.sorted_tables:
        assert index_names(empty_url, table.name) == {i.name for i in table.indexes}, table.name
    # a second upgrade is a no-op
    before = schema_ddl(empty_url)
    upgrade(empty_url)
    assert schema_ddl(empty_url) == before
    assert query(empty_url, "SELECT version_num FROM alembic_version") == [
        (head_revision(empty_url),)
    ]


def test_downgrade_to_base_then_upgrade_again(database_url: str, tmp_path: Path) -> None:
    migrated = schema_ddl(database_url)
    assert set(table_names(database_url)) == SCHEMA_TABLES | {"alembic_version"}

    downgrade(database_url, "base")
    assert table_names(database_url) == {"alembic_version"}
    assert query(database_url, "SELECT version_num FROM alembic_version") == []

    upgrade(database_url)
    assert table_names(database_url) == SCHEMA_TABLES | {"alembic_version"}
    assert schema_ddl(database_url) == migrated
    assert query(database_url, "SELECT version_num FROM alembic_version") == [
        (head_revision(database_url),)
    ]

    async def use() -> None:
        db = Database(database_url)
        try:
            service = ArtifactService(db, FilesystemBlobStore(tmp_path / "blobs"))
            new = NewArtifact("wf", "text", "t", "text/plain", phase_id="p")
            first = await service.create(new, b"one")
            second = await service.create(
                NewArtifact("wf", "text", "t2", "text/plain", derived_from=(first.id,)), b"two"
            )
            assert (await service.get(second.id)).derived_from == (first.id,)
            await service.update(first.id, ArtifactChanges(is_primary_deliverable=True))
            assert (await service.get(first.id)).is_primary_deliverable is True
        finally:
            await db.dispose()

    asyncio.run(use())


# -- tables.py == migrations -----------------------------------------------------------------


def test_tables_match_migrations_compare_metadata(database_url: str) -> None:
    assert diff_against(database_url, metadata) == []

    # The comparison is live: a drifted copy of the metadata is reported.
    drifted = sa.MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(drifted)
    art = drifted.tables["artifacts"]
    art.append_column(sa.Column("extra", sa.Text))
    dropped = next(i for i in art.indexes if i.name == "ix_artifacts_type")
    art.indexes.discard(dropped)
    kinds = sorted(
        (d[0], d[1].name if d[0] == "remove_index" else d[3].name)
        for d in diff_against(database_url, drifted)
    )
    assert kinds == [("add_column", "extra"), ("remove_index", "ix_artifacts_type")]


def test_expression_index_is_compared_on_postgresql(database_url: str) -> None:
    """Where the dialect can reflect it, compare_metadata sees ux_artifacts_one_primary too."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite cannot reflect expression indexes (covered by the twin-DDL test)")
    drifted = sa.MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(drifted)
    art = drifted.tables["artifacts"]
    art.indexes.discard(next(i for i in art.indexes if i.name == PRIMARY_INDEX))
    diffs = diff_against(database_url, drifted)
    assert [(d[0], d[1].name) for d in diffs] == [("remove_index", PRIMARY_INDEX)]


def test_migrations_produce_the_same_ddl_as_create_all(database_url: str, tmp_path: Path) -> None:
    """A twin database built from tables.py has exactly the DDL the migrations produced,
    including the expression and WHERE clause of the partial unique index."""

    async def create_all(conn: AsyncConnection) -> None:
        await conn.run_sync(metadata.create_all)

    backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    with fresh_database(backend, tmp_path) as twin:
        run_async(twin, create_all)
        assert schema_ddl(twin) == schema_ddl(database_url)

    # and the index is what we mean it to be
    if database_url.startswith("sqlite"):
        (sql,) = query(
            database_url, "SELECT sql FROM sqlite_master WHERE name = :n", n=PRIMARY_INDEX
        )[0]
        assert re.sub(r"\s+", " ", sql) == (
            "CREATE UNIQUE INDEX ux_artifacts_one_primary ON artifacts "
            "(tenant, workflow_id, coalesce(phase_id, '')) "
            "WHERE is_primary_deliverable AND deleted_at IS NULL"
        )
    else:
        assert query(
            database_url, "SELECT indexdef FROM pg_indexes WHERE indexname = :n", n=PRIMARY_INDEX
        ) == [
            (
                "CREATE UNIQUE INDEX ux_artifacts_one_primary ON public.artifacts USING btree "
                "(tenant, workflow_id, COALESCE(phase_id, ''::text)) "
                "WHERE (is_primary_deliverable AND (deleted_at IS NULL))",
            )
        ]


# -- the partial unique index at the SQL level -----------------------------------------------


def _row(n: int, workflow: str, phase: str | None, primary: bool, deleted: bool = False) -> dict:
    return {
        "id": f"{n:08x}-0000-4000-8000-000000000000",
        "workflow_id": workflow,
        "phase_id": phase,
        "session_id": None,
        "artifact_type": "text",
        "title": "t",
        "content_type": "text/plain",
        "filename": None,
        "content_hash": DIGEST,
        "size_bytes": 1,
        "is_text": True,
        "is_primary_deliverable": primary,
        "created_by": None,
        "metadata": {},
        "created_at": n,
        "updated_at": n,
        "deleted_at": n if deleted else None,
    }


def test_partial_unique_index_rejects_two_live_primaries(database_url: str) -> None:
    def insert(row: dict) -> None:
        async def work(conn: AsyncConnection) -> None:
            await conn.execute(artifacts.insert().values(row))

        run_async(database_url, work)

    def rejected(action: Any) -> None:
        with pytest.raises(IntegrityError) as caught:
            action()
        assert PRIMARY_INDEX in str(caught.value)

    def execute(sql: str, **params: Any) -> None:
        async def work(conn: AsyncConnection) -> None:
            await conn.execute(sa.text(sql), params)

        run_async(database_url, work)

    async def add_blob(conn: AsyncConnection) -> None:
        await conn.execute(blobs.insert().values(digest=DIGEST, size=1, created_at=0))

    run_async(database_url, add_blob)

    insert(_row(1, "w", "p", primary=True))
    rejected(lambda: insert(_row(2, "w", "p", primary=True)))
    # other groups, non-primaries and deleted primaries are not constrained
    insert(_row(3, "w", "q", primary=True))
    insert(_row(4, "w2", "p", primary=True))
    insert(_row(5, "w", None, primary=True))
    insert(_row(6, "w", "p", primary=False))
    insert(_row(7, "w", "p", primary=False))
    insert(_row(8, "w", "p", primary=True, deleted=True))
    insert(_row(9, "w", "p", primary=True, deleted=True))
    # NULL phases are one group (coalesce), unlike a plain unique index where NULLs never clash
    rejected(lambda: insert(_row(10, "w", None, primary=True)))
    # ... and the same group as phase ''
    rejected(lambda: insert(_row(11, "w", "", primary=True)))
    # promoting a second row, or undeleting a deleted primary, is rejected too
    rejected(
        lambda: execute(
            "UPDATE artifacts SET is_primary_deliverable = TRUE WHERE id = :i",
            i=_row(6, "w", "p", True)["id"],
        )
    )
    rejected(
        lambda: execute(
            "UPDATE artifacts SET deleted_at = NULL WHERE id = :i", i=_row(8, "w", "p", True)["id"]
        )
    )
    # once the live primary is deleted, another may become primary
    execute("UPDATE artifacts SET deleted_at = 100 WHERE id = :i", i=_row(1, "w", "p", True)["id"])
    execute(
        "UPDATE artifacts SET is_primary_deliverable = TRUE WHERE id = :i",
        i=_row(6, "w", "p", True)["id"],
    )

    live_primaries = query(
        database_url,
        "SELECT workflow_id, phase_id, id FROM artifacts"
        " WHERE is_primary_deliverable AND deleted_at IS NULL ORDER BY id",
    )
    assert live_primaries == [
        ("w", "q", _row(3, "w", "q", True)["id"]),
        ("w2", "p", _row(4, "w2", "p", True)["id"]),
        ("w", None, _row(5, "w", None, True)["id"]),
        ("w", "p", _row(6, "w", "p", True)["id"]),
    ]


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason="ARTIFACTS_TEST_POSTGRES_URL not set")
def test_artifact_ids_compare_bytewise_on_postgresql() -> None:
    """Id-prefix lookups scan `id >= p AND id < p'`; under a locale collation that ignores
    punctuation (glibc en_US) that range would be wrong, so every id column is COLLATE "C"."""
    assert POSTGRES_URL
    url = create_pg_database(POSTGRES_URL)
    try:
        upgrade(url)
        rows = run_async(
            url,
            lambda conn: conn.execute(
                sa.text(
                    "SELECT table_name, column_name, collation_name FROM information_schema.columns"
                    " WHERE column_name IN ('id', 'child_id', 'parent_id')"
                    " AND table_name IN ('artifacts', 'lineage') ORDER BY 1, 2"
                )
            ),
        )
        assert [tuple(r) for r in rows.all()] == [
            ("artifacts", "id", "C"),
            ("lineage", "child_id", "C"),
            ("lineage", "parent_id", "C"),
        ]
    finally:
        drop_pg_database(POSTGRES_URL, url)


# -- 0008: every artifact becomes version 1 --------------------------------------------------


def _id(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-000000000000"


def _digest(n: int) -> str:
    return f"{n:02x}" * 32


# id, content (digest number), size, content_type, filename, is_text, created_by, deleted
_ARTIFACTS_0007 = [
    (1, 1, 10, "text/plain", "a.txt", True, "agent-a", None),
    (2, 2, 20, "application/octet-stream", None, False, None, None),  # replaced: was digest 5
    (3, 3, 30, "text/markdown", "c.md", True, "agent-c", 700),  # soft-deleted
    (4, 4, 40, "application/json", "d.json", True, "agent-d", None),
]
# child, position, parent, parent_digest: 4 -> 1 (current), 4 -> 2 (replaced since), 4 -> 3
_EDGES_0007 = [(4, 0, 1, 1), (4, 1, 2, 5), (4, 2, 3, 3)]


def _insert_0007_data(url: str) -> None:
    keys = ("id", "h", "s", "ct", "fn", "text", "by", "deleted")
    rows = [dict(zip(keys, (_id(n), _digest(d), *r), strict=True)) for n, d, *r in _ARTIFACTS_0007]
    for row, (n, *_) in zip(rows, _ARTIFACTS_0007, strict=True):
        row.update(created=100 * n, updated=100 * n + 50)
    edges = [
        {"c": _id(c), "p": p, "parent": _id(parent), "d": _digest(d)}
        for c, p, parent, d in _EDGES_0007
    ]
    blob_rows = [{"d": _digest(n), "s": n * 10} for n in range(1, 6)]
    statements = [
        ("INSERT INTO blobs (digest, size, created_at) VALUES (:d, :s, 5)", blob_rows),
        (
            "INSERT INTO artifacts (id, workflow_id, phase_id, session_id, artifact_type, title,"
            " content_type, filename, content_hash, size_bytes, is_text,"
            " is_primary_deliverable, created_by, metadata, created_at, updated_at, deleted_at,"
            " tenant) VALUES (:id, 'wf', NULL, NULL, 'text', 't', :ct, :fn, :h, :s, :text,"
            " FALSE, :by, '{}', :created, :updated, :deleted, 'default')",
            rows,
        ),
        (
            "INSERT INTO lineage (child_id, position, parent_id, parent_digest, child_created_at)"
            " VALUES (:c, :p, :parent, :d, 400)",
            edges,
        ),
    ]

    async def work(conn: AsyncConnection) -> None:
        for sql, params in statements:
            await conn.execute(sa.text(sql), params)

    run_async(url, work)


def test_0008_makes_each_artifact_version_1_and_pins_current_parents(
    empty_url: str,
) -> None:
    upgrade(empty_url, "0007")
    _insert_0007_data(empty_url)
    artifacts_before = query(empty_url, "SELECT * FROM artifacts ORDER BY id")
    lineage_before = query(empty_url, "SELECT * FROM lineage ORDER BY child_id, position")

    upgrade(empty_url, "0008")
    versions = query(
        empty_url,
        "SELECT artifact_id, version, content_hash, size_bytes, content_type, filename, is_text,"
        " created_by, created_at, superseded_at FROM artifact_versions ORDER BY artifact_id",
    )
    assert versions == [
        (_id(n), 1, _digest(d), size, ct, fn, text, by, 100 * n + 50, None)
        for n, d, size, ct, fn, text, by, _ in _ARTIFACTS_0007
    ]
    assert query(empty_url, "SELECT id, version FROM artifacts ORDER BY id") == [
        (_id(n), 1) for n, *_ in _ARTIFACTS_0007
    ]
    edges = "SELECT child_id, position, parent_id, parent_digest, parent_version FROM lineage"
    assert query(empty_url, edges + " ORDER BY child_id, position") == [
        (_id(4), 0, _id(1), _digest(1), 1),
        (_id(4), 1, _id(2), _digest(5), None),  # its parent's content changed since
        (_id(4), 2, _id(3), _digest(3), 1),  # a soft-deleted parent is pinned too
    ]
    # the columns the artifacts and edges had are untouched
    columns = len(artifacts_before[0])
    assert [r[:columns] for r in query(empty_url, "SELECT * FROM artifacts ORDER BY id")] == (
        artifacts_before
    )

    downgrade(empty_url, "0007")
    assert "artifact_versions" not in table_names(empty_url)
    assert query(empty_url, "SELECT * FROM artifacts ORDER BY id") == artifacts_before
    assert query(empty_url, "SELECT * FROM lineage ORDER BY child_id, position") == lineage_before
    upgrade(empty_url)  # and up again: the same versions
    assert query(
        empty_url, "SELECT artifact_id, version, content_hash FROM artifact_versions ORDER BY 1"
    ) == [(_id(n), 1, _digest(d)) for n, d, *_ in _ARTIFACTS_0007]
