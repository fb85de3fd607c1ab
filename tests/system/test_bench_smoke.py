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


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_baseline_smoke_compares_before_and_after(tmp_path: Path) -> None:
    """`--smoke --baseline HEAD`: the baseline is served from its own worktree (each server says
    where its `app` came from), before and after alternate, and the report has a before/after row
    per compared figure. No figure is asserted."""
    worktrees = tmp_path / "worktrees"
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bench", "--smoke", "--baseline", "HEAD", "--out", str(out)]
    cmd += ["--postgres", POSTGRES_URL] if POSTGRES_URL else ["--no-postgres"]
    env = {k: v for k, v in os.environ.items() if k not in ("BENCH_POSTGRES_URL",)}
    env["BENCH_BASELINE_DIR"] = str(worktrees)
    sha = git("rev-parse", "HEAD")
    try:
        run = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=540, check=False
        )
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
        [json_path] = out.glob("*.json")
        report = json.loads(json_path.read_text())
        baseline = report["baseline"]
        assert report["errors"] == []
        assert baseline["sha"] == sha
        root = worktrees / sha[:12]
        assert Path(baseline["worktree"]) == root

        # the servers of each side ran that side's code, as they reported it
        code = baseline["code"]
        assert code["before"]["apps"] == [str(root / "app" / "__init__.py")]
        assert code["after"]["apps"] == [str(ROOT / "app" / "__init__.py")]
        assert baseline["probes"]["before"]["app"] == str(root / "app" / "__init__.py")
        sides = [line.rsplit(" ", 1)[1] for line in baseline["sequence"]]
        assert sides == ["before", "after"] * (len(sides) // 2) and sides
        assert code["before"]["servers"] == code["after"]["servers"] == len(sides) // 2

        databases = ["sqlite", "postgresql"] if POSTGRES_URL else ["sqlite"]
        if not POSTGRES_URL:
            assert baseline["skipped"]["creates postgresql"].startswith("skipped")
        figures = {f["figure"]: f for f in baseline["figures"]}
        wanted = {f"JSON create 1 KiB, {db}, c{c}" for db in databases for c in (16, 64)}
        wanted |= {"upload 1 MiB x1", "download 1 MiB x1"}
        assert set(figures) == wanted
        for f in figures.values():
            assert f["before"] > 0 and f["after"] > 0 and f["reference_figure"] > 0, f
            assert f["after_vs_before"] > 0 and f["threshold"] == 0.95, f
            assert f["met"] in (True, False) and f["reps"] == 1, f

        targets = [t for t in report["targets"] if t["group"] == "before/after"]
        assert len(targets) == len(wanted)
        text = json_path.with_suffix(".md").read_text()
        assert f"## Before/after: baseline `HEAD` ({sha[:12]})" in text
        for figure in wanted:
            assert f"| {figure} |" in text
    finally:
        if worktrees.exists():
            for path in worktrees.iterdir():
                if path.is_dir():
                    git("worktree", "remove", "--force", str(path))
        git("worktree", "prune")


def test_bench_baseline_refuses_before_measuring(tmp_path: Path) -> None:
    """An unknown ref is refused at once (exit 2, nothing written)."""
    cmd = [sys.executable, "-m", "bench", "--smoke", "--baseline", "no-such-ref-anywhere"]
    env = {**os.environ, "BENCH_BASELINE_DIR": str(tmp_path / "worktrees")}
    run = subprocess.run(
        [*cmd, "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "refusing --baseline no-such-ref-anywhere" in run.stderr
    assert not list(tmp_path.glob("*.json"))


def test_bench_baseline_checks() -> None:
    """The two checks a baseline must pass: the same pinned dependencies (pip-compile's comments
    aside), and `app` and `storage` imported from its own tree."""
    from bench.baseline import pins
    from bench.common import code_origin

    lock = "a==1\n    # via b\nb==2  # pinned\n\n"
    assert pins(lock) == pins("a==1\n    # via\n    #   b\nb==2\n") == ["a==1", "b==2"]
    assert pins(lock) != pins("a==1\nb==3\n")
    tree = ROOT / "var" / "bench-baseline" / "abc"
    good = {"app": str(tree / "app/__init__.py"), "storage": str(tree / "storage/__init__.py")}
    assert code_origin(good, tree) is None
    wrong = {**good, "storage": str(ROOT / "storage/__init__.py")}
    assert "`storage` was imported from" in (code_origin(wrong, tree) or "")
