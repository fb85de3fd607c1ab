"""Versions and the keeping of bytes (issue 17): ARTIFACTS_VERSION_RETENTION, what GC keeps
and reclaims once artifacts have versions, purge of every version, fsck's version checks, and
`artifacts gc` saying so. Real databases (both), a real blob directory; time is controlled by
the service's clock (a version is superseded at the clock's time of the upload replacing it)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from app.settings import Settings
from storage.artifacts import ArtifactService
from storage.blobs import FilesystemBlobStore
from storage.db.engine import Database
from storage.db.tables import artifact_versions, artifacts, blobs, lineage
from storage.errors import StorageUnavailable
from storage.maintenance import collect_garbage, fsck
from storage.records import now_us
from tests.support.blobs import GcAfterPut
from tests.support.sql import run_async
from tests.test_maintenance import (
    CONTENT,
    DAY,
    HOUR,
    Clock,
    assert_clean,
    assert_reads,
    cli,
    new,
    remove,
    sha,
)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def svc(service: ArtifactService, clock: Clock) -> ArtifactService:
    return ArtifactService(service.db, service.blobs, clock=clock)


async def versions(db: Database) -> dict[tuple[str, int], str]:
    """(artifact id, version) -> content hash, of every version row."""
    v = artifact_versions.c
    query = sa.select(v.artifact_id, v.version, v.content_hash)
    found = await db.run_read(lambda conn: conn.execute(query).all())
    return {(r.artifact_id, r.version): r.content_hash for r in found}


async def blob_rows(db: Database) -> set[str]:
    query = sa.select(blobs.c.digest)
    return set(await db.run_read(lambda conn: conn.execute(query).scalars().all()))


def stored(store: Any, *contents: bytes) -> dict[bytes, bool]:
    """Whether each content's blob file is in the (filesystem) store."""
    assert isinstance(store, FilesystemBlobStore)
    return {c: store.path_of(sha(c)).is_file() for c in contents}


async def gc(svc: ArtifactService, **kw: Any) -> dict[str, Any]:
    args = {"grace_us": 0, "deleted_retention_us": DAY, **kw}
    report = await collect_garbage(svc.db, svc.blobs, **args)  # type: ignore[arg-type]
    got = report.to_json()
    got["blobs_deleted"] = sorted(got["blobs_deleted"])
    return got


# -- the setting -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), ("", None), ("forever", None), (" Forever ", None), ("0", 0.0),
     ("90", 90.0), ("30d", 30 * 86400.0), ("1.5h", 5400.0)],
)  # fmt: skip
def test_version_retention_setting(
    monkeypatch: pytest.MonkeyPatch, value: str | None, seconds: float | None
) -> None:
    if value is None:
        monkeypatch.delenv("ARTIFACTS_VERSION_RETENTION", raising=False)
    else:
        monkeypatch.setenv("ARTIFACTS_VERSION_RETENTION", value)
    settings = Settings()
    assert settings.version_retention == seconds
    assert settings.version_retention_us == (None if seconds is None else int(seconds * 1e6))


def test_version_retention_setting_refuses_what_is_not_a_duration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ARTIFACTS_VERSION_RETENTION", "soon")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert "'soon' (want forever or 30s, 15m, 2h, 7d or a number of seconds)" in str(caught.value)


# -- retention -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_replaced_versions_are_kept_forever_by_default(
    svc: ArtifactService, clock: Clock
) -> None:
    clock.age = 30 * DAY
    a = await svc.create(new(), b"v1")
    await svc.replace_content(a.id, b"v2", CONTENT)
    await svc.replace_content(a.id, b"v3", CONTENT)
    clock.age = 0
    before = await versions(svc.db)
    assert before == {(a.id, 1): sha(b"v1"), (a.id, 2): sha(b"v2"), (a.id, 3): sha(b"v3")}
    report = await gc(svc)  # no grace, and no version_retention_us: for ever
    assert (report["versions_expired"], report["blobs_deleted"]) == (0, [])
    assert await versions(svc.db) == before
    assert stored(svc.blobs, b"v1", b"v2", b"v3") == {b"v1": True, b"v2": True, b"v3": True}
    await assert_clean(svc)  # a retained version's blob is not garbage: no warning either


