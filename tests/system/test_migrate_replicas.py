"""Replicas started together: several `artifacts migrate` processes on one empty database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.databases import POSTGRES_URL
from tests.support.migrations import SCHEMA_TABLES, fresh_database, head_revision, table_names
from tests.support.servers import ROOT
from tests.support.sql import query


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason="ARTIFACTS_TEST_POSTGRES_URL not set")
def test_replicas_migrating_at_once_on_postgresql(tmp_path: Path) -> None:
    """Four processes run `artifacts migrate` on one empty database at the same moment (replicas
    started together): all succeed, and the schema is at head once."""
    with fresh_database("postgresql", tmp_path) as url:
        env = {**os.environ, "ARTIFACTS_DATABASE_URL": url, "ARTIFACTS_DATA_DIR": str(tmp_path)}
        command = [sys.executable, "-c", "from app.cli import main; main()", "migrate"]
        pipe, merged = subprocess.PIPE, subprocess.STDOUT
        runs = [
            subprocess.Popen(command, env=env, cwd=ROOT, stdout=pipe, stderr=merged)
            for _ in range(4)
        ]
        outputs = [run.communicate(timeout=120)[0].decode() for run in runs]
        assert [run.returncode for run in runs] == [0, 0, 0, 0], outputs
        assert table_names(url) == SCHEMA_TABLES | {"alembic_version"}
        assert query(url, "SELECT version_num FROM alembic_version") == [(head_revision(url),)]
