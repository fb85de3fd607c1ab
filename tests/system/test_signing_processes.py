"""The signing key created by several processes at once: they all load the same one."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from tests.support.servers import ROOT

CHILD = """
import hashlib, os, sys, time
from pathlib import Path
from app.settings import Settings
from app.signing import load_signing_secret
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.001)
key = load_signing_secret(Settings(data_dir=Path(sys.argv[2])))
print(hashlib.sha256(key).hexdigest())
"""


def test_concurrent_loads_in_processes_agree(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ARTIFACTS_SIGNING_KEY"}
    for round_ in range(3):
        data_dir = tmp_path / f"data{round_}"
        go = tmp_path / f"go{round_}"
        children = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, str(go), str(data_dir)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(6)
        ]
        time.sleep(1.5)  # let every child import and start polling
        go.touch()
        outputs = [child.communicate(timeout=60) for child in children]
        assert [child.returncode for child in children] == [0] * 6, outputs
        digests = {out.strip() for out, _err in outputs}
        assert digests == {hashlib.sha256((data_dir / "signing.key").read_bytes()).hexdigest()}
        assert stat.S_IMODE((data_dir / "signing.key").stat().st_mode) == 0o600
