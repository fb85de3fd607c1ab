"""`artifacts serve`."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from app.cli.base import DataDir, cli, load_settings, migrate_database
from app.settings import Settings
from storage.db.engine import Database


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="default: ARTIFACTS_HOST or 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="default: ARTIFACTS_PORT or 8000")] = None,
    data_dir: DataDir = None,
    no_migrate: Annotated[bool, typer.Option(help="skip migrations at start-up")] = False,
    insecure_no_auth: Annotated[
        bool, typer.Option(help="serve with no API keys on a non-loopback address")
    ] = False,
) -> None:
    """Migrate, then serve the HTTP API. With no API keys it runs open, on loopback only."""
    settings = load_settings(data_dir)
    if host is not None:
        settings = settings.model_copy(update={"host": host})
    if port is not None:
        settings = settings.model_copy(update={"port": port})
    if insecure_no_auth:
        settings = settings.model_copy(update={"insecure_no_auth": True})
    if not no_migrate:
        migrate_database(settings)
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

    try:
        asyncio.run(check(settings))
    except OpenModeRefused as exc:
        typer.echo(f"artifacts serve: {exc}", err=True)
        raise typer.Exit(2) from None

    shutdown.run(  # uvicorn.run, with a graceful shutdown (app/shutdown.py)
        create_app(settings),
        grace=settings.shutdown_grace,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        loop="auto",
        http="auto",
    )
