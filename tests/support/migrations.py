"""Databases before and after migrations: a fresh empty one, the schema's tables, the head."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic.script import ScriptDirectory

from storage.db.engine import sqlite_url
from storage.db.migrate import alembic_config
from tests.support.databases import POSTGRES_URL, create_pg_database, drop_pg_database
from tests.support.sql import query

SCHEMA_TABLES = {
    "blobs", "artifacts", "lineage", "events", "imports", "import_items", "idempotency_keys",
    "api_keys", "artifact_versions",
}  # fmt: skip


def table_names(url: str) -> set[str]:
    if url.startswith("sqlite"):
        rows = query(url, "SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r[0] for r in rows}


def head_revision(url: str) -> str:
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert head is not None
    return head


@contextmanager
def fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database with nothing in it, not even alembic_version."""
    if backend == "sqlite":
        yield sqlite_url(tmp_path / f"empty-{uuid.uuid4().hex[:8]}.db")
        return
    assert POSTGRES_URL
    url = create_pg_database(POSTGRES_URL)
    try:
        yield url
    finally:
        drop_pg_database(POSTGRES_URL, url)
