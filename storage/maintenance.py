"""Keeping the store honest: garbage collection, trash recovery and fsck.

GC reclaims blobs that no artifact row (live, or soft-deleted within its retention) and no
lineage edge references, once older than a grace period; staging files older than the grace
period; soft-deleted artifacts older than ARTIFACTS_DELETED_RETENTION, except those that
are parents of other artifacts or were primary deliverables; and expired idempotency keys.
It is safe while uploads run: a blob is deleted inside a write transaction (SQLite's writer
lock; PostgreSQL also takes the digest's advisory lock), and the upload's "blob exists, insert
row" step runs inside one too and re-checks the file (storage/artifacts.py), so the two serialise
per digest. A file goes to trash/ before its row is deleted; `recover_trash()` at start-up puts
back trash whose row survived a crash and empties the rest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.blobs.base import MaintainedBlobStore
from storage.db.engine import Database
from storage.db.tables import artifacts, blobs, lineage
from storage.digest import is_sha256_hex
from storage.idempotency import purge_expired
from storage.records import now_us

DIGEST_LOCK_SPACE = 0x424C4F42  # 'BLOB'


def digest_lock(digest: str) -> sa.Select[Any]:
    """PostgreSQL's transaction lock that serialises GC and uploads per digest."""
    key = int.from_bytes(bytes.fromhex(digest[:8]), "big", signed=True)
    return sa.select(sa.func.pg_advisory_xact_lock(DIGEST_LOCK_SPACE, key))


async def lock_digest(conn: AsyncConnection, digest: str) -> None:
    """Serialise GC and uploads per digest on PostgreSQL (SQLite's writer lock already does)."""
    if conn.dialect.name == "postgresql":
        await conn.execute(digest_lock(digest))


@dataclass
class GcReport:
    dry_run: bool
    artifacts_purged: list[str] = field(default_factory=list)
    blobs_deleted: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    orphan_files_deleted: list[str] = field(default_factory=list)
    staging_removed: list[str] = field(default_factory=list)
    idempotency_keys_expired: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _referenced(ignoring: list[str] | None = None) -> sa.ColumnElement[bool]:
    """A blob row is referenced by any artifact row (live or not yet purged) or lineage edge;
    `ignoring`: artifacts a dry run would have purged (and their edges) do not count."""
    by_artifact = sa.exists().where(artifacts.c.content_hash == blobs.c.digest)
    by_edge = sa.exists().where(lineage.c.parent_digest == blobs.c.digest)
    if ignoring:
        by_artifact = by_artifact.where(artifacts.c.id.not_in(ignoring))
        by_edge = by_edge.where(lineage.c.child_id.not_in(ignoring))
    return sa.or_(by_artifact, by_edge)


async def collect_garbage(
    db: Database,
    store: MaintainedBlobStore,
    *,
    grace_us: int,
    deleted_retention_us: int,
    dry_run: bool = False,
) -> GcReport:
    report = GcReport(dry_run=dry_run)
    now = now_us()
    await _purge_deleted(db, now - deleted_retention_us, report)
    async with db.read() as conn:
        rows = await conn.execute(
            sa.select(blobs.c.digest, blobs.c.size).where(
                blobs.c.created_at < now - grace_us,
                sa.not_(_referenced(report.artifacts_purged if dry_run else None)),
            )
        )
        candidates = [(r.digest, int(r.size)) for r in rows]
    for digest, size in candidates:
        if dry_run:
            report.blobs_deleted.append(digest)
            report.bytes_freed += size
            continue
        if await _delete_blob(db, store, digest):
            report.blobs_deleted.append(digest)
            report.bytes_freed += size
    await _orphans_and_staging(db, store, now - grace_us, report)
    if not dry_run:
        report.idempotency_keys_expired = await purge_expired(db, now)
    return report


async def _purge_deleted(db: Database, before: int, report: GcReport) -> None:
    """Hard-delete soft-deleted artifacts past retention, leaves first (a parent goes only once
    nothing derives from it), never a former primary deliverable."""
    while True:
        has_children = sa.exists().where(lineage.c.parent_id == artifacts.c.id)
        async with db.read() as conn:
            ids = (
                (
                    await conn.execute(
                        sa.select(artifacts.c.id)
                        .where(
                            artifacts.c.deleted_at.is_not(None),
                            artifacts.c.deleted_at < before,
                            artifacts.c.is_primary_deliverable.is_(False),
                            sa.not_(has_children),
                        )
                        .limit(500)
                    )
                )
                .scalars()
                .all()
            )
        if not ids or report.dry_run:
            report.artifacts_purged.extend(ids)
            return
        async with db.write() as conn:
            await conn.execute(lineage.delete().where(lineage.c.child_id.in_(ids)))
            await conn.execute(
                artifacts.delete().where(artifacts.c.id.in_(ids), sa.not_(has_children))
            )
        report.artifacts_purged.extend(ids)


