"""`artifacts import crownest …`: the importer from a terminal, with a progress bar and a table.

Exit status: 0 when nothing failed, 1 when an item or the job failed, 2 when the configuration
is wrong (no key, a bad --artifact-type, CrowNest unreachable or not CrowNest, the key rejected):
those end with one line on stderr saying what happened and which setting to check."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
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
from app.imports.crownest import CrowNestError, check_base_url
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
BYTES = (DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())


def fail(message: str) -> typer.Exit:
    """One plain line on stderr (never wrapped or styled), and exit status 2."""
    typer.echo(f"artifacts: {message}", err=True)
    return typer.Exit(2)


class BarProgress(ImportProgress):
    """A transient "listing" spinner, then one bar of bytes, its label counting artifacts;
    why a job stopped is kept for the summary."""

    def __init__(self, out: Console) -> None:
        self.status = out.status("listing the sandbox's artifacts on CrowNest…")
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), *BYTES, console=out)
        self.done = 0
        self.total = 0
        self.task: TaskID | None = None
        self.error: CrowNestError | None = None
        if out.is_terminal:  # elsewhere a spinner leaves nothing but an empty line
            self.status.start()

    def planned(self, items: int, total_bytes: int) -> None:
        self.status.stop()
        self.bars.start()
        self.total = items
        self.task = self.bars.add_task(self._label(), total=total_bytes)

    def transferred(self, size: int) -> None:
        if self.task is not None:
            self.bars.advance(self.task, size)

    def finished(self, item: Item) -> None:
        self.done += 1
        if self.task is not None:
            self.bars.update(self.task, description=self._label())

    def stopped(self, error: CrowNestError) -> None:
        self.error = error

    def close(self) -> None:
        self.status.stop()
        if self.task is not None:  # stopping a bar never started still prints a line
            self.bars.stop()

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
    table.add_row("skipped", str(job.counts["skipped"]), escape(", ".join(reasons)))
    table.add_row("failed", str(job.counts["failed"]), "")
    for item in failures:
        what = f"{item.upstream_id} {item.name or ''}: {item.reason}"
        table.add_row("", "", f"[red]{escape(what)}[/red]")
    if job.error and not failures:
        table.add_row("", "", f"[red]{escape(job.error)}[/red]")
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
    Exit status 0 only when nothing failed; 2 when a setting is wrong."""
    settings = load_settings(data_dir)
    if settings.crownest_api_key is None:
        raise fail("CROWNEST_API_KEY is not set.")
    problem = check_base_url(settings.crownest_base_url)
    if problem is not None:
        raise fail(problem)
    if artifact_type is not None:
        try:
            artifact_type = check_artifact_type(artifact_type, settings.artifact_types)
        except ValueError as exc:
            raise fail(f"--artifact-type: {exc}") from None
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
    job, error = asyncio.run(_run(settings, options, project))
    if error is not None and error.setting is not None:
        raise fail(str(error))
    raise typer.Exit(0 if job.counts["failed"] == 0 and job.status == "succeeded" else 1)


async def _run(
    settings: Settings, options: ImportOptions, project: str
) -> tuple[Job, CrowNestError | None]:
    """The job run to its end, its summary printed unless a setting stopped it."""
    db = Database(settings.resolved_database_url)
    try:
        async with open_blob_store(settings) as blobs:
            service = ArtifactService(db, blobs, tenant=project)
            importer = importer_for(service, settings)
            job_id = await importer.start(options)
            progress = BarProgress(console)
            try:
                job = await importer.run(job_id, progress)
            finally:
                progress.close()
            if progress.error is None or progress.error.setting is None:
                failures = await importer.jobs.items(job_id, "failed")
                skipped = await importer.jobs.items(job_id, "skipped")
                Console().print(summary_table(job, failures, skipped))
            return job, progress.error
    finally:
        await db.dispose()
