"""`artifacts migrate`."""

from __future__ import annotations

import typer
from sqlalchemy.engine import make_url

from app.cli.base import DataDir, cli, load_settings, migrate_database


@cli.command()
def migrate(data_dir: DataDir = None) -> None:
    """Create the store, or bring its database schema up to date (Alembic `upgrade head`)."""
    settings = load_settings(data_dir)
    migrate_database(settings, create=True)
    url = make_url(settings.resolved_database_url).render_as_string(hide_password=True)
    typer.echo(f"database at head: {url}")
