"""`artifacts migrate`."""

from __future__ import annotations

import typer

from app.cli.base import DataDir, cli, load_settings, migrate_database


@cli.command()
def migrate(data_dir: DataDir = None) -> None:
    """Bring the database schema up to date (Alembic `upgrade head`)."""
    settings = load_settings(data_dir)
    migrate_database(settings)
    typer.echo(f"database at head: {settings.resolved_database_url}")
