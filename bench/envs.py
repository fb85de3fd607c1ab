"""The bench-only virtual environment: MLflow (the byte-path peer) and granian (a small-request
reference), installed from scripts/bench-requirements.lock into var/bench-venv on first use, and
again only when the lock changes. Never the project's environment. (The plain Litestar reference,
bench/litestar_ref.py, runs from the project's environment: Litestar is a runtime dependency.)"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import ROOT

LOCK = ROOT / "scripts" / "bench-requirements.lock"
DEFAULT_VENV = ROOT / "var" / "bench-venv"


class BenchEnvUnavailable(RuntimeError):
    """The bench-only environment could not be made; the message says why."""


def bench_venv(path: Path | None = None, *, install: bool = True, timeout: float = 900) -> Path:
    """The bench venv's python, made or brought up to date from the lock when `install`."""
    venv = Path(path or os.environ.get("BENCH_VENV") or DEFAULT_VENV)
    python = venv / "bin" / "python"
    stamp = venv / ".installed-bench-requirements.lock"
    want = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return python
    if not install:
        raise BenchEnvUnavailable(f"{venv} is not installed from {LOCK.name} (run without --smoke)")
    uv = os.environ.get("BENCH_UV") or shutil.which("uv")
    print(f"bench: installing the bench-only environment in {venv} from {LOCK.name}", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    try:
        if uv:
            subprocess.run(
                [uv, "venv", "-q", "--allow-existing", "-p", sys.executable, str(venv)],
                check=True,
                timeout=timeout,
            )
            cmd = [uv, "pip", "install", "-q", "-p", str(python), "-r", str(LOCK)]
        else:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=timeout)
            cmd = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            cmd += ["-r", str(LOCK)]
        subprocess.run(cmd, check=True, timeout=timeout)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        raise BenchEnvUnavailable(f"could not install {LOCK.name} into {venv}: {exc}") from exc
    stamp.write_text(want + "\n")
    return python
