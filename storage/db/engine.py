"""Engines for the metadata database, and the one way to use them.

Every transaction is a plain function of a synchronous SQLAlchemy connection, handed to
`Database.run_read` or `Database.run_write` (plus `loop_rows`, SQLite's bounded reads right on
the event loop). There is no async connection to hold across awaits: a transaction never
waits on anything but the database, unless its body asks the event loop for something with
`run_async` (see there for when that is safe).

SQLite: WAL, synchronous=FULL, foreign keys, a busy timeout; write transactions start with
BEGIN IMMEDIATE (a deferred one would fail with SQLITE_BUSY when it tries to upgrade). Every
write of a process goes through run_write's queue (one per event loop) into one worker thread,
so the writers of one process never meet in SQLite's busy handler (which sleeps); another
process (the CLI, while a server runs) waits in it. Reads run in a pool of worker threads on
connections of their own and see WAL snapshots.
PostgreSQL: one async engine (asyncpg); each transaction body runs on it through run_sync.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from anyio import CancelScope, to_thread
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import await_only

T = TypeVar("T")
MAX_BATCH = 64  # writes in one SQLite group commit
LOOP_READ_BUSY_MS = 50  # a read on the event loop waits at most this for a lock, then hops
_worker = threading.local()  # .loop: the event loop of the run_write body this thread runs


def run_async(fn: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """From inside a run_write body: run `fn(*args)` on the event loop and wait for it (from
    the worker thread on SQLite; in SQLAlchemy's greenlet on PostgreSQL).

    The transaction stays open meanwhile, and on SQLite the writer lock stays held and the
    rest of the batch waits: only for work that must happen inside the transaction (garbage
    collection moving a blob to trash/ while no upload can commit a reference to it), never
    on a request's path. `fn` must not itself wait for a write (run_write): the writer is
    busy with this very body, so that would never finish."""
    if getattr(_worker, "loop", None) is not None:
        return asyncio.run_coroutine_threadsafe(fn(*args), _worker.loop).result()
    return await_only(fn(*args))


@dataclass(eq=False)
class _Write:
    work: Callable[[sa.Connection], Any]
    done: asyncio.Future[Any]
    started: bool = False


@dataclass(eq=False)
class _Writers:
    """SQLite, one per event loop (tests and the CLI may use a Database from several):
    run_write's queue and the one task that flushes it, a batch at a time, into the write
    thread (one per Database, so writes from several loops are serialised there too)."""

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
    if len(batch) == 1:
        try:
            return [_run_alone(engine, batch[0])]
        finally:
            _worker.loop = None
    outcomes: list[tuple[bool, Any]] = []
    try:
        with engine.connect() as conn, conn.begin():
            # the savepoints as plain SQL on the sqlite3 connection: SQLAlchemy's begin_nested()
            # compiles SAVEPOINT and RELEASE anew for every write (they have no cache key)
            raw = conn.connection.driver_connection
            assert raw is not None
            for write in batch:
                raw.execute("SAVEPOINT write")
                try:
                    result = write.work(conn)
                except Exception as exc:
                    try:
                        raw.execute("ROLLBACK TO write")
                        raw.execute("RELEASE write")
                    except Exception:  # SQLite rolled the whole transaction back (disk full, I/O)
                        raise exc from None
                    outcomes.append((False, exc))
                else:
                    raw.execute("RELEASE write")
                    outcomes.append((True, result))
    except Exception as exc:
        failed = [o if not o[0] else (False, exc) for o in outcomes]
        return failed + [(False, exc)] * (len(batch) - len(failed))
    finally:
        _worker.loop = None
    return outcomes


def _run_alone(engine: sa.Engine, write: _Write) -> tuple[bool, Any]:
    """A batch of one (the common case below a handful of concurrent writers): the write alone
    in its transaction, without the savepoint that only keeps a failing write from taking
    others down. The outcome is the batch's: the
    write's own exception even when the rollback after it fails too."""
    failed: Exception | None = None
    try:
        with engine.connect() as conn, conn.begin():
            try:
                return True, write.work(conn)
            except Exception as exc:
                failed = exc
                raise
    except Exception as exc:
        return False, failed or exc


def _read_in_thread(engine: sa.Engine, work: Callable[[sa.Connection], T]) -> T:
    with engine.connect() as conn, conn.begin():
        return work(conn)


def sqlite_url(path: Path) -> str:
    """The URL of a SQLite database file: aiosqlite's, which Alembic's async environment
    needs; Database runs its transactions on plain sqlite3 connections to the same file."""
    return f"sqlite+aiosqlite:///{path}"


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
    """Holds the engines and runs transactions: `run_read`, `run_write`, `loop_rows`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dialect = make_url(url).get_backend_name()
        self._sync_reader: sa.Engine | None = None
        self._sync_writer: sa.Engine | None = None
        self._engine: AsyncEngine | None = None
        self._writers: dict[asyncio.AbstractEventLoop, _Writers] = {}
        self._threads: list[ThreadPoolExecutor] = []
        if self.dialect == "sqlite":
            self._sync_reader = _sqlite_sync(url, writer=False)
            self._sync_writer = _sqlite_sync(url, writer=True)
            self._read_threads = ThreadPoolExecutor(32, thread_name_prefix="artifacts-read")
            self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="artifacts-write")
            self._threads = [self._read_threads, self._write_thread]
            self._sqlite_path = make_url(url).database or ""
            self._loop_readers = threading.local()
            self._loop_conns: list[sqlite3.Connection] = []
        else:
            self._engine = create_async_engine(
                url, pool_size=10, max_overflow=10, pool_pre_ping=True
            )
            # run_read's statements, each its own snapshot (same pool): no BEGIN and COMMIT
            # round trips around a read that is one statement, or reads immutable rows
            self._autocommit = self._engine.execution_options(isolation_level="AUTOCOMMIT")

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

    def loop_rows(self, sql: str, params: Any) -> list[Any] | None:
        """SQLite: the rows of one short, bounded read (an index lookup, a page with a LIMIT),
        run right here on the event loop on a plain sqlite3 connection of this thread: no
        thread hop and no SQLAlchemy, measured at half a get's CPU. Each statement is its own
        WAL snapshot. None on PostgreSQL, and whenever SQLite cannot answer at once (a lock
        held past LOOP_READ_BUSY_MS, any error): the caller then reads through run_read, which
        waits properly and reports errors as usual."""
        if self._sync_reader is None:
            return None
        conn: sqlite3.Connection | None = getattr(self._loop_readers, "conn", None)
        try:
            if conn is None:
                conn = sqlite3.connect(
                    self._sqlite_path, isolation_level=None, check_same_thread=False
                )
                conn.execute(f"PRAGMA busy_timeout={LOOP_READ_BUSY_MS}")
                conn.execute("PRAGMA query_only=1")
                self._loop_readers.conn = conn
                self._loop_conns.append(conn)
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error:
            return None

    def _here(self) -> _Writers:
        loop = asyncio.get_running_loop()
        writers = self._writers.get(loop)
        if writers is None:
            self._writers = {k: v for k, v in self._writers.items() if not k.is_closed()}
            writers = self._writers[loop] = _Writers()
        return writers

    async def run_write(self, work: Callable[[sa.Connection], T]) -> T:
        """`work(conn)` inside a write transaction: its changes commit when it returns and are
        rolled back when it raises. On PostgreSQL, one transaction of its own (run_sync).

        On SQLite writes are group-committed: the writes that queued while the previous batch
        ran make up the next one, run in one worker thread on a plain sqlite3 connection, each
        in its own savepoint (one failing rolls back alone), with one COMMIT, so one WAL fsync
        and one thread hop serve them all; each caller returns once the commit is durable.
        (Through aiosqlite a create alone was ~20 thread round trips.) This queue is the only
        way into the file for this process's writers, so only one of them holds SQLite's
        writer lock at a time, and `work` holds it for all of its run: keep it to SQL.
        `run_async` reaches the event loop from inside `work`. A write cancelled while it waits
        is dropped; once its batch has started it runs to its end, and the cancellation takes
        effect after."""
        if self._engine is not None:
            async with self._engine.begin() as conn:
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
        """Run the queued writes in batches of up to MAX_BATCH, one batch at a time: the
        writes that queue while a batch runs make up the next one."""
        try:
            while writers.writes:
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
        await self.run_read(lambda conn: conn.execute(sa.text("SELECT 1")).scalar())

    async def dispose(self) -> None:
        for conn in getattr(self, "_loop_conns", ()):
            conn.close()
        if self._sync_reader is not None:
            self._loop_readers, self._loop_conns = threading.local(), []
        for threads in self._threads:  # a batch still running finishes first
            await to_thread.run_sync(threads.shutdown)
        for engine in (self._sync_reader, self._sync_writer):
            if engine is not None:
                await to_thread.run_sync(engine.dispose)
        if self._engine is not None:
            await self._engine.dispose()
