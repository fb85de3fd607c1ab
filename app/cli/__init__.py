"""The `artifacts` command line (`[project.scripts] artifacts = "app.cli:main"`).

One typer app, `cli` in app/cli/base.py, with what the commands share (load_settings, the
database migrated and opened). Each command module imports it and adds its commands at import;
this package imports each module once, below, in the order `artifacts --help` lists them:

    migrate.py      artifacts migrate
    serve.py        artifacts serve
    maintenance.py  artifacts gc, artifacts fsck
    imports.py      artifacts import crownest
    keys.py         artifacts keys create | list | revoke | reopen

A new command is a new module here that imports `cli` from app.cli.base (never from app.cli,
which imports the command modules), plus its line below.
"""

from __future__ import annotations

from app.cli.base import cli, load_settings

# The command modules, in the order `artifacts --help` lists their commands (each adds its own
# to `cli` as it is imported):
# isort: off
from app.cli import migrate  # noqa: F401
from app.cli import serve  # noqa: F401
from app.cli import maintenance  # noqa: F401
from app.cli import imports  # noqa: F401
from app.cli import keys  # noqa: F401
# isort: on


def main() -> None:
    cli()


__all__ = ["cli", "load_settings", "main"]
