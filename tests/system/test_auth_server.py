"""Access control seen from outside a real `artifacts serve` process: open mode said once in its
log and refused off loopback; the keys CLI as a new operator meets it (at 80 columns), from the
first key to the last revoked and `keys reopen`; no secret in its logs (access log included),
bodies or the database. The rest of access control is tests/test_auth.py, in process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storage.apikeys import SCOPES, ApiKeys
from storage.db.engine import Database
from tests.support.crownest import (  # noqa: F401  (crownest_fake is a fixture)
    FakeCrowNest,
    Fault,
    crownest_fake,
)
from tests.support.keys import Keys, basic, bearer, make_keys
from tests.support.servers import ROOT, Server, start_server


@pytest.fixture
def keyed_server(tmp_path: Path, database_url: str) -> Iterator[tuple[Server, Keys]]:
    keys = make_keys(database_url)
    srv = start_server(
        tmp_path / "data", database_url=database_url, env={"ARTIFACTS_RATE_LIMIT": ""}
    )
    try:
        yield srv, keys
    finally:
        srv.stop()


# -- open mode -------------------------------------------------------------------------------


def test_open_mode_on_loopback_says_so_and_ends_with_the_first_key(
    tmp_path: Path, database_url: str
) -> None:
    srv = start_server(
        tmp_path / "data", database_url=database_url, env={"ARTIFACTS_LOG_LEVEL": "info"}
    )
    try:
        with srv.client() as c:
            assert c.get("/artifacts").status_code == 200
            # once: `serve` checks before uvicorn starts and the lifespan again
            assert srv.log.read_text().count("OPEN MODE") == 1
            # with its level, in uvicorn's format (app/logconfig.py), like every line of ours
            assert "WARNING:  OPEN MODE" in srv.log.read_text()

            async def first_key() -> str:
                db = Database(database_url)
                try:
                    return (await ApiKeys(db).create("proj", ["artifact:read"]))[1]
                finally:
                    await db.dispose()

            key = asyncio.run(first_key())
            deadline = time.monotonic() + 5
            while c.get("/artifacts").status_code != 401:
                assert time.monotonic() < deadline, "open mode outlived the first key"
                time.sleep(0.1)
            assert c.get("/artifacts", headers=bearer(key)).status_code == 200
    finally:
        srv.stop()


def cli(*args: str, data: Path, database_url: str | None = None) -> subprocess.CompletedProcess:
    """`artifacts *args` as typed in an 80-column terminal (no input: a prompt is declined)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTIFACTS_")}
    env["ARTIFACTS_DATA_DIR"] = str(data)
    env["COLUMNS"] = "80"
    if database_url:
        env["ARTIFACTS_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def eventually(check: Callable[[], bool], what: str, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def throughout(check: Callable[[], bool], what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check(), what
        time.sleep(0.1)


def test_open_mode_is_refused_off_loopback(tmp_path: Path) -> None:
    done = cli("serve", "--host", "0.0.0.0", "--port", "9", data=tmp_path / "data")
    assert done.returncode == 2
    assert "not a loopback address" in done.stderr and "--insecure-no-auth" in done.stderr
    assert "Traceback" not in done.stderr


# -- the keys CLI, and no secret anywhere in clear -------------------------------------------


def test_keys_cli_prints_the_key_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert cli("migrate", data=data).returncode == 0  # keys never create a store
    made = cli(
        "keys", "create", "--project", "proj", "--scopes", "artifact:read,artifact:create",
        "--expires", "30d", "--name", "ci", data=data,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert re.fullmatch(r"wfa_[A-Za-z0-9_-]{43}", secret)
    listed = cli("keys", "list", "--json", data=data)
    assert listed.returncode == 0 and secret not in listed.stdout
    (entry,) = json.loads(listed.stdout)
    assert entry["prefix"] == secret[:12] and entry["project"] == "proj"
    assert entry["scopes"] == ["artifact:create", "artifact:read"] and entry["expires_at"]
    db_bytes = b"".join(p.read_bytes() for p in data.glob("artifacts.db*"))
    assert secret.encode() not in db_bytes and secret[12:].encode() not in db_bytes
    bad = cli("keys", "create", "--project", "p", "--scopes", "artifact:write", data=data)
    assert bad.returncode == 2 and "scopes must be some of" in bad.stderr
    assert cli("keys", "revoke", "nope", data=data).returncode == 1
    gone = cli("keys", "revoke", secret[:12], data=data)
    assert gone.returncode == 0, gone.stderr
    assert "revoked" in cli("keys", "list", data=data).stdout


def test_keys_list_at_80_columns_shows_the_prefix_revoke_takes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert cli("migrate", data=data).returncode == 0  # the store, as an operator makes it
    made = []
    for i, project in enumerate(("a-rather-long-project-name-for-team-1", "p2", "default")):
        done = cli(
            "keys", "create", "--project", project, "--scopes", ",".join(SCOPES[:4]),
            "--name", f"the nightly runner of team {i} [deploy]", data=data,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        made.append(done.stdout.strip())
    listed = cli("keys", "list", data=data)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, listed.stdout
    assert "[deploy]" in listed.stdout  # names are shown as written (no rich markup)
    shown = [line.split()[0] for line in lines if line.startswith("wfa_")]
    assert shown == [secret[:12] for secret in made], listed.stdout
    # what list shows is what revoke takes (a trailing "…", as older versions showed, too)
    for token, suffix in zip(shown, ("", "…", ""), strict=True):
        gone = cli("keys", "revoke", token + suffix, data=data)
        assert gone.returncode == 0 and f"revoked {token}" in gone.stdout, gone.stderr
    again = cli("keys", "revoke", shown[0], data=data)
    assert again.returncode == 0 and "already revoked" in again.stdout
    assert cli("keys", "list", data=data).stdout.count(" revoked ") == 3


def test_a_new_operator_from_open_mode_to_the_last_revoked_key(tmp_path: Path) -> None:
    """Open mode's artifacts and the first key's project meet or are said not to; revoking the
    last key leaves the running server closed; `keys reopen` opens it, said in its log."""
    data = tmp_path / "data"
    srv = start_server(data, env={"ARTIFACTS_RATE_LIMIT": ""})
    try:
        with srv.client() as c:
            for i in range(2):
                body = {
                    "workflow_id": "w",
                    "artifact_type": "text",
                    "title": "t",
                    "content": f"{i}",
                }
                assert c.post("/artifacts", json=body).status_code == 201

            first = cli("keys", "create", "--project", "team", "--scopes", "admin", data=data)
            assert first.returncode == 0, first.stderr
            assert "This is the first key: open mode is over" in first.stderr
            (note,) = [line for line in first.stderr.splitlines() if "(open mode's)" in line]
            assert "2 artifacts are in the project 'default'" in note
            assert "`artifacts keys create --project default --scopes artifact:read`" in note
            team = first.stdout.strip()
            eventually(lambda: c.get("/artifacts").status_code == 401, "open mode outlived it")
            assert c.get("/artifacts", headers=bearer(team)).json() == []

            # --project defaults to open mode's project: this key sees what it created
            mine = cli("keys", "create", "--scopes", "artifact:read", data=data)
            assert mine.returncode == 0 and "default" in mine.stderr
            assert "first key" not in mine.stderr and "(open mode's)" not in mine.stderr
            assert len(c.get("/artifacts", headers=bearer(mine.stdout.strip())).json()) == 2
            later = cli("keys", "create", "--project", "t2", "--scopes", "admin", data=data)
            assert "(open mode's)" not in later.stderr  # a key of `default` sees them now

            refused = cli("keys", "reopen", "--yes", data=data)
            assert refused.returncode == 1 and "3 API keys are still active" in refused.stderr
            for secret in (team, mine.stdout.strip()):
                done = cli("keys", "revoke", secret[:12], data=data)
                assert done.returncode == 0 and "last active key" not in done.stderr
            last = cli("keys", "revoke", later.stdout.strip()[:12], data=data)
            assert last.returncode == 0
            assert "That was the last active key: a running server now refuses every request" in (
                last.stderr
            )
            throughout(lambda: c.get("/artifacts").status_code == 401, "reopened", seconds=1.5)

            declined = cli("keys", "reopen", data=data)  # asks, and no one says yes
            assert declined.returncode == 1 and "Abort" in declined.stderr
            throughout(lambda: c.get("/artifacts").status_code == 401, "reopened", seconds=1.2)
            reopened = cli("keys", "reopen", "--yes", data=data)
            assert reopened.returncode == 0 and "forgot 3 revoked or expired keys" in (
                reopened.stdout
            )
            assert "OPEN MODE is back" in reopened.stderr
            eventually(lambda: c.get("/artifacts").status_code == 200, "still closed")
            assert len(c.get("/artifacts").json()) == 2
    finally:
        srv.stop()
    log = srv.log.read_text()
    assert log.count("OPEN MODE: no API key exists") == 1
    assert log.count("open mode is over") == 1
    assert log.count("OPEN MODE again") == 1


def test_no_secret_in_logs_or_error_bodies(keyed_server: tuple[Server, Keys]) -> None:
    srv, keys = keyed_server
    wrong = "wfa_" + "Z" * 43
    with srv.client() as c:
        bodies = []
        for key in (keys.admin, wrong, keys.revoked):
            for headers in (bearer(key), basic(key)):
                for method, path in (("GET", "/artifacts"), ("GET", "/artifacts/nope")):
                    r = c.request(method, path, headers=headers)
                    bodies.append(r.text + str(dict(r.headers)))
        bodies.append(c.get("/artifacts", headers=bearer(keys.by_scope["import:run"])).text)
    srv.stop()
    log = srv.log.read_text()
    for key in (keys.admin, wrong, keys.revoked, keys.by_scope["import:run"]):
        assert key not in log and key[12:] not in log
        assert all(key not in b for b in bodies)


def test_the_crownest_key_never_leaves_in_clear(
    tmp_path: Path,
    database_url: str,
    crownest_fake: FakeCrowNest,  # noqa: F811
) -> None:
    """An import job that meets failures (a 500 that stays, a short body) still writes the
    CrowNest key to no log line, no response body and no database row."""
    st = crownest_fake.state
    sbx = st.add_sandbox()
    ups = st.add_artifacts(sbx.id, 4)
    st.inject("download", Fault.server_error(500), Fault.server_error(500), artifact_id=ups[0].id)
    st.inject("download", Fault.short_body(missing=2), artifact_id=ups[1].id)
    env = {
        "CROWNEST_API_KEY": crownest_fake.api_key,
        "ARTIFACTS_CROWNEST_BASE_URL": crownest_fake.base_url,
        "ARTIFACTS_CROWNEST_BACKOFF_BASE": "0.01",
        "ARTIFACTS_CROWNEST_MAX_ATTEMPTS": "2",
        "ARTIFACTS_LOG_LEVEL": "debug",
    }
    srv = start_server(tmp_path / "data", database_url=database_url, env=env)
    bodies: list[str] = []
    try:
        with srv.client() as c:
            r = c.post("/imports/crownest", json={"sandbox_id": sbx.id, "workflow_id": "w"})
            bodies.append(r.text)
            job = r.json()["import_id"]
            deadline = time.monotonic() + 30
            while (state := c.get(f"/imports/{job}")).json()["status"] not in (
                "succeeded",
                "failed",
            ):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            bodies.append(state.text)
            assert state.json()["counts"]["failed"] == 2
            bodies.append(
                c.get(
                    "/store/events", params={"after": 0}, headers={"Accept": "application/json"}
                ).text
            )
            bodies.append(c.get("/artifacts").text)
    finally:
        srv.stop()
    secret = crownest_fake.api_key
    assert secret not in srv.log.read_text()
    assert all(secret not in b for b in bodies)
    if database_url.startswith("sqlite"):
        dumped = b"".join(p.read_bytes() for p in Path(tmp_path).rglob("artifacts.db*"))
    else:
        from tests.support.sql import query

        dumped = repr(
            [
                query(database_url, f"SELECT * FROM {t}")
                for t in ("imports", "import_items", "events")
            ]
        ).encode()
    assert secret.encode() not in dumped
