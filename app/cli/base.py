"""The `artifacts` typer app every command module adds its commands to, and what they share:
settings from the environment, the store found (or, for `serve` and `migrate` only, created)
and migrated, and the one-line refusal every misconfiguration ends in (exit code 2)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Annotated, NoReturn

import sqlalchemy as sa
import typer
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from app.settings import Settings, parse_duration
from storage.db.engine import Database
from storage.db.migrate import store_exists, upgrade

cli = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="The artifact store of agent workflows: serve its HTTP API, migrate its database, "
    "check it (fsck), collect its garbage (gc), import from CrowNest, manage API keys.",
)

DataDir = Annotated[Path | None, typer.Option(help="default: ARTIFACTS_DATA_DIR or ./var")]


def refuse(message: str) -> NoReturn:
    """End the command with one line on stderr, exit code 2 (a usage or configuration error)."""
    typer.echo(f"artifacts: {message}", err=True)
    raise typer.Exit(2)


def load_settings(data_dir: Path | None = None) -> Settings:
    """The settings from the environment; a bad one ends the command with what is wrong."""
    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            field = "_".join(str(part) for part in error["loc"]).upper()
            where = f"ARTIFACTS_{field}: " if field else ""
            message = error["msg"].removeprefix("Value error, ")
            typer.echo(f"artifacts: {where}{message}", err=True)
        raise typer.Exit(2) from None
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    return settings


def duration_flag(flag: str, value: str | None, default: float) -> float:
    """A duration flag's seconds (`default` when not given); a bad one ends the command with a
    line naming the flag and the forms it takes."""
    if value is None:
        return default
    try:
        return parse_duration(value)
    except ValueError as exc:
        refuse(f"{flag}: {exc}")


def _hint(settings: Settings) -> str:
    """How to point a command at another store."""
    if settings.database_url is None:
        return "ARTIFACTS_DATA_DIR or --data-dir"
    return "ARTIFACTS_DATABASE_URL"


def _where(settings: Settings) -> str:
    """The store looked at: a directory or a SQLite file, or a URL without its password."""
    if settings.database_url is None:
        return str(settings.data_dir.resolve())
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        return str(Path(url.database or "").resolve())
    return url.render_as_string(hide_password=True)


def _look(settings: Settings) -> bool:
    """Whether a store exists (storage/db/migrate.py says what that means); an unreachable
    database ends the command."""
    try:
        return store_exists(settings.resolved_database_url)
    except (OSError, sa.exc.DBAPIError) as exc:  # OSError: refused, unknown host, timed out
        refuse(f"cannot reach the database {_where(settings)}: {_reason(exc)} ({_hint(settings)})")


def _no_store(settings: Settings) -> NoReturn:
    hint = f"{_hint(settings)}; `artifacts migrate` creates one"
    refuse(f"no store at {_where(settings)} ({hint})")


def require_store(settings: Settings) -> None:
    """Refuse unless a store exists (`serve --no-migrate`)."""
    if not _look(settings):
        _no_store(settings)


def migrate_database(settings: Settings, *, create: bool = False) -> None:
    """The store's database schema brought to head (Alembic). Only `serve` and `migrate` pass
    create=True: any other command run where no store exists ends with the line saying where
    it looked, rather than making a new, empty store there."""
    if not _look(settings):
        if not create:
            _no_store(settings)
        if make_url(settings.resolved_database_url).get_backend_name() == "sqlite":
            _create_sqlite_file(settings)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    upgrade(settings.resolved_database_url)


def _create_sqlite_file(settings: Settings) -> None:
    """The SQLite file and its directory made, or the line saying why they cannot be (a data
    directory under a file, or in /proc)."""
    path = Path(make_url(settings.resolved_database_url).database or "")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sqlite3.connect(path).close()
    except (OSError, sqlite3.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        refuse(f"cannot create a store at {_where(settings)}: {reason} ({_hint(settings)})")


def _reason(exc: BaseException) -> str:
    """An exception as one line: the driver's own message, not SQLAlchemy's wrapping of it."""
    inner = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
    return " ".join(str(inner).split()) or type(inner).__name__


def open_database(settings: Settings) -> Database:
    """The existing store's database, migrated first (the caller disposes of it)."""
    migrate_database(settings)
    return Database(settings.resolved_database_url)
