"""The CrowNest importer's tests: running imports, reading what they stored, the fake's request
log, the server's and the CLI's environment (tests/test_import_crownest.py and
tests/system/test_import_crownest_process.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from app.imports.crownest import CrowNestClient, CrowNestError, UpstreamArtifact
from app.imports.importer import CrowNestImporter, ImportOptions, Progress
from storage.artifacts import ArtifactService
from storage.db.engine import sqlite_url
from storage.db.migrate import upgrade
from storage.db.tables import artifacts as artifacts_table
from storage.imports import ImportJobs, Item, Job
from storage.records import NewArtifact
from tests.support.crownest import (
    FORBIDDEN_API_KEY,
    Artifact,
    FakeCrowNest,
    FakeState,
    Fault,
    RecordedRequest,
)
from tests.support.servers import ROOT

MiB = 1 << 20


WF = "wf-import"


FAST = {"max_attempts": 3, "backoff_base": 0.01, "backoff_max": 0.05}


DRY = "dry run: would import"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tally(imported: int = 0, unchanged: int = 0, skipped: int = 0, failed: int = 0) -> dict:
    return {"imported": imported, "unchanged": unchanged, "skipped": skipped, "failed": failed}


def make_importer(
    service: ArtifactService,
    fake: FakeCrowNest,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    **client: Any,
) -> CrowNestImporter:
    options = {**FAST, **client}
    return CrowNestImporter(
        service,
        ImportJobs(service.db),
        lambda: CrowNestClient(base_url or fake.base_url, api_key or fake.api_key, **options),
    )


class Recorded(Progress):
    """What the importer reported besides bytes: a dry run's plan and why a job stopped."""

    def __init__(self) -> None:
        self.would: list[tuple[UpstreamArtifact, NewArtifact]] = []
        self.errors: list[CrowNestError] = []

    def would_import(self, upstream: UpstreamArtifact, artifact: NewArtifact) -> None:
        self.would.append((upstream, artifact))

    def stopped(self, error: CrowNestError) -> None:
        self.errors.append(error)


async def run_import(
    importer: CrowNestImporter, sandbox_id: str, progress: Progress | None = None, **options: Any
) -> tuple[Job, dict[str, Item]]:
    options.setdefault("workflow_id", WF)
    job_id = await importer.start(ImportOptions(sandbox_id=sandbox_id, **options))
    job = await importer.run(job_id, progress)
    return job, {i.upstream_id: i for i in await importer.jobs.items(job_id)}


