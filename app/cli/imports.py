"""`artifacts import crownest …`: the importer from a terminal, with a progress bar and a table.

Exit status: 0 when nothing failed, 1 when an item or the job failed, 2 when the configuration
is wrong (no key, a bad --artifact-type, CrowNest unreachable or not CrowNest, the key rejected):
those end with one line on stderr saying what happened and which setting to check."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
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
from app.cli.base import cli, load_settings, migrate_database, refuse
from app.imports.crownest import CrowNestError, UpstreamArtifact, check_base_url
from app.imports.importer import DRY_RUN, ImportOptions, place_of
from app.imports.importer import Progress as ImportProgress
from app.imports.runner import importer_for
from app.settings import Settings
from storage.artifacts import ArtifactService
from storage.db.engine import Database
from storage.db.tables import DEFAULT_TENANT
from storage.imports import Item, Job
from storage.records import NewArtifact

import_group = typer.Typer(no_args_is_help=True, help="Import artifacts from other systems.")
cli.add_typer(import_group, name="import")
console = Console(stderr=True)
BYTES = (DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())


class BarProgress(ImportProgress):
    """A transient "listing" spinner, then one bar of bytes (of artifacts in a dry run, which
    transfers nothing), its label counting artifacts; what a dry run would import and why a
    job stopped are kept for the summary."""

    def __init__(self, out: Console, *, dry_run: bool = False) -> None:
        self.status = out.status("listing the sandbox's artifacts on CrowNest…")
        columns = (TextColumn("{task.description}"), BarColumn(), *(() if dry_run else BYTES))
        self.bars = Progress(*columns, console=out, transient=False)
        self.dry_run = dry_run
        self.done = 0
        self.total = 0
        self.task: TaskID | None = None
        self.would: list[tuple[UpstreamArtifact, NewArtifact]] = []
        self.error: CrowNestError | None = None
        if out.is_terminal:  # elsewhere a spinner leaves nothing but an empty line
            self.status.start()

    def planned(self, items: int, total_bytes: int) -> None:
        self.status.stop()
        self.bars.start()
        self.total = items
        self.task = self.bars.add_task(self._label(), total=items if self.dry_run else total_bytes)

    def transferred(self, size: int) -> None:
        if self.task is not None and not self.dry_run:
            self.bars.advance(self.task, size)

    def finished(self, item: Item) -> None:
        self.done += 1
        if self.task is not None:
            self.bars.update(self.task, description=self._label(), advance=1 if self.dry_run else 0)

    def would_import(self, upstream: UpstreamArtifact, artifact: NewArtifact) -> None:
        self.would.append((upstream, artifact))

    def stopped(self, error: CrowNestError) -> None:
        self.error = error

    def close(self) -> None:
        self.status.stop()
        if self.task is not None:  # stopping a bar never started still prints a line
            self.bars.stop()

    def _label(self) -> str:
        return f"{self.done}/{self.total} artifacts"


@dataclass
class Outcome:
    """What one run did, as the summary shows it."""

    job: Job
    options: ImportOptions
    failures: list[Item]
    skipped: list[Item]
    unchanged: list[Item]
    would: list[tuple[UpstreamArtifact, NewArtifact]] = field(default_factory=list)
    error: CrowNestError | None = None


def dry_run_table(
    options: ImportOptions, would: list[tuple[UpstreamArtifact, NewArtifact]]
) -> Table:
    """Each artifact a real run would import, as it would be stored, and the total; where they
    would land (the same for all of them) is in the title."""
    total = sum(up.sizeBytes for up, _ in would)
    into = place_of(options.workflow_id, options.phase_id)
    title = f"Dry run: would import {len(would)} artifact(s), {total} bytes, into {into}"
    table = Table(title=escape(title), min_width=len(title))
    footer = f"total: {len(would)} artifact(s)"
    width = max([len(footer)] + [len(up.id) for up, _ in would])
    table.add_column("CrowNest id", no_wrap=True, min_width=width)
    table.add_column("name, source path", overflow="fold")
    table.add_column("bytes", justify="right", no_wrap=True)
    table.add_column("content type", overflow="fold")
    table.add_column("type", overflow="fold")
    for up, new in would:
        where = escape(new.title) + (
            f"\n[dim]{escape(up.sourcePath)}[/dim]" if up.sourcePath else ""
        )
        table.add_row(
            escape(up.id),
            where,
            str(up.sizeBytes),
            *map(escape, (new.content_type, new.artifact_type)),
        )
    table.add_section()
    table.add_row(footer, "", str(total), "", "")
    return table


def summary_table(outcome: Outcome) -> Table:
    job, dry = outcome.job, outcome.options.dry_run
    title = f"CrowNest {'dry run' if dry else 'import'} {job.id}: {job.status}"
    title += " (nothing stored)" if dry else ""
    table = Table(title=title, min_width=len(title))  # a title never wraps
    table.add_column("outcome")
    table.add_column("count", justify="right")
    table.add_column("details")
    skipped = [i for i in outcome.skipped if i.reason != DRY_RUN]
    if dry:
        would = sum(up.sizeBytes for up, _ in outcome.would)
        table.add_row("would import", str(len(outcome.would)), f"{would} bytes")
    else:
        table.add_row("imported", str(job.counts["imported"]), f"{job.bytes} bytes")
    _unchanged_rows(table, outcome)
    reasons = sorted({_kind_of(i.reason or "") for i in skipped})
    table.add_row("skipped", str(len(skipped)), escape(", ".join(reasons)))
    table.add_row("failed", str(job.counts["failed"]), "")
    for item in outcome.failures:
        what = f"{item.upstream_id} {item.name or ''}: {item.reason}"
        table.add_row("", "", f"[red]{escape(what)}[/red]")
    if job.error and not outcome.failures:
        table.add_row("", "", f"[red]{escape(job.error)}[/red]")
    return table


def _kind_of(reason: str) -> str:
    """'deleted upstream' of 'deleted upstream at <time>', 'filtered' of 'filtered: …'."""
    return reason.split(":")[0].split(" at ")[0]


def _unchanged_rows(table: Table, outcome: Outcome) -> None:
    """Unchanged ones, and where they are when that is not where this import was asked to put
    them (each CrowNest artifact is imported once: they are not added again)."""
    elsewhere = Counter(i.reason for i in outcome.unchanged if i.reason)
    count = str(len(outcome.unchanged))
    if not elsewhere:
        table.add_row("unchanged", count, "already here, same size")
        return
    asked = place_of(outcome.options.workflow_id, outcome.options.phase_id)
    table.add_row("unchanged", count, escape(f"already imported; not added again to {asked}:"))
    for reason, n in sorted(elsewhere.items()):
        table.add_row("", "", escape(f"{n} {reason}"))


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
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list what would be imported; store nothing")
    ] = False,
    data_dir: Annotated[Path | None, typer.Option(help="default: ARTIFACTS_DATA_DIR")] = None,
    project: Annotated[
        str, typer.Option(help="the tenant the artifacts belong to (an API key's project)")
    ] = DEFAULT_TENANT,
) -> None:
    """Import a CrowNest sandbox's artifacts (CROWNEST_API_KEY; ARTIFACTS_CROWNEST_BASE_URL).
    Exit status 0 only when nothing failed; 2 when a setting is wrong."""
    settings = load_settings(data_dir)
    if settings.crownest_api_key is None:
        refuse("CROWNEST_API_KEY is not set.")
    problem = check_base_url(settings.crownest_base_url)
    if problem is not None:
        refuse(problem)
    if artifact_type is not None:
        try:
            artifact_type = check_artifact_type(artifact_type, settings.artifact_types)
        except ValueError as exc:
            refuse(f"--artifact-type: {exc}")
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
    outcome = asyncio.run(_run(settings, options, project))
    if outcome.error is not None and outcome.error.setting is not None:
        refuse(str(outcome.error))
    out = Console()
    if dry_run:
        out.print(dry_run_table(options, outcome.would))
    out.print(summary_table(outcome))
    job = outcome.job
    raise typer.Exit(0 if job.counts["failed"] == 0 and job.status == "succeeded" else 1)


async def _run(settings: Settings, options: ImportOptions, project: str) -> Outcome:
    db = Database(settings.resolved_database_url)
    try:
        async with open_blob_store(settings) as blobs:
            service = ArtifactService(db, blobs, tenant=project)
            importer = importer_for(service, settings)
            job_id = await importer.start(options)
            progress = BarProgress(console, dry_run=options.dry_run)
            try:
                job = await importer.run(job_id, progress)
            finally:
                progress.close()
            items = await importer.jobs.items(job_id)
            return Outcome(
                job,
                options,
                failures=[i for i in items if i.status == "failed"],
                skipped=[i for i in items if i.status == "skipped"],
                unchanged=[i for i in items if i.status == "unchanged"],
                would=progress.would,
                error=progress.error,
            )
    finally:
        await db.dispose()
