"""Keeping the store honest: garbage collection, trash recovery and fsck.

GC reclaims blobs that no artifact row (live, or soft-deleted within its retention), no version
row and no lineage edge references, once older than a grace period; blob files that have no row
at all (a crash between put and commit) once older than the grace period; staging files older
than the grace period; soft-deleted artifacts older than ARTIFACTS_DELETED_RETENTION, with every
version of them, except those that are parents of other artifacts or were primary deliverables;
replaced versions older than ARTIFACTS_VERSION_RETENTION (counted from when they were replaced;
default: kept for ever) that no live artifact derives from (_pinned); and expired idempotency
keys. In that order: a run first deletes the rows it lets go, each batch a transaction, and only
then looks for the blobs nothing references any more.

It is safe while uploads run. An upload puts its bytes first and then, in one short write
transaction, inserts the rows that reference them (storage/artifacts.py): GC must never delete
a blob such a transaction references, and such a transaction must never reference a blob GC
deleted after the put found it (a 201 means the bytes are durably readable). A blob goes in
three steps, each a transaction of its own (the row states are storage/db/blob_sql.py's):

1. mark: its row, re-checked unreferenced, turns *reclaiming*; a blob file with no row gets a
   reclaiming row, so that an orphan goes the same way. From then on no upload references it:
   one that finds its blob's row reclaiming stores nothing (StorageUnavailable, 503), and its
   retry puts the bytes anew.
2. trash: if the row is still reclaiming and (checked again) unreferenced, the blob moves to
   trash/. This transaction changes no row and holds SQLite's writer lock (PostgreSQL: the
   digest's lock) over the move, through run_async: GC's only store I/O inside a transaction,
   so that the move cannot interleave with step 3, with a reclaim being called off, or with an
   upload that checks the store inside its transaction (PostgreSQL, or an earlier release of
   this code). Since it changes nothing, no failed commit can undo a move: whatever fails, the
   row stays reclaiming, which the next GC run finishes and start-up recovery calls off (the
   blob back at its name, the row live again). A move that fails calls the reclaims of its
   batch off at once.
3. sweep: the reclaiming rows are deleted and, on SQLite, the reclaim epoch bumped, in one
   transaction; then the trash is emptied. (A reclaiming row that something references after
   all, which only an upload of an earlier release can do, turns live instead: that upload
   found the blob at its name.)

Hence a live row's blob is at its name (short of outside damage, which fsck reports): a blob
only moves while its row is reclaiming, and a row only turns live again with its blob put back,
or is inserted anew by an upload that knew its bytes were there (below). So an upload whose
blob already has a live row asks the store nothing. One whose blob has no row read the reclaim
epoch before its put: if its write finds the epoch unchanged, no sweep has committed since, so
nothing moved the bytes the put found or wrote (a move needs a reclaiming row, and a row that
is gone went by a sweep); if the epoch moved, the upload asks the store again, outside the
transaction, and tries again with the epoch it read before asking. On SQLite, then, no upload
asks the blob store while it holds the writer lock. On PostgreSQL an upload of a blob without a
row asks the store inside its transaction, under the digest's lock, which only GC of that same
digest ever waits for.

Versions change none of this. A version row references its blob as an artifact row does (the
three steps' re-checks count it), and expiring one, like purging an artifact, only deletes rows:
it takes references away and never adds one, and no upload relies on a version row, only on its
blob's row. So an upload of the bytes only an expiring version held either finds the blob's row
live and references it before the mark (which then leaves it), or finds it reclaiming (503), or
finds no row and the epoch moved (it asks the store again), exactly as for bytes a replaced
artifact used to hold before versions existed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import sqlalchemy as sa

from storage.blobs.base import MaintainedBlobStore
from storage.db.blob_sql import FLIP, LIVE, RECLAIMING, bump_epoch, lock_digest
from storage.db.engine import Database, run_async
from storage.db.tables import artifact_versions, artifacts, blobs, lineage
from storage.digest import is_sha256_hex
from storage.idempotency import purge_expired
from storage.records import now_us

CHUNK = 64  # blobs marked, and swept, per transaction: a reupload of one meets a 503 meanwhile


@dataclass
class GcReport:
    dry_run: bool
    artifacts_purged: list[str] = field(default_factory=list)
    blobs_deleted: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    orphan_files_deleted: list[str] = field(default_factory=list)
    staging_removed: list[str] = field(default_factory=list)
    idempotency_keys_expired: int = 0
    versions_expired: int = 0  # replaced versions past ARTIFACTS_VERSION_RETENTION, unpinned

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _pinned() -> sa.ColumnElement[bool]:
    """A version row is pinned while a live artifact derives from it: an edge names it (its
    parent and version), or, made before versions existed (parent_version NULL), its bytes."""
    v, child = artifact_versions.c, artifacts.alias("child")
    names_it = sa.or_(
        lineage.c.parent_version == v.version,
        sa.and_(lineage.c.parent_version.is_(None), lineage.c.parent_digest == v.content_hash),
    )
    return (
        sa.exists()
        .where(lineage.c.parent_id == v.artifact_id, names_it)
        .where(child.c.id == lineage.c.child_id, child.c.deleted_at.is_(None))
    )


def _expired(before: int) -> sa.ColumnElement[bool]:
    """A version row that retention lets go: replaced before `before`, and not pinned. (The
    current version has superseded_at NULL: never expired.)"""
    return sa.and_(
        artifact_versions.c.superseded_at.is_not(None),
        artifact_versions.c.superseded_at < before,
        sa.not_(_pinned()),
    )


def _referenced(
    ignoring: list[str] | None = None, expired_before: int | None = None
) -> sa.ColumnElement[bool]:
    """A blob row is referenced by any artifact row (live or not yet purged), version row
    (current, or replaced and retained) or lineage edge. For a dry run, which deletes nothing:
    `ignoring`, artifacts it would have purged (their versions and edges), and versions it
    would have expired (`expired_before`: the retention cutoff) do not count."""
    by_artifact = sa.exists().where(artifacts.c.content_hash == blobs.c.digest)
    by_version = sa.exists().where(artifact_versions.c.content_hash == blobs.c.digest)
    by_edge = sa.exists().where(lineage.c.parent_digest == blobs.c.digest)
    if ignoring:
        by_artifact = by_artifact.where(artifacts.c.id.not_in(ignoring))
        by_version = by_version.where(artifact_versions.c.artifact_id.not_in(ignoring))
        by_edge = by_edge.where(lineage.c.child_id.not_in(ignoring))
    if expired_before is not None:
        by_version = by_version.where(sa.not_(_expired(expired_before)))
    return sa.or_(by_artifact, by_version, by_edge)


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


async def collect_garbage(
    db: Database,
    store: MaintainedBlobStore,
    *,
    grace_us: int,
    deleted_retention_us: int,
    version_retention_us: int | None = None,
    dry_run: bool = False,
) -> GcReport:
    """One GC run (see the module's docstring). `version_retention_us`: how long a replaced
    version is kept after it was replaced, None (ARTIFACTS_VERSION_RETENTION's default): for
    ever."""
    report = GcReport(dry_run=dry_run)
    now = now_us()
    if not dry_run:  # left by a run that stopped between its mark and its sweep (see _sweep)
        stuck = sa.select(blobs.c.digest).where(RECLAIMING, _referenced())
        if digests := list(await db.run_read(lambda conn: conn.execute(stuck).scalars().all())):
            where = blobs.c.digest.in_(digests)
            await db.run_write(lambda conn: _call_off_referenced(conn, where))
    await _purge_deleted(db, now - deleted_retention_us, report)
    expired_before = None if version_retention_us is None else now - version_retention_us
    if expired_before is not None:
        await _expire_versions(db, expired_before, report)
    ignoring = (report.artifacts_purged, expired_before) if dry_run else (None, None)
    unreferenced = sa.select(blobs.c.digest, blobs.c.size).where(
        # reclaiming rows too, whatever the grace: a reclaim an earlier run left unfinished
        sa.or_(blobs.c.created_at < now - grace_us, RECLAIMING),
        sa.not_(_referenced(*ignoring)),
    )
    rows = await db.run_read(lambda conn: conn.execute(unreferenced).all())
    sizes = {r.digest: int(r.size) for r in rows}
    for chunk in _chunks(list(sizes)):
        if dry_run:
            gone = set(chunk)
        else:
            gone = await _reclaim(db, store, await db.run_write(partial(_mark, digests=chunk)))
        for digest in chunk:
            if digest in gone:
                report.blobs_deleted.append(digest)
                report.bytes_freed += sizes[digest]
    await _orphans_and_staging(db, store, now - grace_us, report)
    if not dry_run:
        report.idempotency_keys_expired = await purge_expired(db, now)
    return report


async def _purge_deleted(db: Database, before: int, report: GcReport) -> None:
    """Hard-delete soft-deleted artifacts past retention, every version of them with them,
    leaves first (a parent goes only once nothing derives from it), never a former primary
    deliverable."""
    has_children = sa.exists().where(lineage.c.parent_id == artifacts.c.id)
    due = (
        sa.select(artifacts.c.id)
        .where(
            artifacts.c.deleted_at.is_not(None),
            artifacts.c.deleted_at < before,
            artifacts.c.is_primary_deliverable.is_(False),
            sa.not_(has_children),
        )
        .limit(500)
    )

    def purge(conn: sa.Connection, ids: list[str]) -> list[str]:
        # checked again here: what has a child now stays, and keeps its versions and edges
        sure = sa.select(artifacts.c.id).where(artifacts.c.id.in_(ids), sa.not_(has_children))
        ids = list(conn.execute(sure).scalars())
        if ids:
            conn.execute(lineage.delete().where(lineage.c.child_id.in_(ids)))
            conn.execute(artifact_versions.delete().where(artifact_versions.c.artifact_id.in_(ids)))
            conn.execute(artifacts.delete().where(artifacts.c.id.in_(ids)))
        return ids

    while True:
        ids = list(await db.run_read(lambda conn: conn.execute(due).scalars().all()))
        if not ids or report.dry_run:
            report.artifacts_purged.extend(ids)
            return
        report.artifacts_purged.extend(await db.run_write(partial(purge, ids=ids)))


async def _expire_versions(db: Database, before: int, report: GcReport) -> None:
    """Delete the version rows retention lets go (_expired), a batch per transaction, each
    checked again as it goes; a dry run counts them. Their blobs are then reclaimed as any
    other unreferenced blob is, by the three steps (why that is safe: the module's docstring)."""
    keys = (artifact_versions.c.artifact_id, artifact_versions.c.version)
    due = sa.select(*keys).where(_expired(before))
    if report.dry_run:  # what a real run would expire: after its purge
        if report.artifacts_purged:
            due = due.where(artifact_versions.c.artifact_id.not_in(report.artifacts_purged))
        count = sa.select(sa.func.count()).select_from(due.subquery())
        report.versions_expired = int(await db.run_read(lambda c: c.execute(count).scalar_one()))
        return
    batch = (
        artifact_versions.delete()
        .where(sa.tuple_(*keys).in_(due.limit(500)), _expired(before))
        .returning(*keys)
    )
    while gone := len(await db.run_write(lambda conn: conn.execute(batch).all())):
        report.versions_expired += gone
        if gone < 500:
            return


def _mark(conn: sa.Connection, digests: list[str]) -> list[str]:
    """Step 1 for blobs with rows: those still unreferenced turn reclaiming. Returns every one
    of `digests` that is reclaiming now (a reclaim left unfinished included)."""
    for digest in sorted(digests):  # PostgreSQL: one order, whoever else locks several
        lock_digest(conn, digest)
    conn.execute(
        blobs.update()
        .where(blobs.c.digest.in_(digests), LIVE, sa.not_(_referenced()))
        .values(created_at=FLIP)
    )
    marked = sa.select(blobs.c.digest).where(blobs.c.digest.in_(digests), RECLAIMING)
    return list(conn.execute(marked).scalars())


def _adopt(conn: sa.Connection, files: list[tuple[str, int, float]]) -> list[str]:
    """Step 1 for blob files without a row: each that still has none gets a reclaiming row
    (its time the file's). Returns those."""
    adopted = []
    for digest, size, mtime in sorted(files):
        lock_digest(conn, digest)
        if conn.execute(sa.select(blobs.c.digest).where(blobs.c.digest == digest)).first():
            continue  # an upload committed a row for it since the scan
        conn.execute(
            blobs.insert().values(digest=digest, size=size, created_at=-int(mtime * 1e6) - 1)
        )
        adopted.append(digest)
    return adopted


def _trash(conn: sa.Connection, store: MaintainedBlobStore, digest: str) -> None:
    """Step 2: the blob to trash/, inside a transaction that holds the writer lock (SQLite) or
    the digest's lock (PostgreSQL) and changes nothing, if its row is still reclaiming and
    still unreferenced (as before, a blob only moves under a re-check that nothing references
    it, whoever wrote the reference: an upload of an earlier release ignores marks, but checks
    the store inside its own transaction)."""
    lock_digest(conn, digest)
    still = sa.select(blobs.c.digest).where(
        blobs.c.digest == digest, RECLAIMING, sa.not_(_referenced())
    )
    if conn.execute(still).first() is not None:
        run_async(store.to_trash, digest)


def _sweep(conn: sa.Connection, digests: list[str]) -> set[str]:
    """Step 3: delete the rows still reclaiming (bumping the reclaim epoch); which went. One
    that something references after all (see _trash) is live again instead: whoever wrote the
    reference found its blob at its name."""
    for digest in sorted(digests):
        lock_digest(conn, digest)
    _call_off_referenced(conn, blobs.c.digest.in_(digests))
    gone = conn.execute(
        blobs.delete()
        .where(blobs.c.digest.in_(digests), RECLAIMING, sa.not_(_referenced()))
        .returning(blobs.c.digest)
    )
    swept = set(gone.scalars())
    if swept:
        bump_epoch(conn)
    return swept


async def _reclaim(db: Database, store: MaintainedBlobStore, marked: list[str]) -> set[str]:
    """Steps 2 and 3 for blobs step 1 marked, then the trash emptied; the digests that went.
    If moving one fails, the reclaims not yet swept are called off (best effort) first."""
    if not marked:
        return set()
    try:
        for digest in marked:
            await db.run_write(partial(_trash, store=store, digest=digest))
    except Exception:  # (cancelled: the run that follows, or start-up recovery, sees to them)
        for digest in marked:
            try:
                await db.run_write(partial(_call_off, store=store, digest=digest))
            except Exception:  # the next GC run finishes it, or start-up recovery calls it off
                break
        raise
    swept = await db.run_write(lambda conn: _sweep(conn, marked))
    for digest in marked:
        if digest in swept:
            await store.empty_trash(digest)
    return swept


def _call_off_referenced(conn: sa.Connection, where: sa.ColumnElement[bool]) -> None:
    """Reclaiming rows that something references turn live again (see _sweep)."""
    conn.execute(blobs.update().where(where, RECLAIMING, _referenced()).values(created_at=FLIP))


def _call_off(conn: sa.Connection, store: MaintainedBlobStore, digest: str) -> bool:
    """The blob back at its name (if it is in trash/) and its row live again; False when it
    has no row. The move is the body's last step: if it fails, the row stays as it was."""
    lock_digest(conn, digest)
    created_at = conn.execute(sa.select(blobs.c.created_at).where(blobs.c.digest == digest))
    row = created_at.first()
    if row is None:
        return False
    if row[0] < 0:
        conn.execute(blobs.update().where(blobs.c.digest == digest).values(created_at=FLIP))
    run_async(store.restore_from_trash, digest)
    return True


async def _orphans_and_staging(
    db: Database, store: MaintainedBlobStore, before: int, report: GcReport
) -> None:
    """Blob files with no row (a crash between put and commit) and old staging files."""
    cutoff = before / 1e6
    files = await store.scan_blobs()
    known = set(
        await db.run_read(lambda conn: conn.execute(sa.select(blobs.c.digest)).scalars().all())
    )
    orphans = [f for f in files if f[0] not in known and f[2] < cutoff]
    if report.dry_run:
        report.orphan_files_deleted.extend(digest for digest, _, _ in orphans)
    else:
        for start in range(0, len(orphans), CHUNK):
            chunk = orphans[start : start + CHUNK]
            adopted = await db.run_write(partial(_adopt, files=chunk))
            gone = await _reclaim(db, store, adopted)
            report.orphan_files_deleted.extend(d for d, _, _ in chunk if d in gone)
    for name, _size, mtime in await store.scan_dir("tmp"):
        if mtime < cutoff:
            if not report.dry_run:
                await store.remove_staging(name)
            report.staging_removed.append(name)


async def recover_trash(db: Database, store: MaintainedBlobStore) -> list[str]:
    """At start-up: trash whose blob row survived goes back (its reclaim called off); the rest
    is deleted. Then reclaims a stopped GC had marked but not yet moved are called off too.
    Safe while another process runs GC: each step holds the lock GC's move holds."""
    restored = []
    for name, _size, _mtime in await store.scan_dir("trash"):
        if not is_sha256_hex(name):
            continue  # not ours: fsck reports it as a trash leftover
        if await db.run_write(partial(_call_off, store=store, digest=name)):
            restored.append(name)
        else:
            await store.empty_trash(name)
    reclaiming = sa.select(blobs.c.digest).where(RECLAIMING)
    for digest in await db.run_read(lambda conn: conn.execute(reclaiming).scalars().all()):
        await db.run_write(partial(_call_off, store=store, digest=digest))
    return restored


# -- fsck ------------------------------------------------------------------------------------


@dataclass
class FsckReport:
    verified_data: bool
    artifacts_checked: int = 0
    versions_checked: int = 0
    blobs_checked: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)  # something is wrong
    warnings: list[dict[str, Any]] = field(default_factory=list)  # garbage GC will reclaim

    @property
    def clean(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "clean": self.clean}


async def fsck(db: Database, store: MaintainedBlobStore, *, verify_data: bool) -> FsckReport:
    report = FsckReport(verified_data=verify_data)
    files = {d: size for d, size, _ in await store.scan_blobs()}
    state = await db.run_read(_read_state)
    ids = {r.id for r in state.rows}
    for r in state.rows:
        report.artifacts_checked += 1
        where = {"artifact_id": r.id, "digest": r.content_hash}
        if r.content_hash not in files:
            report.errors.append({"problem": "blob_missing", **where})
        elif files[r.content_hash] != r.size_bytes:
            found = {"expected": r.size_bytes, "actual": files[r.content_hash]}
            report.errors.append({"problem": "size_mismatch", **where, **found})
        if r.content_hash not in state.blob_rows:
            report.errors.append({"problem": "blob_row_missing", **where})
    _check_versions(report, state, files)
    for e in state.edges:
        for end in (e.child_id, e.parent_id):
            if end not in ids:
                report.errors.append({"problem": "lineage_dangling", "artifact_id": end})
        if e.parent_digest not in files:
            report.errors.append({"problem": "lineage_blob_missing", "digest": e.parent_digest})
    for digest, size in state.blob_rows.items():
        if digest not in files:
            report.errors.append({"problem": "row_without_blob", "digest": digest})
        elif files[digest] != size:
            found = {"expected": size, "actual": files[digest]}
            report.errors.append({"problem": "size_mismatch", "digest": digest, **found})
        elif digest not in state.referenced:
            report.warnings.append({"problem": "unreferenced_blob", "digest": digest})
    for digest in files:
        report.blobs_checked += 1
        if digest not in state.blob_rows:
            report.warnings.append({"problem": "blob_without_row", "digest": digest})
        if verify_data:
            hashed = await store.hash_of(digest)
            if hashed != digest:
                report.errors.append(
                    {"problem": "blob_corrupt", "digest": digest, "actual": hashed}
                )
    for path in await store.stray_files():
        report.errors.append({"problem": "stray_file", "path": path})
    for name, _, _ in await store.scan_dir("tmp"):
        report.warnings.append({"problem": "staging_leftover", "name": name})
    for name, _, _ in await store.scan_dir("trash"):
        report.warnings.append({"problem": "trash_leftover", "name": name})
    for name, _, _ in await store.scan_dir("quarantine"):
        report.warnings.append({"problem": "quarantined_blob", "digest": name})
    return report


@dataclass
class _State:
    """What fsck reads of the database, in one transaction."""

    rows: Sequence[Any]  # artifacts
    versions: Sequence[Any]
    blob_rows: dict[str, int]
    referenced: set[str]
    edges: Sequence[Any]


def _read_state(conn: sa.Connection) -> _State:
    a, v, e = artifacts.c, artifact_versions.c, lineage.c
    rows = conn.execute(
        sa.select(a.id, a.content_hash, a.size_bytes, a.deleted_at, a.version)
    ).all()
    versions = conn.execute(
        sa.select(v.artifact_id, v.version, v.content_hash, v.size_bytes, v.superseded_at)
    ).all()
    blob_rows = {
        r.digest: int(r.size) for r in conn.execute(sa.select(blobs.c.digest, blobs.c.size))
    }
    referenced = set(conn.execute(sa.select(blobs.c.digest).where(_referenced())).scalars())
    edges = conn.execute(
        sa.select(e.child_id, e.parent_id, e.parent_digest, e.parent_version)
    ).all()
    return _State(rows, versions, blob_rows, referenced, edges)


def _check_versions(report: FsckReport, state: _State, files: dict[str, int]) -> None:
    """Every version row against its artifact and its blob; every artifact row against its
    current version (the one not superseded); every live artifact's edge against the version
    it pins. A current version that agrees with its artifact row is not checked against the
    blob store twice: the artifact's own checks cover it."""
    by_id = {r.id: r for r in state.rows}
    current: dict[str, list[Any]] = {}
    for v in state.versions:
        report.versions_checked += 1
        a = by_id.get(v.artifact_id)
        where = {"artifact_id": v.artifact_id, "version": v.version, "digest": v.content_hash}
        if a is None:
            report.errors.append({"problem": "version_orphaned", **where})
        elif v.superseded_at is None:
            current.setdefault(a.id, []).append(v)
            if (v.version, v.content_hash, v.size_bytes) == (a.version, a.content_hash,
                                                             a.size_bytes):  # fmt: skip
                continue
        if v.content_hash not in files:
            report.errors.append({"problem": "version_blob_missing", **where})
        elif files[v.content_hash] != v.size_bytes:
            found = {"expected": v.size_bytes, "actual": files[v.content_hash]}
            report.errors.append({"problem": "version_size_mismatch", **where, **found})
        if v.content_hash not in state.blob_rows:
            report.errors.append({"problem": "version_blob_row_missing", **where})
    for a in state.rows:
        if a.id not in current:
            missing = {"artifact_id": a.id, "version": a.version}
            report.errors.append({"problem": "current_version_missing", **missing})
        for v in current.get(a.id, ()):
            for name in ("version", "content_hash", "size_bytes"):
                if getattr(a, name) != getattr(v, name):
                    differ = {"field": name, "expected": getattr(a, name),
                              "actual": getattr(v, name)}  # fmt: skip
                    report.errors.append(
                        {"problem": "current_version_mismatch", "artifact_id": a.id, **differ}
                    )
    kept = {(v.artifact_id, v.version) for v in state.versions}
    for e in state.edges:
        child = by_id.get(e.child_id)
        pinned = (e.parent_id, e.parent_version)
        if e.parent_version is None or child is None or child.deleted_at is not None:
            continue  # only a live artifact's edge keeps the version it names (see _pinned)
        if pinned not in kept:
            report.errors.append(
                {"problem": "lineage_version_missing", "artifact_id": e.child_id,
                 "parent_id": e.parent_id, "version": e.parent_version}
            )  # fmt: skip


__all__ = ["FsckReport", "GcReport", "collect_garbage", "fsck", "recover_trash"]
