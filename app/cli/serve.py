"""`artifacts serve`."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
import uvicorn

from app.cli.base import DataDir, cli, load_settings, migrate_database, require_store
from app.settings import Settings
from storage.db.engine import Database


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="default: ARTIFACTS_HOST or 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="default: ARTIFACTS_PORT or 8000")] = None,
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
    if no_migrate:
        require_store(settings)
    else:
        migrate_database(settings, create=True)
    # The HTTP app (Litestar and every controller) is imported only by the command that serves
    # it: it doubles the start-up time of every other command (~0.6 s measured), none of which
    # needs it.
    from app.asgi import OpenModeRefused, authenticator, create_app

    async def check(settings: Settings) -> None:
        db = Database(settings.resolved_database_url)
        try:
            await authenticator(db, settings)
        finally:
            await db.dispose()

    try:
        asyncio.run(check(settings))
    except OpenModeRefused as exc:
        typer.echo(f"artifacts serve: {exc}", err=True)
        raise typer.Exit(2) from None

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        loop="auto",
        http="auto",
        timeout_graceful_shutdown=10,
    )
