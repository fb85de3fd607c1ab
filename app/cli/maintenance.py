"""`artifacts gc` and `artifacts fsck`: storage/maintenance.py from a terminal."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer

from app.blobstore import open_blob_store
from app.cli.base import DataDir, cli, duration_flag, load_settings, open_database
from app.settings import DURATION_FORMAT, Settings
from storage.db.engine import Database
from storage.maintenance import FsckReport, GcReport, collect_garbage
from storage.maintenance import fsck as check


@cli.command()
def gc(
    grace: Annotated[
        str | None,
        typer.Option(help=f"{DURATION_FORMAT}, e.g. 0 (default: ARTIFACTS_GC_GRACE)"),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="report what would be reclaimed")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable report")] = False,
    data_dir: DataDir = None,
) -> None:
    """Reclaim unreferenced blobs, leftovers, old versions and old soft-deleted artifacts.

    Blobs past the grace period, stale staging files, replaced versions past
    ARTIFACTS_VERSION_RETENTION that no live artifact derives from, soft-deleted artifacts past
    ARTIFACTS_DELETED_RETENTION and expired idempotency keys. Safe while the server runs."""
    settings = load_settings(data_dir)
    grace_s = duration_flag("--grace", grace, settings.gc_grace)
    db = open_database(settings)
    report = asyncio.run(_collect(db, settings, grace_s, dry_run))
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    typer.echo(gc_summary(report))


def gc_summary(report: GcReport) -> str:
    """`artifacts gc`'s one line (a dry run says what it would do)."""
    reclaim, expire, purge = (
        ("would reclaim", "would expire", "would purge")
        if report.dry_run
        else ("reclaimed", "expired", "purged")
    )
    return (
        f"{reclaim} {len(report.blobs_deleted)} blobs ({report.bytes_freed} bytes), "
        f"{len(report.orphan_files_deleted)} orphan files, {len(report.staging_removed)} staging "
        f"files; {expire} {report.versions_expired} old versions; {purge} "
        f"{len(report.artifacts_purged)} deleted artifacts and "
        f"{report.idempotency_keys_expired} expired idempotency keys"
    )


async def _collect(db: Database, settings: Settings, grace_s: float, dry_run: bool) -> GcReport:
    try:
        async with open_blob_store(settings) as store:
            return await collect_garbage(
                db,
                store,
                grace_us=int(grace_s * 1e6),
                deleted_retention_us=int(settings.deleted_retention * 1e6),
                version_retention_us=settings.version_retention_us,
                dry_run=dry_run,
            )
    finally:
        await db.dispose()


