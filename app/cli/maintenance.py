"""`artifacts gc` and `artifacts fsck`: storage/maintenance.py from a terminal."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

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
    """Reclaim unreferenced blobs, leftovers and old soft-deleted artifacts.

    Blobs past the grace period, stale staging files, soft-deleted artifacts past
    ARTIFACTS_DELETED_RETENTION and expired idempotency keys. Safe while the server runs."""
    settings = load_settings(data_dir)
    grace_s = duration_flag("--grace", grace, settings.gc_grace)
    db = open_database(settings)
    report = asyncio.run(_collect(db, settings, grace_s, dry_run))
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    verb = "would reclaim" if dry_run else "reclaimed"
    typer.echo(
        f"{verb} {len(report.blobs_deleted)} blobs ({report.bytes_freed} bytes), "
        f"{len(report.orphan_files_deleted)} orphan files, {len(report.staging_removed)} staging "
        f"files; purged {len(report.artifacts_purged)} deleted artifacts and "
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
    """Check every row against its blob and every blob against its row (and, with
    --verify-data, its name). Exit 1 when anything is wrong; leftovers GC reclaims are warnings."""
    settings = load_settings(data_dir)
    db = open_database(settings)
    report = asyncio.run(_check(db, settings, verify_data))
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        typer.echo(
            f"checked {report.artifacts_checked} artifacts and {report.blobs_checked} blobs"
            f"{' (data verified)' if verify_data else ''}: "
            f"{len(report.errors)} errors, {len(report.warnings)} warnings"
        )
        for item in report.errors:
            typer.echo(f"ERROR   {item.pop('problem')}: {item}")
        for item in report.warnings:
            typer.echo(f"warning {item.pop('problem')}: {item}")
    raise typer.Exit(0 if report.clean else 1)


async def _check(db: Database, settings: Settings, verify_data: bool) -> FsckReport:
    try:
        async with open_blob_store(settings) as store:
            return await check(db, store, verify_data=verify_data)
    finally:
        await db.dispose()