async def _delete_blob(db: Database, store: MaintainedBlobStore, digest: str) -> bool:
    """Trash the file, delete the row, commit, then empty the trash (crash-safe order)."""
    async with db.write() as conn:
        await lock_digest(conn, digest)
        still = await conn.execute(
            sa.select(blobs.c.digest).where(blobs.c.digest == digest, sa.not_(_referenced()))
        )
        if still.first() is None:
            return False  # referenced again since we looked
        await store.to_trash(digest)
        await conn.execute(blobs.delete().where(blobs.c.digest == digest))
    await store.empty_trash(digest)
    return True


async def _orphans_and_staging(
    db: Database, store: MaintainedBlobStore, before: int, report: GcReport
) -> None:
    """Blob files with no row (a crash between put and commit) and old staging files."""
    cutoff = before / 1e6
    files = await store.scan_blobs()
    async with db.read() as conn:
        known = set((await conn.execute(sa.select(blobs.c.digest))).scalars().all())
    for digest, _size, mtime in files:
        if digest in known or mtime >= cutoff:
            continue
        if report.dry_run:
            report.orphan_files_deleted.append(digest)
            continue
        async with db.write() as conn:
            await lock_digest(conn, digest)
            row = await conn.execute(sa.select(blobs.c.digest).where(blobs.c.digest == digest))
            if row.first() is None:
                await store.to_trash(digest)
                report.orphan_files_deleted.append(digest)
        await store.empty_trash(digest)
    for name, _size, mtime in await store.scan_dir("tmp"):
        if mtime < cutoff:
            if not report.dry_run:
                await store.remove_staging(name)
            report.staging_removed.append(name)


async def recover_trash(db: Database, store: MaintainedBlobStore) -> list[str]:
    """At start-up: trash whose blob row survived goes back; the rest is deleted."""
    restored = []
    for name, _size, _mtime in await store.scan_dir("trash"):
        if not is_sha256_hex(name):
            continue  # not ours: fsck reports it as a trash leftover
        async with db.write() as conn:
            await lock_digest(conn, name)  # a GC of another replica may be mid-deletion
            row = await conn.execute(sa.select(blobs.c.digest).where(blobs.c.digest == name))
            if row.first() is not None:
                await store.restore_from_trash(name)
                restored.append(name)
                continue
        await store.empty_trash(name)
    return restored


# -- fsck ------------------------------------------------------------------------------------


@dataclass
class FsckReport:
    verified_data: bool
    artifacts_checked: int = 0
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
    async with db.read() as conn:
        rows = (
            await conn.execute(
                sa.select(
                    artifacts.c.id, artifacts.c.content_hash, artifacts.c.size_bytes,
                    artifacts.c.deleted_at,
                )
            )
        ).all()  # fmt: skip
        blob_rows = {
            r.digest: int(r.size)
            for r in await conn.execute(sa.select(blobs.c.digest, blobs.c.size))
        }
        referenced = set(
            (await conn.execute(sa.select(blobs.c.digest).where(_referenced()))).scalars().all()
        )
        edges = (
            await conn.execute(
                sa.select(lineage.c.child_id, lineage.c.parent_id, lineage.c.parent_digest)
            )
        ).all()
    ids = {r.id for r in rows}
    for r in rows:
        report.artifacts_checked += 1
        where = {"artifact_id": r.id, "digest": r.content_hash}
        if r.content_hash not in files:
            report.errors.append({"problem": "blob_missing", **where})
        elif files[r.content_hash] != r.size_bytes:
            found = {"expected": r.size_bytes, "actual": files[r.content_hash]}
            report.errors.append({"problem": "size_mismatch", **where, **found})
        if r.content_hash not in blob_rows:
            report.errors.append({"problem": "blob_row_missing", **where})
    for e in edges:
        for end in (e.child_id, e.parent_id):
            if end not in ids:
                report.errors.append({"problem": "lineage_dangling", "artifact_id": end})
        if e.parent_digest not in files:
            report.errors.append({"problem": "lineage_blob_missing", "digest": e.parent_digest})
    for digest, size in blob_rows.items():
        if digest not in files:
            report.errors.append({"problem": "row_without_blob", "digest": digest})
        elif files[digest] != size:
            found = {"expected": size, "actual": files[digest]}
            report.errors.append({"problem": "size_mismatch", "digest": digest, **found})
        elif digest not in referenced:
            report.warnings.append({"problem": "unreferenced_blob", "digest": digest})
    for digest in files:
        report.blobs_checked += 1
        if digest not in blob_rows:
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


__all__ = ["FsckReport", "GcReport", "collect_garbage", "fsck", "lock_digest", "recover_trash"]
