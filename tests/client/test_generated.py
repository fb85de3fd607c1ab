"""The sync client is generated from the async one (scripts/gen-sync-client): the committed
_sync.py must be exactly what the generator makes of _async.py, so the two never drift."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SYNC = ROOT / "client" / "workflow_artifacts_client" / "_sync.py"


def test_the_committed_sync_client_is_what_the_generator_makes() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-sync-client"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert SYNC.read_text().startswith("# Generated from _async.py by scripts/gen-sync-client")


def test_the_check_fails_with_a_diff_when_the_file_drifted(tmp_path: Path) -> None:
    copy = tmp_path / "scripts" / "gen-sync-client"
    package = tmp_path / "client" / "workflow_artifacts_client"
    copy.parent.mkdir(parents=True)
    package.mkdir(parents=True)
    copy.write_text((ROOT / "scripts" / "gen-sync-client").read_text())
    source = (SYNC.parent / "_async.py").read_text()
    (package / "_async.py").write_text(source)
    (package / "_sync.py").write_text(SYNC.read_text().replace("time.sleep(wait)", "pass", 1))
    run = subprocess.run(
        [sys.executable, str(copy), "--check"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1
    assert re.search(r"^-\s+pass$", run.stdout, re.MULTILINE)
    assert re.search(r"^\+\s+time\.sleep\(wait\)$", run.stdout, re.MULTILINE)
    assert "out of date" in run.stderr
    subprocess.run([sys.executable, str(copy)], check=True, capture_output=True, timeout=60)
    assert (package / "_sync.py").read_text() == SYNC.read_text()
