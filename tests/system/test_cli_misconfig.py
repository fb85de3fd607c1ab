"""Every start-up and CLI misconfiguration ends in one line naming what to fix, exit code 2,
never a traceback, and makes nothing: each case below is a real process, `artifacts serve`
both as the command and through scripts/serve (which a new user runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.settings import DURATION_FORMAT
from tests.support.servers import ROOT, free_port


@dataclass
class Case:
    args: list[str]
    env: dict[str, str]
    names: list[str]  # each appears in the line; "{data}" is the data directory
    prepare: Callable[[Path], None] | None = None  # sets up the data directory first
    makes_nothing: bool = True  # the data directory is not made
    hidden: list[str] = field(default_factory=list)  # never appears


def readable_key_file(data: Path) -> None:
    data.mkdir()
    (data / "signing.key").write_bytes(os.urandom(32))
    (data / "signing.key").chmod(0o644)


def blobs_is_a_file(data: Path) -> None:
    data.mkdir()
    (data / "blobs").write_bytes(b"not a directory")


SERVE = {
    "log level": Case(
        ["serve"], {"ARTIFACTS_LOG_LEVEL": "loud"}, ["ARTIFACTS_LOG_LEVEL", "'debug'"]
    ),
    "database URL": Case(
        ["serve"],
        {"ARTIFACTS_DATABASE_URL": "garbage"},
        ["ARTIFACTS_DATABASE_URL", "postgresql+asyncpg://"],
    ),
    "unreachable database": Case(
        ["serve"],
        {"ARTIFACTS_DATABASE_URL": "postgresql://artifacts:hunter2@127.0.0.1:9/artifacts"},
        ["cannot reach the database", "127.0.0.1:9", "ARTIFACTS_DATABASE_URL"],
        hidden=["hunter2"],
    ),
    "data dir under /dev/null": Case(
        ["serve"],
        {"ARTIFACTS_DATA_DIR": "/dev/null/var"},
        ["/dev/null/var", "ARTIFACTS_DATA_DIR"],
        makes_nothing=False,
    ),
    "data dir under /proc": Case(
        ["serve"],
        {"ARTIFACTS_DATA_DIR": "/proc/artifacts-var"},
        ["/proc/artifacts-var", "ARTIFACTS_DATA_DIR"],
        makes_nothing=False,
    ),
    "data dir /proc": Case(
        ["serve"],
        {"ARTIFACTS_DATA_DIR": "/proc"},
        ["store at /proc:", "ARTIFACTS_DATA_DIR"],
        makes_nothing=False,
    ),
    "--no-migrate on a new store": Case(
        ["serve", "--no-migrate"], {}, ["no store at {data}", "ARTIFACTS_DATA_DIR", "migrate"]
    ),
    "short signing key": Case(
        ["serve"], {"ARTIFACTS_SIGNING_KEY": "abcd"}, ["ARTIFACTS_SIGNING_KEY", "only 2 bytes"]
    ),
    "signing key file others can read": Case(
        ["serve"],
        {},
        ["{data}/signing.key", "chmod 600", "ARTIFACTS_SIGNING_KEY"],
        prepare=readable_key_file,
        makes_nothing=False,
    ),
    "blob directory cannot be made": Case(
        ["serve"],
        {},
        ["{data}/blobs", "ARTIFACTS_DATA_DIR"],
        prepare=blobs_is_a_file,
        makes_nothing=False,
    ),
    "port": Case(["serve"], {"ARTIFACTS_PORT": "abc"}, ["ARTIFACTS_PORT"]),
    "duration setting": Case(
        ["serve"],
        {"ARTIFACTS_BODY_IDLE_TIMEOUT": "soon"},
        ["ARTIFACTS_BODY_IDLE_TIMEOUT", "'soon'", DURATION_FORMAT],
    ),
    "s3 without a bucket": Case(
        ["serve"], {"ARTIFACTS_BLOB_BACKEND": "s3"}, ["ARTIFACTS_S3_BUCKET"]
    ),
}
OTHERS = {
    "gc --grace": Case(["gc", "--grace", "banana"], {}, ["--grace", "'banana'", DURATION_FORMAT]),
    "keys create --expires": Case(
        ["keys", "create", "--project", "p", "--scopes", "admin", "--expires", "soon"],
        {},
        ["--expires", "'soon'", DURATION_FORMAT],
    ),
    "duration setting in gc": Case(
        ["gc"], {"ARTIFACTS_GC_GRACE": "an hour"}, ["ARTIFACTS_GC_GRACE", DURATION_FORMAT]
    ),
    "duration setting in fsck": Case(
        ["fsck"],
        {"ARTIFACTS_CROWNEST_RETRY_AFTER_MAX": "1 minute"},
        ["ARTIFACTS_CROWNEST_RETRY_AFTER_MAX", DURATION_FORMAT],
    ),
    "log level in migrate": Case(
        ["migrate"], {"ARTIFACTS_LOG_LEVEL": "loud"}, ["ARTIFACTS_LOG_LEVEL"]
    ),
    "keys list with no store": Case(
        ["keys", "list"], {}, ["no store at {data}", "ARTIFACTS_DATA_DIR"]
    ),
    "database URL in keys list": Case(
        ["keys", "list"],
        {"ARTIFACTS_DATABASE_URL": "mysql://u:pw@h/db"},
        ["ARTIFACTS_DATABASE_URL", "mysql://"],
    ),
}
CASES = [
    *(pytest.param(c, launcher, id=f"{launcher}: {name}") for name, c in SERVE.items()
      for launcher in ("artifacts", "scripts/serve")),
    *(pytest.param(c, "artifacts", id=f"artifacts: {name}") for name, c in OTHERS.items()),
]  # fmt: skip


@pytest.fixture(scope="module")
def venv_ready() -> None:
    """scripts/serve installs requirements.lock into .venv on its first run, and says so on
    stderr: done here first, so that the cases see only what serving says."""
    subprocess.run(
        ["bash", "-c", "source scripts/_venv.sh && ensure_venv requirements.lock"],
        cwd=ROOT, check=True, capture_output=True, timeout=600,
    )  # fmt: skip


@pytest.mark.parametrize(("case", "launcher"), CASES)
def test_misconfiguration_is_one_line_and_exit_2(
    case: Case, launcher: str, tmp_path: Path, venv_ready: None
) -> None:
    data = tmp_path / "data"
    if case.prepare is not None:
        case.prepare(data)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARTIFACTS_", "CROWNEST_"))}
    env |= {"ARTIFACTS_DATA_DIR": str(data), "ARTIFACTS_PORT": str(free_port()), **case.env}
    if launcher == "scripts/serve":
        command = ["bash", str(ROOT / "scripts" / "serve"), *case.args[1:]]
    else:
        command = [sys.executable, "-c", "from app.cli import main; main()", *case.args]
    done = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("artifacts: ") or case.args[0] == "keys", line
    for name in case.names:
        assert name.replace("{data}", str(data)) in line, line
    for secret in case.hidden:
        assert secret not in line
    if case.makes_nothing:
        assert not data.exists()
