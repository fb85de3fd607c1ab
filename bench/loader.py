"""Fills a migrated database with realistic artifacts straight through SQL, fast enough for a
million rows in a few minutes: executemany in large transactions on SQLite, COPY on PostgreSQL.

The rows are what the service would have written (storage/artifacts.py), minus the change feed:
every artifact names one of a few real blobs (present in the blob directory, with their rows),
lineage rows carry the parent's digest, at most one live primary deliverable per (workflow,
phase), about 1% soft-deleted. Row i is a pure function of (seed, i), so a database can be topped
up from 10k to 100k to 1M rows and the first rows stay the same:

- workflows: one "hot" workflow holds 10% of all rows; the rest spread over about rows/200
  workflows that appear over time;
- phases: seven shared names (research ... release), sessions: up to three per workflow phase;
- types and content types: a skewed mix of the 26 built-in types;
- lineage: 1% of rows derive from one hub artifact (a requirements document), 35% from one or
  two recent artifacts;
- created_at: one second apart from 2026-01-01 (with jitter); artifacts created through the API
  during a run are newer than all of them.

`python -m bench.loader --rows N --data-dir DIR [--database-url URL]` loads on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import hashlib
import itertools
import json
import random
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in microseconds
STEP = 1_000_000
CHUNK_ROWS = 1000  # rows generated from one seeded RNG: top-ups stay aligned to it
N_BLOBS = 16
HOT_WORKFLOW = 0
HUB_INDEX = 0
PHASES = ("research", "plan", "design", "implement", "test", "review", "release")
PHASE_WEIGHTS = (10, 8, 8, 30, 20, 14, 10)
TYPES = (
    ("markdown", "text/markdown", 18),
    ("code", "text/x-python", 16),
    ("research_summary", "text/markdown", 10),
    ("analysis_report", "text/markdown", 8),
    ("plan", "text/markdown", 8),
    ("test_results", "application/json", 7),
    ("json", "application/json", 6),
    ("design_doc", "text/markdown", 5),
    ("documentation", "text/markdown", 4),
    ("execution_report", "text/markdown", 4),
    ("text", "text/plain", 3),
    ("requirements", "text/markdown", 2),
    ("configuration", "application/yaml", 2),
    ("script", "text/x-shellscript", 2),
    ("coverage_report", "application/json", 1),
    ("api_spec", "application/yaml", 1),
    ("yaml", "application/yaml", 1),
    ("readme", "text/markdown", 1),
    ("other", "text/plain", 1),
)
MODELS = ("claude-sonnet", "claude-opus", "claude-haiku", "gpt-large", "local-7b")
COLUMNS = (
    "id",
    "workflow_id",
    "phase_id",
    "session_id",
    "artifact_type",
    "title",
    "content_type",
    "filename",
    "content_hash",
    "size_bytes",
    "is_text",
    "is_primary_deliverable",
    "created_by",
    "metadata",
    "created_at",
    "updated_at",
    "deleted_at",
    "source",
    "source_ref",
    "tenant",
)
LINEAGE_COLUMNS = ("child_id", "position", "parent_id", "parent_digest", "child_created_at")


def _identity(seed: int, i: int) -> tuple[str, int]:
    """(artifact id, blob index) of row i: a version-4 UUID made of md5(seed:i)."""
    b = bytearray(hashlib.md5(f"{seed}:{i}".encode()).digest())
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}", b[15] % N_BLOBS


def artifact_id(seed: int, i: int) -> str:
    return _identity(seed, i)[0]


def blob_contents(n: int = N_BLOBS) -> list[bytes]:
    """A few ~1 KiB Markdown documents: the content every loaded artifact points at."""
    out = []
    for k in range(n):
        lines = [f"# Bench artifact {k}", ""]
        r = random.Random(k)
        while sum(len(x) + 1 for x in lines) < 1024:
            lines.append(" ".join(r.choice(("alpha", "beta", "gamma", "delta")) for _ in range(9)))
        out.append("\n".join(lines).encode()[:1024])
    return out


@dataclass
class Generator:
    """Row i of the synthetic store, as column tuples."""

    seed: int
    digests: list[tuple[str, int]]  # (digest, size) of each blob
    primaries: set[tuple[int, str]] = field(default_factory=set)  # (workflow, phase) taken
    _recent: dict[int, tuple[str, int]] = field(default_factory=dict)

    @staticmethod
    def workflow_id(w: int) -> str:
        return f"workflow-{w:07d}"

    def identity(self, i: int) -> tuple[str, int]:
        found = self._recent.get(i)
        if found is None:
            found = self._recent[i] = _identity(self.seed, i)
            if len(self._recent) > 4096:
                for key in list(self._recent)[:2048]:
                    del self._recent[key]
        return found

    def chunk(self, start: int, end: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Rows [start, end) (end - start <= CHUNK_ROWS, start aligned to CHUNK_ROWS)."""
        r = random.Random(self.seed * 1_000_003 + start // CHUNK_ROWS)
        rand = r.random
        phase_cum = list(itertools.accumulate(PHASE_WEIGHTS))
        type_cum = list(itertools.accumulate(w for _, _, w in TYPES))
        rows: list[tuple[Any, ...]] = []
        links: list[tuple[Any, ...]] = []
        for i in range(start, end):
            aid, blob = self.identity(i)
            if i == HUB_INDEX or rand() < 0.10:
                w = HOT_WORKFLOW
            else:
                w = 1 + int(rand() * max(4, i // 200))
            phase = PHASES[bisect.bisect(phase_cum, rand() * phase_cum[-1])]
            kind, ctype, _ = TYPES[bisect.bisect(type_cum, rand() * type_cum[-1])]
            if i == HUB_INDEX:
                phase, kind, ctype = "plan", "requirements", "text/markdown"
            digest, size = self.digests[blob]
            created = T0 + i * STEP + int(rand() * STEP)
            pick, drop = rand() < 0.03, rand() < 0.01  # drawn always: the same RNG stream
            primary = pick and (w, phase) not in self.primaries
            if primary:
                self.primaries.add((w, phase))
            deleted = created + 3_600_000_000 if drop and not primary and i != HUB_INDEX else None
            meta = (
                f'{{"model": "{MODELS[int(rand() * len(MODELS))]}", '
                f'"tokens": {100 + int(rand() * 19900)}, "step": {i % 50}}}'
            )
            rows.append(
                (
                    aid,
                    f"workflow-{w:07d}",
                    phase,
                    f"session-{w:07d}-{phase}-{int(rand() * 3)}",
                    kind,
                    f"{kind.replace('_', ' ')} #{i}",
                    ctype,
                    "main.py" if kind == "code" else None,
                    digest,
                    size,
                    True,
                    primary,
                    f"agent-{int(rand() * 20)}",
                    meta,
                    created,
                    created,
                    deleted,
                    None,
                    None,
                    "default",
                )
            )
            parents: list[int] = []
            if i > HUB_INDEX and rand() < 0.01:
                parents.append(HUB_INDEX)
            if i > 1 and rand() < 0.35:
                for _ in range(1 + (rand() < 0.3)):
                    p = i - 1 - int(rand() * min(i - 1, 500))
                    if p not in parents:
                        parents.append(p)
            for position, p in enumerate(parents):
                pid, pblob = self.identity(p)
                links.append((aid, position, pid, self.digests[pblob][0], created))
        return rows, links

    def chunks(self, start: int, end: int) -> Iterator[tuple[list[Any], list[Any]]]:
        at = start
        while at < end:
            stop = min(end, (at // CHUNK_ROWS + 1) * CHUNK_ROWS)
            yield self.chunk(at, stop)
            at = stop


def sqlite_path(url: str) -> str:
    database = make_url(url).database
    assert database, url
    return database


class Loader:
    """Tops a migrated database (SQLite or PostgreSQL) up to `rows` synthetic artifacts."""

    def __init__(self, url: str, blob_dir: Path, seed: int = 9) -> None:
        self.url = url
        self.blob_dir = blob_dir
        self.seed = seed
        self.dialect = make_url(url).get_backend_name()
        self.loaded = 0
        self.gen: Generator | None = None

    async def _prepare(self) -> Generator:
        from storage.blobs import FilesystemBlobStore

        store = FilesystemBlobStore(self.blob_dir)
        digests = []
        for data in blob_contents():
            put = await store.put_bytes(data)
            digests.append((put.digest, put.size))
        gen = Generator(self.seed, digests)
        blob_rows = [(d, s, T0) for d, s in digests]
        if self.dialect == "sqlite":
            db = sqlite3.connect(sqlite_path(self.url))
            try:
                db.executemany("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?)", blob_rows)
                db.commit()
                self.loaded = db.execute("SELECT count(*) FROM artifacts").fetchone()[0]
                taken = db.execute(
                    "SELECT workflow_id, phase_id FROM artifacts WHERE is_primary_deliverable"
                ).fetchall()
            finally:
                db.close()
        else:
            conn = await self._pg()
            try:
                await conn.executemany(
                    "INSERT INTO blobs VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", blob_rows
                )
                self.loaded = await conn.fetchval("SELECT count(*) FROM artifacts")
                taken = await conn.fetch(
                    "SELECT workflow_id, phase_id FROM artifacts WHERE is_primary_deliverable"
                )
            finally:
                await conn.close()
        gen.primaries = {(int(w.rsplit("-", 1)[1]), p) for w, p in taken}
        return gen

    async def _pg(self) -> Any:
        import asyncpg

        u = make_url(self.url)
        return await asyncpg.connect(
            host=u.host,
            port=u.port or 5432,
            user=u.username,
            password=u.password,
            database=u.database,
        )

    async def load(self, rows: int) -> dict[str, float]:
        """Insert rows [already loaded, rows); returns what it did and how fast."""
        if self.gen is None:
            self.gen = await self._prepare()
        start, t = self.loaded, time.perf_counter()
        if rows > start:
            if self.dialect == "sqlite":
                await asyncio.to_thread(self._load_sqlite, start, rows)
            else:
                await self._load_pg(start, rows)
        self.loaded = max(rows, start)
        elapsed = time.perf_counter() - t
        added = self.loaded - start
        return {
            "rows": self.loaded,
            "added": added,
            "seconds": elapsed,
            "rows_per_s": added / elapsed if elapsed > 0 else 0.0,
        }

    def _load_sqlite(self, start: int, end: int) -> None:
        assert self.gen is not None
        db = sqlite3.connect(sqlite_path(self.url), isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")  # a bulk load: durable at the checkpoint below
            db.execute("PRAGMA cache_size=-262144")
            insert = f"INSERT INTO artifacts ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"  # noqa: E501
            link = f"INSERT INTO lineage ({', '.join(LINEAGE_COLUMNS)}) VALUES (?, ?, ?, ?, ?)"
            # secondary indexes are rebuilt once after a large load: much faster than keeping
            # them up to date row by row (the migration's own DDL, read back from the schema)
            indexes: list[tuple[str, str]] = []
            if end - start >= 50_000:
                indexes = db.execute(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                    "AND tbl_name IN ('artifacts', 'lineage')"
                ).fetchall()
                for name, _ in indexes:
                    db.execute(f'DROP INDEX "{name}"')
            pending: list[Any] = []
            pending_links: list[Any] = []
            for rows, links in self.gen.chunks(start, end):
                pending += rows
                pending_links += links
                if len(pending) >= 50_000:
                    self._flush_sqlite(db, insert, link, pending, pending_links)
                    pending, pending_links = [], []
            self._flush_sqlite(db, insert, link, pending, pending_links)
            for _, sql in indexes:
                db.execute(sql)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()

    @staticmethod
    def _flush_sqlite(
        db: sqlite3.Connection, insert: str, link: str, rows: list[Any], links: list[Any]
    ) -> None:
        db.execute("BEGIN")
        db.executemany(insert, rows)
        db.executemany(link, links)
        db.execute("COMMIT")

    async def _load_pg(self, start: int, end: int) -> None:
        assert self.gen is not None
        conn = await self._pg()
        try:
            indexes: list[Any] = []
            if end - start >= 50_000:
                # as on SQLite: rebuild secondary indexes once after a large load, and skip the
                # per-row foreign-key triggers (the rows are consistent by construction; needs a
                # superuser, else the triggers stay)
                indexes = await conn.fetch(
                    "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = "
                    "current_schema() AND i.tablename IN ('artifacts', 'lineage') AND NOT EXISTS "
                    "(SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)"
                )
                for row in indexes:
                    await conn.execute(f'DROP INDEX "{row[0]}"')
                if await conn.fetchval(
                    "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                ):
                    await conn.execute("SET session_replication_role = replica")
            pending: list[Any] = []
            pending_links: list[Any] = []

            async def flush() -> None:
                async with conn.transaction():
                    await conn.copy_records_to_table("artifacts", records=pending, columns=COLUMNS)
                    await conn.copy_records_to_table(
                        "lineage", records=pending_links, columns=LINEAGE_COLUMNS
                    )

            for rows, links in self.gen.chunks(start, end):
                pending += rows
                pending_links += links
                if len(pending) >= 50_000:
                    await flush()
                    pending, pending_links = [], []
            await flush()
            await conn.execute("SET session_replication_role = DEFAULT")
            for row in indexes:
                await conn.execute(row[1])
            # autovacuum would analyze the new rows shortly anyway; do it now so that the plans
            # measured do not depend on when it runs
            await conn.execute("ANALYZE artifacts")
            await conn.execute("ANALYZE lineage")
        finally:
            await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--database-url", help="default: SQLite at DATA_DIR/artifacts.db")
    parser.add_argument("--seed", type=int, default=9)
    args = parser.parse_args()
    from storage.db.engine import sqlite_url
    from storage.db.migrate import upgrade

    args.data_dir.mkdir(parents=True, exist_ok=True)
    url = args.database_url or sqlite_url(args.data_dir.resolve() / "artifacts.db")
    upgrade(url)
    result = asyncio.run(Loader(url, args.data_dir / "blobs", args.seed).load(args.rows))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