@pytest.mark.anyio
async def test_gc_expires_versions_past_retention_and_reclaims_only_unshared_blobs(
    svc: ArtifactService, clock: Clock
) -> None:
    """Retention counts from when a version was replaced, not from when it was made; a blob
    goes only once no retained version, no artifact row and no edge uses it."""
    db = svc.db
    clock.age = 10 * HOUR
    a = await svc.create(new(), b"a1")
    b = await svc.create(new(), b"shared")
    c = await svc.create(new(), b"shared")  # the same bytes, replaced later
    d = await svc.create(new(), b"d1")
    clock.age = 5 * HOUR  # replaced 5 h ago: past a 3 h retention
    await svc.replace_content(a.id, b"a2", CONTENT)
    await svc.replace_content(b.id, b"b2", CONTENT)
    await svc.replace_content(d.id, b"d2", CONTENT)
    e = await svc.create(new(), b"d1")  # a current artifact with d's old bytes
    clock.age = 2 * HOUR  # replaced 2 h ago: within it
    await svc.replace_content(a.id, b"a3", CONTENT)
    await svc.replace_content(c.id, b"c2", CONTENT)
    clock.age = 0

    kw = {"version_retention_us": 3 * HOUR}
    before = (await versions(db), await blob_rows(db))
    dry = await gc(svc, dry_run=True, **kw)
    assert (await versions(db), await blob_rows(db)) == before
    report = await gc(svc, **kw)
    expected = {
        "versions_expired": 3,  # a v1, b v1, d v1
        "blobs_deleted": [sha(b"a1")],  # b's "shared" is c's v1; d's "d1" is e's content
        "bytes_freed": 2,
        "artifacts_purged": [],
    }
    for r, dry_run in ((dry, True), (report, False)):
        assert {k: r[k] for k in expected} == expected, r
        assert r["dry_run"] is dry_run
    assert await versions(db) == {
        (a.id, 2): sha(b"a2"), (a.id, 3): sha(b"a3"), (b.id, 2): sha(b"b2"),
        (c.id, 1): sha(b"shared"), (c.id, 2): sha(b"c2"), (d.id, 2): sha(b"d2"),
        (e.id, 1): sha(b"d1"),
    }  # fmt: skip
    assert stored(svc.blobs, b"a1", b"shared", b"d1") == {
        b"a1": False, b"shared": True, b"d1": True,
    }  # fmt: skip
    await assert_clean(svc)

    # retention 0: every replaced version goes at the next run (a's v2 and c's v1), and with
    # c's v1 the last user of "shared"
    report = await gc(svc, version_retention_us=0)
    assert report["versions_expired"] == 2
    assert report["blobs_deleted"] == sorted([sha(b"a2"), sha(b"shared")])
    assert set(await versions(db)) == {(a.id, 3), (b.id, 2), (c.id, 2), (d.id, 2), (e.id, 1)}
    await assert_clean(svc)
    await assert_reads(svc, {a.id: b"a3", b.id: b"b2", c.id: b"c2", d.id: b"d2", e.id: b"d1"})


@pytest.mark.anyio
async def test_a_version_a_live_artifact_derives_from_survives_retention(
    svc: ArtifactService, clock: Clock
) -> None:
    db = svc.db
    clock.age = 10 * HOUR
    p = await svc.create(new(), b"p1")
    child = await svc.create(new(derived_from=(p.id,)), b"child")  # pins p's version 1
    q = await svc.create(new(), b"q1")
    legacy = await svc.create(new(derived_from=(q.id,)), b"legacy")
    await svc.replace_content(p.id, b"p2", CONTENT)
    await svc.replace_content(q.id, b"q2", CONTENT)
    # an edge made before versions existed pins by content: parent_version NULL
    await db.run_write(
        lambda conn: conn.execute(
            lineage.update().where(lineage.c.child_id == legacy.id).values(parent_version=None)
        )
    )
    await svc.replace_content(p.id, b"p3", CONTENT)  # p's version 2 is pinned by nothing
    clock.age = 0

    report = await gc(svc, version_retention_us=0)
    assert (report["versions_expired"], report["blobs_deleted"]) == (1, [sha(b"p2")])
    assert set(await versions(db)) >= {(p.id, 1), (q.id, 1)}
    assert (p.id, 2) not in await versions(db)
    await assert_clean(svc)

    # once the child is deleted, its edge pins no version: p's v1 goes, yet its bytes stay
    # as long as the deleted child's row (and edge) does
    await svc.delete(child.id)
    report = await gc(svc, version_retention_us=0)
    assert (report["versions_expired"], report["blobs_deleted"]) == (1, [])
    assert (p.id, 1) not in await versions(db)
    assert stored(svc.blobs, b"p1") == {b"p1": True}
    await assert_clean(svc)
    report = await gc(svc, version_retention_us=0, deleted_retention_us=0)
    assert report["artifacts_purged"] == [child.id]
    assert report["blobs_deleted"] == sorted([sha(b"p1"), sha(b"child")])
    assert (q.id, 1) in await versions(db)  # legacy (live) still pins q1 by its bytes
    await assert_clean(svc)
    await assert_reads(svc, {p.id: b"p3", q.id: b"q2", legacy.id: b"legacy"})


