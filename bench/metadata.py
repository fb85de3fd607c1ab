"""Metadata: create, get by id and list (every filter, first page and a cursor deep into the
result) against a database the loader filled to each scale, on SQLite and on PostgreSQL.

Per (database, scale): top the database up with bench.loader, work out the queries (filter values
with many rows, a keyset cursor 90% of the way into each result, a sample of live ids) straight
from the database, start a fresh server, check that it serves the loaded rows, then run the load
generator (bench.loadgen, on the client core): every read scenario at concurrency 16 for
requests/s, then again at concurrency 1 for latency (p50/p99 of an unloaded server: at 16 the
percentiles are mostly queueing), and creates last (they add rows) at 16 and 64.

Right before our server, at each scale, the same load generator drives the plain Litestar reference
(bench/litestar_ref.py, a fresh uvicorn pinned to the same core): /ref/get, one record shaped and
sized like our get by id, and /ref/list, 50 summaries like our list of 50 with a workflow filter.
Each read row carries its ratio to the matching reference (`vs_reference`); the byte sizes of both
answers are recorded beside them, so a difference in size shows.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench.common import our_server, request, uvicorn_server
from bench.loader import (
    HOT_WORKFLOW,
    HUB_INDEX,
    STEP,
    T0,
    Generator,
    Loader,
    artifact_id,
)

PAGE = 50
DEEP = 0.9  # where the deep cursor points into each result
# the same-size reference of each read: get by id against one record, lists against 50 summaries
REFERENCE_PATHS = {"get": "/ref/get", "list": "/ref/list"}
TARGET_LIST = "workflow_id"  # the list the targets name: 50 with a workflow filter


@dataclass
class ListCase:
    name: str  # the filter
    params: dict[str, str]
    count: int  # live rows matching
    deep_cursor: str | None  # None when the result fits in two pages
    deep_position: int | None


@dataclass
class Durations:
    warmup: float
    throughput: float  # seconds per scenario at concurrency 16
    latency: float  # seconds per scenario at concurrency 1
    create: float


def filters(gen: Generator, rows: int, hot_session: str) -> list[tuple[str, dict[str, str]]]:
    from storage.records import us_to_iso

    hot = gen.workflow_id(HOT_WORKFLOW)
    return [
        ("none", {}),
        ("workflow_id", {"workflow_id": hot}),
        ("workflow_id+phase_id", {"workflow_id": hot, "phase_id": "implement"}),
        ("phase_id", {"phase_id": "implement"}),
        ("session_id", {"session_id": hot_session}),
        ("artifact_type", {"artifact_type": "markdown"}),
        ("content_type", {"content_type": "text/markdown"}),
        ("is_primary_deliverable", {"is_primary_deliverable": "true"}),
        ("created_after", {"created_after": us_to_iso(T0 + rows // 2 * STEP)}),
        ("derived_from", {"derived_from": artifact_id(gen.seed, HUB_INDEX)}),
    ]


async def plan(url: str, gen: Generator, rows: int, samples: int) -> dict[str, Any]:
    """The list cases and a sample of live ids, read from the database itself."""
    import sqlalchemy as sa

    from storage.artifacts import LIVE, ORDER, ArtifactService
    from storage.db.engine import Database
    from storage.db.tables import DEFAULT_TENANT, artifacts
    from storage.records import Cursor, ListQuery, datetime_to_us

    def as_query(params: dict[str, str]) -> ListQuery:
        values: dict[str, Any] = dict(params)
        if "is_primary_deliverable" in values:
            values["is_primary_deliverable"] = values["is_primary_deliverable"] == "true"
        if "created_after" in values:
            from datetime import datetime

            moment = datetime.fromisoformat(values["created_after"].replace("Z", "+00:00"))
            values["created_after"] = datetime_to_us(moment)
        return ListQuery(**values)

    def read(conn: sa.Connection) -> tuple[str, list[ListCase], list[str]]:
        mine = artifacts.c.tenant == DEFAULT_TENANT
        hot_session = conn.execute(
            sa.select(artifacts.c.session_id)
            .where(mine, artifacts.c.workflow_id == gen.workflow_id(HOT_WORKFLOW))
            .group_by(artifacts.c.session_id)
            .order_by(sa.func.count().desc(), artifacts.c.session_id)
            .limit(1)
        ).scalar_one()
        cases = []
        for name, params in filters(gen, rows, hot_session):
            where = [mine, LIVE, *ArtifactService._filters(as_query(params))]
            count = conn.execute(
                sa.select(sa.func.count()).select_from(artifacts).where(*where)
            ).scalar_one()
            cursor = position = None
            if count > 2 * PAGE:
                position = int(count * DEEP)
                row = conn.execute(
                    sa.select(artifacts.c.created_at, artifacts.c.id)
                    .where(*where)
                    .order_by(*ORDER)
                    .offset(position - 1)
                    .limit(1)
                ).one()
                cursor = Cursor(row.created_at, row.id).encode()
            cases.append(ListCase(name, params, count, cursor, position))
        r = random.Random(rows)
        wanted = list({artifact_id(gen.seed, r.randrange(rows)) for _ in range(samples * 2)})
        ids: list[str] = []
        for at in range(0, len(wanted), 500):
            found = conn.execute(
                sa.select(artifacts.c.id).where(
                    mine, LIVE, artifacts.c.id.in_(wanted[at : at + 500])
                )
            )
            ids += found.scalars().all()
        return hot_session, cases, ids

    db = Database(url)
    try:
        hot_session, cases, ids = await db.run_read(read)
    finally:
        await db.dispose()
    return {"cases": cases, "ids": ids[:samples], "hot_session": hot_session}


def list_path(case: ListCase, deep: bool) -> str:
    params = dict(case.params)
    if deep:
        assert case.deep_cursor is not None
        params["cursor"] = case.deep_cursor
    params["limit"] = str(PAGE)
    return "/artifacts?" + urlencode(params)


def verify(port: int, ids: list[str], cases: list[ListCase]) -> dict[str, int]:
    """The server really serves the loaded rows: a get by id, and each list case's first page
    (and deep page) holds what the database said it would. Returns the body sizes of the get and
    of the first page of each list case (`list:<filter>`)."""
    status, body = request("GET", port, f"/artifacts/{ids[0]}", timeout=30)
    record = json.loads(body)
    assert status == 200 and record["id"] == ids[0] and record["content"], (
        status,
        body[:300],
    )
    sizes = {"get": len(body)}
    for case in cases:
        status, body = request("GET", port, list_path(case, False), timeout=60)
        assert status == 200, (case.name, status, body[:300])
        assert len(json.loads(body)) == min(PAGE, case.count), (case.name, case.count)
        sizes[f"list:{case.name}"] = len(body)
        if case.deep_cursor is not None:
            status, body = request("GET", port, list_path(case, True), timeout=60)
            assert status == 200, (case.name, status, body[:300])
            assert len(json.loads(body)) == min(PAGE, case.count - (case.deep_position or 0))
    return sizes


def create_requests(n: int = 64) -> list[dict[str, Any]]:
    """POST /artifacts, JSON, 1 KiB of content made distinct per request (@@SEQ@@ becomes 12
    digits), over `n` workflows."""
    pad = "x" * (1024 - 12)
    out = []
    for k in range(n):
        body = json.dumps(
            {
                "workflow_id": f"bench-create-{k:02d}",
                "phase_id": "implement",
                "artifact_type": "markdown",
                "title": "bench create",
                "content_type": "text/markdown",
                "metadata": {"bench": True},
                "content": "@@SEQ@@" + pad,
            }
        )
        out.append(
            {
                "method": "POST",
                "path": "/artifacts",
                "body": body,
                "headers": {"Content-Type": "application/json"},
            }
        )
    return out


def phase(name: str, concurrency: int, duration: float, warmup: float, reqs: list[Any]) -> Any:
    return {
        "name": name,
        "concurrency": concurrency,
        "duration": duration,
        "warmup": warmup,
        "requests": reqs,
    }


def figures(hi: dict[str, Any], lo: dict[str, Any] | None) -> dict[str, Any]:
    """One scenario's row: requests/s and the rest at its concurrency, latency at 1 (`c1_`)."""
    row: dict[str, Any] = {
        "concurrency": hi["concurrency"],
        "rps": hi["rps"],
        "p50_ms": hi["p50_ms"],
        "p99_ms": hi["p99_ms"],
        "server_cpu": hi["server_cpu"],
        "client_cpu": hi["client_cpu"],
        "statuses": hi["statuses"],
        "errors": hi["errors"],
    }
    if lo is not None:
        row |= {
            "c1_rps": lo["rps"],
            "c1_p50_ms": lo["p50_ms"],
            "c1_p99_ms": lo["p99_ms"],
            "c1_statuses": lo["statuses"],
            "c1_errors": lo["errors"],
        }
    return row


