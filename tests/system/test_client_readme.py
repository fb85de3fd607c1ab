"""The README's quick start for the client runs as written: its Python block and its two `wfa`
lines, against a real server, in a directory holding the files they name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.servers import ROOT, start_server


def blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def test_the_readme_client_quick_start_runs(tmp_path: Path) -> None:
    (python,) = [b for b in blocks("python") if "ArtifactsClient" in b]
    (shell,) = [b for b in blocks("sh") if "wfa push" in b]
    assert len(python.strip().splitlines()) <= 12 and len(shell.strip().splitlines()) == 2
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.4 not really\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "notes.md").write_text("# notes\n")
    server = start_server(tmp_path / "data")
    env = {**os.environ, "ARTIFACTS_URL": server.url, "ARTIFACTS_API_KEY": ""}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    try:
        run = subprocess.run(
            [sys.executable, "-c", python],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        assert "Findings" in run.stdout
        assert (tmp_path / "copy.pdf").read_bytes() == b"%PDF-1.4 not really\n"
        for line in shell.strip().splitlines():
            run = subprocess.run(
                line.split("#")[0],
                shell=True,
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert run.returncode == 0, (line, run.stdout, run.stderr)
        pulled = {
            p.relative_to(tmp_path / "pulled").as_posix()
            for p in (tmp_path / "pulled").rglob("*")
            if p.is_file()
        }
        assert {"discovery/results/notes.md", "discovery/report.pdf", "wfa-manifest.json"} <= pulled
    finally:
        server.stop()