@pytest.mark.anyio
async def test_purge_removes_every_version_and_keeps_bytes_used_elsewhere(
    svc: ArtifactService, clock: Clock
) -> None:
    db = svc.db
    clock.age = 10 * HOUR
    a = await svc.create(new(), b"a1")
    await svc.replace_content(a.id, b"a2", CONTENT)
    await svc.replace_content(a.id, b"kept elsewhere", CONTENT)
    await svc.replace_content(a.id, b"a4", CONTENT)
    other = await svc.create(new(), b"kept elsewhere")
    await svc.replace_content(other.id, b"other now", CONTENT)  # its v1 holds the bytes
    await svc.delete(a.id)
    clock.age = 0
    assert len([k for k in await versions(db) if k[0] == a.id]) == 4

    dry = await gc(svc, deleted_retention_us=0, dry_run=True)
    report = await gc(svc, deleted_retention_us=0)  # retention of versions: for ever
    for r in (dry, report):
        assert r["artifacts_purged"] == [a.id]
        assert r["versions_expired"] == 0
        assert r["blobs_deleted"] == sorted([sha(b"a1"), sha(b"a2"), sha(b"a4")])
    assert await versions(db) == {
        (other.id, 1): sha(b"kept elsewhere"), (other.id, 2): sha(b"other now"),
    }  # fmt: skip
    found = await db.run_read(lambda conn: conn.execute(sa.select(artifacts.c.id)).all())
    assert [r.id for r in found] == [other.id]
    await assert_clean(svc)


@pytest.mark.anyio
async def test_a_dry_run_says_what_the_run_does_when_purge_and_expiry_meet(
    svc: ArtifactService, clock: Clock
) -> None:
    """A purged artifact's versions go with it (not counted as expired), in a dry run as in
    the run; a blob shared by a purged artifact's version and an expired one goes too."""
    clock.age = 10 * HOUR
    gone = await svc.create(new(), b"both")
    await svc.replace_content(gone.id, b"gone now", CONTENT)
    await svc.delete(gone.id)
    kept = await svc.create(new(), b"both")
    await svc.replace_content(kept.id, b"kept now", CONTENT)
    clock.age = 0
    kw = {"deleted_retention_us": 0, "version_retention_us": 0}
    dry = await gc(svc, dry_run=True, **kw)
    report = await gc(svc, **kw)
    for r in (dry, report):
        assert (r["artifacts_purged"], r["versions_expired"]) == ([gone.id], 1), r
        assert r["blobs_deleted"] == sorted([sha(b"both"), sha(b"gone now")])
    assert await versions(svc.db) == {(kept.id, 2): sha(b"kept now")}
    await assert_clean(svc)


# -- GC racing uploads of the bytes of an expiring version ------------------------------------



@pytest.mark.anyio
async def test_an_upload_racing_the_expiry_of_its_bytes_stores_them_or_nothing(
    svc: ArtifactService, clock: Clock, blob_dir: Path
) -> None:
    """The bytes only an expiring version holds, uploaded again while GC expires that version
    and reclaims them: the upload fails cleanly (503) and its retry stores them anew."""
    clock.age = 2 * HOUR
    a = await svc.create(new(), b"old bytes")
    await svc.replace_content(a.id, b"new bytes", CONTENT)
    clock.age = 0
    store = GcAfterPut(blob_dir)
    store.db, store.armed = svc.db, True
    store.versions_expired = 1
    racer = ArtifactService(svc.db, store)
    before = await versions(svc.db)
    with pytest.raises(StorageUnavailable):
        await racer.replace_content(a.id, b"old bytes", CONTENT)
    assert await versions(svc.db) == {k: v for k, v in before.items() if k != (a.id, 1)}
    await assert_clean(svc)
    again = await racer.replace_content(a.id, b"old bytes", CONTENT)  # the retry
    await assert_clean(svc)
    await assert_reads(svc, {a.id: b"old bytes"})
    assert (await versions(svc.db))[(a.id, again.version)] == sha(b"old bytes")


