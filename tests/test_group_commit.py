"""Database.run_write: each write commits or rolls back as a whole, whatever else runs beside it.

On SQLite concurrent writes are group-committed (one transaction, a savepoint each): these tests
hold that to the semantics of one transaction per write. A write that raises leaves no trace and
takes no other write down with it; a batch whose COMMIT fails stores none of its writes and tells
each of them; a write cancelled while it waits never runs; and batching does happen (fewer
commits than writes), so the rest is not tested on a path that never batches.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from storage.db.engine import Database
from storage.db.tables import blobs, lineage

pytestmark = pytest.mark.anyio


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    try:
        yield database
    finally:
        await database.dispose()


def digest(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def insert(n: int, *, fail: bool = False) -> Any:
    def work(conn: sa.Connection) -> int:
        conn.execute(blobs.insert().values(digest=digest(n), size=n, created_at=n))
        if fail:
            raise ValueError(f"write {n} fails after its insert")
        return n

    return work


async def stored(db: Database) -> set[int]:
    return await db.run_read(lambda conn: set(conn.execute(sa.select(blobs.c.size)).scalars()))


def count_commits(db: Database) -> list[int]:
    commits: list[int] = []
    engine = db._sync_writer  # the engine group commits run on (SQLite)
    if engine is not None:
        event.listen(engine, "commit", lambda _conn: commits.append(1))
    return commits


async def test_a_failing_write_rolls_back_alone(db: Database) -> None:
    commits = count_commits(db)
    results = await asyncio.gather(
        *(db.run_write(insert(n, fail=n % 3 == 0)) for n in range(1, 41)), return_exceptions=True
    )
    for n, result in zip(range(1, 41), results, strict=True):
        if n % 3 == 0:
            assert isinstance(result, ValueError) and str(n) in str(result)
        else:
            assert result == n
    assert await stored(db) == {n for n in range(1, 41) if n % 3}
    if db.dialect == "sqlite":
        assert 1 <= len(commits) < 40  # batched: the savepoints did the isolating


async def test_a_write_alone_in_its_batch_fails_alone(db: Database) -> None:
    """One write at a time (each a batch of one, run without a savepoint): a failing write's
    insert is rolled back and it hears its own error; the next write is unaffected."""
    await db.run_write(insert(1))
    with pytest.raises(ValueError, match="write 2 fails"):
        await db.run_write(insert(2, fail=True))
    assert await db.run_write(insert(3)) == 3
    assert await stored(db) == {1, 3}


async def test_a_failed_commit_fails_every_write_of_its_batch(db: Database) -> None:
    """A write whose deferred foreign key only fails at COMMIT takes its batch with it: none
    of the batch is stored and every caller hears of it; later writes are unaffected."""
    if db.dialect != "sqlite":
        pytest.skip("a deferred foreign key fails the batch's COMMIT on SQLite")

    def dangling(conn: sa.Connection) -> None:
        conn.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
        missing = "00000000-0000-4000-8000-000000000000"
        conn.execute(
            lineage.insert().values(
                child_id=missing, position=0, parent_id=missing,
                parent_digest=digest(0), child_created_at=0,
            )
        )  # fmt: skip

    await db.run_write(insert(100))  # the queue starts empty again after this
    gate = asyncio.Event()

    def hold(conn: sa.Connection) -> None:  # keeps the first batch busy while the next queues
        asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(timeout=10)

    loop = asyncio.get_running_loop()
    first = asyncio.ensure_future(db.run_write(hold))
    await asyncio.sleep(0.05)
    batch = [db.run_write(insert(101)), db.run_write(dangling), db.run_write(insert(102))]
    waiting = asyncio.gather(*batch, return_exceptions=True)
    await asyncio.sleep(0.05)
    gate.set()
    await first
    results = await waiting
    assert all(isinstance(r, sa.exc.IntegrityError) for r in results), results
    assert await stored(db) == {100}
    assert await db.run_write(insert(103)) == 103
    assert await stored(db) == {100, 103}


async def test_a_write_cancelled_while_it_waits_never_runs(db: Database) -> None:
    if db.dialect != "sqlite":
        pytest.skip("on PostgreSQL each write is its own transaction, begun at once")
    ran: list[int] = []
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()

    def hold(conn: sa.Connection) -> None:
        asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(timeout=10)

    def mark(conn: sa.Connection) -> None:
        ran.append(1)
        insert(7)(conn)

    first = asyncio.ensure_future(db.run_write(hold))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(db.run_write(mark))
    await asyncio.sleep(0.05)
    queued.cancel()
    gate.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert await db.run_write(insert(8)) == 8
    assert ran == [] and await stored(db) == {8}
