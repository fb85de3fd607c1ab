"""Run the Alembic history (storage/db/migrations) against a database URL, and tell whether a
URL holds a store at all."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version"  # Alembic's default name, which env.py keeps


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["database_url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema to `revision`. Safe to call from inside a running event loop."""
    config = alembic_config(url)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        command.upgrade(config, revision)
        return
    errors: list[BaseException] = []

    def run() -> None:
        try:
            command.upgrade(config, revision)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def store_exists(url: str) -> bool:
    """Whether `url` already holds a store, looking without creating one: for SQLite, whether
    its database file exists; otherwise whether the Alembic version table exists in the
    connection's default schema (an upgrade creates it first, so even a store whose first
    migration failed halfway counts). Connection errors propagate. Not for use inside a
    running event loop."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return bool(parsed.database) and Path(parsed.database or "").is_file()
    return asyncio.run(_has_version_table(url))


async def _has_version_table(url: str) -> bool:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda c: sa.inspect(c).has_table(VERSION_TABLE))
    finally:
        await engine.dispose()