@pytest.mark.anyio
async def test_concurrent_uploads_and_gc_with_retention_zero_stay_consistent(
    svc: ArtifactService,
) -> None:
    """Uploads flipping artifacts between two contents while GC expires every replaced
    version and reclaims whatever that frees, again and again."""
    contents = (b"hot one", b"hot two")
    ids = [(await svc.create(new(), contents[0])).id for _ in range(4)]
    current = dict.fromkeys(ids, contents[0])
    stop = anyio.current_time() + 2

    async def uploader(artifact_id: str) -> None:
        i = 0
        while anyio.current_time() < stop:
            i += 1
            data = contents[i % 2]
            try:
                await svc.replace_content(artifact_id, data, CONTENT)
            except StorageUnavailable:
                continue
            current[artifact_id] = data

    async def collector() -> None:
        while anyio.current_time() < stop + 0.2:
            await gc(svc, version_retention_us=0)
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(collector)
        for artifact_id in ids:
            tg.start_soon(uploader, artifact_id)
    await gc(svc, version_retention_us=0)
    await assert_clean(svc)
    await assert_reads(svc, current)
    assert len(await versions(svc.db)) == len(ids)  # only the current versions are left


# -- fsck ------------------------------------------------------------------------------------


async def raw_sql(database_url: str, *statements: tuple[str, dict[str, Any]]) -> None:
    """Statements straight at the database, its foreign keys not enforced: the damage fsck is
    there to find (a bare SQLite connection has them off; PostgreSQL is told to skip them)."""
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(sa.text("SET LOCAL session_replication_role = replica"))
            for sql, params in statements:
                await conn.execute(sa.text(sql), params)
    finally:
        await engine.dispose()


@pytest.mark.anyio
async def test_fsck_checks_every_version(
    svc: ArtifactService, database_url: str, blob_dir: Path
) -> None:
    store = svc.blobs
    assert isinstance(store, FilesystemBlobStore)
    gone = await svc.create(new(), b"gone-v1")  # a replaced version whose blob is lost
    await svc.replace_content(gone.id, b"gone-v2", CONTENT)
    grown = await svc.create(new(), b"grown-v1")  # ... whose blob grew
    await svc.replace_content(grown.id, b"grown-v2", CONTENT)
    rowless = await svc.create(new(), b"rowless-v1")  # ... whose blob row is gone
    await svc.replace_content(rowless.id, b"rowless-v2", CONTENT)
    drifted = await svc.create(new(), b"drifted")  # its row disagrees with its version
    unversioned = await svc.create(new(), b"unversioned")  # no current version row
    parent = await svc.create(new(), b"parent")
    child = await svc.create(new(derived_from=(parent.id,)), b"child")
    await assert_clean(svc)

    remove(store.path_of(sha(b"gone-v1")))
    store.path_of(sha(b"grown-v1")).chmod(0o644)
    with store.path_of(sha(b"grown-v1")).open("ab") as f:
        f.write(b"!")
    orphan_id = "00000000-0000-4000-8000-00000000dead"
    await raw_sql(
        database_url,
        ("DELETE FROM blobs WHERE digest = :d", {"d": sha(b"rowless-v1")}),
        ("UPDATE artifacts SET size_bytes = 99, version = 3 WHERE id = :i", {"i": drifted.id}),
        ("DELETE FROM artifact_versions WHERE artifact_id = :i", {"i": unversioned.id}),
        (
            "INSERT INTO artifact_versions (artifact_id, version, content_hash, size_bytes,"
            " content_type, is_text, created_at) VALUES (:i, 1, :d, 6, 'text/plain', TRUE, 1)",
            {"i": orphan_id, "d": sha(b"parent")},
        ),
        ("UPDATE lineage SET parent_version = 9 WHERE child_id = :i", {"i": child.id}),
    )

    def v(a: str, n: int, data: bytes) -> dict[str, Any]:
        return {"artifact_id": a, "version": n, "digest": sha(data)}

    def mismatch(field: str, expected: Any, actual: Any) -> dict[str, Any]:
        return {"problem": "current_version_mismatch", "artifact_id": drifted.id,
                "field": field, "expected": expected, "actual": actual}  # fmt: skip

    version_errors = [
        {"problem": "version_blob_missing", **v(gone.id, 1, b"gone-v1")},
        {"problem": "version_size_mismatch", **v(grown.id, 1, b"grown-v1"),
         "expected": 8, "actual": 9},
        {"problem": "version_blob_row_missing", **v(rowless.id, 1, b"rowless-v1")},
        {"problem": "version_orphaned", **v(orphan_id, 1, b"parent")},
        {"problem": "current_version_missing", "artifact_id": unversioned.id, "version": 1},
        mismatch("version", 3, 1),
        mismatch("size_bytes", 99, 7),
        {"problem": "lineage_version_missing", "artifact_id": child.id, "parent_id": parent.id,
         "version": 9},
    ]  # fmt: skip
    # what the same damage shows besides (blob checks that were there before versions)
    blob_errors = [
        {"problem": "row_without_blob", "digest": sha(b"gone-v1")},
        {"problem": "size_mismatch", "digest": sha(b"grown-v1"), "expected": 8, "actual": 9},
        {"problem": "size_mismatch", "artifact_id": drifted.id, "digest": sha(b"drifted"),
         "expected": 99, "actual": 7},
    ]  # fmt: skip
    corrupt = [{"problem": "blob_corrupt", "digest": sha(b"grown-v1"), "actual": sha(b"grown-v1!")}]
    for verify, extra in ((False, []), (True, corrupt)):
        report = await fsck(svc.db, store, verify_data=verify)
        assert sorted(report.errors, key=str) == sorted(version_errors + blob_errors + extra,
                                                        key=str)  # fmt: skip
        assert report.warnings == [{"problem": "blob_without_row", "digest": sha(b"rowless-v1")}]
        assert (report.artifacts_checked, report.versions_checked) == (7, 10)


