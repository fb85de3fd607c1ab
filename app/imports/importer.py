"""Importing a CrowNest sandbox's artifacts into the store, through the one ingest path.

Per upstream artifact: deleted upstream or filtered out -> skipped; already imported (one live
artifact per CrowNest id, unique in the database) -> unchanged, its reason naming the workflow
and phase that hold it when they are not the ones asked for, or failed when the upstream size
differs (reported, never silently overwritten); otherwise its bytes stream from CrowNest into
the blob store (sha256 in the same pass, `sizeBytes` checked before anything is committed) and
one artifact row is written. One item's failure never stops the others; a bad key, an
unreachable host, an unknown sandbox or broken pagination stop the job. Every outcome is
recorded in the job's table, so an interrupted job is resumed by running it again: nothing is
duplicated.
"""

from __future__ import annotations

import mimetypes
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

import httpx

from app.artifacts.multipart import safe_filename
from app.imports.crownest import CrowNestClient, CrowNestError, UpstreamArtifact
from storage.artifacts import ArtifactService
from storage.errors import DuplicateSource, StorageError
from storage.imports import ImportJobs, Item, Job, JobHook
from storage.records import NewArtifact, is_textual

SOURCE = "crownest"
DRY_RUN = "dry run: would import"
TYPE_BY_EXTENSION = {
    ".md": "markdown",
    ".json": "json",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".py": "code",
    ".ts": "code",
    ".js": "code",
    ".sh": "script",
}


@dataclass(frozen=True)
class ImportOptions:
    sandbox_id: str
    workflow_id: str
    phase_id: str | None = None
    session_id: str | None = None
    artifact_type: str | None = None
    artifact_ids: list[str] = field(default_factory=list)
    source_path_prefix: str | None = None
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImportOptions:
        return cls(**data)


class ItemFailed(Exception):
    """This item cannot be imported (the others go on)."""


class Progress:
    """What the importer reports while it works (the CLI draws it; the server ignores it)."""

    def planned(self, items: int, total_bytes: int) -> None: ...

    def transferred(self, size: int) -> None: ...

    def finished(self, item: Item) -> None: ...

    def would_import(self, upstream: UpstreamArtifact, artifact: NewArtifact) -> None:
        """A dry run's item that a real run would import, as it would be stored."""

    def stopped(self, error: CrowNestError) -> None:
        """The job stopped early on this error (recorded as the job's error too)."""


def place_of(workflow_id: str, phase_id: str | None) -> str:
    return f"workflow {workflow_id!r}" + (f", phase {phase_id!r}" if phase_id else "")


def artifact_type_for(name: str, chosen: str | None) -> str:
    return chosen or TYPE_BY_EXTENSION.get(PurePosixPath(name).suffix.lower(), "other")


def content_type_for(upstream: UpstreamArtifact) -> str:
    if upstream.contentType:
        return upstream.contentType
    guessed, _ = mimetypes.guess_type(upstream.name or upstream.sourcePath or "")
    return guessed or "application/octet-stream"


