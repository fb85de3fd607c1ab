"""Import jobs inside the server: started in the background, resumed after a restart."""

from __future__ import annotations

import asyncio
import logging

from app.imports.crownest import CrowNestClient
from app.imports.importer import SOURCE, CrowNestImporter
from app.settings import Settings
from storage.artifacts import ArtifactService
from storage.imports import ImportJobs

log = logging.getLogger("artifacts.imports")


def crownest_client(settings: Settings) -> CrowNestClient:
    if settings.crownest_api_key is None:
        raise RuntimeError("CROWNEST_API_KEY is not set")
    return CrowNestClient(
        settings.crownest_base_url,
        settings.crownest_api_key.get_secret_value(),
        max_attempts=settings.crownest_max_attempts,
        backoff_base=settings.crownest_backoff_base,
        retry_after_max=settings.crownest_retry_after_max,
    )


def importer_for(service: ArtifactService, settings: Settings) -> CrowNestImporter:
    return CrowNestImporter(
        service,
        ImportJobs(service.db),
        lambda: crownest_client(settings),
        max_bytes=settings.max_upload_bytes,
    )


class ImportRunner:
    """Runs each job as an asyncio task of this process; state lives in the database."""

    def __init__(self, importer: CrowNestImporter) -> None:
        self.importer = importer
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, job_id: str) -> None:
        if job_id in self.tasks and not self.tasks[job_id].done():
            return
        task = asyncio.create_task(self._run(job_id), name=f"import-{job_id}")
        self.tasks[job_id] = task

    async def _run(self, job_id: str) -> None:
        try:
            job = await self.importer.run(job_id)
            log.info("import %s %s: %s", job_id, job.status, job.counts)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("import %s stopped", job_id)

    async def resume_unfinished(self) -> None:
        for job_id in await self.importer.jobs.unfinished(SOURCE):
            log.info("resuming import %s", job_id)
            self.start(job_id)

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
