"""The client package installs on its own: `pip install ./client` into a fresh virtual
environment pulls in httpx and its dependencies only, none of the server's, and `wfa` runs
there (its progress lines and tables need nothing more). Uses the package index pip is
configured with, so it is slow and bounded."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import ROOT, start_server

SERVER_ONLY = [
    "litestar",
    "sqlalchemy",
    "pydantic",
    "uvicorn",
    "msgspec",
    "alembic",
    "typer",
    "rich",
    "tenacity",
    "aiobotocore",
]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_client_installs_alone_and_wfa_runs(tmp_path: Path) -> None:
    source = tmp_path / "client"
    shutil.copytree(
        ROOT / "client", source, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__")
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.lower()
    names = {line.split("==")[0] for line in listed.splitlines()}
    assert "workflow-artifacts-client" in names and "httpx" in names
    assert names & set(SERVER_ONLY) == set(), names

    wfa = venv / "bin" / "wfa"
    help_run = subprocess.run([str(wfa), "--help"], capture_output=True, text=True, timeout=60)
    assert help_run.returncode == 0 and "push" in help_run.stdout

    # and it works against a server, with plain lines (no rich here, and no terminal)
    server = start_server(tmp_path / "data")
    try:
        (tmp_path / "a.md").write_text("# a\n")
        env = {"ARTIFACTS_URL": server.url, "PATH": "/usr/bin:/bin"}
        push = subprocess.run(
            [str(wfa), "push", str(tmp_path / "a.md"), "-w", "alone"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert push.returncode == 0, push.stderr
        assert "a.md: ok" in push.stdout
        pull = subprocess.run(
            [str(wfa), "pull", "-w", "alone", str(tmp_path / "out")],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert pull.returncode == 0, pull.stderr
        assert (tmp_path / "out" / "a.md").read_text() == "# a\n"
    finally:
        server.stop()
