"""The benchmark suite runs end to end (`scripts/bench --smoke`: tiny sizes, seconds per group)
and its JSON has every section with nothing errored. No figure is asserted: timings on these
machines swing +-30% (../shared/design/MEASURED.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
POSTGRES_URL = os.environ.get("ARTIFACTS_TEST_POSTGRES_URL")
# every filter of GET /artifacts (app/artifacts/routes.py list_artifacts) but created_before
FILTERS = (
    "none", "workflow_id", "workflow_id+phase_id", "phase_id", "session_id", "artifact_type",
    "content_type", "is_primary_deliverable", "created_after", "derived_from",
)  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_smoke_runs_every_group(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bench", "--smoke", "--no-bench-venv", "--out", str(tmp_path)]
    cmd += ["--postgres", POSTGRES_URL] if POSTGRES_URL else ["--no-postgres"]
    env = {k: v for k, v in os.environ.items() if k not in ("BENCH_POSTGRES_URL",)}
    run = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540, check=False
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    [json_path] = tmp_path.glob("*.json")
    report = json.loads(json_path.read_text())
    assert json_path.with_suffix(".md").exists()
    assert report["errors"] == []
    assert report["run"]["mode"] == "smoke"

    limits = report["limits"]
    assert limits["durable_create"]["per_s"] > 0
    assert limits["requests"]["bare_asgi_uvicorn"]["rps"] > 0
    assert limits["requests"]["litestar_uvicorn"]["rps"] > 0  # the project's own Litestar
    assert set(limits["skipped"]) == {"bare_asgi_granian"}

    byte_rows = report["bytes"]["results"]
    assert {r["scenario"] for r in byte_rows} == {"upload", "download"}
    assert all(r["MBps"] > 0 and r["ratio"] > 0 and r["vs_reference"] > 0 for r in byte_rows)
    assert set(report["bytes"]["limits"]) == {
        "sha256_MBps",
        "sha256_write_MBps",
        "sha256_write_fsync_MBps",
    }
    assert "skipped" in report["peer"]

    databases = ["sqlite", "postgresql"] if POSTGRES_URL else ["sqlite"]
    if not POSTGRES_URL:
        assert report["metadata"]["postgresql"].startswith("skipped")
    for db in databases:
        [scale] = report["metadata"][db]["scales"]
        assert scale["load"]["rows"] == 1000
        assert scale["problems"] == []
        for kind in ("get", "list"):  # the same-size plain Litestar reference, every scale
            ref = scale["reference"][kind]
            assert ref["rps"] > 0 and ref["body_bytes"] > 0, ref
            assert set(ref["statuses"]) == set(ref["c1_statuses"]) == {"200"}, ref
        seen = {(r["scenario"], r["filter"], r["concurrency"]) for r in scale["results"]}
        assert ("get", None, 16) in seen
        assert ("create", "json_1KiB", 16) in seen and ("create", "json_1KiB", 64) in seen
        for filt in FILTERS:
            assert ("list_first", filt, 16) in seen, filt
        assert ("list_deep", "none", 16) in seen and ("list_deep", "phase_id", 16) in seen
        for r in scale["results"]:
            assert r["rps"] > 0 and set(r["statuses"]) <= {"200", "201"}, r
            if r["scenario"] != "create":
                assert set(r["c1_statuses"]) == {"200"}, r
                assert r["vs_reference"] > 0, r

    groups = {t["group"] for t in report["targets"]}
    assert {"bytes", "peer", *(f"metadata {db}" for db in databases)} <= groups
    assert {t["status"] for t in report["targets"]} <= {"met", "not met", "n/a"}
