"""The plain Litestar app the read targets are measured against: ordinary handlers returning
Python data that Litestar serialises itself, each built once at import.

GET /json      the fixed small JSON of bench.reference's /json (the framework's ceiling, limits)
GET /ref/get   one artifact record shaped like GET /artifacts/{id}: every key, in our order, with
               the values of a row bench.loader loads (its 1 KiB text content inline, as ours)
GET /ref/list  50 summaries shaped like GET /artifacts?workflow_id=...&limit=50: the newest 50
               rows of the loader's hot workflow

Runs from the project's environment (Litestar is a runtime dependency, the same version and
uvicorn as ours): `python -m uvicorn bench.litestar_ref:app`.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from litestar import Litestar, get

from bench.loader import HOT_WORKFLOW, Generator, blob_contents

PAGE = 50
# what a download_url of ours looks like when the client reached the server on a free port
BASE_URL = "http://127.0.0.1:41937"


def iso(us: int) -> str:
    """storage.records.us_to_iso: `2026-01-01T00:00:05.123456Z`."""
    seconds, micro = divmod(us, 1_000_000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{micro:06d}Z"


def loaded_rows(n: int = 1000) -> tuple[list[tuple[Any, ...]], dict[str, list[str]], list[str]]:
    """The loader's first `n` rows (as bench.loader.COLUMNS tuples), each row's parents, and the
    text of each blob."""
    contents = blob_contents()
    gen = Generator(9, [(hashlib.sha256(c).hexdigest(), len(c)) for c in contents])
    rows, links = gen.chunk(0, n)
    parents: dict[str, list[str]] = {}
    for child, _position, parent, _digest, _created in links:
        parents.setdefault(child, []).append(parent)
    return rows, parents, [c.decode() for c in contents]


def summary(row: tuple[Any, ...]) -> dict[str, Any]:
    """A row as one item of our list (app's summary shape, its key order)."""
    (aid, workflow, phase, session, kind, title, ctype, _filename, digest, size) = row[:10]
    return {
        "id": aid,
        "workflow_id": workflow,
        "phase_id": phase,
        "artifact_type": kind,
        "title": title,
        "size_bytes": size,
        "created_at": iso(row[14]),
        "session_id": session,
        "content_type": ctype,
        "content_hash": digest,
        "is_primary_deliverable": row[11],
    }


def record(row: tuple[Any, ...], parents: list[str], content: str) -> dict[str, Any]:
    """A row as our GET /artifacts/{id} answers it (app's record shape, its key order)."""
    (aid, workflow, phase, session, kind, title, ctype, filename, digest, size) = row[:10]
    return {
        "id": aid,
        "workflow_id": workflow,
        "phase_id": phase,
        "session_id": session,
        "artifact_type": kind,
        "is_primary_deliverable": row[11],
        "content": content,
        "content_type": ctype,
        "content_hash": digest,
        "size_bytes": size,
        "title": title,
        "derived_from": parents,
        "created_at": iso(row[14]),
        "created_by": row[12],
        "metadata": json.loads(row[13]),
        "filename": filename,
        "updated_at": iso(row[15]),
        "download_url": f"{BASE_URL}/artifacts/{aid}/download",
    }


def build() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the record, the page): a typical hot-workflow row with one parent; the hot workflow's
    newest 50 live rows, newest first (the list's order)."""
    rows, parents, contents = loaded_rows()
    workflow = Generator.workflow_id(HOT_WORKFLOW)
    hot = [r for r in rows if r[1] == workflow and r[16] is None]
    row = next(r for r in hot if len(parents.get(r[0], ())) == 1)
    digests = [hashlib.sha256(c.encode()).hexdigest() for c in contents]
    one = record(row, parents[row[0]], contents[digests.index(row[8])])
    page = [summary(r) for r in sorted(hot, key=lambda r: (r[14], r[0]), reverse=True)[:PAGE]]
    return one, page


RECORD, PAGE_OF_SUMMARIES = build()


@get("/json", sync_to_thread=False)
def fixed() -> dict[str, object]:
    return {"id": "0b7e6a52-5f0e-4c3e-9d2a-6f1d2c3b4a59", "status": "ok", "size_bytes": 1024}


@get("/ref/get", sync_to_thread=False)
def ref_get() -> dict[str, Any]:
    return RECORD


@get("/ref/list", sync_to_thread=False)
def ref_list() -> list[dict[str, Any]]:
    return PAGE_OF_SUMMARIES


app = Litestar([fixed, ref_get, ref_list])