@cli.command()
def fsck(
    verify_data: Annotated[bool, typer.Option(help="also hash every blob")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable report")] = False,
    data_dir: DataDir = None,
) -> None:
    """Check every artifact and version against its blob and every blob against its row.

    Also that each artifact row agrees with its current version, and that the versions live
    artifacts derive from are there. With --verify-data every blob is also hashed against its
    name. One line per problem, what to do about it, and a summary; exit 1 when anything is
    wrong (the leftovers `artifacts gc` reclaims are warnings)."""
    settings = load_settings(data_dir)
    db = open_database(settings)
    report = asyncio.run(_check(db, settings, verify_data))
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        for item in report.errors:
            typer.echo(f"error: {describe(item)}")
        for item in report.warnings:
            typer.echo(f"warning: {describe(item)}")
        typer.echo(summary(report))
    raise typer.Exit(0 if report.clean else 1)


async def _check(db: Database, settings: Settings, verify_data: bool) -> FsckReport:
    try:
        async with open_blob_store(settings) as store:
            return await check(db, store, verify_data=verify_data)
    finally:
        await db.dispose()


# What each of storage.maintenance.fsck's problems means, and what to do about it.
_RESTORE = "restore the file from a backup, or upload the same bytes again"
_DAMAGED = "restore the file from a backup, or move it aside and upload the original bytes again"
_GC = "`artifacts gc` reclaims it after the grace period"
_OUTSIDE = "the database was changed from outside: restore it from a backup"
PROBLEMS = {
    "blob_missing": "artifact {artifact_id}: its blob {digest} is missing from the blob store; "
    + _RESTORE,
    "row_without_blob": "blob {digest} is recorded in the database but missing from the blob "
    "store; " + _RESTORE,
    "size_mismatch": "blob {digest} holds {actual} bytes where {expected} were stored"
    "{of_artifact}; " + _DAMAGED,
    "blob_corrupt": "blob {digest} no longer hashes to its name (its bytes hash to {actual}); "
    + _DAMAGED,
    "blob_row_missing": "artifact {artifact_id}: its blob {digest} has no row in the blobs "
    "table; uploading the same bytes again records it",
    "lineage_dangling": "a lineage edge names artifact {artifact_id}, which does not exist; "
    + _OUTSIDE,
    "lineage_blob_missing": "blob {digest}, the content an artifact was derived from, is "
    "missing from the blob store; " + _RESTORE,
    "version_blob_missing": "artifact {artifact_id}, version {version}: its blob {digest} is "
    "missing from the blob store; " + _RESTORE,
    "version_size_mismatch": "artifact {artifact_id}, version {version}: its blob {digest} "
    "holds {actual} bytes where {expected} were stored; " + _DAMAGED,
    "version_blob_row_missing": "artifact {artifact_id}, version {version}: its blob {digest} "
    "has no row in the blobs table; uploading the same bytes again records it",
    "version_orphaned": "a version row names artifact {artifact_id} (version {version}, blob "
    "{digest}), which does not exist; " + _OUTSIDE,
    "current_version_missing": "artifact {artifact_id} has no current version (its row says "
    "version {version}); " + _OUTSIDE,
    "current_version_mismatch": "artifact {artifact_id}: its {field} is {expected} but its "
    "current version says {actual}; " + _OUTSIDE,
    "lineage_version_missing": "artifact {artifact_id} derives from version {version} of "
    "artifact {parent_id}, which is gone; " + _OUTSIDE,
    "stray_file": "{path} in the blob store is not a blob; move it out of the blob store",
    "unreferenced_blob": "blob {digest} is used by no artifact, no version and no lineage "
    "edge; " + _GC,
    "blob_without_row": "blob {digest} has no row (an upload stopped before its commit); " + _GC,
    "staging_leftover": "staging file tmp/{name} was left by an interrupted upload; " + _GC,
    "trash_leftover": "trash/{name} was left by an interrupted garbage collection; the next "
    "server start puts it back or deletes it (a name that is not a digest: remove it by hand)",
    "quarantined_blob": "blob {digest} was quarantined after a read found it corrupt; "
    "uploading the original bytes again heals every artifact that uses it",
}


def describe(item: dict[str, Any]) -> str:
    """One fsck problem as a sentence: what is wrong, where, and what to do."""
    fields = {k: v for k, v in item.items() if k != "problem"}
    template = PROBLEMS.get(item["problem"])
    if template is None:  # a problem this command does not know yet: still every detail
        return f"{item['problem']}: " + ", ".join(f"{k} {v}" for k, v in fields.items())
    artifact_id = fields.get("artifact_id")
    fields["of_artifact"] = f" (the content of artifact {artifact_id})" if artifact_id else ""
    return template.format(**fields)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def summary(report: FsckReport) -> str:
    checked = (
        f"checked {_count(report.artifacts_checked, 'artifact')}, "
        f"{_count(report.versions_checked, 'version')} and "
        f"{_count(report.blobs_checked, 'blob')}{', data hashed' if report.verified_data else ''}"
    )
    found = f"{_count(len(report.errors), 'error')}, {_count(len(report.warnings), 'warning')}"
    verdict = "the store is consistent" if report.clean else "the store needs repair"
    return f"{checked}: {found}; {verdict}"
