"""`artifacts serve`."""

from __future__ import annotations

import asyncio
import logging.config
from typing import Annotated

import typer

from app.cli.base import DataDir, cli, load_settings, migrate_database, refuse, require_store
from app.logconfig import log_config
from app.settings import Settings
from storage.blobs import FilesystemBlobStore
from storage.db.engine import Database


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="default: ARTIFACTS_HOST or 127.0.0.1")] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="default: ARTIFACTS_PORT or 8000")
    ] = None,
    data_dir: DataDir = None,
    no_migrate: Annotated[
        bool, typer.Option(help="skip migrations at start-up (the store must exist)")
    ] = False,
    insecure_no_auth: Annotated[
        bool, typer.Option(help="serve with no API keys on a non-loopback address")
    ] = False,
) -> None:
    """Migrate (creating the store if there is none), then serve the HTTP API.

    With no API keys it runs open, and only on a loopback address."""
    settings = load_settings(data_dir)
    if host is not None:
        settings = settings.model_copy(update={"host": host})
    if port is not None:
        settings = settings.model_copy(update={"port": port})
    if insecure_no_auth:
        settings = settings.model_copy(update={"insecure_no_auth": True})
    check_signing_key(settings)
    if no_migrate:
        require_store(settings)
    else:
        migrate_database(settings, create=True)
    check_files(settings)
    # The HTTP app (Litestar and every controller) is imported only by the command that serves
    # it: it doubles the start-up time of every other command (~0.6 s measured), none of which
    # needs it.
    from app import shutdown
    from app.asgi import OpenModeRefused, authenticator, create_app

    async def check(settings: Settings) -> None:
        db = Database(settings.resolved_database_url)
        try:
            await authenticator(db, settings)
        finally:
            await db.dispose()

    # uvicorn's log format from the first line on: the access banner below is said here, once.
    logging.config.dictConfig(log_config(settings.log_level))
    try:
        asyncio.run(check(settings))
    except OpenModeRefused as exc:
        refuse(str(exc))

    shutdown.run(  # uvicorn.run, with a graceful shutdown (app/shutdown.py)
        create_app(settings),
        grace=settings.shutdown_grace,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=log_config(settings.log_level),
        loop="auto",
        http="auto",
    )


def check_signing_key(settings: Settings) -> None:
    """ARTIFACTS_SIGNING_KEY, when set, checked before anything is made."""
    from app.signing import SigningKeyError, decode_signing_key

    if settings.signing_key is not None:
        try:
            decode_signing_key(settings.signing_key.get_secret_value())
        except SigningKeyError as exc:
            refuse(str(exc))


def check_files(settings: Settings) -> None:
    """What the app's start-up would otherwise fail on with a traceback: the signing key
    (ARTIFACTS_SIGNING_KEY, or the key file it makes in the data directory) and the blob
    directory, each made now if missing, or the line saying why it cannot be."""
    from app.signing import SigningKeyError, load_signing_secret

    try:
        load_signing_secret(settings)
    except SigningKeyError as exc:
        refuse(str(exc))
    except OSError as exc:
        refuse(
            f"cannot create the signing key in {settings.data_dir.resolve()}: "
            f"{exc.strerror or exc} (ARTIFACTS_DATA_DIR or --data-dir, or ARTIFACTS_SIGNING_KEY)"
        )
    if settings.blob_backend == "filesystem":
        try:
            FilesystemBlobStore(settings.blob_dir)
        except OSError as exc:
            refuse(
                f"cannot create the blob directory {settings.blob_dir.resolve()}: "
                f"{exc.strerror or exc} (ARTIFACTS_DATA_DIR or --data-dir)"
            )
