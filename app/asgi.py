"""create_app(settings): the Litestar application. Nothing is configured at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from litestar import Litestar, Router
from litestar.di import Provide

from app import deps, docs, errors, health
from app.artifacts.controller import ArtifactController
from app.artifacts.versions import VersionController
from app.auth import Authenticator, announce, authorize, is_loopback
from app.blobstore import open_blob_store
from app.events.controller import EventController
from app.imports.controller import ImportController
from app.imports.runner import ImportRunner, importer_for
from app.settings import Settings
from app.signing import RedactSignatures, signer_from_settings
from app.ui.controller import ROUTER as UI_ROUTER
from app.workflows.controller import WorkflowController
from app.workflows.paths import route_encoded_slashes
from storage.apikeys import ApiKeys
from storage.artifacts import ArtifactService
from storage.blobs import MaintainedBlobStore
from storage.db.engine import Database
from storage.errors import InsufficientStorage, StorageUnavailable
from storage.events import Notifier
from storage.idempotency import IdempotencyKeys
from storage.maintenance import collect_garbage, recover_trash

log = logging.getLogger("artifacts")

# Every secured controller, served at `/` and again under `/api/v1`.
CONTROLLERS = (
    ArtifactController,
    VersionController,
    WorkflowController,
    EventController,
    ImportController,
)


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
                version_retention_us=settings.version_retention_us,
            )
            log.info(
                "gc: %d blobs (%d bytes), %d old versions expired, %d artifacts purged, "
                "%d staging files, %d keys",
                len(report.blobs_deleted), report.bytes_freed, report.versions_expired,
                len(report.artifacts_purged), len(report.staging_removed),
                report.idempotency_keys_expired,
            )  # fmt: skip
        except Exception:
            log.exception("gc failed; will try again")


class OpenModeRefused(RuntimeError):
    pass


async def authenticator(db: Database, settings: Settings) -> Authenticator:
    """Keys, or open mode: said once at start-up (app.auth.announce), and refused off loopback
    unless asked. A store whose keys are all revoked or expired is not open: it starts, says
    that it refuses every request, and stays so until a key is created or `keys reopen`."""
    keys = ApiKeys(db)
    loopback = is_loopback(settings.host)
    access = await keys.access()
    if access.active:
        announce(settings, logging.INFO, "API keys are configured: every request needs one")
    elif not access.open:
        announce(
            settings,
            logging.WARNING,
            "NO ACTIVE API KEY: "
            + ("the one key" if access.on_record == 1 else f"all {access.on_record} keys")
            + f" on record {'is' if access.on_record == 1 else 'are'} revoked or expired, so "
            "every request is refused (401) until `artifacts keys create` makes one. Open mode "
            "does not come back by itself: `artifacts keys reopen` forgets the old keys.",
        )
    elif loopback:
        announce(
            settings,
            logging.WARNING,
            f"OPEN MODE: no API key exists, so anyone who can reach {settings.host} has full "
            "access, as the project 'default'. `artifacts keys create --scopes admin` makes the "
            "first key (of the project 'default', which sees what open mode created) and ends it.",
        )
    elif settings.insecure_no_auth:
        announce(
            settings,
            logging.WARNING,
            f"OPEN MODE on {settings.host} with --insecure-no-auth: anyone can read and write, "
            "as the project 'default'",
        )
    else:
        raise OpenModeRefused(
            f"No API keys exist and {settings.host} is not a loopback address: refusing to serve "
            "openly. Create a key (`artifacts keys create`) or pass --insecure-no-auth."
        )
    return Authenticator(
        keys,
        open_allowed=loopback or settings.insecure_no_auth,
        rate=settings.rate_limit or None,
        host=settings.host,
        open_now=access.open,
    )


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        state = app.state
        async with AsyncExitStack() as stack:  # closed in reverse order, also on a failed start
            blobs = await stack.enter_async_context(open_blob_store(settings))
            db = Database(settings.resolved_database_url)
            stack.push_async_callback(db.dispose)
            state.notifier = notifier = Notifier()
            state.service = service = ArtifactService(
                db, blobs, on_commit=notifier.notify, verify_streams=settings.verify_reads
            )
            state.idempotency = IdempotencyKeys(
                db,
                lease_us=max(1, int(settings.idempotency_lease * 1e6)),
                ttl_us=int(settings.idempotency_ttl * 1e6),
            )
            state.auth = await authenticator(db, settings)
            state.signer = signer_from_settings(settings)
            recovered = await recover(db, blobs)
            state.imports = runner = ImportRunner(importer_for(service, settings))
            stack.push_async_callback(runner.stop)
            if settings.crownest_api_key is not None:
                await runner.resume_unfinished()
            if settings.gc_interval:
                gc_task = asyncio.create_task(periodic_gc(db, blobs, settings, recovered=recovered))
                stack.push_async_callback(_cancel, gc_task)
            yield

    RedactSignatures.install()
    app = Litestar(
        route_handlers=[
            health.healthz,
            health.readyz,
            *docs.ROUTES,
            *CONTROLLERS,
            Router("/api/v1", route_handlers=list(CONTROLLERS)),
            UI_ROUTER,  # the web pages for people (app/ui/): not in the OpenAPI document
        ],
        guards=[authorize],
        dependencies={
            "service": Provide(deps.service, sync_to_thread=False),
            "settings": Provide(deps.settings, sync_to_thread=False),
        },
        exception_handlers=errors.HANDLERS,  # type: ignore[arg-type]
        lifespan=[lifespan],
        openapi_config=None,  # the committed contract is served instead (app/docs.py)
        logging_config=None,  # errors are logged once, by app/errors.py
        request_max_body_size=None,  # every route enforces its own limits, stating the number
    )
    app.state.settings = settings
    # before the router: a workflow id with an encoded `/` is one path segment
    app.asgi_handler = route_encoded_slashes(app.asgi_handler)
    return app


def create_app_from_env() -> Litestar:
    """Factory for `uvicorn --factory app.asgi:create_app_from_env`."""
    return create_app(Settings())