class _NotCrowNest(http.server.BaseHTTPRequestHandler):
    """Some other web server: an HTML page under /page, an HTML 404 anywhere else."""

    def do_GET(self) -> None:
        found = self.path.startswith("/page/")
        body = b"<html><body>" + (b"a web page" if found else b"Not Found") + b"</body></html>"
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def not_crownest() -> Iterator[str]:
    """A loopback web server that is not CrowNest; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotCrowNest)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def crownest_rows(service: ArtifactService) -> dict[str, list[str]]:
    """source_ref -> ids of every artifact row (live or not) imported from CrowNest."""
    t = artifacts_table
    query = sa.select(t.c.source_ref, t.c.id).where(t.c.source == "crownest")
    rows = await service.db.run_read(lambda conn: conn.execute(query).all())
    out: dict[str, list[str]] = {}
    for ref, artifact_id in rows:
        out.setdefault(ref, []).append(artifact_id)
    return out


def rows_of(database_url: str) -> dict[str, list[dict[str, Any]]]:
    """The same, from a sync test (a short-lived engine of its own)."""

    async def read() -> dict[str, list[dict[str, Any]]]:
        engine = create_async_engine(database_url)
        try:
            async with engine.connect() as conn:
                t = artifacts_table
                rows = (await conn.execute(sa.select(t).where(t.c.source == "crownest"))).all()
        finally:
            await engine.dispose()
        out: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            out.setdefault(row.source_ref, []).append(dict(row._mapping))
        return out

    return asyncio.run(read())


def blob_files(blob_dir: Path) -> set[str]:
    root = blob_dir / "sha256"
    return {p.name for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def staging(blob_dir: Path) -> list[str]:
    tmp = blob_dir / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


def hits(state: FakeState, route: str, target: str | None = None) -> list[RecordedRequest]:
    """Requests to `route` (for one artifact or sandbox id when given)."""
    out = state.requests_to(route)
    return [r for r in out if target is None or target in r.path.split("/")]


async def assert_imported(
    service: ArtifactService, up: Artifact, data: bytes, item: Item, **expect: Any
) -> None:
    """The artifact imported from `up`: its bytes, digest and the whole mapping."""
    a = await service.find_by_source("crownest", up.id)
    assert a is not None, up.id
    assert item.status == "imported" and item.artifact_id == a.id and item.reason is None
    assert item.size_bytes == len(data) and item.name == up.name
    assert await service.read_bytes(a) == data
    assert (a.content_hash, a.size_bytes) == (sha(data), len(data))
    assert (a.title, a.filename) == (up.name, up.name)
    assert a.created_by == f"crownest:{up.sandbox_id}"
    assert a.metadata == {
        "crownest": {
            "artifactId": up.id,
            "sandboxId": up.sandbox_id,
            "projectId": up.project_id,
            "orgId": up.org_id,
            "sourcePath": up.source_path,
            "objectKey": up.object_key,
            "createdAt": up.created_at,
            "retentionExpiresAt": up.retention_expires_at,
        }
    }
    assert (a.source, a.source_ref, a.is_primary_deliverable) == ("crownest", up.id, False)
    want = {"workflow_id": WF, "phase_id": None, "session_id": None, **expect}
    assert {k: getattr(a, k) for k in want} == want, up.name


def poll(client: httpx.Client, import_id: str, done: Callable[[dict], bool], timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/imports/{import_id}")
        assert r.status_code == 200, r.text
        body = r.json()
        if done(body):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def finished(body: dict) -> bool:
    return body["status"] in ("succeeded", "failed")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARTIFACTS_", "CROWNEST_"))}
    return {**env, **extra}


def server_env(fake: FakeCrowNest) -> dict[str, str]:
    return {
        "CROWNEST_API_KEY": fake.api_key,
        "ARTIFACTS_CROWNEST_BASE_URL": fake.base_url,
        "ARTIFACTS_CROWNEST_BACKOFF_BASE": "0.01",
        "ARTIFACTS_CROWNEST_MAX_ATTEMPTS": "3",
    }


# (name, upstream contentType or None, expected content_type, expected artifact_type)
MAPPING = [
    ("notes.md", None, "text/markdown", "markdown"),
    ("data.json", "application/json", "application/json", "json"),
    ("conf.yaml", None, "application/octet-stream", "yaml"),
    ("conf.yml", "application/yaml", "application/yaml", "yaml"),
    ("tool.py", "text/x-python", "text/x-python", "code"),
    ("app.ts", "application/typescript", "application/typescript", "code"),
    ("app.js", None, "text/javascript", "code"),
    ("run.sh", "text/x-shellscript", "text/x-shellscript", "script"),
    ("README.MD", "text/plain; charset=utf-8", "text/plain; charset=utf-8", "markdown"),
    ("picture.png", None, "image/png", "other"),
    ("no-extension", None, "application/octet-stream", "other"),
]


def proxy_page() -> Fault:
    """A proxy's HTML 502 page in front of CrowNest: not CrowNest's body, still worth a retry."""
    return Fault.raw(502, b"<html><body>502 Bad Gateway</body></html>")


TRANSIENT = {
    "download-503": ("download", Fault.unavailable),
    "download-500": ("download", Fault.server_error),
    "download-drop": ("download", lambda: Fault.drop(after_bytes=100_000)),
    "download-502-html": ("download", proxy_page),
}


PERSISTENT = {
    "download-503": ("download", Fault.unavailable, "Try again later."),
    "download-drop": (
        "download",
        lambda: Fault.drop(after_bytes=100_000),
        "transfer failed: RemoteProtocolError: ",
    ),
    "download-502-html": ("download", proxy_page, "CrowNest answered 502"),
}


AUTH = {  # {base}: the fake's base URL
    "bad-key": (
        "cn_test_wrong_key",
        "CrowNest at {base} rejected the API key (invalid_api_key): check CROWNEST_API_KEY. "
        "Invalid API key.",
    ),
    "no-read-scope": (
        FORBIDDEN_API_KEY,
        "CrowNest at {base} gave the API key no access (forbidden): it needs artifact:read; "
        "check CROWNEST_API_KEY. API key lacks required scope.",
    ),
}


def run_cli(*args: str, env: dict[str, str], wrapper: str = "") -> subprocess.CompletedProcess[str]:
    code = f"{wrapper}from app.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, "import", "crownest", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def cli_env(fake: FakeCrowNest, data_dir: Path, database_url: str | None) -> dict[str, str]:
    env = clean_env(
        CROWNEST_API_KEY=fake.api_key,
        ARTIFACTS_CROWNEST_BASE_URL=fake.base_url,
        ARTIFACTS_CROWNEST_BACKOFF_BASE="0.01",
        ARTIFACTS_CROWNEST_MAX_ATTEMPTS="3",
        ARTIFACTS_DATA_DIR=str(data_dir),
        COLUMNS="200",
    )
    if database_url is not None:
        env["ARTIFACTS_DATABASE_URL"] = database_url
    else:  # the store the command imports into: only `serve` and `migrate` create one
        data_dir.mkdir(parents=True, exist_ok=True)
        upgrade(sqlite_url(data_dir.resolve() / "artifacts.db"))
    return env


OUTCOMES = ("imported", "would import", "unchanged", "skipped", "failed")


def cells_of(stdout: str, width: int) -> list[list[str]]:
    """The cells of every table row of `width` columns in the output."""
    out = []
    for line in stdout.splitlines():
        if "│" in line:
            cells = [c.strip() for c in line.strip().strip("│").split("│")]
            if len(cells) == width:
                out.append(cells)
    return out


def table_of(stdout: str) -> dict[str, list[str]]:
    """The summary table's rows: first cell -> the other cells (the detail rows beneath an
    outcome, failures and where unchanged ones are, under '')."""
    rows: dict[str, list[str]] = {}
    for cells in cells_of(stdout, 3):
        if cells[0] == "" and cells[2]:
            rows.setdefault("", []).append(cells[2])
        elif cells[0] in OUTCOMES:
            rows[cells[0]] = cells[1:]
    return rows


def dry_run_of(stdout: str) -> dict[str, list[str]]:
    """The dry run's listing: CrowNest id (or 'total: …') -> [name, source path (the name's
    second line), bytes, content type, type]."""
    rows: dict[str, list[str]] = {}
    last: list[str] | None = None
    for cells in cells_of(stdout, 5):
        if cells[0].startswith(("art_", "total")):
            last = rows[cells[0]] = [cells[1], "", *cells[2:]]
        elif cells[0] == "" and last is not None and cells[1]:
            last[1] += cells[1]
    return rows


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed: nobody else takes it so soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LazyBytes:
    """`size` bytes made up on demand, 64 KiB blocks each stamped with its index: the fake
    slices its body, so a 1 GiB artifact never exists in this process's memory."""

    BLOCK = 64 * 1024

    def __init__(self, size: int, seed: int) -> None:
        assert size % self.BLOCK == 0
        self.size = size
        self.base = random.Random(seed).randbytes(self.BLOCK)

    def __len__(self) -> int:
        return self.size

    def block(self, i: int) -> bytes:
        return i.to_bytes(8, "big") + self.base[8:]

    def __getitem__(self, span: slice) -> bytes:
        start, stop, step = span.indices(self.size)
        assert step == 1
        out = bytearray()
        while start < stop:
            i, offset = divmod(start, self.BLOCK)
            piece = self.block(i)[offset : offset + stop - start]
            out += piece
            start += len(piece)
        return bytes(out)

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for i in range(self.size // self.BLOCK):
            digest.update(self.block(i))
        return digest.hexdigest()


PEAK = (
    "import atexit, resource, sys; atexit.register(lambda: sys.stderr.write("
    "'PEAK_RSS_KIB %d\\n' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)); "
)


def peak_of(done: subprocess.CompletedProcess[str]) -> int:
    match = re.search(r"PEAK_RSS_KIB (\d+)", done.stderr)
    assert match, done.stderr
    return int(match.group(1)) * 1024
