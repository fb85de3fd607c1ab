"""Garbage collection, trash recovery and fsck (storage/maintenance.py, `artifacts gc|fsck`,
periodic GC in the server) against real databases and a real blob directory."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from app.cli.maintenance import PROBLEMS, describe
from storage.artifacts import ArtifactService
from storage.blobs import FilesystemBlobStore
from storage.db.engine import Database
from storage.db.tables import artifacts, blobs, lineage
from storage.errors import StorageUnavailable
from storage.maintenance import collect_garbage, fsck, recover_trash
from storage.records import NewArtifact, NewContent, now_us
from tests.support.blobs import GcAfterPut
from tests.support.inprocess import start_app
from tests.support.servers import ROOT

HOUR = 3600 * 1_000_000
DAY = 24 * HOUR


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Clock:
    """Real time minus `age` microseconds: rows written now look `age` old to GC."""

    def __init__(self) -> None:
        self.age = 0

    def __call__(self) -> int:
        return now_us() - self.age


def new(**kw: Any) -> NewArtifact:
    return NewArtifact(
        **{"workflow_id": "wf", "artifact_type": "doc", "title": "t", "content_type": "text/plain"}
        | kw
    )


CONTENT = NewContent(content_type="application/octet-stream")


async def rows(db: Database, table: sa.Table) -> set[tuple[Any, ...]]:
    result = await db.run_read(lambda conn: conn.execute(sa.select(table)).all())
    return {tuple(json.dumps(v) if isinstance(v, dict) else v for v in r) for r in result}


def files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def remove(path: Path) -> None:
    path.chmod(0o644)
    path.unlink()


async def assert_clean(svc: ArtifactService) -> None:
    report = await fsck(svc.db, svc.blobs, verify_data=True)  # type: ignore[arg-type]
    assert (report.errors, report.warnings, report.clean) == ([], [], True)


async def assert_reads(svc: ArtifactService, expected: dict[str, bytes]) -> None:
    for artifact_id, data in expected.items():
        assert await svc.read_bytes(await svc.get(artifact_id)) == data


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def svc(service: ArtifactService, clock: Clock) -> ArtifactService:
    return ArtifactService(service.db, service.blobs, clock=clock)


# -- collect_garbage -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_gc_reclaims_exactly_unreferenced_old_blobs(
    svc: ArtifactService, clock: Clock, blob_dir: Path
) -> None:
    db, store = svc.db, svc.blobs
    clock.age = 5 * HOUR  # deleted 5 h ago: past a 3 h retention
    gone = await svc.create(new(), b"gone")
    await svc.delete(gone.id)
    clock.age = 2 * HOUR  # older than a 1 h grace
    live = await svc.create(new(), b"live-v1")
    await svc.replace_content(live.id, b"live-v2", CONTENT)
    parent = await svc.create(new(), b"parent-v1")
    child = await svc.create(new(derived_from=(parent.id,)), b"child")
    await svc.replace_content(parent.id, b"parent-v2", CONTENT)
    soft = await svc.create(new(), b"soft")
    await svc.delete(soft.id)  # within retention
    clock.age = 0
    young = await svc.create(new(), b"young-v1")
    await svc.replace_content(young.id, b"young-v2", CONTENT)

    # replaced versions go at once (0), but for parent's v1, which child derives from
    kw: dict[str, Any] = {"grace_us": HOUR, "deleted_retention_us": 3 * HOUR,
                          "version_retention_us": 0}  # fmt: skip
    before = (files(blob_dir), await rows(db, blobs), await rows(db, artifacts))
    dry = await collect_garbage(db, store, dry_run=True, **kw)  # type: ignore[arg-type]
    assert (files(blob_dir), await rows(db, blobs), await rows(db, artifacts)) == before
    report = await collect_garbage(db, store, **kw)  # type: ignore[arg-type]
    expected = {
        "artifacts_purged": [gone.id],
        "blobs_deleted": sorted([sha(b"gone"), sha(b"live-v1")]),
        "bytes_freed": len(b"gone") + len(b"live-v1"),
        "orphan_files_deleted": [],
        "staging_removed": [],
        "idempotency_keys_expired": 0,
        "versions_expired": 2,  # live's v1, young's v1
    }
    for r, dry_run in ((dry, True), (report, False)):
        got = r.to_json()
        got["blobs_deleted"] = sorted(got["blobs_deleted"])
        assert got == {"dry_run": dry_run, **expected}

    kept = [b"live-v2", b"parent-v1", b"parent-v2", b"child", b"soft", b"young-v1", b"young-v2"]
    assert {r[0] for r in await rows(db, blobs)} == {sha(d) for d in kept}
    assert {p.name for p in (blob_dir / "sha256").rglob("*") if p.is_file()} == {
        sha(d) for d in kept
    }
    assert {r[0] for r in await rows(db, artifacts)} == {live.id, parent.id, child.id, soft.id,
                                                        young.id}  # fmt: skip
    again = await collect_garbage(db, store, **kw)  # type: ignore[arg-type]
    assert (again.blobs_deleted, again.artifacts_purged) == ([], [])

    check = await fsck(db, store, verify_data=True)  # type: ignore[arg-type]
    assert check.errors == []
    assert check.warnings == [{"problem": "unreferenced_blob", "digest": sha(b"young-v1")}]
    last = await collect_garbage(db, store, grace_us=0, deleted_retention_us=3 * HOUR)  # type: ignore[arg-type]
    assert last.blobs_deleted == [sha(b"young-v1")]
    await assert_clean(svc)
    await assert_reads(
        svc,
        {live.id: b"live-v2", parent.id: b"parent-v2", child.id: b"child", young.id: b"young-v2"},
    )


@pytest.mark.anyio
async def test_purge_goes_leaves_first_and_keeps_parents_of_live_and_former_primaries(
    svc: ArtifactService, clock: Clock, blob_dir: Path
) -> None:
    db, store = svc.db, svc.blobs
    clock.age = HOUR
    p = await svc.create(new(), b"p")  # deleted parent of a live child: kept
    c = await svc.create(new(derived_from=(p.id,)), b"c")
    q = await svc.create(new(), b"q")  # deleted parent of a deleted child: purged after it
    r = await svc.create(new(derived_from=(q.id,)), b"r")
    d = await svc.create(new(is_primary_deliverable=True), b"d")  # former primary: kept
    for a in (r, q, p, d):
        await svc.delete(a.id)
    report = await collect_garbage(db, store, grace_us=0, deleted_retention_us=0)  # type: ignore[arg-type]
    assert report.artifacts_purged == [r.id, q.id]
    assert sorted(report.blobs_deleted) == sorted([sha(b"q"), sha(b"r")])
    assert {x[0] for x in await rows(db, artifacts)} == {p.id, c.id, d.id}
    assert {(x[0], x[2]) for x in await rows(db, lineage)} == {(c.id, p.id)}
    assert {x[0] for x in await rows(db, blobs)} == {sha(b"p"), sha(b"c"), sha(b"d")}
    assert (blob_dir / "sha256" / sha(b"p")[:2] / sha(b"p")[2:4] / sha(b"p")).is_file()
    await assert_clean(svc)
    await assert_reads(svc, {c.id: b"c"})


@pytest.mark.anyio
async def test_gc_removes_old_staging_and_orphan_files_only(
    svc: ArtifactService, blob_dir: Path
) -> None:
    store = svc.blobs
    assert isinstance(store, FilesystemBlobStore)
    old, young = b"orphan-old", b"orphan-young"
    await store.put_bytes(old)
    await store.put_bytes(young)
    (blob_dir / "tmp" / "put-old").write_bytes(b"x")
    (blob_dir / "tmp" / "put-young").write_bytes(b"y")
    past = time.time() - 7200
    for path in (store.path_of(sha(old)), blob_dir / "tmp" / "put-old"):
        os.utime(path, (past, past))
    kw: dict[str, Any] = {"grace_us": HOUR, "deleted_retention_us": DAY}
    dry = await collect_garbage(svc.db, store, dry_run=True, **kw)
    report = await collect_garbage(svc.db, store, **kw)
    for r in (dry, report):
        assert (r.orphan_files_deleted, r.staging_removed) == ([sha(old)], ["put-old"])
        assert (r.blobs_deleted, r.artifacts_purged) == ([], [])
    assert files(blob_dir) == {
        store.path_of(sha(young)).relative_to(blob_dir).as_posix(),
        "tmp/put-young",
    }
    check = await fsck(svc.db, store, verify_data=False)
    assert check.errors == []
    assert sorted(check.warnings, key=str) == sorted(
        [
            {"problem": "blob_without_row", "digest": sha(young)},
            {"problem": "staging_leftover", "name": "put-young"},
        ],
        key=str,
    )
    await collect_garbage(svc.db, store, grace_us=0, deleted_retention_us=DAY)
    assert files(blob_dir) == set()
    await assert_clean(svc)


# -- trash -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_recover_trash_restores_rows_blobs_and_deletes_the_rest(
    svc: ArtifactService, blob_dir: Path
) -> None:
    store = svc.blobs
    assert isinstance(store, FilesystemBlobStore)
    a = await svc.create(new(), b"kept")
    await store.put_bytes(b"rowless")
    assert await store.to_trash(sha(b"kept")) and await store.to_trash(sha(b"rowless"))
    check = await fsck(svc.db, store, verify_data=False)
    assert sorted(check.errors, key=str) == sorted(
        [
            {"problem": "blob_missing", "artifact_id": a.id, "digest": sha(b"kept")},
            {"problem": "row_without_blob", "digest": sha(b"kept")},
        ],
        key=str,
    )
    assert sorted(w["name"] for w in check.warnings) == sorted([sha(b"kept"), sha(b"rowless")])
    assert await recover_trash(svc.db, store) == [sha(b"kept")]
    assert files(blob_dir) == {store.path_of(sha(b"kept")).relative_to(blob_dir).as_posix()}
    await assert_clean(svc)
    await assert_reads(svc, {a.id: b"kept"})


def test_server_start_recovers_trash(tmp_path: Path, database_url: str) -> None:
    data = tmp_path / "data"

    async def setup() -> str:
        db = Database(database_url)
        try:
            store = FilesystemBlobStore(data / "blobs")
            a = await ArtifactService(db, store).create(new(), b"survivor")
            await store.put_bytes(b"rowless")
            assert await store.to_trash(sha(b"survivor")) and await store.to_trash(sha(b"rowless"))
            return a.id
        finally:
            await db.dispose()

    artifact_id = asyncio.run(setup())
    server = start_app(data, database_url=database_url)
    try:
        with server.client() as http:
            r = http.get(f"/artifacts/{artifact_id}/download")
            assert (r.status_code, r.content) == (200, b"survivor")
    finally:
        server.stop()
    assert list((data / "blobs" / "trash").iterdir()) == []


# -- GC racing uploads -----------------------------------------------------------------------



@pytest.mark.anyio
async def test_upload_whose_blob_gc_reclaimed_commits_nothing(
    svc: ArtifactService, clock: Clock, blob_dir: Path
) -> None:
    clock.age = 2 * HOUR
    a = await svc.create(new(), b"race")
    await svc.replace_content(a.id, b"other", CONTENT)  # b"race" now a replaced version, old
    clock.age = 0

    # put (dedupe hit), GC (keeping no replaced version) reclaims it, then the service stores
    # the same bytes again
    assert not (await svc.blobs.put_bytes(b"race")).created  # type: ignore[attr-defined]
    kw: dict[str, Any] = {"grace_us": 0, "deleted_retention_us": DAY, "version_retention_us": 0}
    assert (await collect_garbage(svc.db, svc.blobs, **kw)).blobs_deleted == [sha(b"race")]
    b = await svc.create(new(), b"race")
    await assert_clean(svc)
    await assert_reads(svc, {a.id: b"other", b.id: b"race"})

    # the same, with GC inside the window between the put and the transaction
    await svc.replace_content(b.id, b"other", CONTENT)
    store = GcAfterPut(blob_dir)
    store.db, store.armed = svc.db, True
    racer = ArtifactService(svc.db, store)
    before = await rows(svc.db, artifacts)
    with pytest.raises(StorageUnavailable):
        await racer.create(new(), b"race")
    assert await rows(svc.db, artifacts) == before
    await assert_clean(svc)
    c = await racer.create(new(), b"race")  # the retry succeeds
    await assert_clean(svc)
    await assert_reads(svc, {c.id: b"race", b.id: b"other"})


@pytest.mark.anyio
async def test_concurrent_creates_and_gc_keep_the_store_consistent(svc: ArtifactService) -> None:
    data = b"hot content"
    live: dict[str, bytes] = {}
    failures: list[BaseException] = []
    stop = time.monotonic() + 2

    async def creator(n: int) -> None:
        i = 0
        while time.monotonic() < stop:
            i += 1
            try:
                a = await svc.create(new(), data)
            except StorageUnavailable as exc:
                failures.append(exc)
                continue
            if (n + i) % 2:
                await svc.delete(a.id)  # purged by GC: its blob becomes garbage again
            else:
                live[a.id] = data

    async def collector() -> None:
        while time.monotonic() < stop + 0.2:
            await collect_garbage(svc.db, svc.blobs, grace_us=0, deleted_retention_us=0)  # type: ignore[arg-type]
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(collector)
        for n in range(20):
            tg.start_soon(creator, n)
    assert live
    await collect_garbage(svc.db, svc.blobs, grace_us=0, deleted_retention_us=0)  # type: ignore[arg-type]
    await assert_clean(svc)
    await assert_reads(svc, live)
    assert {r[0] for r in await rows(svc.db, artifacts)} == set(live)


# -- fsck ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_fsck_reports_each_problem_with_its_code(
    svc: ArtifactService, blob_dir: Path
) -> None:
    store = svc.blobs
    assert isinstance(store, FilesystemBlobStore)
    ok = await svc.create(new(), b"fine")
    await assert_clean(svc)
    await store.put_bytes(b"orphan")
    only_warnings = await fsck(svc.db, store, verify_data=True)
    assert only_warnings.clean and only_warnings.errors == []
    assert only_warnings.warnings == [{"problem": "blob_without_row", "digest": sha(b"orphan")}]

    missing = await svc.create(new(), b"missing")
    remove(store.path_of(sha(b"missing")))
    grow = await svc.create(new(), b"grow")
    store.path_of(sha(b"grow")).chmod(0o644)
    with store.path_of(sha(b"grow")).open("ab") as f:
        f.write(b"!")
    await svc.create(new(), b"flip")
    store.path_of(sha(b"flip")).chmod(0o644)
    store.path_of(sha(b"flip")).write_bytes(b"flop")
    replaced = await svc.create(new(), b"old")
    await svc.replace_content(replaced.id, b"new", CONTENT)
    (blob_dir / "tmp" / "put-left").write_bytes(b"x")
    (blob_dir / "trash").mkdir(exist_ok=True)
    (blob_dir / "trash" / sha(b"trashed")).write_bytes(b"trashed")
    (blob_dir / "sha256" / "junk").write_bytes(b"x")
    deep = blob_dir / "sha256" / "ab" / "cd" / "junk"
    deep.parent.mkdir(parents=True, exist_ok=True)
    deep.write_bytes(b"x")

    errors = [
        {"problem": "blob_missing", "artifact_id": missing.id, "digest": sha(b"missing")},
        {"problem": "row_without_blob", "digest": sha(b"missing")},
        {"problem": "size_mismatch", "artifact_id": grow.id, "digest": sha(b"grow"),
         "expected": 4, "actual": 5},
        {"problem": "size_mismatch", "digest": sha(b"grow"), "expected": 4, "actual": 5},
        {"problem": "stray_file", "path": "sha256/junk"},
        {"problem": "stray_file", "path": "sha256/ab/cd/junk"},
    ]  # fmt: skip
    warnings = [  # (b"old" is version 1 of `replaced`: kept, so no garbage)
        {"problem": "blob_without_row", "digest": sha(b"orphan")},
        {"problem": "staging_leftover", "name": "put-left"},
        {"problem": "trash_leftover", "name": sha(b"trashed")},
    ]
    corrupt = [
        {"problem": "blob_corrupt", "digest": sha(b"grow"), "actual": sha(b"grow!")},
        {"problem": "blob_corrupt", "digest": sha(b"flip"), "actual": sha(b"flop")},
    ]
    for verify, expected_errors in ((False, errors), (True, errors + corrupt)):
        report = await fsck(svc.db, store, verify_data=verify)
        assert sorted(report.errors, key=str) == sorted(expected_errors, key=str)
        assert sorted(report.warnings, key=str) == sorted(warnings, key=str)
        assert report.clean is False and report.to_json()["clean"] is False
        assert report.artifacts_checked == 5  # ok, missing, grow, flip, replaced
        assert report.versions_checked == 6  # one each, and replaced's two
    assert ok.id  # still there, untouched
    await assert_reads(svc, {ok.id: b"fine", replaced.id: b"new"})


# -- CLI and the server ----------------------------------------------------------------------


def cli(
    data: Path, database_url: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "ARTIFACTS_DATA_DIR": str(data),
               "ARTIFACTS_DATABASE_URL": database_url, **(env or {})}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", *args],
        env=environ, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_cli_gc_and_fsck(tmp_path: Path, database_url: str) -> None:
    data = tmp_path / "data"
    store = FilesystemBlobStore(data / "blobs")

    async def setup() -> str:
        db = Database(database_url)
        try:
            svc = ArtifactService(db, store, clock=lambda: now_us() - HOUR)
            a = await svc.create(new(), b"v1")
            await svc.replace_content(a.id, b"v2", CONTENT)
            return a.id
        finally:
            await db.dispose()

    asyncio.run(setup())
    r = cli(data, database_url, "fsck", "--json")
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert body == {
        "verified_data": False,
        "artifacts_checked": 1,
        "versions_checked": 2,
        "blobs_checked": 2,
        "errors": [],
        "warnings": [],  # v1 is a version, kept: no garbage
        "clean": True,
    }
    no_history = {"ARTIFACTS_VERSION_RETENTION": "0"}
    r = cli(data, database_url, "gc", "--dry-run", env=no_history)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("would reclaim 1 blobs (2 bytes)")
    assert store.path_of(sha(b"v1")).is_file()
    r = cli(data, database_url, "gc", "--grace", "abc")
    assert r.returncode == 2 and "--grace" in r.stderr
    r = cli(data, database_url, "gc", "--grace", "0", "--json", env=no_history)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "dry_run": False,
        "artifacts_purged": [],
        "blobs_deleted": [sha(b"v1")],
        "bytes_freed": 2,
        "orphan_files_deleted": [],
        "staging_removed": [],
        "idempotency_keys_expired": 0,
        "versions_expired": 1,
    }
    assert not store.path_of(sha(b"v1")).exists()
    r = cli(data, database_url, "fsck", "--verify-data", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["warnings"] == []
    remove(store.path_of(sha(b"v2")))
    r = cli(data, database_url, "fsck", "--json")
    assert r.returncode == 1
    body = json.loads(r.stdout)
    assert body["clean"] is False
    assert sorted(e["problem"] for e in body["errors"]) == ["blob_missing", "row_without_blob"]


def test_cli_fsck_says_what_is_wrong_where_and_what_to_do(
    tmp_path: Path, database_url: str
) -> None:
    data = tmp_path / "data"
    store = FilesystemBlobStore(data / "blobs")

    async def make(svc: ArtifactService) -> str:
        a = await svc.create(new(), b"v1")
        await svc.replace_content(a.id, b"v2", CONTENT)
        return (await svc.create(new(), b"lost")).id

    lost = run_service(database_url, store, make)
    remove(store.path_of(sha(b"lost")))
    r = cli(data, database_url, "fsck")
    assert (r.returncode, r.stderr) == (1, "")
    assert r.stdout.splitlines() == [
        f"error: artifact {lost}: its blob {sha(b'lost')} is missing from the blob store; "
        "restore the file from a backup, or upload the same bytes again",
        f"error: blob {sha(b'lost')} is recorded in the database but missing from the blob "
        "store; restore the file from a backup, or upload the same bytes again",
        "checked 2 artifacts, 3 versions and 2 blobs: 2 errors, 0 warnings; the store needs repair",
    ]

    async def heal(svc: ArtifactService) -> None:  # as the advice says: the same bytes again
        await svc.replace_content(lost, b"lost", CONTENT)

    run_service(database_url, store, heal)
    r = cli(data, database_url, "fsck", "--verify-data")
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.splitlines()[-1] == (
        "checked 2 artifacts, 4 versions and 3 blobs, data hashed: 0 errors, 0 warnings; the "
        "store is consistent"
    )


def run_service(database_url: str, store: FilesystemBlobStore, job: Any) -> Any:
    async def go() -> Any:
        db = Database(database_url)
        try:
            return await job(ArtifactService(db, store, clock=lambda: now_us() - HOUR))
        finally:
            await db.dispose()

    return asyncio.run(go())


def test_every_fsck_problem_has_a_sentence() -> None:
    """Each problem code storage/maintenance.py reports reads as a sentence in `artifacts
    fsck`, whatever fields it carries; a code the CLI does not know still shows every field."""
    source = (ROOT / "storage" / "maintenance.py").read_text()
    codes = set(re.findall(r'"problem": "(\w+)"', source))
    assert len(codes) >= 20
    assert codes == set(PROBLEMS)
    every_field = {"artifact_id": "A", "digest": "D", "expected": 1, "actual": 2, "path": "P",
                   "name": "N", "version": 3, "field": "F", "parent_id": "B"}  # fmt: skip
    for code in codes:
        line = describe({"problem": code, **every_field})
        assert code not in line and "{" not in line
    assert describe({"problem": "new_kind", "digest": "D", "actual": 2}) == (
        "new_kind: digest D, actual 2"
    )


def test_server_runs_gc_periodically(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every ARTIFACTS_GC_INTERVAL, with the server's settings (here: no replaced version kept),
    and one log line a run."""
    caplog.set_level(logging.INFO, logger="artifacts")
    data = tmp_path / "data"
    store = FilesystemBlobStore(data / "blobs")

    async def setup() -> str:
        db = Database(database_url)
        try:
            return (await ArtifactService(db, store).create(new(), b"before")).id
        finally:
            await db.dispose()

    artifact_id = asyncio.run(setup())
    env = {"ARTIFACTS_GC_INTERVAL": "1", "ARTIFACTS_GC_GRACE": "0",
           "ARTIFACTS_VERSION_RETENTION": "0"}  # fmt: skip
    server = start_app(data, database_url=database_url, env=env)
    try:
        with server.client() as http:
            r = http.post(
                f"/artifacts/{artifact_id}/upload",
                files={"file": ("a.bin", b"after", "application/octet-stream")},
            )
            assert r.status_code == 200, r.text
            old = store.path_of(sha(b"before"))
            deadline = time.monotonic() + 10
            while old.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not old.exists()
            r = http.get(f"/artifacts/{artifact_id}/download")
            assert (r.status_code, r.content) == (200, b"after")
            line = (f"gc: 1 blobs ({len(b'before')} bytes), 1 old versions expired, "
                    "0 artifacts purged, 0 staging files, 0 keys")  # fmt: skip
            while line not in gc_lines(caplog) and time.monotonic() < deadline:
                time.sleep(0.1)  # (the run logs once it is over)
            assert line in gc_lines(caplog)
    finally:
        server.stop()


def gc_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("gc: ")]
