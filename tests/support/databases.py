"""Databases for tests: the SQLite/PostgreSQL parameters, fresh PostgreSQL databases, counts."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from storage.db.engine import sqlite_url

POSTGRES_URL = os.environ.get("ARTIFACTS_TEST_POSTGRES_URL")

BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(not POSTGRES_URL, reason="ARTIFACTS_TEST_POSTGRES_URL not set"),
        ],
    ),
]


async def _admin(base_url: str, statement: str) -> None:
    import asyncpg

    url = make_url(base_url)
    conn = await asyncpg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database,
    )
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def create_pg_database(base_url: str, template: str | None = None) -> str:
    """A fresh database next to the one in base_url, empty or a copy of the database `template`
    (a URL; nobody may be connected to it); returns its async URL."""
    name = f"artifacts_test_{uuid.uuid4().hex[:12]}"
    statement = f'CREATE DATABASE "{name}"'
    if template is not None:
        statement += f' TEMPLATE "{make_url(template).database}"'
    asyncio.run(_admin(base_url, statement))
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(base_url: str, test_url: str) -> None:
    name = make_url(test_url).database
    asyncio.run(_admin(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def fresh_database(root: Path, backend: str) -> Iterator[str]:
    """An empty database for a server that migrates at start: a SQLite file under `root`, or a
    new PostgreSQL database, dropped afterwards."""
    if backend == "sqlite":
        yield sqlite_url(root / "artifacts.db")
        return
    assert POSTGRES_URL
    url = create_pg_database(POSTGRES_URL)
    try:
        yield url
    finally:
        drop_pg_database(POSTGRES_URL, url)


def count_rows(database_url: str, table: str) -> int:
    """Row count through a short-lived engine of its own (used to show nothing changed)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    async def count() -> int:
        engine = create_async_engine(database_url)
        try:
            async with engine.connect() as conn:
                return int(
                    (await conn.execute(sa.text(f"SELECT count(*) FROM {table}"))).scalar_one()
                )
        finally:
            await engine.dispose()

    return asyncio.run(count())
