"""Schemathesis against the committed openapi/openapi.json, over a real server on loopback.

Every check Schemathesis has (server errors; status codes, content types, headers and bodies
against the document; negative data rejected, positive data accepted; missing required
headers, unsupported methods and `Allow`; use after free, resource availability, ignored auth,
object-level authorization) in every phase (the document's examples, coverage, fuzzing, and
stateful sequences along the links Schemathesis infers), bounded and derandomised by
tests/system/schemathesis.toml. What is switched off, and why, is said where it is: EXCLUDED
below and tests/system/schemathesis.toml (positive_data_acceptance for the three opaque-cursor
listings; the event feed read as JSON pages, not as an endless SSE stream), and `ignored_auth`
in open mode. tests/support/schemathesis_hooks.py makes the client follow the rules OpenAPI
cannot state (a fresh Idempotency-Key per request, the file part last and its real sha256, JSON
form fields) and drops three precisely described kinds of failure that are the API's documented
behaviour. Each run leaves schemathesis.log, a JUnit report and filtered.jsonl (what the hooks
dropped) in the test's tmp_path.

Two runs: open mode (no API key exists), and with an admin key sent as Bearer (rate limiting
off, so a 429 never hides an answer). Imports point at the CrowNest fake, so POST
/imports/crownest answers 202 instead of 503 crownest_not_configured.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import schemathesis
from schemathesis.checks import CHECKS, load_all_checks

from storage.apikeys import ApiKeys
from storage.db.engine import Database
from tests.support.crownest import FakeCrowNest, crownest_fake  # noqa: F401  (a fixture)
from tests.support.servers import ROOT, Server, start_server

SCHEMA = ROOT / "openapi" / "openapi.json"
CONFIG = ROOT / "tests" / "system" / "schemathesis.toml"
HOOKS = ROOT / "tests" / "support" / "schemathesis_hooks.py"
RUN_TIMEOUT = 240  # seconds; a run takes well under a minute here
# (operation, check) pairs tests/system/schemathesis.toml turns off, and why it does, is said there.
EXCLUDED = {
    ("GET /artifacts", "positive_data_acceptance"),
    ("GET /artifacts/{artifact_id}/versions", "positive_data_acceptance"),
    ("GET /store/workflows", "positive_data_acceptance"),
}
PHASES = ("examples", "coverage", "fuzzing", "stateful")


def test_every_check_runs_on_every_operation() -> None:
    """The configuration leaves every check on (Schemathesis's default) but EXCLUDED: a new
    check, or a config edit that drops one, shows up here rather than passing quietly."""
    load_all_checks()
    config = schemathesis.Config.from_path(CONFIG)
    schema = schemathesis.openapi.from_path(SCHEMA, config=config)
    project = config.projects.get(schema.raw_schema)
    names = set(CHECKS.get_all_names())
    assert {"use_after_free", "ensure_resource_availability", "ignored_auth"} <= names
    off = set()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 25
    for operation in operations:
        for phase in PHASES:
            checks = project.checks_config_for(operation=operation, phase=phase)
            off |= {(operation.label, n) for n in names if not checks.get_by_name(name=n).enabled}
    assert off == EXCLUDED


def create_admin_key(database_url: str) -> str:
    async def create() -> str:
        db = Database(database_url)
        try:
            _, secret = await ApiKeys(db).create("default", ["admin"], name="schemathesis")
            return secret
        finally:
            await db.dispose()

    return asyncio.run(create())


@pytest.fixture
def serve(
    tmp_path: Path,
    database_url: str,
    crownest_fake: FakeCrowNest,  # noqa: F811
) -> Iterator[Callable[[], Server]]:
    """Starts the server (after the test has put what it needs in the database)."""
    servers: list[Server] = []

    def start() -> Server:
        env = {
            "ARTIFACTS_RATE_LIMIT": "",
            "CROWNEST_API_KEY": crownest_fake.api_key,
            "ARTIFACTS_CROWNEST_BASE_URL": crownest_fake.base_url,
            "ARTIFACTS_CROWNEST_MAX_ATTEMPTS": "1",
        }
        server = start_server(tmp_path / "data", database_url=database_url, env=env)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


def run_schemathesis(server: Server, workdir: Path, *options: str) -> None:
    """`st run` on the committed document; fails with Schemathesis's own report."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "--no-color",
        "run", str(SCHEMA), "--url", server.url,
        "--report", "junit", "--report-dir", str(workdir / "report"), *options,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS_")}
    result = subprocess.run(
        command,
        cwd=workdir,  # nothing (a .hypothesis directory, reports) lands in the work tree
        env={**env, "SCHEMATHESIS_HOOKS": str(HOOKS), "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    (workdir / "schemathesis.log").write_text(output)
    server_log = server.log.read_text(errors="replace")[-4000:]
    assert result.returncode == 0, f"{output}\n--- server log (tail) ---\n{server_log}"


@pytest.mark.slow
def test_open_mode(serve: Callable[[], Server], tmp_path: Path) -> None:
    """No key exists: anyone on loopback may call. `ignored_auth` is off for this run alone:
    serving without credentials is what open mode is (README, app/auth.py), and the keyed run
    below checks that every secured operation refuses a missing or bad key."""
    server = serve()
    run_schemathesis(server, tmp_path / "open", "--exclude-checks", "ignored_auth")


@pytest.mark.slow
def test_with_admin_key(serve: Callable[[], Server], tmp_path: Path, database_url: str) -> None:
    """An admin key exists, so every request needs one: Schemathesis sends it as Bearer, and
    `ignored_auth` checks that each secured operation refuses no key and a wrong one."""
    secret = create_admin_key(database_url)
    server = serve()
    run_schemathesis(server, tmp_path / "keyed", "--header", f"Authorization: Bearer {secret}")
