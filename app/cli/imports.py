"""`artifacts import crownest …`: the importer from a terminal, with a progress bar and a table."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from app.artifacts.schemas import check_artifact_type
from app.blobstore import open_blob_store
from app.cli.base import cli, load_settings, migrate_database
from app.imports.importer import ImportOptions
from app.imports.importer import Progress as ImportProgress
from app.imports.runner import importer_for
from app.settings import Settings
from storage.artifacts import ArtifactService
from storage.db.engine import Database
from storage.db.tables import DEFAULT_TENANT
from storage.imports import Item, Job

import_group = typer.Typer(no_args_is_help=True, help="Import artifacts from other systems.")
cli.add_typer(import_group, name="import")
console = Console(stderr=True)


class BarProgress(ImportProgress):
    """One bar of bytes, its label counting artifacts."""

    def __init__(self, bars: Progress) -> None:
        self.bars = bars
        self.done = 0
        self.total = 0
        self.task: TaskID = bars.add_task("listing…", total=None)

    def planned(self, items: int, total_bytes: int) -> None:
        self.total = items
        self.bars.update(self.task, total=total_bytes, description=self._label())

    def transferred(self, size: int) -> None:
        self.bars.advance(self.task, size)

    def finished(self, item: Item) -> None:
        self.done += 1
        self.bars.update(self.task, description=self._label())

    def _label(self) -> str:
        return f"{self.done}/{self.total} artifacts"


def summary_table(job: Job, failures: list[Item], skipped: list[Item]) -> Table:
    table = Table(title=f"CrowNest import {job.id}: {job.status}")
    table.add_column("outcome")
    table.add_column("count", justify="right")
    table.add_column("details")
    table.add_row("imported", str(job.counts["imported"]), f"{job.bytes} bytes")
    table.add_row("unchanged", str(job.counts["unchanged"]), "already here, same size")
    reasons = sorted({(i.reason or "").split(":")[0] for i in skipped})
    table.add_row("skipped", str(job.counts["skipped"]), ", ".join(reasons))
    table.add_row("failed", str(job.counts["failed"]), "")
    for item in failures:
        table.add_row("", "", f"[red]{item.upstream_id}[/red] {item.name or ''}: {item.reason}")
    if job.error and not failures:
        table.add_row("", "", f"[red]{job.error}[/red]")
    return table


@import_group.command("crownest")
def crownest(
    sandbox: Annotated[str, typer.Option("--sandbox", help="sbx_… to import from")],
    workflow_id: Annotated[str, typer.Option("--workflow-id")],
    phase_id: Annotated[str | None, typer.Option("--phase-id")] = None,
    session_id: Annotated[str | None, typer.Option("--session-id")] = None,
    artifact_type: Annotated[
        str | None, typer.Option("--artifact-type", help="default: from the file extension")
    ] = None,
    artifact: Annotated[
        list[str] | None, typer.Option("--artifact", help="only these art_… (repeatable)")
    ] = None,
    source_path_prefix: Annotated[str | None, typer.Option("--source-path-prefix")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would happen")] = False,
    data_dir: Annotated[Path | None, typer.Option(help="default: ARTIFACTS_DATA_DIR")] = None,
    project: Annotated[
        str, typer.Option(help="the tenant the artifacts belong to (an API key's project)")
    ] = DEFAULT_TENANT,
) -> None:
    """Import a CrowNest sandbox's artifacts (CROWNEST_API_KEY; ARTIFACTS_CROWNEST_BASE_URL).
    Exit status 0 only when nothing failed."""
    settings = load_settings(data_dir)
    if settings.crownest_api_key is None:
        console.print("[red]CROWNEST_API_KEY is not set.[/red]")
        raise typer.Exit(2)
    if artifact_type is not None:
        try:
            artifact_type = check_artifact_type(artifact_type, settings.artifact_types)
        except ValueError as exc:
            console.print(f"[red]--artifact-type: {exc}[/red]")
            raise typer.Exit(2) from None
    options = ImportOptions(
        sandbox_id=sandbox,
        workflow_id=workflow_id,
        phase_id=phase_id,
        session_id=session_id,
        artifact_type=artifact_type,
        artifact_ids=list(artifact or []),
        source_path_prefix=source_path_prefix,
        dry_run=dry_run,
    )
    migrate_database(settings)
    job = asyncio.run(_run(settings, options, project))
    raise typer.Exit(0 if job.counts["failed"] == 0 and job.status == "succeeded" else 1)


async def _run(settings: Settings, options: ImportOptions, project: str) -> Job:
    db = Database(settings.resolved_database_url)
    try:
        async with open_blob_store(settings) as blobs:
            service = ArtifactService(db, blobs, tenant=project)
            importer = importer_for(service, settings)
            job_id = await importer.start(options)
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
            )
            with Progress(*columns, console=console, transient=False) as bars:
                job = await importer.run(job_id, BarProgress(bars))
            failures = await importer.jobs.items(job_id, "failed")
            skipped = await importer.jobs.items(job_id, "skipped")
            Console().print(summary_table(job, failures, skipped))
            return job
    finally:
        await db.dispose()
