"""Flat client memory: `wfa push` and `wfa pull` of a 1 GiB file against a real server, in a
process of their own whose VmHWM (peak RSS, from /proc) is read after each, as
tests/system/test_transfer_memory.py reads the server's. The bytes pulled are the bytes pushed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.servers import start_server

MiB = 1024 * 1024
GiB = 1024 * MiB

DRIVER = r"""
import json, sys, time
from pathlib import Path
from workflow_artifacts_client.cli import run
import workflow_artifacts_client.cli.output  # everything imported before the baseline

def status():
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := the current RSS
    except OSError:
        pass

src, wf, dest = sys.argv[1:4]
report = {}
for name, argv in (("push", ["push", src, "-w", wf]), ("pull", ["pull", "-w", wf, dest])):
    reset_peak()
    base = status()["VmRSS"]
    t0 = time.monotonic()
    code = run(argv)
    seconds = time.monotonic() - t0
    report[name] = {"code": code, "seconds": seconds, "base": base, **status()}
print("REPORT " + json.dumps(report), file=sys.stderr)
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_push_and_pull_1_gib_with_flat_client_memory(tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    sent = hashlib.sha256()
    block = bytearray(random.Random(18).randbytes(MiB))
    with src.open("wb") as f:
        for i in range(GiB // MiB):
            block[:8] = i.to_bytes(8, "big")
            sent.update(block)
            f.write(block)
    server = start_server(tmp_path / "data")
    wf = f"wf-{uuid.uuid4().hex[:8]}"
    dest = tmp_path / "out"
    try:
        run = subprocess.run(
            [sys.executable, "-c", DRIVER, str(src), wf, str(dest)],
            env={**os.environ, "ARTIFACTS_URL": server.url},
            capture_output=True,
            text=True,
            timeout=540,
        )
    finally:
        server.stop()
    line = next((x for x in run.stderr.splitlines() if x.startswith("REPORT ")), None)
    assert line is not None, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads(line.removeprefix("REPORT "))
    figures = {}
    for name in ("push", "pull"):
        r = report[name]
        assert r["code"] == 0, (name, run.stdout[-2000:], run.stderr[-2000:])
        growth = r["VmHWM"] - r["base"]
        figures[name] = (round(growth / MiB, 1), round(GiB / r["seconds"] / 1e6, 1))
        assert growth < 64 * MiB, (name, r)
    print(f"\n1 GiB through wfa: (RSS growth MiB, MB/s) {figures}")
    assert "\r" not in run.stdout and "push big.bin (1.0 GiB)" in run.stdout
    got = hashlib.sha256()
    with (dest / "big.bin").open("rb") as f:
        for chunk in iter(lambda: f.read(MiB), b""):
            got.update(chunk)
    assert got.hexdigest() == sent.hexdigest()
    manifest = json.loads((dest / "wfa-manifest.json").read_text())
    assert [(e["path"], e["sha256"]) for e in manifest["files"]] == [
        ("big.bin", sent.hexdigest())
    ]