# -- the CLI ---------------------------------------------------------------------------------


def test_cli_gc_reports_versions_expired(tmp_path: Path, database_url: str) -> None:
    data = tmp_path / "data"
    store = FilesystemBlobStore(data / "blobs")

    async def setup() -> str:
        db = Database(database_url)
        try:
            svc = ArtifactService(db, store, clock=lambda: now_us() - 2 * DAY)
            a = await svc.create(new(), b"v1")
            await svc.replace_content(a.id, b"v2", CONTENT)
            await svc.replace_content(a.id, b"v3", CONTENT)
            return a.id
        finally:
            await db.dispose()

    artifact_id = asyncio.run(setup())
    r = cli(data, database_url, "gc", "--grace", "0")  # ARTIFACTS_VERSION_RETENTION: unset
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == (
        "reclaimed 0 blobs (0 bytes), 0 orphan files, 0 staging files; expired 0 old versions; "
        "purged 0 deleted artifacts and 0 expired idempotency keys\n"
    )
    r = cli(data, database_url, "fsck")
    assert r.stdout.splitlines() == [
        "checked 1 artifact, 3 versions and 3 blobs: 0 errors, 0 warnings; the store is consistent"
    ]
    env = {"ARTIFACTS_VERSION_RETENTION": "1d"}
    r = cli(data, database_url, "gc", "--grace", "0", "--dry-run", env=env)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == (
        "would reclaim 2 blobs (4 bytes), 0 orphan files, 0 staging files; would expire 2 old "
        "versions; would purge 0 deleted artifacts and 0 expired idempotency keys\n"
    )
    r = cli(data, database_url, "gc", "--grace", "0", "--json", env=env)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert (report["versions_expired"], sorted(report["blobs_deleted"])) == (
        2,
        sorted([sha(b"v1"), sha(b"v2")]),
    )
    assert not store.path_of(sha(b"v1")).exists()
    r = cli(data, database_url, "fsck", "--verify-data")
    assert r.stdout.splitlines() == [
        "checked 1 artifact, 1 version and 1 blob, data hashed: 0 errors, 0 warnings; "
        "the store is consistent"
    ]

    async def drift(conn: AsyncConnection) -> None:
        await conn.execute(sa.text("UPDATE artifacts SET version = 7"))

    run_async(database_url, drift)
    r = cli(data, database_url, "fsck")
    assert (r.returncode, r.stderr) == (1, "")
    assert r.stdout.splitlines() == [
        f"error: artifact {artifact_id}: its version is 7 but its current version says 3; the "
        "database was changed from outside: restore it from a backup",
        "checked 1 artifact, 1 version and 1 blob: 1 error, 0 warnings; the store needs repair",
    ]
    r = cli(data, database_url, "gc", env={"ARTIFACTS_VERSION_RETENTION": "a week"})
    assert r.returncode == 2
    assert r.stderr == (
        "artifacts: ARTIFACTS_VERSION_RETENTION: not a duration: 'a week' "
        "(want forever or 30s, 15m, 2h, 7d or a number of seconds)\n"
    )
