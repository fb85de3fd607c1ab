"""create_app(settings): the ASGI application. Nothing is configured at import time."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig

from app import errors, events, health
from app.artifacts import download, lineage, routes
from app.artifacts.hot import HotRoutes
from app.auth import Authenticator, is_loopback
from app.blobstore import open_blob_store
from app.imports import routes as import_routes
from app.imports.runner import ImportRunner, importer_for
from app.settings import Settings
from app.signing import RedactSignatures, signer_from_settings
from app.workflows import routes as workflow_routes
from storage.apikeys import ApiKeys
from storage.artifacts import ArtifactService
from storage.blobs import MaintainedBlobStore
from storage.db.engine import Database
from storage.errors import InsufficientStorage, StorageUnavailable
from storage.events import Notifier
from storage.idempotency import IdempotencyKeys
from storage.maintenance import collect_garbage, recover_trash

log = logging.getLogger("artifacts")

DESCRIPTION = """Artifact store for agent workflows, wire-compatible with the Syntropic137
Artifacts API. Every route under `/artifacts` is also served under `/api/v1/artifacts`."""


async def recover(db: Database, blobs: MaintainedBlobStore) -> bool:
    """Trash recovery at start-up. An unreachable blob store does not stop the server from
    starting (it answers 503 and /readyz says so until the store is back); recovery then waits
    for the next GC run. Safe at any time: it takes each digest's GC lock."""
    try:
        await recover_trash(db, blobs)
    except (StorageUnavailable, InsufficientStorage) as exc:
        log.warning("trash recovery postponed to the next GC run: %s", exc)
        return False
    return True


async def periodic_gc(
    db: Database, blobs: MaintainedBlobStore, settings: Settings, *, recovered: bool = True
) -> None:
    """Garbage collection every ARTIFACTS_GC_INTERVAL, safe alongside uploads."""
    while True:
        await asyncio.sleep(settings.gc_interval)
        if not recovered:
            recovered = await recover(db, blobs)
        try:
            report = await collect_garbage(
                db,
                blobs,
                grace_us=int(settings.gc_grace * 1e6),
                deleted_retention_us=int(settings.deleted_retention * 1e6),
            )
            log.info(
                "gc: %d blobs (%d bytes), %d artifacts purged, %d staging files, %d keys",
                len(report.blobs_deleted), report.bytes_freed, len(report.artifacts_purged),
                len(report.staging_removed), report.idempotency_keys_expired,
            )  # fmt: skip
        except Exception:
            log.exception("gc failed; will try again")


class OpenModeRefused(RuntimeError):
    pass


async def authenticator(db: Database, settings: Settings) -> Authenticator:
    """Keys, or open mode: said out loud at start-up, and refused off loopback unless asked."""
    keys = ApiKeys(db)
    loopback = is_loopback(settings.host)
    auth = Authenticator(
        keys, open_allowed=loopback or settings.insecure_no_auth, rate=settings.rate_limit or None
    )
    if await keys.any_active():
        log.info("API keys are configured: every request needs one")
    elif loopback:
        log.warning(
            "OPEN MODE: no API keys exist, so anyone who can reach %s has full access; "
            "create one with `artifacts keys create --project P --scopes ...`",
            settings.host,
        )
    elif settings.insecure_no_auth:
        log.warning(
            "OPEN MODE on %s with --insecure-no-auth: anyone can read and write", settings.host
        )
    else:
        raise OpenModeRefused(
            f"No API keys exist and {settings.host} is not a loopback address: refusing to serve "
            "openly. Create a key (`artifacts keys create`) or pass --insecure-no-auth."
        )
    return auth


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def otel_configured() -> bool:
    """Whether OpenTelemetry is set up for this process (by its OTEL_* environment, as
    `opentelemetry-instrument` and the SDK's own configuration use). If not, FastAPI's native
    telemetry is switched off: it otherwise asks the global providers on every request whether
    someone configured them since (measured: ~4% of a list request's CPU)."""
    return any(name.startswith("OTEL_") for name in os.environ)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:  # closed in reverse order, also on a failed start
            blobs = await stack.enter_async_context(open_blob_store(settings))
            db = Database(settings.resolved_database_url)
            stack.push_async_callback(db.dispose)
            app.state.notifier = notifier = Notifier()
            app.state.service = service = ArtifactService(
                db, blobs, on_commit=notifier.notify, verify_streams=settings.verify_reads
            )
            app.state.idempotency = IdempotencyKeys(
                db,
                lease_us=max(1, int(settings.idempotency_lease * 1e6)),
                ttl_us=int(settings.idempotency_ttl * 1e6),
            )
            app.state.auth = await authenticator(db, settings)
            app.state.signer = signer_from_settings(settings)
            recovered = await recover(db, blobs)
            app.state.imports = runner = ImportRunner(importer_for(service, settings))
            stack.push_async_callback(runner.stop)
            if settings.crownest_api_key is not None:
                await runner.resume_unfinished()
            if settings.gc_interval:
                gc_task = asyncio.create_task(periodic_gc(db, blobs, settings, recovered=recovered))
                stack.push_async_callback(_cancel, gc_task)
            yield

    app = FastAPI(
        title="workflow-artifacts",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_url="/schema/openapi.json",
        lifespan=lifespan,
        telemetry=None if otel_configured() else NO_TELEMETRY,
    )
    app.state.settings = settings
    RedactSignatures.install()
    errors.install(app)
    if settings.hot_routes:
        app.add_middleware(HotRoutes)
    app.include_router(health.router)
    secured = errors.SECURED  # every route of these routers is behind require()
    for router in (routes.router, download.router, lineage.router):
        app.include_router(router, prefix="/artifacts", responses=secured)
        app.include_router(
            router, prefix="/api/v1/artifacts", include_in_schema=False, responses=secured
        )
    for router in (workflow_routes.router, events.router, import_routes.router):
        app.include_router(router, responses=secured)
        app.include_router(router, prefix="/api/v1", include_in_schema=False, responses=secured)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory app.asgi:create_app_from_env`."""
    return create_app(Settings())
