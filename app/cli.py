"""The `artifacts` command: serve, migrate (more subcommands come with later issues)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from app.settings import Settings
from storage.db.migrate import upgrade

cli = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _settings(data_dir: Path | None) -> Settings:
    settings = Settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    return settings


def _migrate(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    upgrade(settings.resolved_database_url)


@cli.command()
def migrate(
    data_dir: Annotated[
        Path | None, typer.Option(help="default: ARTIFACTS_DATA_DIR or ./var")
    ] = None,
) -> None:
    """Bring the database schema up to date (Alembic `upgrade head`)."""
    settings = _settings(data_dir)
    _migrate(settings)
    typer.echo(f"database at head: {settings.resolved_database_url}")


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="default: ARTIFACTS_HOST or 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="default: ARTIFACTS_PORT or 8000")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="default: ARTIFACTS_DATA_DIR or ./var")
    ] = None,
    no_migrate: Annotated[bool, typer.Option(help="skip migrations at start-up")] = False,
) -> None:
    """Migrate, then serve the HTTP API."""
    settings = _settings(data_dir)
    if host is not None:
        settings = settings.model_copy(update={"host": host})
    if port is not None:
        settings = settings.model_copy(update={"port": port})
    if not no_migrate:
        _migrate(settings)
    from app.asgi import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        loop="auto",
        http="auto",
        timeout_graceful_shutdown=10,
    )


def main() -> None:
    from app.imports.cli import cli as import_cli

    cli.add_typer(import_cli, name="import")
    cli()
