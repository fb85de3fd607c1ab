"""The CrowNest importer in real processes, against tests/support/crownest.py over loopback: an
`artifacts serve` killed with SIGKILL mid-job and restarted (the job resumes at start-up), and
`artifacts import crownest` as a subprocess (its summary, exit codes, and flat memory over
1 GiB). Every stored artifact is compared with the fake's own bytes and record.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import time
from pathlib import Path

import pytest

from tests.support.crownest import (  # noqa: F401  (crownest_fake is a fixture)
    FORBIDDEN_API_KEY,
    Artifact,
    FakeCrowNest,
    FakeState,
    Fault,
    RecordedRequest,
    crownest_fake,
)
from tests.support.imports import (
    PEAK,
    WF,
    LazyBytes,
    MiB,
    cli_env,
    closed_port,
    dry_run_of,
    finished,
    hits,
    not_crownest,
    peak_of,
    poll,
    rows_of,
    run_cli,
    server_env,
    sha,
    staging,
    table_of,
    tally,
)
from tests.support.servers import Server, start_server

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def fake(crownest_fake: FakeCrowNest) -> FakeCrowNest:  # noqa: F811
    return crownest_fake


def test_http_job_killed_mid_import_resumes_at_start_up(
    tmp_path: Path, database_url: str, fake: FakeCrowNest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CROWNEST_API_KEY", raising=False)
    monkeypatch.delenv("ARTIFACTS_CROWNEST_API_KEY", raising=False)
    st = fake.state
    sbx = st.add_sandbox()
    ups = [
        st.add_artifact(sbx.id, random.Random(i).randbytes(100_000), name=f"part-{i}.bin")
        for i in range(8)
    ]
    order = ups[::-1]  # the listing (and the import) goes newest first
    slow = order[2]
    st.inject("download", Fault.slow(chunk_size=2048, delay=0.1), artifact_id=slow.id)  # ~5 s
    env = server_env(fake)
    data_dir = tmp_path / "data"
    server = start_server(data_dir, database_url=database_url, env=env)
    restarted: Server | None = None
    try:
        with server.client() as client:
            r = client.post("/imports/crownest", json={"sandbox_id": sbx.id, "workflow_id": WF})
            assert r.status_code == 202, r.text
            import_id = r.json()["import_id"]
            state = poll(
                client,
                import_id,
                lambda b: b["counts"]["imported"] >= 2 and bool(hits(st, "download", slow.id)),
            )
            assert (state["status"], state["counts"]) == ("running", tally(imported=2))
            r = client.post(f"/imports/{import_id}/resume")
            assert r.status_code == 409 and r.json()["code"] == "import_running", r.text
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
        assert len(rows_of(database_url)) == 2

        # without a key the job is left alone at start-up, and cannot be resumed by hand
        keyless = {k: v for k, v in env.items() if k != "CROWNEST_API_KEY"}
        server = start_server(data_dir, database_url=database_url, env=keyless)
        with server.client() as client:
            r = client.post(f"/imports/{import_id}/resume")
            assert r.status_code == 503 and r.json()["code"] == "crownest_not_configured"
            time.sleep(0.3)
            state = client.get(f"/imports/{import_id}").json()
            assert (state["status"], state["counts"]) == ("running", tally(imported=2))
        server.stop()
        assert len(hits(st, "download")) == 3

        restarted = start_server(data_dir, database_url=database_url, env=env)
        with restarted.client() as client:
            state = poll(client, import_id, finished)
            assert (state["status"], state["error"]) == ("succeeded", None)
            assert state["counts"] == tally(imported=8)
            assert state["bytes"] == 8 * 100_000
        rows = rows_of(database_url)
        assert sorted(rows) == sorted(u.id for u in ups)
        for up in ups:
            (row,) = rows[up.id]  # exactly once
            assert up.data is not None
            assert row["content_hash"] == sha(up.data)
            blob = data_dir / "blobs" / "sha256" / sha(up.data)[:2] / sha(up.data)[2:4]
            assert (blob / sha(up.data)).read_bytes() == up.data
        # the two finished before the kill were not fetched again
        for up in order[:2]:
            assert len(hits(st, "download", up.id)) == 1
        assert [r.fault for r in hits(st, "download", slow.id)] == ["slow", None]
    finally:
        server.stop()
        if restarted is not None:
            restarted.stop()


def test_cli_imports_and_prints_a_summary(
    tmp_path: Path, database_url: str, fake: FakeCrowNest
) -> None:
    st = fake.state
    sbx = st.add_sandbox()
    ups = st.add_artifacts(sbx.id, 12, kind="mixed")
    live = [u for u in ups if u.deleted_at is None]
    total = sum(u.size_bytes for u in live)
    env = cli_env(fake, tmp_path / "data", database_url)
    args = ["--sandbox", sbx.id, "--workflow-id", WF, "--phase-id", "p", "--artifact-type", "Text"]
    done = run_cli(*args, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"CrowNest import [0-9a-f-]{36}:\s+succeeded", done.stdout), done.stdout
    assert table_of(done.stdout) == {
        "imported": ["9", f"{total} bytes"],
        "unchanged": ["0", "already here, same size"],
        "skipped": ["3", "deleted upstream"],
        "failed": ["0", ""],
    }
    # the progress bar (and its final "12/12 artifacts") goes to stderr, the table to stdout
    assert "12/12 artifacts" in done.stderr and "━" in done.stderr
    assert "artifacts ━" not in done.stdout and "CrowNest import" not in done.stderr
    rows = rows_of(database_url)
    assert sorted(rows) == sorted(u.id for u in live)
    for up in live:
        (row,) = rows[up.id]
        assert up.data is not None
        assert (row["artifact_type"], row["workflow_id"], row["phase_id"]) == ("text", WF, "p")
        assert row["content_hash"] == sha(up.data)

    again = run_cli(*args, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert table_of(again.stdout)["imported"] == ["0", "0 bytes"]
    assert table_of(again.stdout)["unchanged"] == ["9", "already here, same size"]
    assert rows_of(database_url) == rows


def test_cli_exits_1_when_an_item_failed(
    tmp_path: Path, database_url: str, fake: FakeCrowNest
) -> None:
    st = fake.state
    sbx = st.add_sandbox()
    ups = st.add_artifacts(sbx.id, 3)
    st.inject("download", Fault.long_body(), artifact_id=ups[1].id)
    env = cli_env(fake, tmp_path / "data", database_url)
    done = run_cli("--sandbox", sbx.id, "--workflow-id", WF, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    table = table_of(done.stdout)
    assert table["imported"][0] == "2" and table["failed"] == ["1", ""]
    assert table[""] == [
        f"{ups[1].id} {ups[1].name}: CrowNest sent more than its sizeBytes "
        f"({ups[1].size_bytes}); not stored"
    ]
    assert sorted(rows_of(database_url)) == sorted([ups[0].id, ups[2].id])


def test_cli_exits_1_when_the_job_fails(tmp_path: Path, fake: FakeCrowNest) -> None:
    env = cli_env(fake, tmp_path / "data", None)
    done = run_cli("--sandbox", "sbx_nowhere", "--workflow-id", WF, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "CrowNest has no sandbox 'sbx_nowhere' (not_found)." in done.stdout


def test_cli_exits_2_without_a_key_or_with_a_bad_type(tmp_path: Path, fake: FakeCrowNest) -> None:
    env = cli_env(fake, tmp_path / "data", None)
    del env["CROWNEST_API_KEY"]
    done = run_cli("--sandbox", "sbx_1", "--workflow-id", WF, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "CROWNEST_API_KEY is not set." in done.stderr and done.stdout == ""
    env = cli_env(fake, tmp_path / "data", None)
    done = run_cli("--sandbox", "sbx_1", "--workflow-id", WF, "--artifact-type", "nope", env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--artifact-type" in done.stderr
    assert fake.state.requests == []


@pytest.mark.parametrize("case", ["refused", "bad-url", "not-crownest", "bad-key", "no-scope"])
def test_cli_says_what_is_wrong_in_one_line_and_exits_2(
    tmp_path: Path, fake: FakeCrowNest, case: str
) -> None:
    """A setting that cannot work ends the command with one line naming the host, what went
    wrong and the setting to check: no traceback, no table, exit 2 (issue 16)."""
    sbx = fake.state.add_sandbox()
    fake.state.add_artifacts(sbx.id, 2)
    env = cli_env(fake, tmp_path / "data", None)
    closed = f"http://127.0.0.1:{closed_port()}"
    urls = {"refused": closed, "bad-url": "ftp://crownest.dev"}
    keys = {"bad-key": "cn_test_wrong_key", "no-scope": FORBIDDEN_API_KEY}
    with not_crownest() as web:
        env["ARTIFACTS_CROWNEST_BASE_URL"] = {**urls, "not-crownest": web}.get(case, fake.base_url)
        env["CROWNEST_API_KEY"] = keys.get(case, fake.api_key)
        done = run_cli("--sandbox", sbx.id, "--workflow-id", WF, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    base, check = fake.base_url, "Check ARTIFACTS_CROWNEST_BASE_URL."
    expected = {
        "refused": f"Cannot reach CrowNest at {closed}: connection refused (3 attempts). {check}",
        "bad-url": "ARTIFACTS_CROWNEST_BASE_URL 'ftp://crownest.dev' is not an http:// or "
        "https:// URL with a host.",
        "not-crownest": f"{web} answered 404 with a body that is not CrowNest's: it does not "
        f"look like the CrowNest API. {check}",
        "bad-key": f"CrowNest at {base} rejected the API key (invalid_api_key): "
        "check CROWNEST_API_KEY. Invalid API key.",
        "no-scope": f"CrowNest at {base} gave the API key no access (forbidden): "
        "it needs artifact:read; check CROWNEST_API_KEY. API key lacks required scope.",
    }[case]
    assert line == f"artifacts: {expected}"
    assert env["CROWNEST_API_KEY"] not in done.stderr
    routes = [r.route for r in fake.state.requests]
    assert routes == (["list"] if case in ("bad-key", "no-scope") else [])


def test_cli_dry_run_lists_what_it_would_import_and_where(
    tmp_path: Path, database_url: str, fake: FakeCrowNest
) -> None:
    st = fake.state
    sbx = st.add_sandbox()
    notes = st.add_artifact(
        sbx.id, "# notes\n", name="notes.md", source_path="/workspace/out/notes.md"
    )
    raw = st.add_artifact(sbx.id, b"\x00\x01\x02", name="raw", content_type=None, source_path=None)
    data = st.add_artifact(sbx.id, '{"a": 1}', name="data.json")
    st.add_artifact(sbx.id, "bye", name="gone.txt", deleted=True)
    env = cli_env(fake, tmp_path / "data", database_url)
    args = ["--sandbox", sbx.id, "--workflow-id", "wf-a", "--phase-id", "p"]
    done = run_cli(*args, "--dry-run", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert dry_run_of(done.stdout) == {
        notes.id: ["notes.md", "/workspace/out/notes.md", "8", "text/markdown", "markdown"],
        raw.id: ["raw", "", "3", "application/octet-stream", "other"],
        data.id: ["data.json", "/workspace/data.json", "8", "application/json", "json"],
        "total: 3 artifact(s)": ["", "", "19", "", ""],
    }
    assert "Dry run: would import 3 artifact(s), 19 bytes, into workflow 'wf-a', phase 'p'" in (
        done.stdout
    )
    assert re.search(r"CrowNest dry run [0-9a-f-]{36}: succeeded \(nothing stored\)", done.stdout)
    assert table_of(done.stdout) == {
        "would import": ["3", "19 bytes"],
        "unchanged": ["0", "already here, same size"],
        "skipped": ["1", "deleted upstream"],
        "failed": ["0", ""],
    }
    assert rows_of(database_url) == {} and hits(st, "download") == []


def test_cli_importing_again_into_another_workflow_names_the_one_that_holds_them(
    tmp_path: Path, database_url: str, fake: FakeCrowNest
) -> None:
    st = fake.state
    sbx = st.add_sandbox()
    ups = st.add_artifacts(sbx.id, 3)
    env = cli_env(fake, tmp_path / "data", database_url)
    first = run_cli("--sandbox", sbx.id, "--workflow-id", "wf-a", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    rows = rows_of(database_url)
    extra = st.add_artifact(sbx.id, "new since", name="late.txt")
    for dry in (["--dry-run"], []):  # the dry run first: it leaves nothing behind
        done = run_cli("--sandbox", sbx.id, "--workflow-id", "wf-b", *dry, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        table = table_of(done.stdout)
        assert table["unchanged"] == ["3", "already imported; not added again to workflow 'wf-b':"]
        assert table[""] == ["3 already in workflow 'wf-a'"]
        assert table["would import" if dry else "imported"] == ["1", f"{extra.size_bytes} bytes"]
        if dry:
            assert list(dry_run_of(done.stdout)) == [extra.id, "total: 1 artifact(s)"]
            assert "would import 1 artifact(s), 9 bytes, into workflow 'wf-b'" in done.stdout
    after = rows_of(database_url)
    assert {k: v for k, v in after.items() if k != extra.id} == rows
    for up in ups:
        (row,) = after[up.id]
        assert row["workflow_id"] == "wf-a"
    assert [r["workflow_id"] for r in after[extra.id]] == ["wf-b"]


@pytest.mark.slow
def test_cli_import_of_1_gib_keeps_memory_flat(tmp_path: Path, fake: FakeCrowNest) -> None:
    size = 1 << 30
    st = fake.state
    sbx = st.add_sandbox()
    st.add_artifact(sbx.id, random.Random(5).randbytes(MiB), name="small.bin")
    env = cli_env(fake, tmp_path / "small", None)
    baseline = run_cli("--sandbox", sbx.id, "--workflow-id", WF, env=env, wrapper=PEAK)
    assert baseline.returncode == 0, baseline.stdout + baseline.stderr
    assert table_of(baseline.stdout)["imported"] == ["1", f"{MiB} bytes"]

    big_sbx = st.add_sandbox()
    big = st.add_artifact(big_sbx.id, b"", name="big.bin", size_bytes=size)
    lazy = LazyBytes(size, seed=6)
    with st._lock:
        big.data = lazy  # type: ignore[assignment]
    env = cli_env(fake, tmp_path / "big", None)
    t0 = time.monotonic()
    done = run_cli("--sandbox", big_sbx.id, "--workflow-id", WF, env=env, wrapper=PEAK)
    elapsed = time.monotonic() - t0
    assert done.returncode == 0, done.stdout + done.stderr
    assert table_of(done.stdout)["imported"] == ["1", f"{size} bytes"]
    growth = peak_of(done) - peak_of(baseline)
    assert growth < 64 * MiB, (peak_of(baseline), peak_of(done))
    assert elapsed < 60, elapsed

    digest = lazy.sha256()
    blob = tmp_path / "big" / "blobs" / "sha256" / digest[:2] / digest[2:4] / digest
    try:
        assert blob.stat().st_size == size
        on_disk = hashlib.sha256()
        with blob.open("rb") as f:
            while chunk := f.read(4 * MiB):
                on_disk.update(chunk)
        assert on_disk.hexdigest() == digest
        assert staging(tmp_path / "big" / "blobs") == []
    finally:
        blob.unlink(missing_ok=True)