class CrowNestImporter:
    def __init__(
        self,
        service: ArtifactService,
        jobs: ImportJobs,
        connect: Callable[[], CrowNestClient],
        *,
        max_bytes: int | None = None,
    ) -> None:
        self.service, self.jobs, self.connect, self.max_bytes = service, jobs, connect, max_bytes

    async def start(
        self, options: ImportOptions, *, tenant: str | None = None, hook: JobHook | None = None
    ) -> str:
        """A queued job for `tenant` (default: the service's own)."""
        owner = self.service.tenant if tenant is None else tenant
        return await self.jobs.create(SOURCE, options.to_json(), tenant=owner, hook=hook)

    async def run(self, job_id: str, progress: Progress | None = None) -> Job:
        """Run (or resume) a job to its end and return its final state."""
        progress = progress or Progress()
        job = await self.jobs.get(job_id)
        service = self.service.scoped(job.tenant)  # the job's owner's artifacts, only
        options = ImportOptions.from_json(job.options)
        done = {i.upstream_id for i in await self.jobs.items(job_id, "imported")}
        await self.jobs.set_status(job_id, "running")
        try:
            async with self.connect() as client:
                candidates = await self._candidates(client, options)
                known = [a for a in candidates if isinstance(a, UpstreamArtifact)]
                progress.planned(len(candidates), sum(a.sizeBytes for a in known))
                for upstream in candidates:
                    if isinstance(upstream, str):
                        missing = Item(
                            upstream, None, "failed", "not found in CrowNest", None, None
                        )
                        await self.jobs.record(job_id, missing)
                        progress.finished(missing)
                        continue
                    if upstream.id in done:
                        progress.transferred(upstream.sizeBytes)
                        continue  # imported by this job before it was interrupted
                    item = await self._one(service, client, options, upstream, progress)
                    await self.jobs.record(job_id, item)
                    progress.finished(item)
        except CrowNestError as exc:
            await self.jobs.set_status(job_id, "failed", str(exc))
            progress.stopped(exc)
            return await self.jobs.get(job_id)
        except BaseException:
            await self.jobs.set_status(job_id, "interrupted")
            raise
        job = await self.jobs.get(job_id)
        failed = job.counts["failed"]
        error = f"{failed} item(s) failed" if failed else None
        await self.jobs.set_status(job_id, "failed" if failed else "succeeded", error)
        return await self.jobs.get(job_id)

    async def _candidates(
        self, client: CrowNestClient, options: ImportOptions
    ) -> list[UpstreamArtifact | str]:
        if options.artifact_ids:
            return [await self._lookup(client, a) for a in options.artifact_ids]
        try:
            return [a async for a in client.list_artifacts(options.sandbox_id)]
        except CrowNestError as exc:
            if exc.status == 404 and exc.setting is None:  # CrowNest's own not_found
                raise CrowNestError(
                    f"CrowNest has no sandbox {options.sandbox_id!r} ({exc.code}).",
                    status=404,
                    code=exc.code,
                ) from None
            raise

    @staticmethod
    async def _lookup(client: CrowNestClient, artifact_id: str) -> UpstreamArtifact | str:
        """An artifact named with --artifact, or its id when CrowNest does not know it."""
        try:
            return await client.get_artifact(artifact_id)
        except CrowNestError as exc:
            if exc.status != 404 or exc.setting is not None:
                raise
            return artifact_id

    async def _one(
        self,
        service: ArtifactService,
        client: CrowNestClient,
        options: ImportOptions,
        upstream: UpstreamArtifact,
        progress: Progress,
    ) -> Item:
        def item(status: Any, reason: str | None = None, artifact_id: str | None = None) -> Item:
            size = upstream.sizeBytes if status == "imported" else None
            return Item(upstream.id, upstream.name, status, reason, artifact_id, size)

        if upstream.sandboxId is not None and upstream.sandboxId != options.sandbox_id:
            return item("skipped", f"belongs to sandbox {upstream.sandboxId}")
        if upstream.deletedAt is not None:
            return item("skipped", f"deleted upstream at {upstream.deletedAt}")
        prefix = options.source_path_prefix
        if prefix and not (upstream.sourcePath or "").startswith(prefix):
            return item("skipped", f"filtered: source path not under {prefix}")
        existing = await service.find_by_source(SOURCE, upstream.id)
        if existing is not None:
            if existing.size_bytes != upstream.sizeBytes:
                return item(
                    "failed",
                    f"upstream bytes changed: {upstream.sizeBytes} bytes now, "
                    f"{existing.size_bytes} when imported as {existing.id}; not overwritten",
                    existing.id,
                )
            where = (existing.workflow_id, existing.phase_id)
            if where != (options.workflow_id, options.phase_id):  # not moved, and said so
                return item("unchanged", f"already in {place_of(*where)}", existing.id)
            return item("unchanged", None, existing.id)
        if options.dry_run:
            progress.would_import(upstream, self._mapping(options, upstream))
            return item("skipped", DRY_RUN)
        try:
            artifact_id = await self._transfer(service, client, options, upstream, progress)
        except DuplicateSource as exc:  # a concurrent import of the same object won
            return item("unchanged", None, exc.artifact_id)
        except (ItemFailed, StorageError) as exc:
            return item("failed", str(exc))
        except httpx.HTTPError as exc:  # still failing after the retries
            return item("failed", f"transfer failed: {type(exc).__name__}: {exc}")
        except CrowNestError as exc:
            if exc.fatal:
                raise
            return item("failed", str(exc))
        return item("imported", None, artifact_id)

    async def _transfer(
        self,
        service: ArtifactService,
        client: CrowNestClient,
        options: ImportOptions,
        upstream: UpstreamArtifact,
        progress: Progress,
    ) -> str:
        new = self._mapping(options, upstream)
        async for attempt in client.retrying():
            with attempt:
                async with client.open_download(upstream.id) as chunks:
                    checked = _exact_size(chunks, upstream.sizeBytes, progress)
                    artifact = await service.create(new, checked, max_bytes=self.max_bytes)
                    return artifact.id
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _mapping(options: ImportOptions, upstream: UpstreamArtifact) -> NewArtifact:
        content_type = content_type_for(upstream)
        name = upstream.name or PurePosixPath(upstream.sourcePath or upstream.id).name
        crownest = {
            "artifactId": upstream.id,
            "sandboxId": upstream.sandboxId,
            "projectId": upstream.projectId,
            "orgId": upstream.orgId,
            "sourcePath": upstream.sourcePath,
            "objectKey": upstream.objectKey,
            "createdAt": upstream.createdAt,
            "retentionExpiresAt": upstream.retentionExpiresAt,
        }
        return NewArtifact(
            workflow_id=options.workflow_id,
            artifact_type=artifact_type_for(name, options.artifact_type),
            title=name,
            content_type=content_type,
            phase_id=options.phase_id,
            session_id=options.session_id,
            filename=safe_filename(name),
            is_text=is_textual(content_type),
            created_by=f"crownest:{upstream.sandboxId or options.sandbox_id}",
            metadata={"crownest": crownest},
            source=SOURCE,
            source_ref=upstream.id,
        )


async def _exact_size(
    chunks: AsyncIterator[bytes], expected: int, progress: Progress
) -> AsyncIterator[bytes]:
    """Pass the bytes through; fail (so nothing is stored) unless there are exactly `expected`."""
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > expected:
            raise ItemFailed(f"CrowNest sent more than its sizeBytes ({expected}); not stored")
        progress.transferred(len(chunk))
        yield chunk
    if total != expected:
        raise ItemFailed(f"CrowNest sent {total} of {expected} bytes; not stored")