def problems_of(label: str, *results: dict[str, Any] | None) -> list[str]:
    """A line for each load-generator result with a non-2xx answer, an error or no request."""
    out = []
    for res in results:
        if res is None:
            continue
        wrong = {s: n for s, n in res["statuses"].items() if not s.startswith("2")}
        if wrong or res["errors"] or not res["requests"]:
            out.append(
                f"{label} {res['name']}: statuses {res['statuses']}, errors {res['errors'][:2]}"
            )
    return out


def reference_reads(core: int | None, d: Durations, log: Path) -> dict[str, Any]:
    """The plain Litestar reference (bench/litestar_ref.py on uvicorn, this environment, pinned
    like ours): /ref/get and /ref/list at concurrency 16 for requests/s and at 1 for latency, each
    with the size of its answer."""
    from bench.loadgen import drive

    server = uvicorn_server(
        "plain Litestar reference",
        sys.executable,
        "bench.litestar_ref:app",
        core,
        ready_path=REFERENCE_PATHS["get"],
        log=log,
    )
    with server:
        sizes = {}
        for kind, path in REFERENCE_PATHS.items():
            status, body = request("GET", server.port, path, timeout=30)
            assert status == 200, (path, status, body[:300])
            sizes[kind] = len(body)
        reqs = {kind: [{"method": "GET", "path": path}] for kind, path in REFERENCE_PATHS.items()}
        phases = [phase(f"ref_{k}:c16", 16, d.throughput, d.warmup, r) for k, r in reqs.items()]
        phases += [phase(f"ref_{k}:c1", 1, d.latency, d.warmup / 2, r) for k, r in reqs.items()]
        results = {r["name"]: r for r in drive(server.port, phases, server.pids())}
    out: dict[str, Any] = {"server": "bench/litestar_ref.py on uvicorn", "problems": []}
    for kind, path in REFERENCE_PATHS.items():
        hi, lo = results[f"ref_{kind}:c16"], results[f"ref_{kind}:c1"]
        out[kind] = {"path": path, "body_bytes": sizes[kind], **figures(hi, lo)}
        out["problems"] += problems_of("reference", hi, lo)
    return out


