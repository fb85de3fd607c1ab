"""The `artifacts` typer app every command module adds its commands to, and what they share:
settings from the environment, the database migrated and opened."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from app.settings import Settings
from storage.db.engine import Database
from storage.db.migrate import upgrade

cli = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="The `artifacts` command: serve, migrate (more subcommands come with later issues).",
)

DataDir = Annotated[Path | None, typer.Option(help="default: ARTIFACTS_DATA_DIR or ./var")]


def load_settings(data_dir: Path | None = None) -> Settings:
    """The settings from the environment; a bad one ends the command with what is wrong."""
    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            field = "_".join(str(part) for part in error["loc"]).upper()
            where = f"ARTIFACTS_{field}: " if field else ""
            typer.echo(f"artifacts: {where}{error['msg']}", err=True)
        raise typer.Exit(2) from None
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    return settings


def migrate_database(settings: Settings) -> None:
    """The data directory made and the database schema brought to head (Alembic)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    upgrade(settings.resolved_database_url)


def open_database(settings: Settings) -> Database:
    """The database, migrated first (the caller disposes of it)."""
    migrate_database(settings)
    return Database(settings.resolved_database_url)
