"""The `artifacts` command: serve, migrate (more subcommands come with later issues)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from pydantic import ValidationError

from app.blobstore import open_blob_store
from app.settings import Settings, parse_duration
from storage.db.engine import Database
from storage.db.migrate import upgrade
from storage.maintenance import FsckReport, GcReport, collect_garbage
from storage.maintenance import fsck as check

DataDir = Annotated[Path | None, typer.Option(help="default: ARTIFACTS_DATA_DIR or ./var")]

cli = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


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
    settings = load_settings(data_dir)
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
        _migrate(settings)
    from app.asgi import OpenModeRefused, authenticator, create_app

    async def check() -> None:
        db = Database(settings.resolved_database_url)
        try:
            await authenticator(db, settings)
        finally:
            await db.dispose()

    try:
        asyncio.run(check())
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


def main() -> None:
    from app.imports.cli import cli as import_cli
    from app.keys_cli import cli as keys_cli

    cli.add_typer(import_cli, name="import")
    cli.add_typer(keys_cli, name="keys")
    cli()


def _database(settings: Settings) -> Database:
    _migrate(settings)
    return Database(settings.resolved_database_url)


@cli.command()
def gc(
    grace: Annotated[
        str | None, typer.Option(help="e.g. 1h, 30m, 0 (default: ARTIFACTS_GC_GRACE)")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="report what would be reclaimed")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable report")] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="default: ARTIFACTS_DATA_DIR or ./var")
    ] = None,
) -> None:
    """Reclaim unreferenced blobs past the grace period, stale staging files and soft-deleted
    artifacts past ARTIFACTS_DELETED_RETENTION. Safe while the server runs."""
    settings = load_settings(data_dir)
    try:
        grace_s = parse_duration(grace) if grace is not None else settings.gc_grace
    except ValueError as exc:
        typer.echo(f"--grace: {exc}", err=True)
        raise typer.Exit(2) from None
    db = _database(settings)

    async def run() -> GcReport:
        try:
            async with open_blob_store(settings) as store:
                return await collect_garbage(
                    db,
                    store,
                    grace_us=int(grace_s * 1e6),
                    deleted_retention_us=int(settings.deleted_retention * 1e6),
                    dry_run=dry_run,
                )
        finally:
            await db.dispose()

    report = asyncio.run(run())
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    verb = "would reclaim" if dry_run else "reclaimed"
    typer.echo(
        f"{verb} {len(report.blobs_deleted)} blobs ({report.bytes_freed} bytes), "
        f"{len(report.orphan_files_deleted)} orphan files, {len(report.staging_removed)} staging "
        f"files; purged {len(report.artifacts_purged)} deleted artifacts and "
        f"{report.idempotency_keys_expired} expired idempotency keys"
    )


@cli.command()
def fsck(
    verify_data: Annotated[bool, typer.Option(help="also hash every blob")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable report")] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="default: ARTIFACTS_DATA_DIR or ./var")
    ] = None,
) -> None:
    """Check every row against its blob and every blob against its row (and, with
    --verify-data, its name). Exit 1 when anything is wrong; leftovers GC reclaims are warnings."""
    settings = load_settings(data_dir)
    db = _database(settings)

    async def run() -> FsckReport:
        try:
            async with open_blob_store(settings) as store:
                return await check(db, store, verify_data=verify_data)
        finally:
            await db.dispose()

    report = asyncio.run(run())
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        typer.echo(
            f"checked {report.artifacts_checked} artifacts and {report.blobs_checked} blobs"
            f"{' (data verified)' if verify_data else ''}: "
            f"{len(report.errors)} errors, {len(report.warnings)} warnings"
        )
        for item in report.errors:
            typer.echo(f"ERROR   {item.pop('problem')}: {item}")
        for item in report.warnings:
            typer.echo(f"warning {item.pop('problem')}: {item}")
    raise typer.Exit(0 if report.clean else 1)
