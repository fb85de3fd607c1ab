"""SQL straight at a database, on a short-lived engine of its own."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine


def run_async(url: str, work: Any) -> Any:
    """`await work(conn)` on a fresh engine, inside one transaction that is committed."""

    async def go() -> Any:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                return await work(conn)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def query(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    async def work(conn: AsyncConnection) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in (await conn.execute(sa.text(sql), params)).all()]

    return run_async(url, work)