def run_scale(
    db_name: str,
    url: str,
    data_dir: Path,
    loader: Loader,
    rows: int,
    durations: Durations,
    core: int | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    from bench.loadgen import drive

    loaded = asyncio.run(loader.load(rows))
    log(
        f"  {db_name} {rows:>9,} rows: loaded {loaded['added']:,} in {loaded['seconds']:.1f} s "
        f"({loaded['rows_per_s']:,.0f} rows/s)"
    )
    assert loader.gen is not None
    t = time.perf_counter()
    p = asyncio.run(plan(url, loader.gen, rows, samples=2000))
    cases: list[ListCase] = p["cases"]
    ids: list[str] = p["ids"]
    planned = time.perf_counter() - t
    gets = [{"method": "GET", "path": f"/artifacts/{i}"} for i in ids]
    reads: list[tuple[str, str | None, list[dict[str, Any]]]] = [("get", None, gets)]
    for case in cases:
        reads.append(
            (
                "list_first",
                case.name,
                [{"method": "GET", "path": list_path(case, False)}],
            )
        )
        if case.deep_cursor is not None:
            reads.append(
                (
                    "list_deep",
                    case.name,
                    [{"method": "GET", "path": list_path(case, True)}],
                )
            )
    out: dict[str, Any] = {
        "rows": rows,
        "load": loaded,
        "plan_seconds": planned,
        "results": [],
        "problems": [],
    }
    d = durations
    # the reference right before ours, at every scale: both in the same minute of the run
    reference: dict[str, Any]
    try:
        reference = reference_reads(core, d, data_dir.parent / f"{db_name}-reference.log")
    except Exception as exc:  # our figures still stand, without ratios
        reference = {"error": f"{type(exc).__name__}: {exc}", "problems": []}
        out["problems"].append(f"{db_name} {rows:,} reference: {reference['error']}")
    out["problems"] += [f"{db_name} {rows:,} {line}" for line in reference.pop("problems")]
    out["reference"] = reference
    for kind in REFERENCE_PATHS:
        if kind in reference:
            r = reference[kind]
            log(
                f"    {'ref_' + kind:10} {r['path']:24} c16 {r['rps']:8.0f}/s "
                f"p50 {r['c1_p50_ms']:6.2f} ms p99 {r['c1_p99_ms']:6.2f} ms  "
                f"server cpu {r['server_cpu']:.2f}  {r['body_bytes']:,} B"
            )
    with our_server(
        data_dir, core, database_url=url, log=data_dir.parent / f"{db_name}-server.log"
    ) as server:
        sizes = verify(server.port, ids, cases)
        phases = [phase(f"{k}:{f}:c16", 16, d.throughput, d.warmup, reqs) for k, f, reqs in reads]
        phases += [phase(f"{k}:{f}:c1", 1, d.latency, d.warmup / 2, reqs) for k, f, reqs in reads]
        creates = create_requests()
        phases += [phase("create:json_1KiB:c16", 16, d.create, d.warmup, creates)]
        phases += [phase("create:json_1KiB:c64", 64, d.create, d.warmup, creates)]
        results = drive(server.port, phases, server.pids())
    by_name = {r["name"]: r for r in results}
    case_of = {c.name: c for c in cases}
    for kind, filt, _ in [*reads, ("create", "json_1KiB", [])]:
        for conc in ("c16", "c64") if kind == "create" else ("c16",):
            hi = by_name[f"{kind}:{filt}:{conc}"]
            lo = by_name.get(f"{kind}:{filt}:c1")
            row: dict[str, Any] = {"scenario": kind, "filter": filt, **figures(hi, lo)}
            if filt in case_of:
                row |= {
                    "matching": case_of[filt].count,
                    "cursor_position": case_of[filt].deep_position,
                }
            ref_kind = "get" if kind == "get" else "list" if kind.startswith("list") else None
            if ref_kind is not None:
                row["reference"] = ref_kind
                ref_rps = reference.get(ref_kind, {}).get("rps")
                row["vs_reference"] = row["rps"] / ref_rps if ref_rps else None
                size = sizes.get("get" if kind == "get" else f"list:{filt}")
                if kind != "list_deep" and size is not None:
                    row["body_bytes"] = size
            out["results"].append(row)
            out["problems"] += problems_of(f"{db_name} {rows:,}", hi, lo)
            bad = {s: n for s, n in hi["statuses"].items() if not s.startswith("2")}
            ratio = row.get("vs_reference")
            log(
                f"    {kind:10} {filt or '':24} c{row['concurrency']:<2} {row['rps']:8.0f}/s "
                f"p50 {row.get('c1_p50_ms', row['p50_ms']):6.2f} ms "
                f"p99 {row.get('c1_p99_ms', row['p99_ms']):6.2f} ms  "
                f"server cpu {row['server_cpu']:.2f}"
                + (f"  x ref_{ref_kind} {ratio:.2f}" if ratio else "")
                + (f"  NON-2XX {bad}" if bad else "")
            )
    return out


def pg_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    """A fresh PostgreSQL database for this run (and how to drop it)."""
    import asyncpg
    from sqlalchemy.engine import make_url

    u = make_url(admin_url)
    name = f"bench_{secrets.token_hex(4)}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(
            host=u.host,
            port=u.port or 5432,
            user=u.username,
            password=u.password,
            database=u.database,
            timeout=10,
        )
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    url = u.set(drivername="postgresql+asyncpg", database=name).render_as_string(
        hide_password=False
    )
    return url, lambda: asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def run_metadata(
    db_name: str,
    url: str | None,
    work: Path,
    scales: list[int],
    durations: Durations,
    core: int | None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """All scales on one database: SQLite under `work` when url is None."""
    from storage.db.engine import sqlite_url
    from storage.db.migrate import upgrade

    data_dir = work / f"meta-{db_name}"
    data_dir.mkdir(parents=True, exist_ok=True)
    url = url or sqlite_url(data_dir.resolve() / "artifacts.db")
    upgrade(url)
    loader = Loader(url, data_dir / "blobs")
    out: dict[str, Any] = {"database": db_name, "scales": []}
    for rows in scales:
        out["scales"].append(run_scale(db_name, url, data_dir, loader, rows, durations, core, log))
    return out
