"""The `artifacts` command in process (typer's runner, real SQLite files and PostgreSQL
databases): which commands may create a store, what the others say where there is none, and
the help. Misconfigurations end to end, in real processes: tests/system/test_cli_misconfig.py;
fsck's text: tests/test_maintenance.py."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner, Result

from app.cli import cli
from storage.db.engine import sqlite_url
from storage.db.migrate import downgrade, store_exists, upgrade
from tests.support.databases import BACKENDS
from tests.support.migrations import fresh_database, head_revision, table_names
from tests.support.sql import query

# Every command that works on a store, none of which may create one.
USERS_OF_A_STORE = {
    "keys create": ["keys", "create", "--project", "p", "--scopes", "admin"],
    "keys list": ["keys", "list"],
    "keys revoke": ["keys", "revoke", "wfa_nothing"],
    "gc": ["gc"],
    "fsck": ["fsck"],
    "import crownest": ["import", "crownest", "--sandbox", "sbx_1", "--workflow-id", "wf"],
}


def run(*args: str, **env: str) -> Result:
    """`artifacts *args` with only `env` of the ARTIFACTS_* and CROWNEST_* variables set."""
    unset: dict[str, str | None] = {
        k: None for k in os.environ if k.startswith(("ARTIFACTS_", "CROWNEST_"))
    }
    # import crownest checks its key before the store; port 9 refuses, were it ever asked
    base = {"CROWNEST_API_KEY": "cn_test", "ARTIFACTS_CROWNEST_BASE_URL": "http://127.0.0.1:9"}
    return CliRunner().invoke(cli, list(args), env={**unset, **base, **env})


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty working directory, as when a command is run from the wrong one."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    yield cwd


def revision(url: str) -> str:
    ((rev,),) = query(url, "SELECT version_num FROM alembic_version")
    return str(rev)


# -- only serve and migrate create a store ---------------------------------------------------


@pytest.mark.parametrize("command", USERS_OF_A_STORE)
def test_a_command_run_where_there_is_no_store_says_where_it_looked(
    command: str, elsewhere: Path
) -> None:
    done = run(*USERS_OF_A_STORE[command])
    assert done.exit_code == 2, done.output
    assert done.stdout == ""
    assert done.stderr == (
        f"artifacts: no store at {elsewhere / 'var'} (ARTIFACTS_DATA_DIR or --data-dir; "
        "`artifacts migrate` creates one)\n"
    )
    assert list(elsewhere.iterdir()) == []  # nothing made: no ./var, no database, no blobs

    other = elsewhere / "other"
    for how in ({"ARTIFACTS_DATA_DIR": str(other)}, {}):
        args = USERS_OF_A_STORE[command] + ([] if how else ["--data-dir", str(other)])
        done = run(*args, **how)
        assert done.exit_code == 2 and f"no store at {other} (" in done.stderr
    assert list(elsewhere.iterdir()) == []


def test_migrate_creates_the_store_the_others_then_use(elsewhere: Path) -> None:
    done = run("migrate")
    assert done.exit_code == 0, done.output
    db = elsewhere / "var" / "artifacts.db"
    assert done.stdout == f"database at head: {sqlite_url(db)}\n"
    assert revision(sqlite_url(db)) == head_revision(sqlite_url(db))
    made = run(*USERS_OF_A_STORE["keys create"])
    assert made.exit_code == 0, made.output
    assert made.stdout.startswith("wfa_")
    listed = run("keys", "list", "--json")
    assert listed.exit_code == 0 and '"project": "p"' in listed.stdout
    checked = run("fsck")
    assert checked.exit_code == 0, checked.output


def test_a_sqlite_url_names_its_file(tmp_path: Path, elsewhere: Path) -> None:
    url = sqlite_url(tmp_path / "db" / "store.db")
    done = run("fsck", ARTIFACTS_DATABASE_URL=url)
    assert done.exit_code == 2
    assert done.stderr == (
        f"artifacts: no store at {tmp_path / 'db' / 'store.db'} (ARTIFACTS_DATABASE_URL; "
        "`artifacts migrate` creates one)\n"
    )
    assert not (tmp_path / "db").exists()
    assert run("migrate", ARTIFACTS_DATABASE_URL=url).exit_code == 0
    assert list(elsewhere.iterdir()) == []  # the database is elsewhere: no data dir made
    assert run("fsck", ARTIFACTS_DATABASE_URL=url).exit_code == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_what_counts_as_a_store(backend: str, tmp_path: Path) -> None:
    """SQLite: the database file exists. PostgreSQL: the alembic version table exists."""
    with fresh_database(backend, tmp_path) as url:
        assert store_exists(url) is False
        assert table_names(url) <= {"alembic_version"}  # looking made nothing (not even a file)
        upgrade(url, "0001")
        assert store_exists(url) is True
        downgrade(url, "base")  # everything dropped but the (empty) version table
        assert store_exists(url) is True


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_existing_store_is_still_migrated_to_head(
    backend: str, tmp_path: Path, elsewhere: Path
) -> None:
    with fresh_database(backend, tmp_path) as url:
        refused = run("fsck", ARTIFACTS_DATABASE_URL=url)
        assert refused.exit_code == 2 and "no store at " in refused.stderr
        assert table_names(url) <= {"alembic_version"}
        upgrade(url, "0004")
        for command in ("fsck", "gc", "keys list"):
            assert run(*USERS_OF_A_STORE[command], ARTIFACTS_DATABASE_URL=url).exit_code == 0
            assert revision(url) == head_revision(url)
            downgrade(url, "0004")


@pytest.mark.parametrize("backend", BACKENDS)
def test_serve_no_migrate_refuses_a_missing_store(backend: str, tmp_path: Path) -> None:
    with fresh_database(backend, tmp_path) as url:
        done = run("serve", "--no-migrate", ARTIFACTS_DATABASE_URL=url, ARTIFACTS_PORT="9")
        assert done.exit_code == 2, done.output
        assert "no store at " in done.stderr and "ARTIFACTS_DATABASE_URL" in done.stderr
        assert done.stderr.count("\n") == 1
        assert table_names(url) <= {"alembic_version"}


def test_an_unreachable_database_is_one_line_without_its_password(elsewhere: Path) -> None:
    url = "postgresql+asyncpg://artifacts:hunter2@127.0.0.1:9/artifacts"  # port 9: closed
    for command in ("fsck", "migrate"):
        done = run(command, ARTIFACTS_DATABASE_URL=url)
        assert done.exit_code == 2
        assert done.stderr.startswith(
            "artifacts: cannot reach the database "
            "postgresql+asyncpg://artifacts:***@127.0.0.1:9/artifacts: "
        )
        assert done.stderr.endswith(" (ARTIFACTS_DATABASE_URL)\n")
        assert done.stderr.count("\n") == 1 and "hunter2" not in done.output
    assert list(elsewhere.iterdir()) == []


# -- help --------------------------------------------------------------------------------------


def test_help_lists_and_describes_every_command() -> None:
    group = typer.main.get_command(cli)
    assert isinstance(group, TyperGroup)
    names = set(group.commands)
    assert names == {"serve", "migrate", "gc", "fsck", "import", "keys"}
    done = run("--help")
    assert done.exit_code == 0
    listed = set(re.findall(r"^│ (\w+) ", done.stdout, flags=re.MULTILINE))
    assert listed == names
    # The one-line description of the whole command names each command, so adding one means
    # saying so there (it once said "serve, migrate (more subcommands come later)").
    assert cli.info.help is not None
    described = set(re.findall(r"\w+", cli.info.help))
    assert names <= described
    for name, sub in group.commands.items():
        if isinstance(sub, TyperGroup):
            done = run(name, "--help")
            assert set(re.findall(r"^│ (\w+) ", done.stdout, flags=re.MULTILINE)) == set(
                sub.commands
            )
