"""Engines for the metadata database.

SQLite: WAL, synchronous=FULL, foreign keys, a busy timeout; write transactions start with
BEGIN IMMEDIATE (a deferred one would fail with SQLITE_BUSY when it tries to upgrade), and the
writers of one process queue on one asyncio lock before they touch the file, so they never meet
in SQLite's busy handler (which sleeps). Reads use separate pools and see WAL snapshots.
PostgreSQL: one engine serves both.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from anyio import CancelScope, to_thread
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util import await_only

T = TypeVar("T")
MAX_BATCH = 64  # writes in one SQLite group commit
_worker = threading.local()  # .loop: the event loop of the run_write body this thread runs


def off_loop() -> bool:
    """Whether the caller is a run_write body running in a worker thread (SQLite),
    where blocking calls are fine, rather than on the event loop (PostgreSQL)."""
    return getattr(_worker, "loop", None) is not None


def run_async(fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """From inside a run_write body: run `fn(*args)` on the event loop and wait for it
    (from the worker thread on SQLite; in SQLAlchemy's greenlet on PostgreSQL)."""
    if off_loop():
        return asyncio.run_coroutine_threadsafe(fn(*args), _worker.loop).result()
    return await_only(fn(*args))


@dataclass(eq=False)
class _Write:
    work: Callable[[sa.Connection], Any]
    done: asyncio.Future[Any]
    started: bool = False


@dataclass(eq=False)
class _Writers:
    """SQLite, one per event loop (tests and the CLI may use a Database from several): the lock
    every writer of this process queues on, and run_write's queue with its flusher task."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    writes: list[_Write] = field(default_factory=list)
    flusher: asyncio.Task[None] | None = None


def _run_batch(
    engine: sa.Engine, batch: list[_Write], loop: asyncio.AbstractEventLoop
) -> list[tuple[bool, Any]]:
    """One transaction for a batch of writes, each in its own savepoint: a write that raises is
    rolled back alone, the others commit together. (ok, result or exception) for each; if the
    transaction itself fails (BEGIN, a savepoint, COMMIT), every write that had not failed on
    its own fails with that error, and nothing of the batch is stored."""
    _worker.loop = loop
    outcomes: list[tuple[bool, Any]] = []
    try:
        with engine.connect() as conn, conn.begin():
            for write in batch:
                savepoint = conn.begin_nested()
                try:
                    result = write.work(conn)
                except Exception as exc:
                    try:
                        savepoint.rollback()
                    except Exception:  # SQLite rolled the whole transaction back (disk full, I/O)
                        raise exc from None
                    outcomes.append((False, exc))
                else:
                    savepoint.commit()
                    outcomes.append((True, result))
    except Exception as exc:
        failed = [o if not o[0] else (False, exc) for o in outcomes]
        return failed + [(False, exc)] * (len(batch) - len(failed))
    finally:
        _worker.loop = None
    return outcomes


def _read_in_thread(engine: sa.Engine, work: Callable[[sa.Connection], T]) -> T:
    with engine.connect() as conn, conn.begin():
        return work(conn)


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def _sqlite_engine(url: str, *, writer: bool) -> AsyncEngine:
    engine = create_async_engine(
        url,
        pool_size=1 if writer else 8,
        max_overflow=0 if writer else 8,
        pool_timeout=60,
    )
    _configure_sqlite(engine.sync_engine, writer=writer)
    return engine


def _sqlite_sync(url: str, *, writer: bool) -> sa.Engine:
    """Plain sqlite3 connections for whole transactions run in one worker thread
    (Database.run_read, Database.run_write)."""
    engine = sa.create_engine(
        make_url(url).set(drivername="sqlite+pysqlite"),
        pool_size=1 if writer else 8,
        max_overflow=0 if writer else 32,
        pool_timeout=60,
        connect_args={"check_same_thread": False},
    )
    _configure_sqlite(engine, writer=writer)
    return engine


def _configure_sqlite(engine: sa.Engine, *, writer: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_conn.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            "PRAGMA foreign_keys=ON",
            "PRAGMA busy_timeout=30000",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")


class Database:
    """Holds the engines; `read()` and `write()` hand out connections inside a transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dialect = make_url(url).get_backend_name()
        self._sync_reader: sa.Engine | None = None
        self._sync_writer: sa.Engine | None = None
        self._writers: dict[asyncio.AbstractEventLoop, _Writers] = {}
        self._threads: list[ThreadPoolExecutor] = []
        if self.dialect == "sqlite":
            self.read_engine = _sqlite_engine(url, writer=False)
            self.write_engine = _sqlite_engine(url, writer=True)
            self._sync_reader = _sqlite_sync(url, writer=False)
            self._sync_writer = _sqlite_sync(url, writer=True)
            self._read_threads = ThreadPoolExecutor(32, thread_name_prefix="artifacts-read")
            self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="artifacts-write")
            self._threads = [self._read_threads, self._write_thread]
        else:
            self.read_engine = self.write_engine = create_async_engine(
                url, pool_size=10, max_overflow=10, pool_pre_ping=True
            )
            # run_read's statements, each its own snapshot (same pool): no BEGIN and COMMIT
            # round trips around a read that is one statement, or reads immutable rows
            self._autocommit = self.read_engine.execution_options(isolation_level="AUTOCOMMIT")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.read_engine.connect() as conn, conn.begin():
            yield conn

    async def run_read(self, work: Callable[[sa.Connection], T]) -> T:
        """`work(conn)` inside one read transaction. On SQLite the whole of it runs in one
        worker thread on a plain sqlite3 connection: through aiosqlite every cursor, execute,
        fetch and close is its own thread round trip (about a dozen for a get by id, which
        measured ~4x slower than one hop). On PostgreSQL it runs on the async connection
        (SQLAlchemy's run_sync) in autocommit mode: each statement is its own snapshot, which
        every caller allows (one statement, or rows that do not change, such as a live
        artifact's lineage), and a get costs two round trips instead of four.

        The SQLite hop is the event loop's own executor call on a pool of our own, not
        anyio.to_thread (measured here: 25-38 us a hop against 55-67 us): a read has nothing to
        undo, so a caller cancelled mid-read may leave its thread to finish alone."""
        if self._sync_reader is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._read_threads, _read_in_thread, self._sync_reader, work
            )
        async with self._autocommit.connect() as conn:
            return await conn.run_sync(work)

    def _here(self) -> _Writers:
        loop = asyncio.get_running_loop()
        writers = self._writers.get(loop)
        if writers is None:
            self._writers = {k: v for k, v in self._writers.items() if not k.is_closed()}
            writers = self._writers[loop] = _Writers()
        return writers

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One short transaction; committed on normal exit, rolled back on any exception."""
        if self._sync_writer is None:
            async with self.write_engine.connect() as conn, conn.begin():
                yield conn
            return
        async with self._here().lock:
            async with self.write_engine.connect() as conn, conn.begin():
                yield conn

    async def run_write(self, work: Callable[[sa.Connection], T]) -> T:
        """`work(conn)` inside a write transaction: its changes commit when it returns and are
        rolled back when it raises. On PostgreSQL, one transaction of its own (run_sync).

        On SQLite writes are group-committed: the writes waiting for the writer lock when it
        frees run as one batch in one worker thread on a plain sqlite3 connection, each in its
        own savepoint (one failing rolls back alone), with one COMMIT, so one WAL fsync and one
        thread hop serve them all; each caller returns once the commit is durable, as before.
        (Through aiosqlite a create alone was ~20 thread round trips.) `run_async` reaches the
        event loop from inside `work`. A write cancelled while it waits is dropped; once its
        batch has started it runs to its end, and the cancellation takes effect after."""
        if self._sync_writer is None:
            async with self.write() as conn:
                return await conn.run_sync(work)
        loop = asyncio.get_running_loop()
        write = _Write(work, loop.create_future())
        writers = self._here()
        writers.writes.append(write)
        if writers.flusher is None:
            writers.flusher = loop.create_task(self._flush(writers))
        try:
            result: T = await asyncio.shield(write.done)
        except asyncio.CancelledError:
            if not write.started:
                write.done.cancel()
                raise
            with CancelScope(shield=True):
                await asyncio.wait([write.done])
            if not write.done.cancelled():
                write.done.exception()  # seen: no "exception was never retrieved"
            raise
        return result

    async def _flush(self, writers: _Writers) -> None:
        """Run the queued writes in batches, one batch per turn of the writer lock, so that
        the other writers (db.write()) queued on it are not starved."""
        try:
            while writers.writes:
                async with writers.lock:
                    batch = [w for w in writers.writes[:MAX_BATCH] if not w.done.cancelled()]
                    del writers.writes[:MAX_BATCH]
                    for write in batch:
                        write.started = True
                    if batch:
                        await self._run(batch)
        finally:
            writers.flusher = None

    async def _run(self, batch: list[_Write]) -> None:
        assert self._sync_writer is not None
        loop = asyncio.get_running_loop()
        try:
            outcomes = await loop.run_in_executor(
                self._write_thread, _run_batch, self._sync_writer, batch, loop
            )
        except BaseException as exc:  # the thread could not be started, or this task was cancelled
            outcomes = [(False, exc)] * len(batch)
        for write, (ok, value) in zip(batch, outcomes, strict=True):
            if write.done.done():
                continue
            if ok:
                write.done.set_result(value)
            elif isinstance(value, asyncio.CancelledError):
                write.done.cancel()
            else:
                write.done.set_exception(value)

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def dispose(self) -> None:
        for threads in self._threads:  # a batch still running finishes first
            await to_thread.run_sync(threads.shutdown)
        for engine in (self._sync_reader, self._sync_writer):
            if engine is not None:
                await to_thread.run_sync(engine.dispose)
        await self.read_engine.dispose()
        if self.write_engine is not self.read_engine:
            await self.write_engine.dispose()
